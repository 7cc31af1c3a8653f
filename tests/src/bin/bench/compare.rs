//! wasmpod and containerd + runc side by side, driven by the same CRI client in the same run:
//! pod start latency (interleaved A B A B…, so drift hits both alike), full lifecycle
//! throughput with concurrent clients, and density (RSS, start latency and List latency as
//! idle pods accumulate). The same figures compare containerd's two runtimes for wasmpod's
//! RuntimeClass: its shim (handler `wasmpod`) against runc.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use k8s_cri::v1 as cri;
use wasmpod_tests::containerd::{
    host_network_pod_config, processes_under, Containerd, TOOLBOX_P1, WASMPOD_HANDLER,
};
use wasmpod_tests::cri::{container_config, pod_config, Daemon, Rt};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A CRI runtime under test, with the images it runs.
pub enum Peer {
    Wasmpod {
        daemon: Daemon,
        /// The loopback port of its /metrics.
        metrics: u16,
        hello: String,
        idle: String,
        /// The toolbox as a single-binary image: what exec runs `echo` from.
        toolbox: String,
    },
    /// containerd running pods with runc: on the node's network, or on CNI pod networks when
    /// the instance has them.
    Containerd(Containerd),
    /// containerd running pods through wasmpod's shim (handler `wasmpod`), the toolbox image's
    /// programs as workloads. Its instance needs CNI: a Wasm pod refuses the node's network.
    ContainerdShim(Containerd),
}

impl Peer {
    pub fn name(&self) -> &'static str {
        match self {
            Peer::Wasmpod { .. } => "wasmpod",
            Peer::Containerd(_) => "containerd+runc",
            Peer::ContainerdShim(_) => "containerd+wasmpod shim",
        }
    }

    pub async fn client(&self) -> Rt {
        match self {
            Peer::Wasmpod { daemon, .. } => daemon.runtime().await,
            Peer::Containerd(c) | Peer::ContainerdShim(c) => c.runtime().await,
        }
    }

    /// RunPodSandbox's runtime handler: containerd's default (runc) unless the shim's.
    fn handler(&self) -> &'static str {
        match self {
            Peer::ContainerdShim(_) => WASMPOD_HANDLER,
            _ => "",
        }
    }

    /// A container that prints one line and exits.
    pub fn hello(&self) -> cri::ContainerConfig {
        match self {
            Peer::Wasmpod { hello, .. } => container_config("c", hello, &[]),
            Peer::Containerd(c) => container_config("c", c.hello_image(), &[]),
            Peer::ContainerdShim(_) => {
                let mut config = container_config("c", TOOLBOX_P1, &["hello"]);
                config.command = vec!["/bin/echo".into()];
                config
            }
        }
    }

    /// A container that prints `tick 1` first and then sleeps (no CPU) until stopped.
    fn idle(&self) -> cri::ContainerConfig {
        match self {
            Peer::Wasmpod { idle, .. } => container_config("c", idle, &[]),
            Peer::Containerd(c) => container_config("c", c.idle_image(), &[]),
            // The image's entrypoint is /bin/sh.
            Peer::ContainerdShim(_) => {
                container_config("c", TOOLBOX_P1, &["-c", "echo tick 1; pause"])
            }
        }
    }

    /// A container config and exec command for the exec figures: a container that prints a
    /// line and idles, and an `echo hello` run in it.
    fn exec_target(&self) -> (cri::ContainerConfig, Vec<String>) {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect();
        let toolbox = |image: &str| {
            let mut config = container_config("c", image, &[]);
            config.command = words(&["sh", "-c", "echo ready; pause"]);
            (config, words(&["echo", "hello"]))
        };
        match self {
            Peer::Wasmpod { toolbox: image, .. } => toolbox(image),
            Peer::ContainerdShim(_) => toolbox(TOOLBOX_P1),
            Peer::Containerd(c) => (
                container_config("c", c.idle_image(), &[]),
                words(&["/idle", "echo", "hello"]),
            ),
        }
    }

    /// The CRI socket, for crictl.
    fn socket(&self) -> &Path {
        match self {
            Peer::Wasmpod { daemon, .. } => &daemon.socket,
            Peer::Containerd(c) | Peer::ContainerdShim(c) => &c.socket,
        }
    }

    fn logs(&self, pod: &str) -> PathBuf {
        match self {
            Peer::Wasmpod { daemon, .. } => daemon.dir.path().join("logs").join(pod),
            Peer::Containerd(c) | Peer::ContainerdShim(c) => c.pod_log_dir(pod),
        }
    }

    /// The same sandbox for all; containerd's pods use the node's network when it has no CNI.
    fn sandbox(&self, pod: &str, logs: &Path) -> cri::PodSandboxConfig {
        match self {
            Peer::Containerd(c) if c.netns().is_none() => host_network_pod_config(pod, logs),
            _ => pod_config(pod, logs),
        }
    }

    /// Resident memory of the runtime: wasmpod's one process; containerd and its runc shims;
    /// containerd, the wasmpod daemon its shim started and any shim process still running
    /// (they name the instance's socket).
    /// The wasmpod daemon's thread count (the other peers are many processes).
    pub fn threads(&self) -> Option<u64> {
        match self {
            Peer::Wasmpod { daemon, .. } => status_figure(daemon.pid()?, "Threads:"),
            _ => None,
        }
    }

    pub fn rss(&self) -> u64 {
        let mut pids: Vec<u32> = match self {
            Peer::Wasmpod { daemon, .. } => daemon.pid().into_iter().collect(),
            Peer::Containerd(c) => c.pids(),
            Peer::ContainerdShim(c) => c
                .containerd_pid()
                .into_iter()
                .chain(c.wasmpod_pid())
                .chain(
                    processes_under(c.dir.path())
                        .into_iter()
                        .map(|(pid, _)| pid),
                )
                .collect(),
        };
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter().map(rss_of).sum()
    }
}

/// A process's resident memory in bytes (0 once it is gone).
pub fn rss_of(pid: u32) -> u64 {
    status_figure(pid, "VmRSS:").unwrap_or(0) * 1024
}

/// A number of `/proc/<pid>/status` (kB figures in kB).
fn status_figure(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A started pod: its sandbox and container ids, and how long the client waited for each step.
pub struct Started {
    pub pod: String,
    pub container: String,
    /// RunPodSandbox's call → the first line in the log: the pod start figure.
    pub first_line: Duration,
    /// Round trips of RunPodSandbox, CreateContainer and StartContainer.
    pub calls: [Duration; 3],
    /// StartContainer's return → the first line seen in the log.
    pub after_start: Duration,
}

/// RunPodSandbox (on the peer's handler) + CreateContainer + StartContainer → the first line
/// in the container's log.
pub async fn start_pod(
    peer: &Peer,
    rt: &mut Rt,
    name: &str,
    mut config: cri::ContainerConfig,
) -> Res<Started> {
    let logs = peer.logs(name);
    std::fs::create_dir_all(&logs)?;
    let sandbox = peer.sandbox(name, &logs);
    config.log_path = "c/0.log".into();
    let log = logs.join("c/0.log");
    let t0 = Instant::now();
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: peer.handler().to_owned(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let t1 = Instant::now();
    let container = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        })
        .await?
        .into_inner()
        .container_id;
    let t2 = Instant::now();
    rt.start_container(cri::StartContainerRequest {
        container_id: container.clone(),
    })
    .await?;
    let started = t0.elapsed();
    // Woken by inotify, not a timer: tokio's ticks in milliseconds, and polling from many
    // clients at once would take the cores from the runtimes being measured.
    let Some(first_line) = wait_for_line(&log, t0, Duration::from_secs(60)).await? else {
        return Err(format!("{}: no log line from {name} after 60 s", peer.name()).into());
    };
    Ok(Started {
        pod,
        container,
        first_line,
        calls: [t1 - t0, t2 - t1, started - (t2 - t0)],
        after_start: first_line.saturating_sub(started),
    })
}

/// Waits until `log` holds a full line and returns how long after `t0` it was seen (`None`
/// after `limit`), woken by inotify events of its directory and of the one above (where the
/// runtime creates the container's).
async fn wait_for_line(
    log: &Path,
    t0: Instant,
    limit: Duration,
) -> std::io::Result<Option<Duration>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let has_line = || std::fs::read(log).is_ok_and(|b| b.contains(&b'\n'));
    // SAFETY: inotify_init1 returns a new descriptor (or -1), owned from here on.
    let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor is ours alone, and the AsyncFd owns it until it is dropped.
    let fd = unsafe { tokio::io::unix::AsyncFd::register(OwnedFd::from_raw_fd(raw)) }?;
    // Closing an inotify instance waits for the kernel's RCU grace period (milliseconds):
    // done off the measured path.
    let fd = scopeguard(fd);
    let watch = |dir: &Path| {
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap_or_default();
        let mask = libc::IN_CREATE | libc::IN_MODIFY | libc::IN_CLOSE_WRITE;
        // SAFETY: a valid descriptor and C string.
        unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
    };
    let dir = log.parent().unwrap_or(Path::new("."));
    if let Some(up) = dir.parent() {
        watch(up);
    }
    watch(dir);
    let mut buf = [0u8; 4096];
    loop {
        if has_line() {
            return Ok(Some(t0.elapsed()));
        }
        if t0.elapsed() > limit {
            return Ok(None);
        }
        // Bounded waits: a missed event costs a few milliseconds, never a hang.
        if let Ok(ready) = tokio::time::timeout(Duration::from_millis(5), fd.readable()).await {
            let mut guard = ready?;
            // SAFETY: reading into a buffer we own from our descriptor.
            while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
            guard.clear_ready();
        }
        // The container's directory may have appeared since: watching it again is harmless.
        watch(dir);
    }
}

/// Closes the inotify descriptor on a blocking thread when dropped.
struct ClosedLater(Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>);

fn scopeguard(fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>) -> ClosedLater {
    ClosedLater(Some(fd))
}

impl std::ops::Deref for ClosedLater {
    type Target = tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for ClosedLater {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            tokio::task::spawn_blocking(move || drop(fd));
        }
    }
}

/// Waits until the container has exited (its ContainerStatus says so), then StopContainer,
/// RemoveContainer, StopPodSandbox, RemovePodSandbox: the end of a run-to-completion pod.
pub async fn finish_pod(rt: &mut Rt, started: &Started) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: started.container.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .map_or(-1, |s| s.state);
        if state == cri::ContainerState::ContainerExited as i32 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("container {} did not exit", started.container).into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    remove_pod(rt, started).await
}

/// StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox.
pub async fn remove_pod(rt: &mut Rt, started: &Started) -> Res<()> {
    rt.stop_container(cri::StopContainerRequest {
        container_id: started.container.clone(),
        timeout: 10,
    })
    .await?;
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: started.container.clone(),
    })
    .await?;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: started.pod.clone(),
    })
    .await?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: started.pod.clone(),
    })
    .await?;
    Ok(())
}

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(what.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{msg:40} {bar:30} {pos}/{len} {elapsed}")
            .expect("a valid template"),
    );
    bar
}

/// What a client measured of pod starts, each sorted.
#[derive(Clone, Default)]
pub struct StartTimes {
    /// RunPodSandbox's call → the first log line: the pod start figure.
    pub total: Vec<Duration>,
    /// Round trips of RunPodSandbox, CreateContainer and StartContainer.
    pub calls: [Vec<Duration>; 3],
    /// StartContainer's return → the first log line.
    pub after_start: Vec<Duration>,
}

impl StartTimes {
    fn push(&mut self, s: &Started) {
        self.total.push(s.first_line);
        for (v, d) in self.calls.iter_mut().zip(s.calls) {
            v.push(d);
        }
        self.after_start.push(s.after_start);
    }

    fn sort(&mut self) {
        for v in self
            .calls
            .iter_mut()
            .chain([&mut self.total, &mut self.after_start])
        {
            v.sort();
        }
    }
}

/// Pod starts of each peer, `n` pods each, interleaved.
pub async fn pod_start(peers: &[&Peer], n: usize) -> Res<Vec<StartTimes>> {
    let mut clients = Vec::new();
    for p in peers {
        clients.push(p.client().await);
    }
    let mut out = vec![StartTimes::default(); peers.len()];
    let progress = bar((n * peers.len()) as u64, "pod start, interleaved");
    // One warm-up pod each (images and code caches), not counted.
    for i in 0..=n {
        for (k, peer) in peers.iter().enumerate() {
            let started =
                start_pod(peer, &mut clients[k], &format!("start-{i}"), peer.hello()).await?;
            finish_pod(&mut clients[k], &started).await?;
            if i > 0 {
                out[k].push(&started);
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();
    for v in &mut out {
        v.sort();
    }
    Ok(out)
}

/// Exec figures, interleaved across peers in one pod each: ExecSync `echo hello` round trips
/// through the CRI (n of them), and `crictl exec` (SPDY, the whole client process) (n_crictl).
pub async fn exec(
    peers: &[&Peer],
    n: usize,
    crictl: &Path,
    n_crictl: usize,
) -> Res<(Vec<Vec<Duration>>, Vec<Vec<Duration>>)> {
    let mut targets = Vec::new();
    for p in peers {
        let mut rt = p.client().await;
        let (config, exec) = p.exec_target();
        let started = start_pod(p, &mut rt, "exec", config).await?;
        targets.push((rt, started, exec));
    }
    let mut sync = vec![Vec::with_capacity(n); peers.len()];
    let mut spdy = vec![Vec::with_capacity(n_crictl); peers.len()];
    let progress = bar(((n + n_crictl) * peers.len()) as u64, "exec, interleaved");
    // One warm-up each (the program's compiled code, runc's first exec), not counted.
    for i in 0..=n {
        for (k, (rt, started, cmd)) in targets.iter_mut().enumerate() {
            let t0 = Instant::now();
            let out = rt
                .exec_sync(cri::ExecSyncRequest {
                    container_id: started.container.clone(),
                    cmd: cmd.clone(),
                    timeout: 10,
                })
                .await?
                .into_inner();
            let took = t0.elapsed();
            if out.exit_code != 0 || out.stdout != b"hello\n" {
                return Err(format!(
                    "{}: exec {cmd:?} gave {} {:?} {:?}",
                    peers[k].name(),
                    out.exit_code,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            if i > 0 {
                sync[k].push(took);
                progress.inc(1);
            }
        }
    }
    for _ in 0..n_crictl {
        for (k, (_, started, cmd)) in targets.iter().enumerate() {
            let endpoint = format!("unix://{}", peers[k].socket().display());
            let mut command = tokio::process::Command::new(crictl);
            command
                .args([
                    "--runtime-endpoint",
                    &endpoint,
                    "--image-endpoint",
                    &endpoint,
                ])
                .args(["--timeout", "10s", "exec", &started.container])
                .args(cmd);
            let t0 = Instant::now();
            let out = command.output().await?;
            let took = t0.elapsed();
            if !out.status.success() || out.stdout != b"hello\n" {
                return Err(format!(
                    "{}: crictl exec {cmd:?}: {} {:?}",
                    peers[k].name(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            spdy[k].push(took);
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    for (rt, started, _) in &mut targets {
        remove_pod(rt, started).await?;
    }
    for v in sync.iter_mut().chain(spdy.iter_mut()) {
        v.sort();
    }
    Ok((sync, spdy))
}

/// Full lifecycles (start → first line → exit → stop → remove) per second with `clients` concurrent
/// CRI clients for `secs` seconds.
pub async fn lifecycles_per_second(peer: &Peer, clients: usize, secs: f64) -> Res<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let workers = (0..clients).map(|w| async move {
        let mut rt = peer.client().await;
        let mut done = 0usize;
        while Instant::now() < deadline {
            let name = format!("cycle-{clients}-{w}-{done}");
            let s = start_pod(peer, &mut rt, &name, peer.hello()).await?;
            finish_pod(&mut rt, &s).await?;
            done += 1;
        }
        Res::Ok(done)
    });
    // Polled together on this task: the clients wait on the server, not on each other.
    let total: usize = futures::future::try_join_all(workers)
        .await?
        .into_iter()
        .sum();
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Figures at one pod count of the density run.
pub struct DensityPoint {
    pub pods: usize,
    pub rss: u64,
    pub rss_per_pod: f64,
    /// The daemon's threads at this count, where one process is the runtime.
    pub threads: Option<u64>,
    /// Start latency of pods started at this count.
    pub start: Vec<Duration>,
    pub list_containers: Vec<Duration>,
    pub list_pods: Vec<Duration>,
}

/// Starts idle pods up to each of `counts`; at each count, times `probe` more pod starts and
/// the List calls. Pods are left running (the peer is dropped after).
pub async fn density(peer: &Peer, counts: &[usize], probe: usize) -> Res<Vec<DensityPoint>> {
    let mut rt = peer.client().await;
    let baseline = peer.rss();
    let mut running = 0usize;
    let mut points = Vec::new();
    let total = counts.iter().copied().max().unwrap_or(0);
    let progress = bar(total as u64, &format!("{}: idle pods", peer.name()));
    for &count in counts {
        while running + probe < count {
            start_pod(peer, &mut rt, &format!("idle-{running}"), peer.idle()).await?;
            running += 1;
            progress.set_position(running as u64);
        }
        let mut start = Vec::with_capacity(probe);
        while running < count {
            let s = start_pod(peer, &mut rt, &format!("idle-{running}"), peer.idle()).await?;
            start.push(s.first_line);
            running += 1;
            progress.set_position(running as u64);
        }
        start.sort();
        let rss = peer.rss();
        let mut list_containers = Vec::new();
        let mut list_pods = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let n = rt
                .list_containers(cri::ListContainersRequest::default())
                .await?
                .into_inner()
                .containers
                .len();
            list_containers.push(t.elapsed());
            if n != running {
                return Err(
                    format!("{}: ListContainers gave {n} of {running}", peer.name()).into(),
                );
            }
            let t = Instant::now();
            rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await?;
            list_pods.push(t.elapsed());
        }
        list_containers.sort();
        list_pods.sort();
        points.push(DensityPoint {
            pods: count,
            rss,
            rss_per_pod: rss.saturating_sub(baseline) as f64 / count as f64,
            threads: peer.threads(),
            start,
            list_containers,
            list_pods,
        });
    }
    progress.finish_and_clear();
    Ok(points)
}
