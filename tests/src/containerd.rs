//! Debian's containerd (its CRI plugin) started on a temp root and socket, or containerd 2.x
//! ([`Flavour::V2`], built by `scripts/peers`) on the same settings, in two roles:
//!
//! - the benchmark peer: runc runs the pods, driven by the same CRI client as `wasmpod serve`;
//!   all pods use the host network, so no CNI is needed;
//! - the host of wasmpod's containerd shim ([`Options::wasmpod`]): a `wasmpod` runtime handler
//!   (`io.containerd.wasmpod.v1`, the `containerd-shim-wasmpod-v1` binary of this build, which
//!   starts the `wasmpod serve` daemon beside it) and, with [`Options::cni`], pod networks from
//!   the real CNI plugins, all inside a network namespace of the instance's own.
//!
//! Nothing is pulled: the sandbox (pause), `hello` and `idle` images are static native binaries
//! compiled here with gcc, packed as OCI archives by hand and imported with `ctr`; the wasmpod
//! role also imports the toolbox images of [`crate::images`].

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use serde_json::{json, Value};
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::cri::Rt;
use crate::crictl::Crictl;
use crate::images::{Entry, Image};
use crate::LogRecord;

/// The CRI namespace of containerd.
pub const NAMESPACE: &str = "k8s.io";

/// Copies the image's files for each container: needs no mount support, costs a copy per
/// container.
pub const NATIVE: &str = "native";

/// containerd's default snapshotter (an overlay mount per container): what a stock install
/// uses, when the kernel and the filesystem under the root allow overlay mounts.
pub const OVERLAYFS: &str = "overlayfs";

/// The k8s pause program: reaps children, exits 0 on SIGINT/SIGTERM (as PID 1 of its pid
/// namespace, signals without a handler would be ignored).
const PAUSE_C: &str = r#"#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction term = {.sa_handler = quit};
  struct sigaction chld = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &term, 0);
  sigaction(SIGTERM, &term, 0);
  sigaction(SIGCHLD, &chld, 0);
  for (;;) pause();
}
"#;

/// Prints one line and exits 0: the start-to-first-line probe.
const HELLO_C: &str = r#"#include <unistd.h>
int main(void) {
  static const char m[] = "hello from runc\n";
  return write(1, m, sizeof m - 1) == sizeof m - 1 ? 0 : 1;
}
"#;

/// Prints `tick 1` (the line wasmpod's idle guest prints first) and then sleeps like pause:
/// one idle container per pod for density figures. `/idle echo WORDS…` prints the words and
/// exits, as `echo` does: what the exec figures run.
const IDLE_C: &str = r#"#include <signal.h>
#include <string.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "echo") == 0) {
    for (int i = 2; i < argc; i++) {
      if (i > 2) write(1, " ", 1);
      write(1, argv[i], strlen(argv[i]));
    }
    return write(1, "\n", 1) == 1 ? 0 : 1;
  }
  static const char m[] = "tick 1\n";
  struct sigaction term = {.sa_handler = quit};
  sigaction(SIGINT, &term, 0);
  sigaction(SIGTERM, &term, 0);
  if (write(1, m, sizeof m - 1) != sizeof m - 1) return 1;
  for (;;) pause();
}
"#;

/// The images the harness builds: (program name, C source). The program is `/<name>` in the
/// image and its entrypoint.
const PROGRAMS: [(&str, &str); 3] = [("pause", PAUSE_C), ("hello", HELLO_C), ("idle", IDLE_C)];

/// The image reference of program `name` (a registry-qualified name, so CRI's normalization
/// leaves it as is).
fn reference(name: &str) -> String {
    format!("wasmpod.local/peer/{name}:1")
}

/// The namespace `ctr` uses when given none: where `ctr run` finds its images.
pub const CTR_NAMESPACE: &str = "default";

/// The CRI runtime handler of wasmpod pods (`crictl runp --runtime wasmpod`,
/// `RunPodSandboxRequest.runtime_handler`): the `runtimes.wasmpod` table of the config.
pub const WASMPOD_HANDLER: &str = "wasmpod";

/// containerd's runtime type for wasmpod: containerd runs `containerd-shim-wasmpod-v1`, found
/// on its PATH, for it (`ctr run --runtime io.containerd.wasmpod.v1`).
pub const WASMPOD_RUNTIME: &str = "io.containerd.wasmpod.v1";

/// The shim's package and binary names.
const SHIM_PACKAGE: &str = "containerd-shim-wasmpod";
const SHIM_BIN: &str = "containerd-shim-wasmpod-v1";

/// The toolbox image of [`crate::images`] (the preview1 build: exact exit codes, no sockets),
/// imported into the CRI and ctr namespaces of a wasmpod instance.
pub const TOOLBOX_P1: &str = "wasmpod.local/toolbox:p1";

/// The toolbox image of the preview2 build (its `httpd` binds sockets through wasi:sockets)
/// plus `/bin/netprobe` (examples/guests/netprobe, a TCP/UDP client and server).
pub const TOOLBOX_P2: &str = "wasmpod.local/toolbox:p2";

/// libcni's result cache (its default; containerd 1.6 does not let us move it).
const CNI_RESULTS: &str = "/var/lib/cni/results";

/// Where Debian's containernetworking-plugins are.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The CNI plugins the conflist and containerd's loopback setup run.
const CNI_PLUGINS: [&str; 4] = ["bridge", "host-local", "portmap", "loopback"];

/// Which containerd runs: the shim must work on the 1.6 distributions ship and on 2.x, whose
/// CRI plugin is split into `io.containerd.cri.v1.*` plugins with a config version 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavour {
    /// Debian's containerd 1.6 and `ctr`, found on PATH; config version 2.
    #[default]
    Debian16,
    /// containerd 2.x and its `ctr`, built by `scripts/peers` ([`crate::peers::containerd2`]).
    V2,
}

impl Flavour {
    /// The containerd daemon binary.
    fn containerd(self) -> PathBuf {
        match self {
            Flavour::Debian16 => "containerd".into(),
            Flavour::V2 => crate::peers::containerd2(),
        }
    }

    /// The `ctr` matching the daemon.
    fn ctr(self) -> PathBuf {
        match self {
            Flavour::Debian16 => "ctr".into(),
            Flavour::V2 => crate::peers::ctr2(),
        }
    }
}

/// How to start a [`Containerd`]: `Options::default()` is the benchmark peer (native
/// snapshotter, runc only, host-network pods).
#[derive(Debug, Clone)]
pub struct Options {
    /// Which containerd: Debian's 1.6 or 2.x.
    pub flavour: Flavour,
    /// CRI's snapshotter ([`NATIVE`] or [`OVERLAYFS`]); `ctr` imports unpack for it too.
    pub snapshotter: String,
    /// Adds the `wasmpod` runtime handler (runc stays the default) and imports the toolbox
    /// images; the shim starts the daemon these settings describe on the first task.
    pub wasmpod: Option<Wasmpod>,
    /// Pod networks from CNI (bridge, host-local, portmap; loopback by containerd), with
    /// containerd, its shims, the wasmpod daemon and the bridge in a network namespace the
    /// instance makes and deletes ([`Containerd::netns`]).
    pub cni: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flavour: Flavour::default(),
            snapshotter: NATIVE.to_owned(),
            wasmpod: None,
            cni: false,
        }
    }
}

impl Options {
    /// The shim's setup: the `wasmpod` handler with default daemon settings, CNI networking.
    pub fn wasmpod_cni() -> Self {
        Options {
            wasmpod: Some(Wasmpod::default()),
            cni: true,
            ..Options::default()
        }
    }

    pub fn flavour(mut self, flavour: Flavour) -> Self {
        self.flavour = flavour;
        self
    }

    pub fn snapshotter(mut self, snapshotter: &str) -> Self {
        self.snapshotter = snapshotter.to_owned();
        self
    }

    pub fn wasmpod(mut self, wasmpod: Wasmpod) -> Self {
        self.wasmpod = Some(wasmpod);
        self
    }

    pub fn cni(mut self, on: bool) -> Self {
        self.cni = on;
        self
    }

    /// [`Options::try_start`], panicking with containerd's log on failure.
    pub async fn start(self) -> Containerd {
        match self.try_start().await {
            Ok(c) => c,
            Err(e) => panic!("starting containerd: {e:#}"),
        }
    }

    /// Starts containerd, waits until its CRI socket answers `Version` (and reports the
    /// network ready, with CNI) and the images are imported (unpacked for the snapshotter)
    /// and visible to CRI.
    pub async fn try_start(self) -> anyhow::Result<Containerd> {
        Containerd::try_start_options(self).await
    }
}

/// The wasmpod daemon the shim starts: its config file (TOML) is written under the instance's
/// dir with `socket` (CRI), `state_dir` and `[containerd] socket` (the ttrpc task API) there too,
/// and containerd gets `WASMPOD_CONFIG` naming it and this build's binaries first on PATH.
#[derive(Debug, Clone, Default)]
pub struct Wasmpod {
    /// More of the daemon's config, written after `socket` and `state_dir` and before the
    /// `[containerd]` table: top-level keys (`log_level = "debug"`), then tables
    /// (`[network]`…).
    pub extra_config: String,
}

/// The paths of the wasmpod daemon of an instance, all under its dir.
#[derive(Debug, Clone)]
struct WasmpodFiles {
    config: PathBuf,
    socket: PathBuf,
    ttrpc: PathBuf,
    state_dir: PathBuf,
}

/// The pod network of an instance: the bridge and the subnet host-local hands out.
#[derive(Debug, Clone)]
struct PodNetwork {
    /// The conflist's `name`: host-local's reservation dir, the prefix of libcni's cached
    /// results; unique to the instance, as that cache is the host's.
    name: String,
    /// The first three octets of the /24.
    prefix: [u8; 3],
}

impl PodNetwork {
    fn cidr(&self) -> String {
        let [a, b, c] = self.prefix;
        format!("{a}.{b}.{c}.0/24")
    }

    /// The bridge's address: the pods' gateway and their DNS server in [`Containerd::pod_json`]
    /// (nothing answers DNS there; guests only read it).
    fn gateway(&self) -> String {
        let [a, b, c] = self.prefix;
        format!("{a}.{b}.{c}.1")
    }
}

/// A network namespace made with `ip netns add` (loopback up), deleted when dropped: keeps a
/// test's bridge, pod networks and traffic off the host's network.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `/run/netns/<name>` (needs root).
    pub fn create(name: &str) -> anyhow::Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns {
            name: name.to_owned(),
        };
        run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file (`/run/netns/<name>`): what `nsenter --net=` and setns take.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `program` to be run inside the namespace (`nsenter --net=…`, which execs it: the child's
    /// pid is the program's), ready for arguments.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = output_within_quiet(Command::new("ip").args(["netns", "del", &self.name]), 30);
    }
}

/// containerd with its CRI plugin on a socket in a temp dir, its own root and state, stopped by
/// PID (with its shims, the wasmpod daemon and any container left) when dropped.
pub struct Containerd {
    pub dir: TempDir,
    /// The gRPC (CRI) socket.
    pub socket: PathBuf,
    child: Option<Child>,
    config: PathBuf,
    /// Set in containerd's environment (and so its shims' and the wasmpod daemon's).
    env: Vec<(OsString, OsString)>,
    /// Host paths this instance may create outside its dir, with whether each existed before,
    /// so Drop removes (when empty) only what it made.
    outside: Vec<(PathBuf, bool)>,
    flavour: Flavour,
    snapshotter: String,
    pause: String,
    hello: String,
    idle: String,
    netns: Option<Netns>,
    network: Option<PodNetwork>,
    wasmpod: Option<WasmpodFiles>,
}

impl Containerd {
    /// Starts containerd with the native snapshotter and imports the peer images; panics with
    /// containerd's log on failure.
    pub async fn start() -> Self {
        Options::default().start().await
    }

    /// [`Containerd::start`] with CRI's `snapshotter` ([`NATIVE`] or [`OVERLAYFS`]).
    pub async fn start_with(snapshotter: &str) -> Self {
        Options::default().snapshotter(snapshotter).start().await
    }

    /// [`Containerd::start`], returning why it cannot run instead of panicking.
    pub async fn try_start() -> anyhow::Result<Self> {
        Options::default().try_start().await
    }

    /// [`Containerd::start_with`], returning why it cannot run instead of panicking.
    pub async fn try_start_with(snapshotter: &str) -> anyhow::Result<Self> {
        Options::default()
            .snapshotter(snapshotter)
            .try_start()
            .await
    }

    async fn try_start_options(opts: Options) -> anyhow::Result<Self> {
        // runc is what the peer runs; the wasmpod role needs it only for runc pods.
        let mut tools = Vec::new();
        if opts.flavour == Flavour::Debian16 {
            tools.extend(["containerd", "ctr"]);
        }
        if opts.wasmpod.is_none() {
            tools.push("runc");
            if opts.flavour == Flavour::Debian16 {
                tools.push("containerd-shim-runc-v2");
            }
        }
        if opts.cni {
            tools.extend(["ip", "nsenter"]);
        }
        for tool in tools {
            if which(tool).is_none() {
                bail!("`{tool}` is not installed (apt-get install containerd runc iproute2)");
            }
        }
        if opts.cni {
            for plugin in CNI_PLUGINS {
                if !Path::new(CNI_BIN_DIR).join(plugin).is_file() {
                    bail!(
                        "{CNI_BIN_DIR}/{plugin} is missing (apt-get install \
                         containernetworking-plugins)"
                    );
                }
            }
        }
        let archives = archives()?;
        let dir = tempfile::Builder::new().prefix("ctrd").tempdir()?;
        let d = dir.path();
        let mut env = Vec::new();
        let wasmpod = match &opts.wasmpod {
            Some(settings) => {
                let files = write_wasmpod_config(d, settings)?;
                env.push(("WASMPOD_CONFIG".into(), files.config.clone().into()));
                env.push(("PATH".into(), path_with_shim()?));
                Some(files)
            }
            None => {
                if opts.flavour == Flavour::V2 {
                    // containerd looks its runc shim up on PATH: 2.x's own, not Debian's.
                    let shim = crate::peers::shim_runc2();
                    env.push(("PATH".into(), path_with(shim.parent().context("a dir")?)?));
                }
                None
            }
        };
        let (netns, network) = if opts.cni {
            static INSTANCES: AtomicUsize = AtomicUsize::new(0);
            let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
            let pid = std::process::id() as usize;
            let name = format!("wasmpod-ctrd-{pid}-{n}");
            let netns = Netns::create(&name)?;
            // The bridge and the subnet only have to be unique inside the namespace; varying
            // them keeps two instances' leftovers, should any escape, apart.
            let network = PodNetwork {
                name,
                prefix: [10, 88, ((pid + n) % 250 + 1) as u8],
            };
            write_cni_conflist(d, &format!("wpbr{}", n % 1000), &network)?;
            (Some(netns), Some(network))
        } else {
            (None, None)
        };
        let config = d.join("config.toml");
        fs::write(
            &config,
            config_toml(
                opts.flavour,
                d,
                &opts.snapshotter,
                opts.wasmpod.is_some(),
                opts.cni,
            ),
        )?;
        // containerd and its shims put these on the host whatever the config says (shim
        // sockets, client fifos); runc with cgroupfs makes the `k8s.io` cgroup parents; CNI's
        // result cache (libcni's default, which 1.6 does not let us move).
        let outside: Vec<(PathBuf, bool)> = ["/run/containerd/s", "/run/containerd/fifo"]
            .iter()
            .map(PathBuf::from)
            .chain(["/run/containerd".into()])
            .chain(cgroup_roots().into_iter().map(|r| r.join(NAMESPACE)))
            .chain(
                [CNI_RESULTS, "/var/lib/cni"]
                    .iter()
                    .filter(|_| opts.cni)
                    .map(PathBuf::from),
            )
            .map(|p| {
                let existed = p.exists();
                (p, existed)
            })
            .collect();
        let mut c = Containerd {
            socket: d.join("containerd.sock"),
            dir,
            child: None,
            config,
            env,
            outside,
            flavour: opts.flavour,
            snapshotter: opts.snapshotter.clone(),
            pause: reference("pause"),
            hello: reference("hello"),
            idle: reference("idle"),
            netns,
            network,
            wasmpod,
        };
        c.spawn()?;
        c.wait_ready().await?;
        for (name, archive) in archives {
            c.import(NAMESPACE, &reference(name), archive).await?;
        }
        if c.wasmpod.is_some() {
            for (reference, archive) in toolbox_archives(c.dir.path())? {
                for namespace in [NAMESPACE, CTR_NAMESPACE] {
                    c.import(namespace, &reference, &archive).await?;
                }
            }
        }
        Ok(c)
    }

    /// Starts the containerd process on the config (inside the netns, if any), logging to
    /// `containerd.log` (appended: a restart keeps the earlier lines).
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))?;
        let mut cmd = match &self.netns {
            Some(ns) => ns.command(self.flavour.containerd()),
            None => Command::new(self.flavour.containerd()),
        };
        cmd.arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // They would override the daemon's config file (`wasmpod serve` reads them).
            .env_remove("WASMPOD_SOCKET")
            .env_remove("WASMPOD_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn().context("spawning containerd")?);
        Ok(())
    }

    /// SIGKILL to containerd alone (its shims and the wasmpod daemon keep running), reaped.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts containerd again on the same config, environment and namespace (after
    /// [`Containerd::kill9`]); waits until it answers, as at the start.
    pub async fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "containerd still runs: kill9 it first"
        );
        let started = self.spawn();
        if let Err(e) = started.and(self.wait_ready().await) {
            panic!("restarting containerd: {e:#}");
        }
    }

    /// Polls `Version` (and with CNI the `NetworkReady` condition) (bounded: 30 s), failing
    /// early if containerd exits.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("containerd exited ({status}):\n{}", self.log_tail(30));
            }
            if let Ok(mut rt) = self.try_runtime().await {
                let version = rt.version(cri::VersionRequest::default()).await;
                if version.is_ok_and(|v| v.into_inner().runtime_name == "containerd")
                    && (self.network.is_none() || network_ready(&mut rt).await)
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer CRI Version{} on {} within 30s:\n{}",
                    if self.network.is_some() {
                        " with the network ready"
                    } else {
                        ""
                    },
                    self.socket.display(),
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `ctr images import` into `namespace` (every platform: the toolbox images are
    /// `wasip1/wasm`), unpacked for the CRI snapshotter; in the CRI namespace, then waits until
    /// CRI's image store has `reference` (it learns of imports through events).
    async fn import(&self, namespace: &str, reference: &str, archive: &Path) -> anyhow::Result<()> {
        let snapshotter = self.snapshotter.clone();
        let mut args = vec!["images", "import", "--all-platforms", "--snapshotter"];
        args.push(&snapshotter);
        if self.flavour == Flavour::V2 {
            // 2.x imports through the transfer API by default, whose unpacker has no platform
            // to unpack with `--all-platforms` ("no unpack platforms defined"); the client-side
            // import is 1.6's.
            args.push("--local");
        }
        let out = crate::output_within(self.ctr(namespace, &args).arg(archive), 120);
        if !out.status.success() {
            bail!(
                "ctr -n {namespace} images import {}: {}\n{}",
                archive.display(),
                crate::text(&out.stderr),
                self.log_tail(20)
            );
        }
        if namespace != NAMESPACE {
            return Ok(());
        }
        let mut images = self.images().await;
        for _ in 0..600 {
            let st = images
                .image_status(cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: reference.to_owned(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await?
                .into_inner();
            if st.image.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("CRI does not list {reference} after importing it")
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        crate::cri::unix_channel(&self.socket).await
    }

    async fn try_runtime(&self) -> Result<Rt, tonic::transport::Error> {
        Ok(crate::cri::runtime_client(self.channel().await?))
    }

    /// A CRI runtime client on containerd's socket.
    pub async fn runtime(&self) -> Rt {
        self.try_runtime()
            .await
            .expect("connecting to containerd's socket")
    }

    /// A CRI image client on containerd's socket.
    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(
            self.channel()
                .await
                .expect("connecting to containerd's socket"),
        )
    }

    /// `ctr --address <socket> -n <namespace> ARGS…`, ready for more arguments and stdio.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.flavour.ctr());
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["-n", namespace])
            .args(args);
        cmd
    }

    /// [`Containerd::ctr`] run to its end (hang guard: 120 s), stdin empty.
    pub fn ctr_output(&self, namespace: &str, args: &[&str]) -> Output {
        crate::output_within(&mut self.ctr(namespace, args), 120)
    }

    /// `ctr run --rm --runtime io.containerd.wasmpod.v1 --snapshotter <ours> IMAGE ID ARGS…` in
    /// ctr's namespace, to its end: ctr prints the task's output and exits with its status.
    pub fn ctr_run_wasmpod(&self, image: &str, id: &str, args: &[&str]) -> Output {
        let mut all = vec![
            "run",
            "--rm",
            "--runtime",
            WASMPOD_RUNTIME,
            "--snapshotter",
            &self.snapshotter,
            image,
            id,
        ];
        all.extend_from_slice(args);
        self.ctr_output(CTR_NAMESPACE, &all)
    }

    /// The real crictl on containerd's socket, its files in `<dir>/crictl`. With a netns it
    /// runs inside it (through a wrapper script), as containerd's streaming server (exec,
    /// attach, port-forward) listens on the namespace's loopback.
    pub fn crictl(&self) -> Crictl {
        let dir = self.dir.path().join("crictl");
        fs::create_dir_all(&dir).expect("creating the crictl dir");
        let endpoint = format!("unix://{}", self.socket.display());
        // A config file of its own, so none of the machine's (/etc/crictl.yaml) applies.
        fs::write(
            dir.join("crictl.yaml"),
            format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 30\n"),
        )
        .expect("writing crictl.yaml");
        let crictl = crate::peers::crictl();
        let bin = match &self.netns {
            Some(ns) => {
                let script = dir.join("crictl-in-netns");
                fs::write(
                    &script,
                    format!(
                        "#!/bin/sh\nexec nsenter --net={} {} \"$@\"\n",
                        ns.path().display(),
                        crictl.display()
                    ),
                )
                .expect("writing the crictl wrapper");
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&script, fs::Permissions::from_mode(0o755))
                    .expect("making the crictl wrapper executable");
                script
            }
            None => crictl,
        };
        Crictl { bin, endpoint, dir }
    }

    /// A pod config as `crictl runp` reads it: logs under [`Containerd::pod_log_dir`], hostname
    /// `name`, DNS settings (server: the bridge's address), a uid of its own per call; on the
    /// pod network with CNI, else in the node's network namespace (no hostname then, as
    /// kubelet sends for host-network pods).
    pub fn pod_json(&self, name: &str) -> Value {
        static PODS: AtomicUsize = AtomicUsize::new(0);
        let n = PODS.fetch_add(1, Ordering::Relaxed);
        let logs = self.pod_log_dir(name);
        fs::create_dir_all(&logs).expect("creating the pod's log dir");
        let mut pod = json!({
            "metadata": {"name": name, "namespace": "shim", "uid": format!("uid-{name}-{n}"), "attempt": 1},
            "log_directory": logs.display().to_string(),
            "labels": {"app": name},
        });
        match &self.network {
            Some(net) => {
                pod["hostname"] = json!(name);
                pod["dns_config"] = json!({
                    "servers": [net.gateway()],
                    "searches": ["shim.svc.wasmpod.test"],
                    "options": ["ndots:2"],
                });
            }
            None => {
                pod["linux"] = json!({"security_context": {"namespace_options": {"network": 2}}});
            }
        }
        pod
    }

    /// Which containerd runs.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// CRI's snapshotter: how each container's rootfs is made from its image.
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// The sandbox image (the config's `sandbox_image`).
    pub fn pause_image(&self) -> &str {
        &self.pause
    }

    /// Prints `hello from runc` and exits 0.
    pub fn hello_image(&self) -> &str {
        &self.hello
    }

    /// Prints `tick 1`, then sleeps until SIGTERM.
    pub fn idle_image(&self) -> &str {
        &self.idle
    }

    /// The network namespace containerd runs in, with CNI.
    pub fn netns(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    /// The pods' subnet (`10.88.N.0/24`), with CNI.
    pub fn pod_cidr(&self) -> Option<String> {
        self.network.as_ref().map(PodNetwork::cidr)
    }

    /// The pods' gateway and DNS server (the bridge's address), with CNI.
    pub fn pod_gateway(&self) -> Option<String> {
        self.network.as_ref().map(PodNetwork::gateway)
    }

    /// Whether `ip` is a pod address of the subnet (not the network, gateway or broadcast).
    pub fn in_pod_subnet(&self, ip: &str) -> bool {
        let Some(net) = &self.network else {
            return false;
        };
        let Ok(ip) = ip.parse::<std::net::Ipv4Addr>() else {
            return false;
        };
        let o = ip.octets();
        o[..3] == net.prefix[..] && (2..255).contains(&o[3])
    }

    /// host-local's reservations: one file per pod address held (its `lock` and
    /// `last_reserved_ip.*` bookkeeping left out), with CNI.
    pub fn reserved_ips(&self) -> Vec<String> {
        let Some(net) = &self.network else {
            return Vec::new();
        };
        let dir = self.dir.path().join("cni/ipam").join(&net.name);
        fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The sandbox ids libcni holds a cached result for on the pod network (CNI DEL removes
    /// it), with CNI.
    pub fn cni_results(&self) -> Vec<String> {
        self.network
            .as_ref()
            .map(|net| {
                cni_results(&net.name)
                    .into_iter()
                    .map(|(_, id)| id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The wasmpod daemon's config file (`WASMPOD_CONFIG`), in the wasmpod role.
    pub fn wasmpod_config(&self) -> Option<&Path> {
        self.wasmpod.as_ref().map(|w| w.config.as_path())
    }

    /// The wasmpod daemon's CRI socket (its own, beside containerd's), in the wasmpod role.
    pub fn wasmpod_socket(&self) -> Option<&Path> {
        self.wasmpod.as_ref().map(|w| w.socket.as_path())
    }

    /// The wasmpod daemon's ttrpc task API socket (`[containerd] socket`), in the wasmpod role.
    pub fn wasmpod_ttrpc_socket(&self) -> Option<&Path> {
        self.wasmpod.as_ref().map(|w| w.ttrpc.as_path())
    }

    /// The wasmpod daemon's state directory, in the wasmpod role.
    pub fn wasmpod_state_dir(&self) -> Option<&Path> {
        self.wasmpod.as_ref().map(|w| w.state_dir.as_path())
    }

    /// The running wasmpod daemon of this instance (the shim starts it with the first task): a
    /// `wasmpod` process whose command line, or else environment, names our config.
    pub fn wasmpod_pid(&self) -> Option<u32> {
        let config = self.wasmpod_config()?.to_string_lossy().into_owned();
        let env = format!("WASMPOD_CONFIG={config}");
        processes()
            .into_iter()
            .filter(|p| {
                p.state != 'Z'
                    && p.cmdline
                        .first()
                        .is_some_and(|a| Path::new(a).file_name() == Some(OsStr::new("wasmpod")))
            })
            .find(|p| {
                p.cmdline.iter().any(|a| a.contains(&config)) || environ(p.pid).contains(&env)
            })
            .map(|p| p.pid)
    }

    /// The ids of the task bundles containerd holds in `namespace` (a dir per running or not
    /// yet deleted task: the sandbox and each container).
    pub fn bundles(&self, namespace: &str) -> Vec<String> {
        subdirs(&task_dir(self.dir.path()).join(namespace))
    }

    /// containerd's own pid.
    pub fn containerd_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// containerd plus every `containerd-shim-runc-v2` serving it: the runtime's own processes,
    /// whose RSS a benchmark sums. The shims are daemonized (reparented away from containerd),
    /// so they are found by their `-address` argument naming our socket.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.containerd_pid().into_iter().collect();
        pids.extend(shim_pids(&self.socket));
        pids
    }

    /// The processes running inside containers (pause and workloads): every live descendant
    /// of our shims.
    pub fn container_pids(&self) -> Vec<u32> {
        descendants(&shim_pids(&self.socket))
    }

    /// The directory pod logs go to: `<dir>/logs/<pod name>`.
    pub fn pod_log_dir(&self, pod: &str) -> PathBuf {
        self.dir.path().join("logs").join(pod)
    }

    /// The last `n` lines of containerd's log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// One pod through the CRI calls kubelet makes, with the request shapes wasmpod gets
    /// ([`crate::cri::pod_config`] with the host network, [`crate::cri::container_config`]),
    /// run by runc: see [`Containerd::lifecycle`].
    pub async fn pod_lifecycle(
        &self,
        rt: &mut Rt,
        pod: &str,
        image: &str,
    ) -> anyhow::Result<Lifecycle> {
        let logs = self.pod_log_dir(pod);
        fs::create_dir_all(&logs)?;
        let sandbox = host_network_pod_config(pod, &logs);
        let mut config = crate::cri::container_config("c", image, &[]);
        config.log_path = "c/0.log".into();
        self.lifecycle(rt, "", sandbox, config).await
    }

    /// One pod with one container through the CRI calls kubelet makes, on runtime `handler`
    /// ("" for the default, runc): RunPodSandbox, CreateContainer, StartContainer, then once
    /// the container's log (`log_path` under the sandbox's `log_directory`) has its first line
    /// StopContainer, RemoveContainer, StopPodSandbox and RemovePodSandbox. On failure the pod
    /// is removed before the error returns.
    pub async fn lifecycle(
        &self,
        rt: &mut Rt,
        handler: &str,
        sandbox: cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> anyhow::Result<Lifecycle> {
        let pod = sandbox.metadata.as_ref().map(|m| m.name.clone());
        let image = config.image.as_ref().map(|i| i.image.clone());
        let log_path = Path::new(&sandbox.log_directory).join(&config.log_path);
        let mut pod_id = None;
        let run = tokio::time::timeout(Duration::from_secs(60), async {
            let t0 = Instant::now();
            let id = rt
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(sandbox.clone()),
                    runtime_handler: handler.to_owned(),
                })
                .await
                .context("RunPodSandbox")?
                .into_inner()
                .pod_sandbox_id;
            pod_id = Some(id.clone());
            let container = rt
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: id.clone(),
                    config: Some(config),
                    sandbox_config: Some(sandbox.clone()),
                })
                .await
                .context("CreateContainer")?
                .into_inner()
                .container_id;
            rt.start_container(cri::StartContainerRequest {
                container_id: container.clone(),
            })
            .await
            .context("StartContainer")?;
            // The same poll as the wasmpod CRI start benchmark.
            while !fs::read(&log_path).is_ok_and(|b| b.contains(&b'\n')) {
                tokio::time::sleep(Duration::from_micros(50)).await;
            }
            let first_line = t0.elapsed();
            rt.stop_container(cri::StopContainerRequest {
                container_id: container.clone(),
                timeout: 10,
            })
            .await
            .context("StopContainer")?;
            rt.remove_container(cri::RemoveContainerRequest {
                container_id: container.clone(),
            })
            .await
            .context("RemoveContainer")?;
            remove_pod(rt, &id).await?;
            anyhow::Ok(Lifecycle {
                pod_id: id,
                container_id: container,
                first_line,
                total: t0.elapsed(),
                log: crate::read_log(&log_path),
            })
        })
        .await;
        let result = run.unwrap_or_else(|_| Err(anyhow::anyhow!("gave up after 60s")));
        if result.is_err() {
            // Leave nothing behind for the next pod (best effort: the first error is the news).
            if let Some(id) = &pod_id {
                let _ = tokio::time::timeout(Duration::from_secs(30), remove_pod(rt, id)).await;
            }
        }
        result.map_err(|e| {
            anyhow::anyhow!(
                "pod {} ({}) on containerd: {e:#}\ncontainerd log:\n{}",
                pod.unwrap_or_default(),
                image.unwrap_or_default(),
                self.log_tail(20)
            )
        })
    }
}

/// What one pod lifecycle took and logged.
#[derive(Debug)]
pub struct Lifecycle {
    pub pod_id: String,
    pub container_id: String,
    /// RunPodSandbox to the first line in the container's log file.
    pub first_line: Duration,
    /// RunPodSandbox to RemovePodSandbox done.
    pub total: Duration,
    /// The container's CRI log.
    pub log: Vec<LogRecord>,
}

/// StopPodSandbox + RemovePodSandbox.
async fn remove_pod(rt: &mut Rt, id: &str) -> anyhow::Result<()> {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .context("StopPodSandbox")?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .context("RemovePodSandbox")?;
    Ok(())
}

/// Whether CRI's `Status` reports the `NetworkReady` condition true (CNI config loaded).
async fn network_ready(rt: &mut Rt) -> bool {
    let Ok(status) = rt.status(cri::StatusRequest { verbose: false }).await else {
        return false;
    };
    status.into_inner().status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && c.status)
    })
}

/// [`crate::cri::pod_config`] in the node's network namespace, so containerd needs no CNI.
/// No hostname, as kubelet sends for host-network pods: the pod shares the node's UTS
/// namespace too, and runc refuses to set a hostname there.
pub fn host_network_pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    let mut config = crate::cri::pod_config(name, log_dir);
    config.hostname = String::new();
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// The shim binary of this build, built on first use (once per process): beside
/// [`crate::wasmpod_bin`], which it starts as the daemon.
pub fn shim_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| crate::workspace_bin(SHIM_PACKAGE, SHIM_BIN))
}

/// containerd's PATH in the wasmpod role: the dir of this build's `wasmpod` and shim first
/// (containerd looks shims up on PATH), then ours.
fn path_with_shim() -> anyhow::Result<OsString> {
    let daemon = crate::wasmpod_bin();
    let shim = shim_bin();
    let bin_dir = shim.parent().context("the shim has a dir")?;
    if daemon.parent() != Some(bin_dir) {
        bail!(
            "{} and {} are in different dirs: the shim starts the wasmpod beside it",
            shim.display(),
            daemon.display()
        );
    }
    path_with(bin_dir)
}

/// Our PATH with `dir` first.
fn path_with(dir: &Path) -> anyhow::Result<OsString> {
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    Ok(std::env::join_paths(dirs)?)
}

/// Writes the wasmpod daemon's config under `<dir>/wasmpod`.
fn write_wasmpod_config(dir: &Path, settings: &Wasmpod) -> anyhow::Result<WasmpodFiles> {
    let w = dir.join("wasmpod");
    fs::create_dir_all(&w)?;
    let files = WasmpodFiles {
        config: w.join("config.toml"),
        socket: w.join("wasmpod.sock"),
        ttrpc: w.join("containerd.sock"),
        state_dir: w.join("state"),
    };
    // Debug-formatted paths are TOML basic strings (quotes and backslashes escaped).
    fs::write(
        &files.config,
        format!(
            "socket = {:?}\nstate_dir = {:?}\n{}\n[containerd]\nsocket = {:?}\n",
            files.socket.display().to_string(),
            files.state_dir.display().to_string(),
            settings.extra_config,
            files.ttrpc.display().to_string(),
        ),
    )?;
    Ok(files)
}

/// `<dir>/cni/net.d/10-wasmpod.conflist`: a bridge `bridge` (the pods' gateway, no masquerade)
/// with host-local handing out `net`'s /24 (its reservations under `<dir>/cni/ipam`, not the
/// host's /var/lib/cni/networks) and portmap for hostPorts. Loopback is containerd's own.
fn write_cni_conflist(dir: &Path, bridge: &str, net: &PodNetwork) -> anyhow::Result<()> {
    let conf_dir = dir.join("cni/net.d");
    fs::create_dir_all(&conf_dir)?;
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": net.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": net.cidr(), "gateway": net.gateway()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.join("cni/ipam").display().to_string(),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    fs::write(
        conf_dir.join("10-wasmpod.conflist"),
        serde_json::to_string_pretty(&conflist)?,
    )?;
    Ok(())
}

/// libcni's cached results of `network`'s pods (`<network>-<sandbox id>-<ifname>`):
/// (file name, sandbox id).
fn cni_results(network: &str) -> Vec<(String, String)> {
    let prefix = format!("{network}-");
    fs::read_dir(CNI_RESULTS)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter_map(|name| {
                    let (id, _ifname) = name.strip_prefix(&prefix)?.rsplit_once('-')?;
                    let id = id.to_owned();
                    Some((name, id))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Removes libcni's cached results of `network`'s pods and of their loopback
/// (`cni-loopback-<sandbox id>-lo`): what a pod not removed before Drop leaves.
fn remove_cni_results(network: &str) {
    let dir = Path::new(CNI_RESULTS);
    for (name, id) in cni_results(network) {
        let _ = fs::remove_file(dir.join(format!("cni-loopback-{id}-lo")));
        let _ = fs::remove_file(dir.join(name));
    }
}

/// The toolbox images as OCI layout archives under `<dir>/images`: (reference, archive).
fn toolbox_archives(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut p1 = Image::toolbox();
    p1.ref_name = Some(TOOLBOX_P1.to_owned());
    let mut p2 = Image::toolbox_with(&fs::read(crate::wasm("toolbox.p2"))?);
    p2.files.insert(
        "bin/netprobe".to_owned(),
        Entry::File {
            bytes: fs::read(crate::wasm("netprobe.p2"))?,
            mode: 0o755,
        },
    );
    p2.ref_name = Some(TOOLBOX_P2.to_owned());
    let images = dir.join("images");
    [("p1", p1), ("p2", p2)]
        .into_iter()
        .map(|(tag, image)| {
            let layout = image.write_layout(&images.join(tag));
            let archive = crate::images::layout_tar(&layout, &images.join(format!("{tag}.tar")));
            Ok((image.ref_name.unwrap_or_default(), archive))
        })
        .collect()
}

/// The config: everything under `dir`; the CRI plugin with `snapshotter`, runc through the v2
/// shim with cgroupfs and its state under `dir` (the default runtime), our pause image; with
/// `wasmpod` the `wasmpod` runtime handler; with `cni` the conflist's dir, the plugins of
/// [`CNI_BIN_DIR`] and pod netns files under the state dir, else CNI dirs that hold nothing
/// (host-network pods only). The settings are the same for both flavours; only where they
/// live differs: 1.6 keeps them all in `io.containerd.grpc.v1.cri` (version 2), 2.x splits
/// the runtime side (`io.containerd.cri.v1.runtime`) from the images side
/// (`io.containerd.cri.v1.images`: snapshotter, pinned sandbox image) in version 3.
fn config_toml(
    flavour: Flavour,
    dir: &Path,
    snapshotter: &str,
    wasmpod: bool,
    cni: bool,
) -> String {
    let d = dir.display();
    let pause = reference("pause");
    let (bin_dir, conf_dir) = if cni {
        (CNI_BIN_DIR.to_owned(), format!("{d}/cni/net.d"))
    } else {
        (format!("{d}/cni/bin"), format!("{d}/cni/conf"))
    };
    // (config version, the runtime table, the images tables, its keys in the runtime table,
    // its keys in the runtime's `containerd` table, the CNI plugin dir key).
    let (version, rt, images, rt_images, containerd_images, bin_dirs) = match flavour {
        Flavour::Debian16 => (
            2,
            r#"plugins."io.containerd.grpc.v1.cri""#,
            String::new(),
            format!("  sandbox_image = \"{pause}\"\n"),
            format!("    snapshotter = \"{snapshotter}\"\n"),
            format!("bin_dir = \"{bin_dir}\""),
        ),
        Flavour::V2 => (
            3,
            r#"plugins."io.containerd.cri.v1.runtime""#,
            format!(
                r#"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "{snapshotter}"

  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause}"
"#
            ),
            String::new(),
            String::new(),
            format!("bin_dirs = [\"{bin_dir}\"]"),
        ),
    };
    let wasmpod_runtime = if wasmpod {
        format!(
            r#"
    [{rt}.containerd.runtimes.{WASMPOD_HANDLER}]
      runtime_type = "{WASMPOD_RUNTIME}"
"#
        )
    } else {
        String::new()
    };
    format!(
        r#"version = {version}
root = "{d}/root"
state = "{d}/state"
disabled_plugins = []

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
{images}
[{rt}]
{rt_images}  disable_apparmor = true
  enable_selinux = false
  # This sandbox drops CAP_SYS_RESOURCE, so runc cannot lower oom_score_adj (the sandbox's
  # -998): keep every score at or above containerd's own, as rootless setups do.
  restrict_oom_score_adj = true
  # Pod netns files under the state dir, not the host's /var/run/netns.
  netns_mounts_under_state_dir = true

  [{rt}.containerd]
{containerd_images}    default_runtime_name = "runc"

    [{rt}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [{rt}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
{wasmpod_runtime}
  [{rt}.cni]
    {bin_dirs}
    conf_dir = "{conf_dir}"
    max_conf_num = 1
"#
    )
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let dir = self.dir.path().to_path_buf();
        let shims = shim_pids(&self.socket);
        let in_containers = descendants(&shims);
        // Shim sockets live in /run/containerd/s whatever the config says; note them before
        // the shims die so a killed shim's socket can be removed.
        let shim_sockets = shim_sockets(&dir);
        let daemon = self.wasmpod_pid();
        // containerd first, so it reacts to none of what follows.
        self.kill9();
        // runc kills what is left in each container and removes its cgroups.
        let runc_root = dir.join("runc").join(NAMESPACE);
        for id in subdirs(&runc_root) {
            let mut cmd = Command::new("runc");
            cmd.arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force"])
                .arg(&id);
            let _ = output_within_quiet(&mut cmd, 10);
        }
        // Then whatever else serves this instance: the wasmpod daemon (its command line names
        // its config under the dir) and any shim of another runtime (they name our socket).
        let others: Vec<u32> = processes_under(&dir)
            .into_iter()
            .map(|(pid, _)| pid)
            .chain(daemon)
            .collect();
        let all: Vec<u32> = shims
            .iter()
            .chain(&in_containers)
            .chain(&others)
            .copied()
            .collect();
        for pid in &all {
            // SAFETY: kill has no memory-safety preconditions; these pids serve our instance.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        // Not our children: wait (bounded) until they are gone or zombies.
        for _ in 0..100 {
            if all.iter().all(|p| !alive(*p)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        unmount_under(&dir);
        for socket in shim_sockets {
            let _ = fs::remove_file(socket);
        }
        if let Some(net) = &self.network {
            remove_cni_results(&net.name);
        }
        // With no process and no netns file left in it, the namespace (and the bridge) goes.
        drop(self.netns.take());
        // Children before parents.
        for (path, existed) in &self.outside {
            if !existed {
                let _ = fs::remove_dir(path);
            }
        }
    }
}

/// The `containerd-shim-runc-v2` daemons serving the containerd on `socket`.
pub fn shim_pids(socket: &Path) -> Vec<u32> {
    let socket = socket.to_string_lossy();
    processes()
        .into_iter()
        .filter(|p| {
            p.state != 'Z'
                && p.cmdline
                    .first()
                    .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                && p.cmdline
                    .windows(2)
                    .any(|w| w[0] == "-address" && w[1] == socket)
        })
        .map(|p| p.pid)
        .collect()
}

/// Every live process whose command line names a path under `dir` (containerd's config, the
/// shims' socket, runc's root): what must be gone once a [`Containerd`] is dropped.
pub fn processes_under(dir: &Path) -> Vec<(u32, String)> {
    let dir = dir.to_string_lossy();
    processes()
        .into_iter()
        .filter(|p| p.state != 'Z' && p.cmdline.iter().any(|a| a.contains(&*dir)))
        .map(|p| (p.pid, p.cmdline.join(" ")))
        .collect()
}

/// Mount points under `dir` in this mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Lazily unmounts everything under `dir`, deepest first (rootfs binds, sandbox shm).
fn unmount_under(dir: &Path) {
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for m in mounts {
        let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: c is a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// containerd's runtime v2 task dir: `<namespace>/<id>` bundles.
fn task_dir(dir: &Path) -> PathBuf {
    dir.join("state").join("io.containerd.runtime.v2.task")
}

/// The socket files of the shims of `dir`'s containerd, in every namespace (each task dir
/// has an `address` file, `unix:///run/containerd/s/<hash>`).
fn shim_sockets(dir: &Path) -> Vec<PathBuf> {
    let tasks = task_dir(dir);
    subdirs(&tasks)
        .into_iter()
        .flat_map(|ns| {
            let ns = tasks.join(ns);
            subdirs(&ns)
                .into_iter()
                .map(move |id| ns.join(id).join("address"))
        })
        .filter_map(|a| fs::read_to_string(a).ok())
        .filter_map(|a| a.trim().strip_prefix("unix://").map(PathBuf::from))
        .collect()
}

/// The names of the directories in `dir` (none if it is missing).
fn subdirs(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroup v1 hierarchies (and the v2 one) mounted under /sys/fs/cgroup.
fn cgroup_roots() -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .collect()
}

struct Proc {
    pid: u32,
    ppid: u32,
    state: char,
    cmdline: Vec<String>,
}

/// A snapshot of /proc.
fn processes() -> Vec<Proc> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after = &stat[stat.rfind(')')? + 2..];
            let mut fields = after.split(' ');
            let state = fields.next()?.chars().next()?;
            let ppid = fields.next()?.parse().ok()?;
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some(Proc {
                pid,
                ppid,
                state,
                cmdline,
            })
        })
        .collect()
}

/// Every live descendant of `roots`.
fn descendants(roots: &[u32]) -> Vec<u32> {
    let procs = processes();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in procs.iter().filter(|p| p.state != 'Z') {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut seen = HashSet::new();
    let mut stack = roots.to_vec();
    let mut out = Vec::new();
    while let Some(pid) = stack.pop() {
        for &c in children.get(&pid).into_iter().flatten() {
            if seen.insert(c) {
                out.push(c);
                stack.push(c);
            }
        }
    }
    out
}

/// The environment of process `pid` (`NAME=value` entries; none if unreadable).
fn environ(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect()
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 2..];
            after.chars().next()
        })
        .is_some_and(|state| state != 'Z')
}

/// `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Like [`crate::output_within`] but for Drop: never panics.
fn output_within_quiet(cmd: &mut Command, secs: u64) -> Option<std::process::Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => out.ok(),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; pid is our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            None
        }
    }
}

/// The OCI archives of [`PROGRAMS`], built once per process and cached across runs under
/// `<target>/containerd-peer/`.
fn archives() -> anyhow::Result<&'static [(&'static str, PathBuf)]> {
    static ARCHIVES: OnceLock<Result<Vec<(&'static str, PathBuf)>, String>> = OnceLock::new();
    ARCHIVES
        .get_or_init(|| {
            let cache = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::workspace_root().join("target"))
                .join("containerd-peer");
            PROGRAMS
                .iter()
                .map(|(name, source)| Ok((*name, image_archive(&cache, name, source)?)))
                .collect::<anyhow::Result<Vec<_>>>()
                .map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map(Vec::as_slice)
        .map_err(|e| anyhow::anyhow!("building the containerd peer images: {e}"))
}

/// `<cache>/<name>.tar`: an OCI image layout archive holding one layer with the static binary
/// `/<name>` compiled from `source`, its entrypoint. Rebuilt when the stamp (source and
/// reference) differs; written under temp names and renamed, so concurrent runs are safe.
fn image_archive(cache: &Path, name: &str, source: &str) -> anyhow::Result<PathBuf> {
    let archive = cache.join(format!("{name}.tar"));
    let stamp_path = cache.join(format!("{name}.stamp"));
    let reference = reference(name);
    let stamp = format!("{reference}\n{source}");
    if archive.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(archive);
    }
    fs::create_dir_all(cache)?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(cache)?;
    let w = work.path();
    let rootfs = w.join("rootfs");
    let blobs = w.join("oci/blobs/sha256");
    fs::create_dir_all(&rootfs)?;
    fs::create_dir_all(&blobs)?;
    fs::write(w.join(format!("{name}.c")), source)?;
    run(Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(rootfs.join(name))
        .arg(w.join(format!("{name}.c"))))
    .context("compiling a static binary (needs gcc and libc6-dev's libc.a)")?;
    let layer = w.join("layer.tar");
    tar(&layer, &rootfs, &[name])?;
    let (layer_digest, layer_size) = blob(&layer, &blobs)?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{{"Entrypoint":["/{name}"]}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    fs::write(w.join("config.json"), config)?;
    let (config_digest, config_size) = blob(&w.join("config.json"), &blobs)?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{layer_size}}}]}}"#
    );
    fs::write(w.join("manifest.json"), manifest)?;
    let (manifest_digest, manifest_size) = blob(&w.join("manifest.json"), &blobs)?;
    // `io.containerd.image.name` is the name `ctr images import` gives the image.
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"io.containerd.image.name":"{reference}","org.opencontainers.image.ref.name":"1"}}}}]}}"#
    );
    fs::write(w.join("oci/index.json"), index)?;
    fs::write(
        w.join("oci/oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let tmp = w.join("image.tar");
    tar(&tmp, &w.join("oci"), &["oci-layout", "index.json", "blobs"])?;
    fs::rename(&tmp, &archive)?;
    fs::write(&stamp_path, stamp)?;
    Ok(archive)
}

/// A reproducible tar of `entries` of `dir`.
fn tar(out: &Path, dir: &Path, entries: &[&str]) -> anyhow::Result<()> {
    run(Command::new("tar")
        .args([
            "--create",
            "--sort=name",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--mtime=@0",
            "--file",
        ])
        .arg(out)
        .arg("-C")
        .arg(dir)
        .args(entries))
}

/// Copies `file` into the `blobs` dir under its digest; returns (`sha256:<hex>`, size).
fn blob(file: &Path, blobs: &Path) -> anyhow::Result<(String, u64)> {
    let out = crate::output_within(Command::new("sha256sum").arg(file), 60);
    if !out.status.success() {
        bail!("sha256sum: {}", crate::text(&out.stderr));
    }
    let text = crate::text(&out.stdout);
    let hex = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    if hex.len() != 64 {
        bail!("sha256sum printed {text:?}");
    }
    fs::copy(file, blobs.join(&hex))?;
    Ok((format!("sha256:{hex}"), fs::metadata(file)?.len()))
}

/// Runs `cmd` (bounded: 120 s), failing with its stderr.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = crate::output_within(cmd, 120);
    if !out.status.success() {
        bail!("{cmd:?}: {}", crate::text(&out.stderr));
    }
    Ok(())
}
