//! A standalone kubelet (no API server) on the real `wasmpod serve`: the real kubelet built by
//! `scripts/peers`, configured only on loopback in a temp dir, running static pods from a
//! manifest directory the test writes. The test sees the pods through the daemon's CRI and
//! through kubelet's own HTTPS API (`/pods`, `/run`, `/containerLogs`, `/stats/summary`, the
//! streaming endpoints), as an API server would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_cri::v1 as cri;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard};

use crate::cri::{Daemon, Rt};
use crate::{curl_opts, free_port, output_within, peers, wasm, wasmpod};

/// The images every kubelet test imports into its daemon (kubelet refuses `file://`
/// references): the toolbox (p1 has the shell, p2 adds sockets for httpd) and netprobe.
pub const IMAGES: [(&str, &str); 3] = [
    ("toolbox.p1", "wasmpod.local/toolbox:p1"),
    ("toolbox.p2", "wasmpod.local/toolbox:p2"),
    ("netprobe.p2", "wasmpod.local/netprobe:p2"),
];

/// The node name kubelet registers as (`--hostname-override`); static pods are named
/// `<manifest name>-<node>`.
pub const NODE: &str = "wasmpod-node";

/// The node name of a kubelet registered with an API server: kubelet refuses a loopback
/// `--node-ip`, so the API server reaches it by this name (`Hostname` address type), which
/// resolves to loopback, where kubelet listens.
pub const CLUSTER_NODE: &str = "localhost";

/// How long any one wait here may last before the test fails: far above what a healthy run
/// needs, so only a hang trips it (kubelet's container GC runs once a minute).
pub const WAIT_SECS: u64 = 240;

/// kubelet's `maxPods` (default 110): room for the scale benchmark's 1,000 pods. Its API
/// client's rate (`kubeAPIQPS` 100, burst 200; defaults 50 and 100) is raised with it, so
/// status updates of that many pods do not queue behind the default limit.
pub const MAX_PODS: usize = 1100;

/// One kubelet at a time per test process: a kubelet and its daemon are heavy for a small
/// shared machine, and parallel ones would only make every wait longer.
/// (A tokio lock: it is held across awaits, and each test has a runtime of its own.)
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// A `wasmpod serve` daemon with a standalone kubelet on it (or a kubelet on another
/// runtime's CRI socket); both killed when dropped.
pub struct Kubelet {
    /// Dropped first (fields drop in order): kubelet must not outlive its runtime's socket.
    child: Option<Child>,
    /// None when kubelet runs on another runtime ([`Registration::endpoint`]).
    daemon: Option<Daemon>,
    /// The CRI socket kubelet runs on.
    endpoint: PathBuf,
    pub dir: TempDir,
    /// Where static pod manifests go.
    pub manifests: PathBuf,
    /// kubelet's stderr (its log, `-v=2`).
    pub log: PathBuf,
    /// `https://<address>:<port>`: kubelet's API (on loopback, or on its node's IP).
    pub api: String,
    /// `http://127.0.0.1:<port>/healthz`.
    pub healthz: String,
    /// The network namespace file kubelet runs in, when not the host's: its API and
    /// `/healthz` are only reachable from there.
    netns: Option<PathBuf>,
    /// None for a cluster's node: the cluster holds a turn of its own.
    _turn: Option<MutexGuard<'static, ()>>,
}

/// A kubelet registered with an API server, as a node of a cluster (`src/cluster.rs`).
pub struct Registration<'a> {
    /// Every component's kubeconfig (the admin's token).
    pub kubeconfig: &'a Path,
    /// The node's name (`--hostname-override`).
    pub name: &'a str,
    /// None: kubelet and its daemon on the host's network, kubelet on loopback.
    pub net: Option<NodeNet<'a>>,
    /// The CRI socket of a runtime the caller runs (containerd with the wasmpod shim);
    /// None starts a `wasmpod serve` of the kubelet's own.
    pub endpoint: Option<&'a Path>,
}

/// A node's own network: kubelet and its daemon run in network namespace `netns`.
pub struct NodeNet<'a> {
    /// The namespace's name (`/run/netns/<name>`).
    pub netns: &'a str,
    /// The node's address there: kubelet's `--node-ip` and where it listens, so the API
    /// server reaches it by `InternalIP`.
    pub ip: &'a str,
    /// kubelet's `podCIDR`, which it hands the daemon (UpdateRuntimeConfig): the daemon runs
    /// in node mode, so pod IPs come from it.
    pub pod_cidr: &'a str,
}

/// Polls `probe` once a second until it answers `Some` (bounded by [`WAIT_SECS`]); `what`
/// names the wait and `last` what was last seen, for the failure message.
pub async fn poll<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    for _ in 0..WAIT_SECS {
        match probe().await {
            Ok(v) => return v,
            Err(seen) => last = seen,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("gave up after {WAIT_SECS}s waiting for {what}; last seen: {last}");
}

impl Kubelet {
    /// Starts a daemon (its own containerd socket off, so daemons of other tests do not
    /// collide), imports [`IMAGES`], then kubelet on free loopback ports; returns once
    /// kubelet's `/healthz` answers ok.
    pub async fn start() -> Self {
        let turn = ONE_AT_A_TIME.lock().await;
        Self::launch(None, Some(turn)).await
    }

    /// [`Kubelet::start`], registered with the API server as `node` says, so it also runs
    /// the pods the API server binds to it.
    pub async fn register(node: Registration<'_>) -> Self {
        Self::launch(Some(node), None).await
    }

    async fn launch(node: Option<Registration<'_>>, turn: Option<MutexGuard<'static, ()>>) -> Self {
        let net = node.as_ref().and_then(|n| n.net.as_ref());
        let (daemon, endpoint) = match node.as_ref().and_then(|n| n.endpoint) {
            Some(endpoint) => (None, endpoint.to_owned()),
            None => {
                let daemon = Self::own_daemon(net).await;
                let socket = daemon.socket.clone();
                (Some(daemon), socket)
            }
        };
        let dir = tempfile::tempdir().expect("creating the kubelet's directory");
        let manifests = dir.path().join("manifests");
        let pod_logs = dir.path().join("pod-logs");
        for d in [&manifests, &pod_logs] {
            std::fs::create_dir_all(d).unwrap();
        }
        let (port, healthz_port) = (free_port(), free_port());
        let address = net.map_or("127.0.0.1", |n| n.ip);
        // A node of its own: its pod CIDR, and a lease renewed every 2.5 s (a quarter of its
        // duration) and status every 2 s, so the controller manager's short node-monitor
        // grace period (`src/cluster.rs`) never takes a live node for a dead one.
        let node_lines = net.map_or(String::new(), |n| {
            format!(
                "podCIDR: {}\nnodeLeaseDurationSeconds: 10\nnodeStatusUpdateFrequency: 2s\n",
                n.pod_cidr
            )
        });
        let config = dir.path().join("kubelet.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1\n\
                 kind: KubeletConfiguration\n\
                 address: {address}\n\
                 port: {port}\n\
                 readOnlyPort: 0\n\
                 healthzBindAddress: 127.0.0.1\n\
                 healthzPort: {healthz_port}\n\
                 authentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}}}\n\
                 authorization: {{mode: AlwaysAllow}}\n\
                 staticPodPath: {manifests}\n\
                 fileCheckFrequency: 1s\n\
                 syncFrequency: 5s\n\
                 cgroupDriver: cgroupfs\n\
                 cgroupsPerQOS: false\n\
                 enforceNodeAllocatable: []\n\
                 failSwapOn: false\n\
                 failCgroupV1: false\n\
                 containerRuntimeEndpoint: unix://{socket}\n\
                 podLogsDir: {pod_logs}\n\
                 evictionHard: {{}}\n\
                 localStorageCapacityIsolation: false\n\
                 resolvConf: \"\"\n\
                 imageGCHighThresholdPercent: 100\n\
                 imageGCLowThresholdPercent: 99\n\
                 maxPods: {MAX_PODS}\n\
                 kubeAPIQPS: 100\n\
                 kubeAPIBurst: 200\n{node_lines}",
                manifests = manifests.display(),
                socket = endpoint.display(),
                pod_logs = pod_logs.display(),
            ),
        )
        .unwrap();
        let log = dir.path().join("kubelet.log");
        let netns = net.map(|n| Path::new("/run/netns").join(n.netns));
        let mut cmd = match &netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg(peers::kubelet());
                c
            }
            None => Command::new(peers::kubelet()),
        };
        match &node {
            Some(n) => cmd
                .arg("--kubeconfig")
                .arg(n.kubeconfig)
                .args(["--hostname-override", n.name]),
            None => cmd.args(["--hostname-override", NODE]),
        };
        if let Some(n) = net {
            cmd.arg(format!("--node-ip={}", n.ip));
        }
        let child = cmd
            .arg("--config")
            .arg(&config)
            .arg("--root-dir")
            .arg(dir.path().join("root"))
            .arg("--cert-dir")
            .arg(dir.path().join("certs"))
            .arg("-v=2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting kubelet");
        let k = Kubelet {
            child: Some(child),
            daemon,
            endpoint,
            dir,
            manifests,
            log,
            api: format!("https://{address}:{port}"),
            healthz: format!("http://127.0.0.1:{healthz_port}/healthz"),
            netns,
            _turn: turn,
        };
        k.wait_healthy().await;
        k
    }

    /// A daemon for this kubelet alone (its containerd socket off, so daemons of other tests
    /// do not collide; in node mode on a namespaced node), with [`IMAGES`] imported.
    async fn own_daemon(net: Option<&NodeNet<'_>>) -> Daemon {
        let mut config = "[containerd]\nsocket = \"\"\n".to_owned();
        if net.is_some() {
            // Pod IPs from kubelet's pod CIDR, local on a dummy interface in the namespace.
            config.push_str("[network]\nmode = \"node\"\ninterface = \"wasmpod0\"\n");
        }
        let daemon = Daemon::start_with(&config, net.map(|n| n.netns)).await;
        let state = daemon.dir.path().join("state");
        for (file, tag) in IMAGES {
            let out = output_within(
                wasmpod(&state)
                    .args(["image", "import"])
                    .arg(wasm(file))
                    .args(["--tag", tag]),
                120,
            );
            assert!(out.status.success(), "importing {file}: {out:?}");
        }
        daemon
    }

    /// The process id of the kubelet's own `wasmpod serve`, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(Daemon::pid)
    }

    /// kubelet's process id (nsenter execs kubelet, so it is kubelet's in a namespace too).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The kubelet's own `wasmpod serve`; the test fails if kubelet runs on another runtime.
    pub fn daemon(&mut self) -> &mut Daemon {
        self.daemon
            .as_mut()
            .expect("this kubelet runs on another runtime's CRI socket")
    }

    /// Waits until kubelet's `/healthz` answers `ok`.
    pub async fn wait_healthy(&self) {
        poll("kubelet's /healthz to answer ok", || async move {
            match crate::curl_in(self.netns.as_deref(), &self.healthz).await {
                (200, body) if body == "ok" => Ok(()),
                other => Err(format!("{other:?}\n{}", self.log_tail())),
            }
        })
        .await
    }

    /// The last lines of kubelet's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log_text();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Writes static pod manifest `<name>.yaml`; the pod is then `<name>-<NODE>`.
    pub fn add_pod(&self, name: &str, yaml: &str) -> String {
        crate::manifest_file(&self.manifests, &format!("{name}.yaml"), yaml);
        format!("{name}-{NODE}")
    }

    pub fn remove_pod(&self, name: &str) {
        std::fs::remove_file(self.manifests.join(format!("{name}.yaml")))
            .expect("removing the manifest");
    }

    /// kubelet's API at `path` (`-k`: its certificate is self-signed) with curl `opts`:
    /// (HTTP status, body).
    pub async fn get(&self, opts: &[&str], path: &str) -> (u16, String) {
        let mut all = vec!["-k"];
        all.extend_from_slice(opts);
        curl_opts(self.netns.as_deref(), &all, &format!("{}{path}", self.api)).await
    }

    /// A JSON document of kubelet's API (`/pods`, `/stats/summary`), or what it answered.
    pub async fn json(&self, path: &str) -> Result<Value, String> {
        match self.get(&[], path).await {
            (200, body) => serde_json::from_str(&body).map_err(|e| format!("{e}: {body}")),
            other => Err(format!("{path}: {other:?}")),
        }
    }

    /// The static pod `pod` (full name) as kubelet's `/pods` shows it, with its status.
    pub async fn pod(&self, pod: &str) -> Result<Value, String> {
        let pods = self.json("/pods").await?;
        pods["items"]
            .as_array()
            .and_then(|items| items.iter().find(|p| p["metadata"]["name"] == pod))
            .cloned()
            .ok_or_else(|| format!("{pod} not in /pods: {pods}"))
    }

    /// Container `name`'s status in `/pods`, once kubelet reports it.
    pub async fn container_status(&self, pod: &str, name: &str) -> Result<Value, String> {
        let p = self.pod(pod).await?;
        p["status"]["containerStatuses"]
            .as_array()
            .and_then(|s| s.iter().find(|c| c["name"] == name))
            .cloned()
            .ok_or_else(|| format!("no status of {name} yet: {}", p["status"]))
    }

    /// `POST /run/default/<pod>/<container>?cmd=...` (ExecSync through kubelet; kubelet
    /// splits `cmd` at spaces): (HTTP status, output).
    pub async fn run(&self, pod: &str, container: &str, cmd: &str) -> (u16, String) {
        let query = cmd.split(' ').map(encode).collect::<Vec<_>>().join("%20");
        self.get(
            &["-X", "POST"],
            &format!("/run/default/{pod}/{container}?cmd={query}"),
        )
        .await
    }

    /// A CRI runtime client on kubelet's runtime.
    pub async fn cri(&self) -> Rt {
        crate::cri::runtime_client(
            crate::cri::unix_channel(&self.endpoint)
                .await
                .expect("connecting to kubelet's CRI socket"),
        )
    }

    /// The containers of `pod` named `name` in the daemon, any state, newest attempt first.
    pub async fn containers(&self, pod: &str, name: &str) -> Vec<cri::Container> {
        let mut all = self
            .cri()
            .await
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    label_selector: HashMap::from([
                        ("io.kubernetes.pod.name".into(), pod.into()),
                        ("io.kubernetes.container.name".into(), name.into()),
                    ]),
                    ..Default::default()
                }),
            })
            .await
            .expect("ListContainers")
            .into_inner()
            .containers;
        all.sort_by_key(|c| std::cmp::Reverse(c.metadata.as_ref().map_or(0, |m| m.attempt)));
        all
    }

    /// Waits until container `name` of `pod` runs in the daemon; that container.
    pub async fn wait_running(&self, pod: &str, name: &str) -> cri::Container {
        poll(&format!("{name} of {pod} to run"), || async move {
            let all = self.containers(pod, name).await;
            all.iter()
                .find(|c| c.state == cri::ContainerState::ContainerRunning as i32)
                .cloned()
                .ok_or_else(|| format!("{all:?}\n{}", self.log_tail()))
        })
        .await
    }

    /// The sandboxes of `pod` in the daemon, any state.
    pub async fn sandboxes(&self, pod: &str) -> Vec<cri::PodSandbox> {
        self.sandboxes_labelled("io.kubernetes.pod.name", pod).await
    }

    /// The sandboxes in the daemon labelled `key=value` (kubelet passes the pod's labels
    /// on), any state.
    pub async fn sandboxes_labelled(&self, key: &str, value: &str) -> Vec<cri::PodSandbox> {
        self.cri()
            .await
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    label_selector: HashMap::from([(key.into(), value.into())]),
                    ..Default::default()
                }),
            })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items
    }

    /// The IP the daemon reports for `pod`'s ready sandbox (PodSandboxStatus).
    pub async fn pod_ip(&self, pod: &str) -> String {
        let sandbox = self
            .sandboxes(pod)
            .await
            .into_iter()
            .find(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
            .unwrap_or_else(|| panic!("{pod} has no ready sandbox"));
        let status = self
            .cri()
            .await
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.id,
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner()
            .status
            .expect("a status");
        status.network.map(|n| n.ip).unwrap_or_default()
    }
}

pub use crate::url_encode as encode;

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // When the test failed, kubelet's log is the first thing to read.
        if std::thread::panicking() {
            eprintln!("--- kubelet log (tail) ---\n{}", self.log_tail());
        }
    }
}

pub use crate::kube_stream::run as kube_stream;
