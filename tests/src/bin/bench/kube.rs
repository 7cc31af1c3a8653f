//! Kubernetes at scale (issue 15): a Deployment of idle pods scaled to N and back to 0
//! through the real control plane and kubelet (`wasmpod_tests::cluster`), on a node whose
//! runtime is `wasmpod serve`, then on a node of containerd + runc. Reports how long until
//! all N are Running (the Deployment's `readyReplicas`; the pods have no probes, so a pod is
//! ready once its container runs), the RSS of the runtime, kubelet and the API server, how
//! long until none is left, and what is left behind.

use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use wasmpod_tests::cluster::Cluster;
use wasmpod_tests::containerd::TOOLBOX_P1;

use crate::compare::rss_of;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// How long after the scale-down's limit the run waits for kubelet to remove what is left:
/// two rounds of its garbage collection.
const GC_WAIT: Duration = Duration::from_secs(150);

/// The Deployment's name and its pods' `app` label.
const APP: &str = "scale";

/// A node runtime to scale a Deployment on.
#[derive(Clone, Copy)]
enum NodeKind {
    Wasmpod,
    Runc,
}

impl NodeKind {
    fn name(self) -> &'static str {
        match self {
            NodeKind::Wasmpod => "wasmpod serve",
            NodeKind::Runc => "containerd 2.4 + runc",
        }
    }
}

/// What one scale run measured.
struct Row {
    kind: NodeKind,
    pods: usize,
    /// Pods ready when the run stopped waiting (`pods` unless it gave up).
    ready: usize,
    up: Duration,
    /// None when the run gave up waiting for the scale-down (no pod in the API, no sandbox
    /// ready in the runtime).
    down: Option<Duration>,
    /// Since the scale-down: until the runtime lists none of the pods' sandboxes and
    /// containers (None: some were left).
    removed: Option<Duration>,
    /// RSS in bytes before and at N pods: the runtime's processes, kubelet, the API server.
    runtime: (u64, u64),
    kubelet: (u64, u64),
    apiserver: (u64, u64),
    /// runc only: the RSS of the containers' own processes (pause and workload) at N pods.
    containers: u64,
    /// Sandboxes and containers the runtime still lists (any state) at the end.
    left: (usize, usize),
}

/// Scales a Deployment to `pods` on a wasmpod node and to `runc_pods` on a containerd +
/// runc node (0: not measured); prints a markdown table and returns it.
pub async fn scale(pods: usize, runc_pods: usize) -> Res<String> {
    let mut rows = Vec::new();
    rows.push(scale_once(&Cluster::start().await, NodeKind::Wasmpod, pods).await?);
    if runc_pods > 0 {
        rows.push(scale_once(&Cluster::start_on_runc().await, NodeKind::Runc, runc_pods).await?);
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let per_pod = |(before, after): (u64, u64), n: usize| {
        after.saturating_sub(before) as f64 / 1024.0 / n.max(1) as f64
    };
    let mut table = String::from(
        "| node runtime | pods Running | time to all Running | pods/s | back to 0 | removed from the runtime | left in the runtime (sandboxes, containers) | runtime RSS at N (added per pod) | kubelet RSS at N (added per pod) | kube-apiserver RSS at N (added per pod) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let containers = match r.kind {
            NodeKind::Runc => format!(
                " + {:.0} MiB in the containers' processes",
                mib(r.containers)
            ),
            NodeKind::Wasmpod => String::new(),
        };
        table.push_str(&format!(
            "| {} | {} of {} | {:.1} s | {:.1} | {} | {} | {}, {} | {:.0} MiB ({:.0} KiB){containers} | {:.0} MiB ({:.0} KiB) | {:.0} MiB ({:.0} KiB) |\n",
            r.kind.name(),
            r.ready,
            r.pods,
            r.up.as_secs_f64(),
            r.ready as f64 / r.up.as_secs_f64().max(1e-9),
            r.down
                .map_or("not within the limit".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
            r.removed
                .map_or("not all".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
            r.left.0,
            r.left.1,
            mib(r.runtime.1),
            per_pod(r.runtime, r.ready),
            mib(r.kubelet.1),
            per_pod(r.kubelet, r.ready),
            mib(r.apiserver.1),
            per_pod(r.apiserver, r.ready),
        ));
    }
    println!("{table}");
    Ok(table)
}

/// The Deployment of `replicas` idle pods for a node of `kind`: the toolbox's `sleep inf`
/// on wasmpod; the native `idle` program on runc, on the node's network (its CNI subnet is
/// a /24, too small for 1,000 pods; a pod without a network of its own favours runc).
fn deployment(kind: NodeKind, c: &Cluster, replicas: usize) -> String {
    let container = match kind {
        NodeKind::Wasmpod => format!(
            "{{name: idle, image: {TOOLBOX_P1}, imagePullPolicy: Never, command: [sleep, inf]}}"
        ),
        NodeKind::Runc => format!(
            "{{name: idle, image: {}, imagePullPolicy: Never}}",
            c.containerd().idle_image()
        ),
    };
    let host_network = matches!(kind, NodeKind::Runc);
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {APP}}}\nspec:\
         \n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {APP}}}}}\n  template:\
         \n    metadata: {{labels: {{app: {APP}}}}}\n    spec:\
         \n      automountServiceAccountToken: false\n      enableServiceLinks: false\
         \n      hostNetwork: {host_network}\n      terminationGracePeriodSeconds: 2\
         \n      containers: [{container}]\n"
    )
}

async fn scale_once(c: &Cluster, kind: NodeKind, pods: usize) -> Res<Row> {
    let rss = |pids: Vec<u32>| pids.into_iter().map(rss_of).sum::<u64>();
    let kubelet_pid = c.kubelet().pid().ok_or("kubelet is not running")?;
    let api_pid = c
        .pid("kube-apiserver")
        .ok_or("the API server is not running")?;
    let before = (rss(c.runtime_pids()), rss_of(kubelet_pid), rss_of(api_pid));
    println!("{}: scaling a Deployment to {pods} idle pods", kind.name());
    c.apply(APP, &deployment(kind, c, pods));
    let started = Instant::now();
    // Bounded: far above what a healthy node needs (a second a pod; runc's take about 0.5 s
    // to start and 0.8 s to stop here).
    let limit = Duration::from_secs(300) + Duration::from_secs(1) * pods as u32;
    let mut ready = 0;
    while started.elapsed() < limit {
        ready = ready_replicas(c);
        if ready >= pods {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let up = started.elapsed();
    println!(
        "  {ready} of {pods} Running after {:.1} s",
        up.as_secs_f64()
    );
    let at_n = (rss(c.runtime_pids()), rss_of(kubelet_pid), rss_of(api_pid));
    let containers = match kind {
        NodeKind::Runc => rss(c.containerd().container_pids()),
        NodeKind::Wasmpod => 0,
    };

    c.kubectl_ok(&["scale", "deployment", APP, "--replicas=0"]);
    let started = Instant::now();
    while started.elapsed() < limit && (pods_in_api(c) > 0 || live_in_runtime(c).await > 0) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let down = (started.elapsed() < limit).then(|| started.elapsed());
    println!("  {}", down_text(down, limit));
    // kubelet removes the stopped sandboxes and containers of deleted pods in its garbage
    // collection (once a minute): nothing is left once it has.
    let mut left = left_in_runtime(c).await;
    while started.elapsed() < limit + GC_WAIT && left != (0, 0) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        left = left_in_runtime(c).await;
    }
    let removed = (left == (0, 0)).then(|| started.elapsed());
    println!(
        "  {}; the runtime lists {} of their sandboxes, {} containers",
        match removed {
            Some(d) => format!(
                "all removed from the runtime after {:.1} s",
                d.as_secs_f64()
            ),
            None => "not all removed from the runtime".to_owned(),
        },
        left.0,
        left.1
    );
    Ok(Row {
        kind,
        pods,
        ready,
        up,
        down,
        removed,
        runtime: (before.0, at_n.0),
        kubelet: (before.1, at_n.1),
        apiserver: (before.2, at_n.2),
        containers,
        left,
    })
}

/// How the scale-down went: its time, or that it was still going at `limit`.
fn down_text(down: Option<Duration>, limit: Duration) -> String {
    match down {
        Some(d) => format!("back to 0 after {:.1} s", d.as_secs_f64()),
        None => format!("not back to 0 after {:.0} s", limit.as_secs_f64()),
    }
}

/// The Deployment's `readyReplicas` (0 until it has any).
fn ready_replicas(c: &Cluster) -> usize {
    let (_, out, _) = c.kubectl(&[
        "get",
        "deployment",
        APP,
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    out.trim().parse().unwrap_or(0)
}

/// How many of the Deployment's pods the API still has.
fn pods_in_api(c: &Cluster) -> usize {
    let (_, out, _) = c.kubectl(&["get", "pods", "-l", &format!("app={APP}"), "-o", "name"]);
    out.lines().count()
}

/// The Deployment's sandboxes the runtime still has ready.
async fn live_in_runtime(c: &Cluster) -> usize {
    sandboxes(c)
        .await
        .iter()
        .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
        .count()
}

/// The Deployment's sandboxes and containers the runtime still lists, any state.
async fn left_in_runtime(c: &Cluster) -> (usize, usize) {
    let sandboxes = sandboxes(c).await;
    let mut rt = c.kubelet().cri().await;
    let containers = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .map(|r| r.into_inner().containers)
        .unwrap_or_default();
    let ours = containers
        .iter()
        .filter(|k| sandboxes.iter().any(|s| s.id == k.pod_sandbox_id))
        .count();
    (sandboxes.len(), ours)
}

async fn sandboxes(c: &Cluster) -> Vec<cri::PodSandbox> {
    c.kubelet().sandboxes_labelled("app", APP).await
}
