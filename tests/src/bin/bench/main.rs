//! wasmpod benchmarks: prints figures, asserts nothing about speed.
//!
//! `scripts/bench [--quick] [--containerd-shim] [--limits] [--aot] [--report docs/benchmarks.md]`
//! `scripts/bench --kube-scale [N] [--kube-scale-runc M]`
//!
//! - over the CRI, wasmpod against containerd + runc (same client, same machine, same run):
//!   pod start (interleaved), full lifecycle throughput with 1/4/16 clients, density (runtime
//!   RSS, start latency and List latency as idle pods accumulate);
//! - containerd's two runtimes for a RuntimeClass, wasmpod's shim against runc (both on CNI
//!   pod networks): pod start (interleaved) and RSS per idle pod; `--containerd-shim` runs
//!   only these;
//! - container start: create + start → first stdout line, module cached, in process (p50/p99);
//! - the cost of resource accounting (start and lifecycles with CPU + memory limits on against
//!   off) and CPU limit accuracy for 1, 10 and 100 spinning guests (`limits`);
//! - stop: how long a spinning WASI command takes to end once stopped (at once: no SIGTERM);
//! - density: RSS growth per idle pod across N idle pods in one process, and thread count;
//! - network: wasi:http hello world rps/latency against `wasmtime serve` (wrk), and TCP echo
//!   round trips inside a pod against the host;
//! - image pull + AOT compile, and container start with the artifact against compiling.
//!
//! Where the time goes is measured in the same run: the CRI pod starts and List calls against
//! the daemon's own histograms and its runtime's phase timings (`breakdown`).
//!
//! `--limits` runs only the accounting figures, `--aot` only the image and AOT ones. `--report` also writes a markdown report with SVG plots beside it.
//!
//! `--kube-scale` runs only the Kubernetes scale figures (`kube`): a Deployment of N idle
//! pods (default 1,000) through the real control plane and kubelet on wasmpod, then of M
//! (default N; 0 skips it) on containerd + runc.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmpod_runtime::runtime::{Runtime, RuntimeOptions};
use wasmpod_runtime::spec::{ContainerConfig, PodConfig};
use wasmpod_tests::containerd::{Containerd, Options};
use wasmpod_tests::cri::Daemon;

mod breakdown;
mod compare;
mod kube;
mod limits;
mod net;
mod report;
mod versions;

use compare::Peer;
use report::{Plot, Report};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let shim_only = args.iter().any(|a| a == "--containerd-shim");
    let limits_only = args.iter().any(|a| a == "--limits");
    let aot_only = args.iter().any(|a| a == "--aot");
    let report_path = args
        .iter()
        .position(|a| a == "--report")
        .map(|i| {
            args.get(i + 1)
                .map(PathBuf::from)
                .ok_or("--report needs a path")
        })
        .transpose()?;
    if let Some(i) = args.iter().position(|a| a == "--kube-scale") {
        let count = |i: Option<usize>, default: usize| -> Result<usize, String> {
            match i.and_then(|i| args.get(i)).filter(|a| !a.starts_with("--")) {
                Some(n) => n.parse().map_err(|_| format!("not a pod count: {n}")),
                None => Ok(default),
            }
        };
        let pods = count(Some(i + 1), 1000)?;
        let runc = count(
            args.iter()
                .position(|a| a == "--kube-scale-runc")
                .map(|i| i + 1),
            pods,
        )?;
        kube::scale(pods, runc).await?;
        return Ok(());
    }
    let wasm = examples_dir().join("wasm");
    for name in [
        "hello.p1.wasm",
        "hello.p2.wasm",
        "forever.p1.wasm",
        "netprobe.p2.wasm",
        "http-hello.p2.wasm",
        "toolbox.p1.wasm",
    ] {
        if !wasm.join(name).exists() {
            return Err(format!(
                "{} missing: run examples/build.sh first",
                wasm.join(name).display()
            )
            .into());
        }
    }
    let bin = std::env::current_exe()?.with_file_name("wasmpod");
    if !bin.exists() {
        return Err(format!(
            "{} missing: cargo build --release -p wasmpod",
            bin.display()
        )
        .into());
    }
    let mut report = Report::default();
    report.version("wasmpod commit", versions::git_commit());
    report.version("wasmtime", versions::wasmtime());
    println!(
        "wasmpod benchmark ({} cores, {})",
        cores(),
        if quick { "quick" } else { "full" }
    );
    println!();
    println!("| figure | wasmpod | containerd + runc |");
    println!("|---|---|---|");
    if limits_only {
        let (_state, rt) = in_process_runtime()?;
        limits::accounting(&mut report, &rt, &wasm, quick).await?;
    } else if aot_only {
        aot_figures(&mut report, quick).await?;
    } else {
        if !shim_only {
            compare_over_cri(&mut report, &bin, &wasm, quick).await?;
            in_process(&mut report, &wasm, quick).await?;
        }
        // Last: its rows sit under a row naming its own columns.
        compare_containerd_runtimes(&mut report, quick).await?;
    }
    if let Some(path) = report_path {
        report.write(&path, quick)?;
        println!();
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn p50_p99(lat: &[Duration]) -> String {
    format!("p50 {} · p99 {}", fmt(pct(lat, 50)), fmt(pct(lat, 99)))
}

/// How many times `theirs` is `ours` (ours smaller is better).
fn times(theirs: Duration, ours: Duration) -> f64 {
    theirs.as_secs_f64() / ours.as_secs_f64().max(1e-9)
}

/// How a pod start comparison is reported.
struct PodStartFigures {
    /// The goal against the second peer, and the ratio that meets it.
    goal: &'static str,
    times_faster: f64,
    plot: &'static str,
    title: String,
}

/// A pod start comparison's row (the first peer against the second), its ratio goal and
/// its CDF plot.
fn report_pod_start(
    report: &mut Report,
    peers: &[&Peer],
    starts: Vec<Vec<Duration>>,
    figures: PodStartFigures,
) {
    let n = starts[0].len();
    let ours = pct(&starts[0], 50);
    report.row(
        &format!("pod start (runp + create + start → first log line), n={n}, interleaved"),
        p50_p99(&starts[0]),
        starts.get(1).map(|l| p50_p99(l)),
        starts.get(1).map(|l| times(pct(l, 50), ours)),
    );
    if let Some(theirs) = starts.get(1) {
        let ratio = times(pct(theirs, 50), ours);
        report.goal(
            figures.goal,
            format!("×{ratio:.1}"),
            ratio >= figures.times_faster,
        );
    }
    report.plots.push(Plot::Cdf {
        file: figures.plot.into(),
        title: figures.title,
        series: peers
            .iter()
            .map(|p| p.name().to_owned())
            .zip(starts)
            .collect(),
    });
}

/// The CRI figures, wasmpod against containerd + runc when containerd can run here.
async fn compare_over_cri(
    report: &mut Report,
    bin: &Path,
    wasm: &Path,
    quick: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("wasmpod.sock");
    // /metrics on: the breakdown reads the server's own timings there.
    let metrics = wasmpod_tests::free_port();
    let config = format!("[metrics]\naddress = \"127.0.0.1:{metrics}\"\n");
    let ours = Peer::Wasmpod {
        daemon: Daemon::start_bin_with(bin.to_path_buf(), dir, socket, Some(&config)).await,
        metrics,
        hello: file_image(&wasm.join("hello.p1.wasm")),
        idle: file_image(&wasm.join("forever.p1.wasm")),
        toolbox: file_image(&wasm.join("toolbox.p1.wasm")),
    };
    let theirs = match Containerd::try_start().await {
        Ok(c) => {
            if let Some(exe) = c.containerd_pid().and_then(versions::exe_of) {
                report.version("containerd", versions::of(&exe));
            }
            if let Some(runc) = net::which("runc") {
                report.version("runc", versions::of(&runc));
            }
            Some(Peer::Containerd(c))
        }
        Err(e) => {
            report.note(format!("containerd + runc not measured: {e:#}"));
            None
        }
    };
    let peers: Vec<&Peer> = std::iter::once(&ours).chain(theirs.as_ref()).collect();

    let n = if quick { 20 } else { 500 };
    // wasmpod's code cache warm before the window, so its first compile is not in the means.
    let mut client = ours.client().await;
    let warm = compare::start_pod(&ours, &mut client, "warm", ours.hello())
        .await
        .map_err(|e| e.to_string())?;
    compare::finish_pod(&mut client, &warm)
        .await
        .map_err(|e| e.to_string())?;
    let before = breakdown::scrape(metrics)
        .await
        .map_err(|e| e.to_string())?;
    let measured = compare::pod_start(&peers, n)
        .await
        .map_err(|e| e.to_string())?;
    let window = breakdown::Window {
        before,
        after: breakdown::scrape(metrics)
            .await
            .map_err(|e| e.to_string())?,
    };
    report.breakdown(breakdown::pod_start(&measured[0], &window));
    let starts: Vec<Vec<Duration>> = measured.into_iter().map(|t| t.total).collect();
    let (p50, p99) = (pct(&starts[0], 50), pct(&starts[0], 99));
    report.goal(
        "pod start p50 ≤ 1 ms",
        fmt(p50),
        p50 <= Duration::from_millis(1),
    );
    report.goal(
        "pod start p99 ≤ 3 ms",
        fmt(p99),
        p99 <= Duration::from_millis(3),
    );
    report_pod_start(
        report,
        &peers,
        starts,
        PodStartFigures {
            goal: "pod start ≥ 80× faster than containerd + runc (p50)",
            times_faster: 80.0,
            plot: "bench-pod-start.svg",
            title: format!("Pod start through the CRI, n={n}"),
        },
    );

    let (n_exec, n_crictl) = if quick { (20, 3) } else { (500, 30) };
    let crictl = wasmpod_tests::peers::crictl();
    let (sync, spdy) = compare::exec(&peers, n_exec, &crictl, n_crictl)
        .await
        .map_err(|e| e.to_string())?;
    report.row(
        &format!("ExecSync `echo hello` round trip through the CRI, n={n_exec}, interleaved"),
        p50_p99(&sync[0]),
        sync.get(1).map(|l| p50_p99(l)),
        sync.get(1).map(|l| times(pct(l, 50), pct(&sync[0], 50))),
    );
    report.row(
        &format!("`crictl exec` (SPDY; the whole crictl process), n={n_crictl}"),
        p50_p99(&spdy[0]),
        spdy.get(1).map(|l| p50_p99(l)),
        spdy.get(1).map(|l| times(pct(l, 50), pct(&spdy[0], 50))),
    );
    let exec_p50 = pct(&sync[0], 50);
    report.goal(
        "ExecSync p50 ≤ 2 ms",
        fmt(exec_p50),
        exec_p50 <= Duration::from_millis(2),
    );
    if let Some(theirs) = sync.get(1) {
        let ratio = times(pct(theirs, 50), exec_p50);
        report.goal(
            "ExecSync ≥ 20× faster than containerd + runc (p50)",
            format!("×{ratio:.1}"),
            ratio >= 20.0,
        );
    }

    let secs = if quick { 2.0 } else { 10.0 };
    let mut four = 0f64;
    for clients in [1, 4, 16] {
        let mut rates = Vec::new();
        for p in &peers {
            rates.push(
                compare::lifecycles_per_second(p, clients, secs)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        report.row(
            &format!("full lifecycles/s (start → first line → exit → stop → remove), {clients} client(s)"),
            format!("{:.0}/s", rates[0]),
            rates.get(1).map(|r| format!("{r:.1}/s")),
            rates.get(1).map(|r| rates[0] / r),
        );
        if clients == 4 {
            four = rates[0];
        }
    }
    report.goal(
        "≥ 1,000 full lifecycles/s with 4 clients",
        format!("{four:.0}/s"),
        four >= 1000.0,
    );

    let (ours_counts, theirs_counts): (&[usize], &[usize]) = if quick {
        (&[10, 100], &[10])
    } else {
        (&[100, 1000, 5000, 10_000], &[100, 250])
    };
    let probe = if quick { 10 } else { 50 };
    let mut curves = Vec::new();
    for (p, counts) in peers.iter().zip([ours_counts, theirs_counts]) {
        let points = compare::density(p, counts, probe)
            .await
            .map_err(|e| e.to_string())?;
        if let (Peer::Wasmpod { metrics, .. }, Some(last)) = (p, points.last()) {
            // At the largest count, its pods still running.
            let (lists, server) = breakdown::lists(&mut p.client().await, *metrics, last.pods, 10)
                .await
                .map_err(|e| e.to_string())?;
            report.breakdown(lists);
            for (call, time) in server {
                report.goal(
                    &format!("{call} at {} pods: server time ≤ 5 ms", last.pods),
                    fmt(time),
                    time <= Duration::from_millis(5),
                );
            }
        }
        curves.push((p.name().to_owned(), points));
    }
    let per_pod = |p: &compare::DensityPoint| {
        format!(
            "{:.1} KiB added per pod · {:.0} MiB total",
            p.rss_per_pod / 1024.0,
            p.rss as f64 / 1048576.0
        )
    };
    let counts: std::collections::BTreeSet<usize> = curves
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.pods))
        .collect();
    for count in counts {
        let at = |k: usize| {
            curves
                .get(k)
                .and_then(|(_, pts)| pts.iter().find(|p| p.pods == count))
        };
        let (a, b) = (at(0), at(1));
        let cell = |f: &dyn Fn(&compare::DensityPoint) -> String,
                    p: Option<&compare::DensityPoint>| p.map(f);
        report.row(
            &format!("idle pods: runtime RSS at {count} pods (added per pod · total)"),
            cell(&per_pod, a).unwrap_or_else(|| "—".into()),
            cell(&per_pod, b),
            a.zip(b)
                .map(|(a, b)| b.rss_per_pod / a.rss_per_pod.max(1.0)),
        );
        report.row(
            &format!("pod start at {count} idle pods (next {probe})"),
            cell(&|p| p50_p99(&p.start), a).unwrap_or_else(|| "—".into()),
            cell(&|p| p50_p99(&p.start), b),
            a.zip(b)
                .map(|(a, b)| times(pct(&b.start, 50), pct(&a.start, 50))),
        );
        report.row(
            &format!("ListContainers / ListPodSandbox at {count} pods (p50)"),
            cell(
                &|p| {
                    format!(
                        "{} / {}",
                        fmt(pct(&p.list_containers, 50)),
                        fmt(pct(&p.list_pods, 50))
                    )
                },
                a,
            )
            .unwrap_or_else(|| "—".into()),
            cell(
                &|p| {
                    format!(
                        "{} / {}",
                        fmt(pct(&p.list_containers, 50)),
                        fmt(pct(&p.list_pods, 50))
                    )
                },
                b,
            ),
            a.zip(b)
                .map(|(a, b)| times(pct(&b.list_containers, 50), pct(&a.list_containers, 50))),
        );
    }
    let threads: Vec<(usize, u64)> = curves
        .first()
        .map(|(_, pts)| {
            pts.iter()
                .filter_map(|p| Some((p.pods, p.threads?)))
                .collect()
        })
        .unwrap_or_default();
    if let (Some(first), Some(last)) = (threads.first(), threads.last()) {
        let counts: Vec<String> = threads.iter().map(|(n, t)| format!("{t} at {n}")).collect();
        report.row(
            "wasmpod serve's threads as idle pods grow",
            counts.join(" · "),
            None,
            None,
        );
        report.goal(
            "the daemon's threads stay constant as pods grow",
            format!(
                "{} at {} pods, {} at {} pods",
                first.1, first.0, last.1, last.0
            ),
            last.1 <= first.1,
        );
    }
    if let Some(last) = curves.first().and_then(|(_, pts)| pts.last()) {
        let kib = last.rss_per_pod / 1024.0;
        report.goal(
            &format!("{} idle pods at ≤ 50 KiB RSS added per pod", last.pods),
            format!("{kib:.1} KiB"),
            kib <= 50.0,
        );
        let (p50, p99) = (pct(&last.start, 50), pct(&last.start, 99));
        report.goal(
            &format!(
                "pod start at {} idle pods: p50 ≤ 1 ms, p99 ≤ 3 ms",
                last.pods
            ),
            format!("{} / {}", fmt(p50), fmt(p99)),
            p50 <= Duration::from_millis(1) && p99 <= Duration::from_millis(3),
        );
        for (call, lat) in [
            ("ListContainers", &last.list_containers),
            ("ListPodSandbox", &last.list_pods),
        ] {
            let p50 = pct(lat, 50);
            report.goal(
                &format!("{call} at {} pods: round trip p50 ≤ 15 ms", last.pods),
                fmt(p50),
                p50 <= Duration::from_millis(15),
            );
        }
    }
    let series = |f: fn(&compare::DensityPoint) -> f64| {
        curves
            .iter()
            .map(|(name, pts)| {
                (
                    name.clone(),
                    pts.iter().map(|p| (p.pods as f64, f(p))).collect(),
                )
            })
            .collect()
    };
    report.plots.push(Plot::Lines {
        file: "bench-density-rss.svg".into(),
        title: "Runtime RSS added per idle pod".into(),
        y_label: "KiB added per pod (log scale)".into(),
        series: series(|p| p.rss_per_pod / 1024.0),
    });
    report.plots.push(Plot::Lines {
        file: "bench-density-start.svg".into(),
        title: "Pod start latency (p50) as idle pods accumulate".into(),
        y_label: "milliseconds (log scale)".into(),
        series: series(|p| pct(&p.start, 50).as_secs_f64() * 1e3),
    });
    report.plots.push(Plot::Lines {
        file: "bench-density-list.svg".into(),
        title: "ListContainers latency (p50) by pod count".into(),
        y_label: "milliseconds (log scale)".into(),
        series: series(|p| pct(&p.list_containers, 50).as_secs_f64() * 1e3),
    });
    if theirs.is_some() && !quick {
        report.note(format!(
            "containerd + runc density stops at {} pods: each pod is a shim process plus a runc \
             container and a pause container, and this {}-core machine would take far longer \
             than the run for 10,000.",
            theirs_counts.last().unwrap(),
            cores()
        ));
    }
    Ok(())
}

/// containerd's CRI with wasmpod's shim (its RuntimeClass) against containerd's CRI with runc,
/// each an instance of its own with pods on CNI networks: a Wasm pod refuses the node's
/// network, and runc on the same network setup keeps the two comparable. RSS counts containerd
/// and every process the runtime adds (the wasmpod daemon and any shim left; runc's shims).
async fn compare_containerd_runtimes(
    report: &mut Report,
    quick: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let ours = match Options::wasmpod_cni().try_start().await {
        Ok(c) => Peer::ContainerdShim(c),
        Err(e) => {
            report.note(format!("containerd + wasmpod shim not measured: {e:#}"));
            return Ok(());
        }
    };
    let theirs = match Options::default().cni(true).try_start().await {
        Ok(c) => Some(Peer::Containerd(c)),
        Err(e) => {
            report.note(format!("containerd + runc on CNI not measured: {e:#}"));
            None
        }
    };
    let peers: Vec<&Peer> = std::iter::once(&ours).chain(theirs.as_ref()).collect();
    report.columns(
        "containerd's CRI, pods on CNI",
        "containerd + wasmpod shim",
        "containerd + runc",
    );

    let n = if quick { 20 } else { 200 };
    let starts = match compare::pod_start(&peers, n).await {
        Ok(s) => s.into_iter().map(|t| t.total).collect(),
        Err(e) => return Err(with_logs(&peers, e).into()),
    };
    report_pod_start(
        report,
        &peers,
        starts,
        PodStartFigures {
            goal: "containerd + wasmpod pod start ≥ 3× faster than containerd + runc (p50)",
            times_faster: 3.0,
            plot: "bench-containerd-shim-pod-start.svg",
            title: format!("Pod start through containerd's CRI, n={n}"),
        },
    );

    // The pod start run above warmed both up (the daemon runs, images are unpacked): the
    // baseline is the runtime with no pod.
    let counts: &[usize] = if quick { &[10] } else { &[50, 100] };
    let mut curves = Vec::new();
    for p in &peers {
        match compare::density(p, counts, 10).await {
            Ok(points) => curves.push(points),
            Err(e) => return Err(with_logs(&peers, e).into()),
        }
    }
    for (i, &count) in counts.iter().enumerate() {
        let cell = |k: usize| {
            curves.get(k).map(|pts: &Vec<compare::DensityPoint>| {
                let p = &pts[i];
                format!(
                    "{:.0} KiB added per pod · {:.0} MiB total",
                    p.rss_per_pod / 1024.0,
                    p.rss as f64 / 1048576.0
                )
            })
        };
        report.row(
            &format!(
                "idle pods: RSS of containerd + runtime processes at {count} pods (added per pod · total)"
            ),
            cell(0).unwrap_or_else(|| "—".into()),
            cell(1),
            curves
                .get(1)
                .map(|t| t[i].rss_per_pod / curves[0][i].rss_per_pod.max(1.0)),
        );
    }
    if let Some(last) = curves.first().and_then(|pts| pts.last()) {
        let mib = last.rss_per_pod / 1048576.0;
        report.goal(
            &format!(
                "≤ 1 MiB added RSS per idle pod (containerd + wasmpod), {} pods",
                last.pods
            ),
            format!("{:.0} KiB", last.rss_per_pod / 1024.0),
            mib <= 1.0,
        );
    }
    Ok(())
}

/// A failure of the containerd comparison with the tails of each instance's log (a shim's
/// complaints end up there) and of the wasmpod daemon's (the shim starts it logging beside
/// its socket).
fn with_logs(peers: &[&Peer], e: impl std::fmt::Display) -> String {
    let mut text = e.to_string();
    for p in peers {
        let (Peer::Containerd(c) | Peer::ContainerdShim(c)) = p else {
            continue;
        };
        text.push_str(&format!("\n{} log:\n{}", p.name(), c.log_tail(30)));
        if let Some(dir) = c.wasmpod_socket().and_then(Path::parent) {
            let log = std::fs::read_to_string(dir.join("wasmpod.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            text.push_str(&format!("\nwasmpod daemon log:\n{tail}"));
        }
    }
    text
}

/// A runtime of the benchmark's own, with its state in a temporary directory (kept while the
/// returned handle lives).
fn in_process_runtime() -> Result<(tempfile::TempDir, Arc<Runtime>), Box<dyn std::error::Error>> {
    let state = tempfile::tempdir()?;
    let rt = Runtime::new(RuntimeOptions {
        state_dir: state.path().into(),
        ..Default::default()
    })?;
    Ok((state, rt))
}

/// Figures of wasmpod alone, in process: container start, kill, density, network, images.
async fn in_process(
    report: &mut Report,
    wasm: &Path,
    quick: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let (_state, rt) = in_process_runtime()?;
    let starts = if quick { 200 } else { 2000 };
    let idle = if quick { 200 } else { 1000 };
    for (label, file) in [
        ("p1 module", "hello.p1.wasm"),
        ("p2 component", "hello.p2.wasm"),
    ] {
        let config = ContainerConfig {
            name: "c".into(),
            image: file_image(&wasm.join(file)),
            ..Default::default()
        };
        let lat = start_latency(&rt, &config, starts).await?;
        report.row(
            &format!(
                "in process: container start ({label}, create+start → first line), n={starts}"
            ),
            p50_p99(&lat),
            None,
            None,
        );
    }
    limits::accounting(report, &rt, wasm, quick).await?;
    let kill = kill_latency(
        &rt,
        &wasm.join("forever.p2.wasm"),
        if quick { 5 } else { 20 },
    )
    .await?;
    report.row(
        "in process: spinning WASI command stopped, 30 s grace (stop → exited)",
        format!(
            "p50 {} · max {}",
            fmt(pct(&kill, 50)),
            fmt(*kill.last().unwrap())
        ),
        None,
        None,
    );
    let (per_pod, threads) = density(&rt, &wasm.join("forever.p1.wasm"), idle).await?;
    report.row(
        &format!("in process: RSS added per idle pod ({idle} pods), threads"),
        format!(
            "{:.1} KiB added per pod, {threads} threads",
            per_pod / 1024.0
        ),
        None,
        None,
    );

    let (rounds, secs) = if quick { (1, 3) } else { (3, 10) };
    let root = examples_dir().join("..");
    match net::http_vs_wasmtime(&rt, &root, &wasm.join("http-hello.p2.wasm"), rounds, secs).await {
        Ok((ours, theirs)) => {
            for (who, loads) in [("wasmpod", &ours), ("wasmtime serve", &theirs)] {
                report.row(
                    &format!("wasi:http hello, {who} (wrk -t1 -c16, {rounds}×{secs}s interleaved)"),
                    format!(
                        "{:.0} rps · p50 {} · p99 {}",
                        median(loads.iter().map(|l| l.rps)),
                        fmt(Duration::from_secs_f64(median(
                            loads.iter().map(|l| l.p50.as_secs_f64())
                        ))),
                        fmt(Duration::from_secs_f64(median(
                            loads.iter().map(|l| l.p99.as_secs_f64())
                        ))),
                    ),
                    None,
                    None,
                );
            }
            let ratio = median(ours.iter().map(|l| l.rps)) / median(theirs.iter().map(|l| l.rps));
            let p99 = Duration::from_secs_f64(median(ours.iter().map(|l| l.p99.as_secs_f64())));
            report.goal(
                "wasi:http rps ≥ 1.0× wasmtime serve",
                format!("×{ratio:.2}"),
                ratio >= 1.0,
            );
            report.goal(
                "wasi:http p99 < 5 ms",
                fmt(p99),
                p99 < Duration::from_millis(5),
            );
            report.row(
                "wasi:http rps, wasmpod / wasmtime serve",
                format!("×{ratio:.2}"),
                None,
                None,
            );
        }
        Err(e) => report.note(format!(
            "wasi:http against wasmtime serve not measured: {e}"
        )),
    }
    let trips = if quick { 500 } else { 5000 };
    let (in_pod, host) = net::echo_round_trips(&rt, &wasm.join("netprobe.p2.wasm"), trips).await?;
    for (label, lat) in [
        ("two containers of a pod, over its localhost", &in_pod),
        ("two host threads over 127.0.0.1 (native)", &host),
    ] {
        report.row(
            &format!("TCP echo round trip (64 B), {label}, n={trips}"),
            p50_p99(lat),
            None,
            None,
        );
    }

    aot_figures(report, quick).await
}

/// Image pull + AOT compile, and the first container start of a fresh runtime (as after a
/// daemon restart) with the artifact on disk against compiling.
async fn aot_figures(report: &mut Report, quick: bool) -> Result<(), Box<dyn std::error::Error>> {
    let sizes: &[(&str, usize)] = if quick {
        &[("100 KiB", 100 << 10)]
    } else {
        &[
            ("100 KiB", 100 << 10),
            ("2 MiB", 2 << 20),
            ("20 MiB", 20 << 20),
        ]
    };
    for &(label, size) in sizes {
        let f = image_figures(size).await?;
        report.row(
            &format!(
                "image pull + AOT, {label} module ({} functions)",
                f.functions
            ),
            fmt(f.pull),
            None,
            None,
        );
        report.row(
            &format!(
                "first container start of a new runtime, {label}: with the AOT artifact \
                 (median of {RESTARTS}) / compiling"
            ),
            format!(
                "{} / {} (×{:.0})",
                fmt(f.start_with_artifact),
                fmt(f.start_compiling),
                f.start_compiling.as_secs_f64() / f.start_with_artifact.as_secs_f64().max(1e-9)
            ),
            None,
            None,
        );
        if size == 2 << 20 {
            report.goal(
                "first container start after a restart, 2 MiB module ≤ 2 ms",
                fmt(f.start_with_artifact),
                f.start_with_artifact <= Duration::from_millis(2),
            );
        }
    }
    Ok(())
}

/// Fresh runtimes whose first start with the artifact is timed.
const RESTARTS: usize = 5;

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
    let mut with_artifact = Vec::new();
    for _ in 0..RESTARTS {
        with_artifact.push(start(open()?).await?);
    }
    with_artifact.sort();
    let start_with_artifact = with_artifact[RESTARTS / 2];
    std::fs::remove_dir_all(state.join("aot"))?;
    let start_compiling = start(open()?).await?;
    Ok(ImageFigures {
        functions,
        pull,
        start_with_artifact,
        start_compiling,
    })
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

/// Create + start of `template` → its first stdout line, `n` times in one pod, the module
/// compiled once before. The container must be named `c`.
async fn start_latency(
    rt: &Arc<Runtime>,
    template: &ContainerConfig,
    n: usize,
) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let pod = rt.run_pod(PodConfig {
        name: "bench-start".into(),
        ..Default::default()
    })?;
    let mut logs = rt.subscribe_logs();
    let mut out = Vec::with_capacity(n);
    for i in 0..=n {
        let config = ContainerConfig {
            attempt: i as u32,
            ..template.clone()
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

/// Time from a stop (with a 30 s grace a WASI command cannot use) to the spinning guest
/// having exited.
async fn kill_latency(
    rt: &Arc<Runtime>,
    wasm: &Path,
    n: usize,
) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let grace = Duration::from_secs(30);
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
        out.push(t0.elapsed());
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
