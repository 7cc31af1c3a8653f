//! wasmpod and containerd + runc side by side, driven by the same CRI client in the same run:
//! pod start latency (interleaved A B A B…, so drift hits both alike), full lifecycle
//! throughput with concurrent clients, and density (RSS, start latency and List latency as
//! idle pods accumulate).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use k8s_cri::v1 as cri;
use wasmpod_tests::containerd::{host_network_pod_config, Containerd};
use wasmpod_tests::cri::{container_config, pod_config, Daemon, Rt};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A CRI runtime under test, with the images it runs.
pub enum Peer {
    Wasmpod {
        daemon: Daemon,
        hello: String,
        idle: String,
    },
    Containerd(Containerd),
}

impl Peer {
    pub fn name(&self) -> &'static str {
        match self {
            Peer::Wasmpod { .. } => "wasmpod",
            Peer::Containerd(_) => "containerd+runc",
        }
    }

    pub async fn client(&self) -> Rt {
        match self {
            Peer::Wasmpod { daemon, .. } => daemon.runtime().await,
            Peer::Containerd(c) => c.runtime().await,
        }
    }

    fn hello(&self) -> &str {
        match self {
            Peer::Wasmpod { hello, .. } => hello,
            Peer::Containerd(c) => c.hello_image(),
        }
    }

    fn idle(&self) -> &str {
        match self {
            Peer::Wasmpod { idle, .. } => idle,
            Peer::Containerd(c) => c.idle_image(),
        }
    }

    fn logs(&self, pod: &str) -> PathBuf {
        match self {
            Peer::Wasmpod { daemon, .. } => daemon.dir.path().join("logs").join(pod),
            Peer::Containerd(c) => c.pod_log_dir(pod),
        }
    }

    /// The same sandbox for both; containerd's pods use the node's network (no CNI here).
    fn sandbox(&self, pod: &str, logs: &Path) -> cri::PodSandboxConfig {
        match self {
            Peer::Wasmpod { .. } => pod_config(pod, logs),
            Peer::Containerd(_) => host_network_pod_config(pod, logs),
        }
    }

    /// Resident memory of the runtime: wasmpod's one process; containerd and its shims.
    pub fn rss(&self) -> u64 {
        let pids = match self {
            Peer::Wasmpod { daemon, .. } => daemon.pid().into_iter().collect(),
            Peer::Containerd(c) => c.pids(),
        };
        pids.into_iter().map(rss_of).sum()
    }
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// A started pod: its sandbox and container ids.
pub struct Started {
    pub pod: String,
    pub container: String,
    pub first_line: Duration,
}

/// RunPodSandbox + CreateContainer + StartContainer → the first line in the container's log.
pub async fn start_pod(peer: &Peer, rt: &mut Rt, name: &str, image: &str) -> Res<Started> {
    let logs = peer.logs(name);
    std::fs::create_dir_all(&logs)?;
    let sandbox = peer.sandbox(name, &logs);
    let mut config = container_config("c", image, &[]);
    config.log_path = "c/0.log".into();
    let log = logs.join("c/0.log");
    let t0 = Instant::now();
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            ..Default::default()
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let container = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        })
        .await?
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: container.clone(),
    })
    .await?;
    let deadline = t0 + Duration::from_secs(60);
    while !std::fs::read(&log).is_ok_and(|b| b.contains(&b'\n')) {
        if Instant::now() > deadline {
            return Err(format!("{}: no log line from {name} after 60 s", peer.name()).into());
        }
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
    Ok(Started {
        pod,
        container,
        first_line: t0.elapsed(),
    })
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

/// Pod start latency of each peer, `n` pods each, interleaved; sorted.
pub async fn pod_start(peers: &[&Peer], n: usize) -> Res<Vec<Vec<Duration>>> {
    let mut clients = Vec::new();
    for p in peers {
        clients.push(p.client().await);
    }
    let mut out = vec![Vec::with_capacity(n); peers.len()];
    let progress = bar((n * peers.len()) as u64, "pod start, interleaved");
    // One warm-up pod each (images and code caches), not counted.
    for i in 0..=n {
        for (k, peer) in peers.iter().enumerate() {
            let started =
                start_pod(peer, &mut clients[k], &format!("start-{i}"), peer.hello()).await?;
            remove_pod(&mut clients[k], &started).await?;
            if i > 0 {
                out[k].push(started.first_line);
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

/// Full lifecycles (start → first line → stop → remove) per second with `clients` concurrent
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
            remove_pod(&mut rt, &s).await?;
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
            start,
            list_containers,
            list_pods,
        });
    }
    progress.finish_and_clear();
    Ok(points)
}
