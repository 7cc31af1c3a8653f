//! What the engine's resource accounting costs, and how exactly it holds a CPU limit: container
//! start and lifecycle throughput with limits on against off, and the CPU share measured for
//! 1, 10 and 100 spinning guests under a quota.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmpod_runtime::engine::CpuLimits;
use wasmpod_runtime::runtime::Runtime;
use wasmpod_runtime::spec::{ContainerConfig, PodConfig};

use crate::report::Report;
use crate::{file_image, p50_p99, pct, start_latency};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A quota of `cpus` CPUs over the default period, and twice the default shares: every
/// per-poll branch of the CPU account (budget, refill, weight) runs.
fn limited(cpus: f64) -> (CpuLimits, Option<u64>) {
    let mut cpu = CpuLimits::default();
    cpu.quota_us = Some((cpus * cpu.period_us as f64).round() as u64);
    cpu.shares *= 2;
    (cpu, Some(64 << 20))
}

fn config(name: &str, image: &str, limits: Option<(CpuLimits, Option<u64>)>) -> ContainerConfig {
    let (cpu, memory_limit) = limits.unwrap_or_default();
    ContainerConfig {
        name: name.into(),
        image: image.into(),
        cpu,
        memory_limit,
        ..Default::default()
    }
}

pub async fn accounting(
    report: &mut Report,
    rt: &Arc<Runtime>,
    wasm: &Path,
    quick: bool,
) -> Result<()> {
    let hello = file_image(&wasm.join("hello.p1.wasm"));
    let settings = [("off", None), ("on", Some(limited(0.5)))];
    let starts = if quick { 100 } else { 2000 };
    // Off and on take turns, a tenth of the starts at a time, so a drift of the machine's
    // load falls on both.
    let mut lat = [Vec::new(), Vec::new()];
    for _ in 0..10 {
        for (lat, (_, limits)) in lat.iter_mut().zip(settings) {
            lat.extend(start_latency(rt, &config("c", &hello, limits), starts / 10).await?);
        }
    }
    for (lat, (label, _)) in lat.iter_mut().zip(settings) {
        lat.sort();
        report.row(
            &format!("in process: container start, CPU + memory limits {label}, n={starts}"),
            p50_p99(lat),
            None,
            None,
        );
    }
    let start_cost = pct(&lat[1], 50).as_secs_f64() / pct(&lat[0], 50).as_secs_f64() - 1.0;

    // Taking turns too, five rounds of 4 clients: each rate is its lifecycles over its time.
    let per_client = if quick { 5 } else { 100 };
    let lifecycles = per_client * 4 * 5;
    let mut time = [Duration::ZERO; 2];
    for _ in 0..5 {
        for (time, (_, limits)) in time.iter_mut().zip(settings) {
            *time += lifecycles_time(rt, &hello, limits, per_client, 4).await?;
        }
    }
    let rates = time.map(|t| lifecycles as f64 / t.as_secs_f64());
    for (rate, (label, _)) in rates.iter().zip(settings) {
        report.row(
            &format!(
                "in process: lifecycles/s (pod → container runs to exit → removed), 4 clients, limits {label}, n={lifecycles}"
            ),
            format!("{rate:.0}/s"),
            None,
            None,
        );
    }
    let rate_cost = 1.0 - rates[1] / rates[0];
    report.goal(
        "accounting cost ≤ 5% (start p50, lifecycle rate)",
        format!(
            "start {:+.1}%, lifecycles {:+.1}%",
            start_cost * 100.0,
            -rate_cost * 100.0
        ),
        start_cost <= 0.05 && rate_cost <= 0.05,
    );

    let spin = file_image(&wasm.join("forever.p1.wasm"));
    let (counts, window): (&[usize], _) = if quick {
        (&[1, 10], Duration::from_secs(2))
    } else {
        (&[1, 10, 100], Duration::from_secs(10))
    };
    for &n in counts {
        // Together the guests ask for at most 1.6 of the machine's cores, so each can get
        // what it asks for and the figure is the limit's accuracy, not contention.
        let share = (1.6 / n as f64).min(0.5);
        let measured = cpu_shares(rt, &spin, n, share, window).await?;
        let mean = measured.iter().sum::<f64>() / n as f64;
        let (min, max) = measured
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
        report.row(
            &format!(
                "CPU limit accuracy: {n} spinning guest(s) limited to {share:.3} CPU each, over {} s",
                window.as_secs()
            ),
            format!(
                "mean {mean:.3} ({:+.1}%), min {min:.3}, max {max:.3}",
                (mean / share - 1.0) * 100.0
            ),
            None,
            None,
        );
    }
    Ok(())
}

/// The time `clients` tasks take to run `per_client` full lifecycles each: pods whose one
/// container prints a line and exits, then removing the pod.
async fn lifecycles_time(
    rt: &Arc<Runtime>,
    image: &str,
    limits: Option<(CpuLimits, Option<u64>)>,
    per_client: usize,
    clients: usize,
) -> Result<Duration> {
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (rt, config) = (rt.clone(), config("c", image, limits));
            tokio::spawn(async move {
                for i in 0..per_client {
                    let pod = rt.run_pod(PodConfig {
                        name: format!("life-{client}-{i}"),
                        ..Default::default()
                    })?;
                    let id = rt.create_container(&pod, config.clone()).await?;
                    rt.start_container(&id)?;
                    rt.wait_container(&id).await?;
                    rt.remove_pod(&pod).await?;
                }
                Ok::<_, wasmpod_runtime::error::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(t0.elapsed())
}

/// The CPU share each of `n` spinning guests limited to `share` CPU gets over `window`,
/// read from the engine's own account after a second of warm-up.
async fn cpu_shares(
    rt: &Arc<Runtime>,
    image: &str,
    n: usize,
    share: f64,
    window: Duration,
) -> Result<Vec<f64>> {
    let mut pods = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let pod = rt.run_pod(PodConfig {
            name: format!("spin-{i}"),
            ..Default::default()
        })?;
        let mut config = config("spin", image, Some(limited(share)));
        config.args = vec!["--spin".into()];
        let id = rt.create_container(&pod, config).await?;
        rt.start_container(&id)?;
        pods.push(pod);
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = |ids: &[String]| -> Result<Vec<Duration>> {
        ids.iter()
            .map(|id| Ok(rt.container(id)?.usage().cpu))
            .collect()
    };
    let (before, t0) = (used(&ids)?, Instant::now());
    tokio::time::sleep(window).await;
    let (after, elapsed) = (used(&ids)?, t0.elapsed().as_secs_f64());
    for pod in &pods {
        rt.stop_pod(pod, Duration::ZERO).await?;
        rt.remove_pod(pod).await?;
    }
    Ok(before
        .iter()
        .zip(&after)
        .map(|(b, a)| (*a - *b).as_secs_f64() / elapsed)
        .collect())
}
