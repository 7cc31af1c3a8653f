//! The peer runtime for benchmarks: Debian's containerd (its CRI plugin) with runc, started on a
//! temp root and socket and driven by the same CRI client as `wasmpod serve`.
//!
//! Nothing is pulled: the sandbox (pause), `hello` and `idle` images are static native binaries
//! compiled here with gcc, packed as OCI archives by hand and imported with `ctr`. All pods use
//! the host network, so no CNI is needed.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::cri::Rt;
use crate::LogRecord;

/// The CRI namespace of containerd.
const NAMESPACE: &str = "k8s.io";

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

/// containerd with its CRI plugin on a socket in a temp dir, its own root and state, stopped by
/// PID (with its shims and any container left) when dropped.
pub struct Containerd {
    pub dir: TempDir,
    /// The gRPC (CRI) socket.
    pub socket: PathBuf,
    child: Option<Child>,
    /// Host paths this instance may create outside its dir, with whether each existed before,
    /// so Drop removes (when empty) only what it made.
    outside: Vec<(PathBuf, bool)>,
    snapshotter: String,
    pause: String,
    hello: String,
    idle: String,
}

impl Containerd {
    /// Starts containerd with the native snapshotter and imports the peer images; panics with
    /// containerd's log on failure.
    pub async fn start() -> Self {
        Self::start_with(NATIVE).await
    }

    /// [`Containerd::start`] with CRI's `snapshotter` ([`NATIVE`] or [`OVERLAYFS`]).
    pub async fn start_with(snapshotter: &str) -> Self {
        match Self::try_start_with(snapshotter).await {
            Ok(c) => c,
            Err(e) => panic!("starting containerd: {e:#}"),
        }
    }

    /// [`Containerd::start`], returning why it cannot run instead of panicking.
    pub async fn try_start() -> anyhow::Result<Self> {
        Self::try_start_with(NATIVE).await
    }

    /// Starts containerd, waits until its CRI socket answers `Version` and the peer images are
    /// imported (unpacked for `snapshotter`) and visible to CRI.
    pub async fn try_start_with(snapshotter: &str) -> anyhow::Result<Self> {
        for tool in ["containerd", "containerd-shim-runc-v2", "runc", "ctr"] {
            if which(tool).is_none() {
                bail!("`{tool}` is not installed (apt-get install containerd runc)");
            }
        }
        let archives = archives()?;
        let dir = tempfile::Builder::new().prefix("ctrd").tempdir()?;
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        fs::write(&config, config_toml(dir.path(), snapshotter))?;
        let log = fs::File::create(dir.path().join("containerd.log"))?;
        // containerd and its shims put these on the host whatever the config says (shim
        // sockets, client fifos); runc with cgroupfs makes the `k8s.io` cgroup parents.
        let outside: Vec<(PathBuf, bool)> = ["/run/containerd/s", "/run/containerd/fifo"]
            .iter()
            .map(PathBuf::from)
            .chain(["/run/containerd".into()])
            .chain(cgroup_roots().into_iter().map(|r| r.join(NAMESPACE)))
            .map(|p| {
                let existed = p.exists();
                (p, existed)
            })
            .collect();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning containerd")?;
        let mut c = Containerd {
            dir,
            socket,
            child: Some(child),
            outside,
            snapshotter: snapshotter.to_owned(),
            pause: reference("pause"),
            hello: reference("hello"),
            idle: reference("idle"),
        };
        c.wait_ready().await?;
        for (name, archive) in archives {
            c.import(name, archive).await?;
        }
        Ok(c)
    }

    /// Polls `Version` (bounded: 30 s), failing early if containerd exits.
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
                if let Ok(v) = rt.version(cri::VersionRequest::default()).await {
                    let v = v.into_inner();
                    if v.runtime_name == "containerd" {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer CRI Version on {} within 30s:\n{}",
                    self.socket.display(),
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `ctr images import` into the CRI namespace, unpacked for the CRI snapshotter, then waits
    /// until CRI's image store has it (it learns of imports through events).
    async fn import(&self, name: &str, archive: &Path) -> anyhow::Result<()> {
        let out = crate::output_within(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["-n", NAMESPACE, "images", "import", "--snapshotter"])
                .arg(&self.snapshotter)
                .arg(archive),
            120,
        );
        if !out.status.success() {
            bail!(
                "ctr images import {}: {}\n{}",
                archive.display(),
                crate::text(&out.stderr),
                self.log_tail(20)
            );
        }
        let reference = reference(name);
        let mut images = self.images().await;
        for _ in 0..600 {
            let st = images
                .image_status(cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: reference.clone(),
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
    /// ([`crate::cri::pod_config`] with the host network, [`crate::cri::container_config`]):
    /// RunPodSandbox, CreateContainer (`image`, logging to `c/0.log`), StartContainer, then
    /// once the log has its first line StopContainer, RemoveContainer, StopPodSandbox and
    /// RemovePodSandbox. On failure the pod is removed before the error returns.
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
        let log_path = logs.join(&config.log_path);
        let mut pod_id = None;
        let run = tokio::time::timeout(Duration::from_secs(60), async {
            let t0 = Instant::now();
            let id = rt
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(sandbox.clone()),
                    ..Default::default()
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
                "pod {pod} ({image}) on containerd: {e:#}\ncontainerd log:\n{}",
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

/// The config: everything under `dir`; the CRI plugin with `snapshotter`, runc through the v2
/// shim with cgroupfs and its state under `dir`, our pause image, and CNI dirs that hold
/// nothing (host-network pods only).
fn config_toml(dir: &Path, snapshotter: &str) -> String {
    let d = dir.display();
    let pause = reference("pause");
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = []

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  enable_selinux = false
  # This sandbox drops CAP_SYS_RESOURCE, so runc cannot lower oom_score_adj (the sandbox's
  # -998): keep every score at or above containerd's own, as rootless setups do.
  restrict_oom_score_adj = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
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
        // containerd first, so it reacts to none of what follows.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
        for pid in shims.iter().chain(&in_containers) {
            // SAFETY: kill has no memory-safety preconditions; these pids serve our socket.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        // The shims are not our children: wait (bounded) until they are gone or zombies.
        for _ in 0..100 {
            if shims.iter().chain(&in_containers).all(|p| !alive(*p)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        unmount_under(&dir);
        for socket in shim_sockets {
            let _ = fs::remove_file(socket);
        }
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

/// The socket files of the shims of `dir`'s containerd (each task dir has an `address` file,
/// `unix:///run/containerd/s/<hash>`).
fn shim_sockets(dir: &Path) -> Vec<PathBuf> {
    let tasks = dir
        .join("state")
        .join("io.containerd.runtime.v2.task")
        .join(NAMESPACE);
    subdirs(&tasks)
        .into_iter()
        .filter_map(|id| fs::read_to_string(tasks.join(id).join("address")).ok())
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
