//! wasmpod benchmarks: prints figures, asserts nothing about speed.
//!
//! `cargo run --release -p wasmpod-tests --bin bench [-- --quick]`
//!
//! - container start: create + start → first stdout line, module cached, in process (p50/p99);
//! - stop: how long a spinning guest takes to die after its grace period;
//! - density: RSS growth per idle pod across N idle pods in one process, and thread count;
//! - network: wasi:http hello world rps/latency against `wasmtime serve` (wrk), and TCP echo
//!   round trips inside a pod against the host;
//! - through the CRI socket (`wasmpod serve`, state persistence on): RunPodSandbox +
//!   CreateContainer + StartContainer → first log line, and ListContainers at 1,000/10,000.
//!
//! Build the server first: `cargo build --release -p wasmpod`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use wasmpod_runtime::runtime::{Runtime, RuntimeOptions};
use wasmpod_runtime::spec::{ContainerConfig, PodConfig};
use wasmpod_tests::cri::{self as harness, Daemon};

mod net;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let wasm = examples_dir().join("wasm");
    for name in ["hello.p1.wasm", "hello.p2.wasm", "forever.p1.wasm"] {
        if !wasm.join(name).exists() {
            return Err(format!(
                "{} missing: run examples/build.sh first",
                wasm.join(name).display()
            )
            .into());
        }
    }
    let state = tempfile::tempdir()?;
    let rt = Runtime::new(RuntimeOptions {
        state_dir: state.path().into(),
        ..Default::default()
    })?;
    let starts = if quick { 200 } else { 2000 };
    let idle = if quick { 200 } else { 1000 };

    println!(
        "wasmpod benchmark ({} cores, {})",
        cores(),
        if quick { "quick" } else { "full" }
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    for (label, file) in [
        ("p1 module", "hello.p1.wasm"),
        ("p2 component", "hello.p2.wasm"),
    ] {
        let lat = start_latency(&rt, &wasm.join(file), starts).await?;
        println!("| container start ({label}, create+start → first line), n={starts} | p50 {} · p99 {} |", fmt(pct(&lat, 50)), fmt(pct(&lat, 99)));
    }
    let kill = kill_latency(
        &rt,
        &wasm.join("forever.p2.wasm"),
        if quick { 5 } else { 20 },
    )
    .await?;
    println!(
        "| spinning guest killed after grace (stop → exited, beyond grace) | p50 {} · max {} |",
        fmt(pct(&kill, 50)),
        fmt(*kill.last().unwrap())
    );
    let (per_pod, threads) = density(&rt, &wasm.join("forever.p1.wasm"), idle).await?;
    println!(
        "| RSS per idle pod ({idle} pods, one container each) | {:.1} KiB |",
        per_pod / 1024.0
    );
    println!("| threads with {idle} idle pods | {threads} |");

    let (rounds, secs) = if quick { (1, 3) } else { (3, 10) };
    let root = examples_dir().join("..");
    match net::http_vs_wasmtime(&rt, &root, &wasm.join("http-hello.p2.wasm"), rounds, secs).await {
        Ok((ours, theirs)) => {
            for (who, loads) in [("wasmpod", &ours), ("wasmtime serve", &theirs)] {
                println!(
                    "| wasi:http hello, {who} (wrk -t1 -c16, {rounds}×{secs}s interleaved) | {:.0} rps · p50 {} · p99 {} |",
                    median(loads.iter().map(|l| l.rps)),
                    fmt(Duration::from_secs_f64(median(loads.iter().map(|l| l.p50.as_secs_f64())))),
                    fmt(Duration::from_secs_f64(median(loads.iter().map(|l| l.p99.as_secs_f64())))),
                );
            }
            let ratio = median(ours.iter().map(|l| l.rps)) / median(theirs.iter().map(|l| l.rps));
            println!("| wasi:http rps, wasmpod / wasmtime serve | ×{ratio:.2} |");
        }
        Err(e) => println!("| wasi:http vs wasmtime serve | not measured: {e} |"),
    }
    let trips = if quick { 500 } else { 5000 };
    let (in_pod, host) = net::echo_round_trips(&rt, &wasm.join("netprobe.p2.wasm"), trips).await?;
    for (label, lat) in [
        ("two containers of a pod, over its localhost", &in_pod),
        ("two host threads over 127.0.0.1", &host),
    ] {
        println!(
            "| TCP echo round trip (64 B), {label}, n={trips} | p50 {} · p99 {} |",
            fmt(pct(lat, 50)),
            fmt(pct(lat, 99))
        );
    }

    let bin = std::env::current_exe()?.with_file_name("wasmpod");
    if !bin.exists() {
        return Err(format!(
            "{} missing: cargo build --release -p wasmpod",
            bin.display()
        )
        .into());
    }
    let pods = if quick { 100 } else { 500 };
    let lat = cri_pod_start(&bin, &wasm.join("hello.p1.wasm"), pods).await?;
    println!(
        "| CRI pod start (runp+create+start → first log line), n={pods} | p50 {} · p99 {} |",
        fmt(pct(&lat, 50)),
        fmt(pct(&lat, 99))
    );
    let counts: &[usize] = if quick { &[1000] } else { &[1000, 10_000] };
    for (count, lat) in cri_list(&bin, &wasm.join("hello.p1.wasm"), counts).await? {
        println!(
            "| CRI ListContainers with {count} containers | p50 {} · p99 {} |",
            fmt(pct(&lat, 50)),
            fmt(pct(&lat, 99))
        );
    }

    let sizes: &[(&str, usize)] = if quick {
        &[("100 KiB", 100 << 10), ("2 MiB", 2 << 20)]
    } else {
        &[
            ("100 KiB", 100 << 10),
            ("2 MiB", 2 << 20),
            ("20 MiB", 20 << 20),
        ]
    };
    for &(label, size) in sizes {
        let f = image_figures(size).await?;
        println!(
            "| pull + AOT, {label} module ({} functions) | {} |",
            f.functions,
            fmt(f.pull)
        );
        println!(
            "| container start, {label}: with AOT artifact / compiling | {} / {} (×{:.0}) |",
            fmt(f.start_with_artifact),
            fmt(f.start_compiling),
            f.start_compiling.as_secs_f64() / f.start_with_artifact.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}

struct ImageFigures {
    functions: usize,
    pull: Duration,
    start_with_artifact: Duration,
    start_compiling: Duration,
}

/// A preview1 module of about `size` bytes of real code: `_start` returns at once, the
/// rest are functions the compiler must still translate.
fn generated_module(size: usize) -> (Vec<u8>, usize) {
    let per_function = 160;
    let n = (size / per_function).max(1);
    let mut wat =
        String::from("(module\n (memory (export \"memory\") 1)\n (func (export \"_start\"))\n");
    for i in 0..n {
        wat.push_str(&format!(
            " (func (export \"f{i}\") (param i32) (result i32) local.get 0"
        ));
        for k in 0..20 {
            wat.push_str(&format!(
                " i32.const {} i32.add i32.const {} i32.xor",
                i * 31 + k,
                k + 7
            ));
        }
        wat.push_str(")\n");
    }
    wat.push(')');
    (wat::parse_str(&wat).expect("generated WAT is valid"), n)
}

/// Pull (with AOT) of a generated module from a real registry, then container start on a
/// fresh runtime with the artifact on disk versus with it deleted (so it compiles).
async fn image_figures(size: usize) -> Result<ImageFigures, Box<dyn std::error::Error>> {
    let work = tempfile::tempdir()?;
    let (bytes, functions) = generated_module(size);
    let module = work.path().join("app.wasm");
    std::fs::write(&module, &bytes)?;
    let registry = wasmpod_tests::cri::Registry::start(work.path()).await;
    let name = registry.push_wasm(&module, &format!("bench/app{size}:1"), work.path());

    let state = work.path().join("state");
    let open = || {
        Runtime::new(RuntimeOptions {
            state_dir: state.clone(),
            ..Default::default()
        })
    };
    let rt = open()?;
    let t0 = Instant::now();
    rt.images().pull(&name, &Default::default(), None).await?;
    let pull = t0.elapsed();
    drop(rt);

    let start = |rt: Arc<Runtime>| {
        let name = name.clone();
        async move {
            let pod = rt.run_pod(PodConfig {
                name: "img".into(),
                ..Default::default()
            })?;
            let t0 = Instant::now();
            let config = ContainerConfig {
                name: "c".into(),
                image: name,
                ..Default::default()
            };
            let id = rt.create_container(&pod, config).await?;
            rt.start_container(&id)?;
            rt.wait_container(&id).await?;
            let took = t0.elapsed();
            rt.remove_pod(&pod).await?;
            Ok::<_, Box<dyn std::error::Error>>(took)
        }
    };
    let start_with_artifact = start(open()?).await?;
    std::fs::remove_dir_all(state.join("aot"))?;
    let start_compiling = start(open()?).await?;
    Ok(ImageFigures {
        functions,
        pull,
        start_with_artifact,
        start_compiling,
    })
}

fn pod_config(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "bench".into(),
            uid: name.into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        ..Default::default()
    }
}

fn container_config(image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        log_path: "c/0.log".into(),
        ..Default::default()
    }
}

/// RunPodSandbox + CreateContainer + StartContainer → the first line in the log file.
async fn cri_pod_start(
    bin: &Path,
    wasm: &Path,
    n: usize,
) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("wasmpod.sock");
    let logs = dir.path().join("logs");
    let d = Daemon::start_bin(bin.to_path_buf(), dir, socket).await;
    let mut rt = d.runtime().await;
    let image = file_image(wasm);
    let mut out = Vec::with_capacity(n);
    for i in 0..=n {
        let pod_logs = logs.join(format!("p{i}"));
        std::fs::create_dir_all(&pod_logs)?;
        let sandbox = pod_config(&format!("p{i}"), &pod_logs);
        let log = pod_logs.join("c/0.log");
        let t0 = Instant::now();
        let pod = harness::run_pod(&mut rt, &sandbox).await;
        let id = harness::create(&mut rt, &pod, container_config(&image), &sandbox).await?;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
        while std::fs::metadata(&log).map_or(true, |m| m.len() == 0) {
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
        if i > 0 {
            out.push(t0.elapsed());
        }
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await?;
    }
    d.stop();
    out.sort();
    Ok(out)
}

/// ListContainers latency once the server holds each of `counts` containers.
async fn cri_list(
    bin: &Path,
    wasm: &Path,
    counts: &[usize],
) -> Result<Vec<(usize, Vec<Duration>)>, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("wasmpod.sock");
    let logs = dir.path().join("logs");
    let d = Daemon::start_bin(bin.to_path_buf(), dir, socket).await;
    let mut rt = d.runtime().await;
    let image = file_image(wasm);
    let mut made = 0;
    let mut results = Vec::new();
    for &count in counts {
        while made < count {
            let pod_logs = logs.join(format!("p{made}"));
            std::fs::create_dir_all(&pod_logs)?;
            let sandbox = pod_config(&format!("p{made}"), &pod_logs);
            let pod = harness::run_pod(&mut rt, &sandbox).await;
            harness::create(&mut rt, &pod, container_config(&image), &sandbox).await?;
            made += 1;
        }
        let mut lat = Vec::new();
        for _ in 0..50 {
            let t0 = Instant::now();
            let listed = rt
                .list_containers(cri::ListContainersRequest::default())
                .await?
                .into_inner()
                .containers
                .len();
            lat.push(t0.elapsed());
            assert_eq!(listed, count);
        }
        lat.sort();
        results.push((count, lat));
    }
    d.stop();
    Ok(results)
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn file_image(path: &Path) -> String {
    format!(
        "file://{}",
        path.canonicalize().unwrap_or(path.to_path_buf()).display()
    )
}

/// Create + start → first stdout line, `n` times in one pod, the module compiled once before.
async fn start_latency(
    rt: &Arc<Runtime>,
    wasm: &Path,
    n: usize,
) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let pod = rt.run_pod(PodConfig {
        name: "bench-start".into(),
        ..Default::default()
    })?;
    let image = file_image(wasm);
    let mut logs = rt.subscribe_logs();
    let mut out = Vec::with_capacity(n);
    for i in 0..=n {
        let config = ContainerConfig {
            name: "c".into(),
            attempt: i as u32,
            image: image.clone(),
            ..Default::default()
        };
        let t0 = Instant::now();
        let id = rt.create_container(&pod, config).await?;
        rt.start_container(&id)?;
        loop {
            let line = logs.recv().await?;
            if line.container.as_ref() == "c" && line.stream == wasmpod_runtime::log::Stream::Stdout
            {
                break;
            }
        }
        let took = t0.elapsed();
        if i > 0 {
            out.push(took); // the first run compiles; it is not a start figure
        }
        rt.wait_container(&id).await?;
        rt.remove_container(&id).await?;
        while logs.try_recv().is_ok() {}
    }
    rt.remove_pod(&pod).await?;
    out.sort();
    Ok(out)
}

/// Time from the end of a 100 ms grace period to the spinning guest having exited.
async fn kill_latency(
    rt: &Arc<Runtime>,
    wasm: &Path,
    n: usize,
) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let grace = Duration::from_millis(100);
    let pod = rt.run_pod(PodConfig {
        name: "bench-kill".into(),
        ..Default::default()
    })?;
    let mut out = Vec::new();
    for i in 0..n {
        let config = ContainerConfig {
            name: "spin".into(),
            attempt: i as u32,
            image: file_image(wasm),
            args: vec!["--spin".into()],
            ..Default::default()
        };
        let id = rt.create_container(&pod, config).await?;
        rt.start_container(&id)?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = Instant::now();
        rt.stop_container(&id, grace).await?;
        out.push(t0.elapsed().saturating_sub(grace));
        rt.remove_container(&id).await?;
    }
    rt.remove_pod(&pod).await?;
    out.sort();
    Ok(out)
}

/// RSS growth per idle pod and the thread count once `n` pods each run an idle container.
async fn density(
    rt: &Arc<Runtime>,
    wasm: &Path,
    n: usize,
) -> Result<(f64, usize), Box<dyn std::error::Error>> {
    let image = file_image(wasm);
    // Warm up: compile once and let allocators settle, so the figure is per pod only.
    let warm = start_one(rt, "warm", &image).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes();
    let mut logs = rt.subscribe_logs();
    let mut pods = Vec::with_capacity(n);
    for i in 0..n {
        pods.push(start_one(rt, &format!("idle-{i}"), &image).await?);
    }
    // Each guest prints `tick 1` and then sleeps: wait until all are asleep.
    let mut first_ticks = 0;
    while first_ticks < n {
        let line = logs.recv().await?;
        if line.container.as_ref() == "idle" && line.text == "tick 1" {
            first_ticks += 1;
        }
    }
    let after = rss_bytes();
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    for pod in pods.iter().chain([&warm]) {
        rt.stop_pod(pod, Duration::ZERO).await?;
        rt.remove_pod(pod).await?;
    }
    Ok(((after.saturating_sub(before)) as f64 / n as f64, threads))
}

/// A pod named `name` running one container `idle` of `image`; returns the pod id.
async fn start_one(
    rt: &Arc<Runtime>,
    name: &str,
    image: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let pod = rt.run_pod(PodConfig {
        name: name.into(),
        ..Default::default()
    })?;
    let config = ContainerConfig {
        name: "idle".into(),
        image: image.into(),
        ..Default::default()
    };
    let id = rt.create_container(&pod, config).await?;
    rt.start_container(&id)?;
    Ok(pod)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The median of a few figures (rounds of a load test).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) * p / 100).min(sorted.len() - 1)]
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
