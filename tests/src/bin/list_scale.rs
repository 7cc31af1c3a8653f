//! `list_scale`: ListContainers and ListPodSandbox against a real `wasmpod serve` holding N idle
//! pods with kubelet-like metadata (8 labels and 8 annotations on each pod and container), the
//! calls kubelet's relist makes every second.
//!
//! ```text
//! list_scale [--pods N] [--containers M] [--rounds R] [--loop SECS] [--small]
//! ```
//!
//! The first M pods (all of them by default) get a container: each container holds four
//! file descriptors (its root, its files, its log and the log's directory), so at the usual
//! 20,000 a process may open, about 4,500 containers fit.
//!
//! `--small` gives each pod and container the one label and annotation of the benchmark's
//! (`bench`'s density figures) instead.
//!
//! Prints per call: the round trip p50/p90 through a tonic client and the server's CPU time
//! per call (its process's user + system time over the rounds, less its idle rate).
//! `--loop SECS` then keeps listing for SECS seconds, for `perf record -p <pid>` (the pid is
//! printed). Build with `cargo build --release -p wasmpod -p wasmpod-tests --bins`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use wasmpod_tests::cri::{Daemon, Rt};
use wasmpod_tests::{cpu_time_of, wasm};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How many clients create the pods at once.
const CREATORS: usize = 8;

/// Eight labels and eight annotations, as kubelet sets them on a pod sandbox.
fn sandbox(i: usize, logs: &std::path::Path) -> cri::PodSandboxConfig {
    let name = format!("web-7f9c6d8b5-{i:05}");
    let uid = format!("6a1b2c3d-4e5f-4a6b-8c7d-{i:012}");
    let labels = [
        ("io.kubernetes.pod.name", name.as_str()),
        ("io.kubernetes.pod.namespace", "default"),
        ("io.kubernetes.pod.uid", uid.as_str()),
        ("app", "web"),
        ("pod-template-hash", "7f9c6d8b5"),
        ("tier", "frontend"),
        ("version", "v1.4.2"),
        ("release", "stable"),
    ];
    let annotations = [
        (
            "kubernetes.io/config.seen",
            "2026-12-02T07:40:05.123456789Z",
        ),
        ("kubernetes.io/config.source", "api"),
        (
            "kubernetes.io/config.hash",
            "3f1e9a7c2b4d6e8f0a1b2c3d4e5f6a7b",
        ),
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", "9464"),
        ("cluster-autoscaler.kubernetes.io/safe-to-evict", "true"),
        ("kubectl.kubernetes.io/default-container", "web"),
        ("example.com/owner", "team-frontend@example.com"),
    ];
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: logs.display().to_string(),
        labels: owned(&labels),
        annotations: owned(&annotations),
        ..Default::default()
    }
}

/// Eight labels and eight annotations, as kubelet sets them on a container.
fn container(pod: &cri::PodSandboxConfig, image: &str) -> cri::ContainerConfig {
    let meta = pod.metadata.as_ref().expect("the sandbox has metadata");
    let labels = [
        ("io.kubernetes.container.name", "web"),
        ("io.kubernetes.pod.name", meta.name.as_str()),
        ("io.kubernetes.pod.namespace", meta.namespace.as_str()),
        ("io.kubernetes.pod.uid", meta.uid.as_str()),
        ("app", "web"),
        ("tier", "frontend"),
        ("version", "v1.4.2"),
        ("release", "stable"),
    ];
    let annotations = [
        ("io.kubernetes.container.hash", "8d4e1f3a"),
        ("io.kubernetes.container.restartCount", "0"),
        (
            "io.kubernetes.container.terminationMessagePath",
            "/dev/termination-log",
        ),
        ("io.kubernetes.container.terminationMessagePolicy", "File"),
        ("io.kubernetes.pod.terminationGracePeriod", "30"),
        ("io.kubernetes.container.preStopHandler", ""),
        ("kubectl.kubernetes.io/default-container", "web"),
        ("example.com/build", "2026.12.01-3f1e9a7"),
    ];
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "web".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        labels: owned(&labels),
        annotations: owned(&annotations),
        log_path: "web/0.log".into(),
        ..Default::default()
    }
}

fn owned(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs pods `from..to` (step `CREATORS`), each with one started idle container.
async fn create_pods(
    mut rt: Rt,
    dir: std::path::PathBuf,
    image: String,
    small: bool,
    with_container: impl Fn(usize) -> bool,
    range: impl Iterator<Item = usize>,
) -> Res<()> {
    for i in range {
        let logs = dir.join("logs").join(i.to_string());
        std::fs::create_dir_all(&logs)?;
        let (config, container) = if small {
            let mut c = wasmpod_tests::cri::container_config("c", &image, &[]);
            c.log_path = "c/0.log".into();
            (
                wasmpod_tests::cri::pod_config(&format!("idle-{i}"), &logs),
                c,
            )
        } else {
            let config = sandbox(i, &logs);
            let c = container(&config, &image);
            (config, c)
        };
        let pod = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        if !with_container(i) {
            continue;
        }
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod,
                config: Some(container),
                sandbox_config: Some(config),
            })
            .await?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest { container_id: id })
            .await?;
    }
    Ok(())
}

/// Figures of one kind of call.
struct Figures {
    round_trips: Vec<Duration>,
    server_cpu: Duration,
}

impl Figures {
    fn print(&self, what: &str) {
        let pct = |p: usize| self.round_trips[(self.round_trips.len() - 1) * p / 100];
        println!(
            "{what:<28} round trip p50 {:>7.2} ms  p90 {:>7.2} ms | server CPU/call {:>6.2} ms",
            ms(pct(50)),
            ms(pct(90)),
            ms(self.server_cpu),
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Times `rounds` calls of `call`, with the server's CPU time per call less its idle rate.
async fn measure<M, F, Fut>(pid: &str, idle_rate: f64, rounds: usize, mut call: F) -> Res<Figures>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Res<M>>,
{
    for _ in 0..3 {
        call().await?;
    }
    let mut round_trips = Vec::with_capacity(rounds);
    let cpu0 = cpu_time_of(pid);
    let wall0 = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        call().await?;
        round_trips.push(t.elapsed());
    }
    let idle = wall0.elapsed().as_secs_f64() * idle_rate;
    let busy = (cpu_time_of(pid) - cpu0).as_secs_f64() - idle;
    round_trips.sort();
    Ok(Figures {
        round_trips,
        server_cpu: Duration::from_secs_f64(busy.max(0.0) / rounds as f64),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let mut pods = 10_000usize;
    let mut rounds = 30usize;
    let mut loop_secs = 0u64;
    let mut small = false;
    let mut with_containers = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--pods" => pods = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            "--loop" => loop_secs = value()?.parse()?,
            "--small" => small = true,
            "--containers" => with_containers = Some(value()?.parse::<usize>()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let image = format!("file://{}", wasm("forever.p1").canonicalize()?.display());
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("wasmpod.sock");
    // The `wasmpod` built beside this binary: asking cargo would wait on other builds' lock.
    let bin = std::env::current_exe()?.with_file_name("wasmpod");
    let daemon = Daemon::start_bin(bin, tempfile::tempdir_in(dir.path())?, socket).await;
    let pid = daemon.pid().ok_or("the server runs")?.to_string();
    let with_containers = with_containers.unwrap_or(pods).min(pods);
    println!("wasmpod serve pid {pid}; creating {pods} pods, {with_containers} with a container");
    let t = Instant::now();
    let creators = (0..CREATORS).map(|k| {
        let dir = daemon.dir.path().to_path_buf();
        let image = image.clone();
        let socket = daemon.socket.clone();
        async move {
            let rt = wasmpod_tests::cri::runtime_client(
                wasmpod_tests::cri::unix_channel(&socket).await?,
            );
            create_pods(
                rt,
                dir,
                image,
                small,
                |i| i < with_containers,
                (k..pods).step_by(CREATORS),
            )
            .await
        }
    });
    futures::future::try_join_all(creators).await?;
    println!("created in {:.1} s", t.elapsed().as_secs_f64());
    // Let the starts settle, then take the server's idle CPU rate.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = cpu_time_of(&pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rate = (cpu_time_of(&pid) - cpu0).as_secs_f64() / 2.0;
    println!("server idle CPU {:.1}%", idle_rate * 100.0);

    let rt = daemon.runtime().await;
    let containers = measure(&pid, idle_rate, rounds, || {
        let mut rt = rt.clone();
        async move {
            Ok(rt
                .list_containers(cri::ListContainersRequest::default())
                .await?
                .into_inner())
        }
    })
    .await?;
    let sandboxes = measure(&pid, idle_rate, rounds, || {
        let mut rt = rt.clone();
        async move {
            Ok(rt
                .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await?
                .into_inner())
        }
    })
    .await?;
    let running = measure(&pid, idle_rate, rounds, || {
        let mut rt = rt.clone();
        async move {
            let state = Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            });
            Ok(rt
                .list_containers(cri::ListContainersRequest {
                    filter: Some(cri::ContainerFilter {
                        state,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner())
        }
    })
    .await?;
    let one = rt
        .clone()
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items
        .pop()
        .ok_or("no pods")?
        .id;
    let by_pod = measure(&pid, idle_rate, rounds, || {
        let mut rt = rt.clone();
        let pod_sandbox_id = one.clone();
        async move {
            Ok(rt
                .list_containers(cri::ListContainersRequest {
                    filter: Some(cri::ContainerFilter {
                        pod_sandbox_id,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner())
        }
    })
    .await?;
    println!("at {pods} pods and {with_containers} containers, {rounds} rounds:");
    containers.print("ListContainers");
    sandboxes.print("ListPodSandbox");
    running.print("ListContainers state=running");
    by_pod.print("ListContainers pod=<one>");

    if loop_secs > 0 {
        println!("listing for {loop_secs} s: perf record -e cpu-clock -g -p {pid}");
        let until = Instant::now() + Duration::from_secs(loop_secs);
        let mut rt = rt.clone();
        while Instant::now() < until {
            rt.list_containers(cri::ListContainersRequest::default())
                .await?;
            rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await?;
        }
    }
    drop(daemon);
    Ok(())
}
