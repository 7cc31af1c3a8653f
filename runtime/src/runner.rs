//! The local runner behind `wasmpod run`: runs a Pod manifest the way kubelet would on one
//! node. Init containers run one after another, then the containers side by side;
//! `restartPolicy` is honoured with kubelet's exponential back-off; a shutdown request gives
//! each container its grace period; an emptyDir over its `sizeLimit` evicts the pod.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::container::{Container, ContainerState};
use crate::error::Result;
use crate::exit::{Exit, ExitReason};
use crate::image::Credentials;
use crate::manifest::{PodManifest, RestartPolicy};
use crate::runtime::Runtime;
use crate::spec::ContainerConfig;

/// Something the runner did that a person watching wants to know.
pub type EventSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

pub struct RunnerOptions {
    /// First restart delay; doubled per restart up to `backoff_max` (kubelet: 10 s, 5 min).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A run at least this long resets the back-off (kubelet: 10 min).
    pub backoff_reset: Duration,
    /// How often emptyDir usage is measured against `sizeLimit`.
    pub volume_check: Duration,
    /// Called with (container name, message) for restarts, stops and evictions.
    pub on_event: EventSink,
    /// Registry credentials for pulls (docker's `config.json`).
    pub docker_config: Option<PathBuf>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            backoff_reset: Duration::from_secs(600),
            volume_check: Duration::from_secs(1),
            on_event: Arc::new(|_, _| {}),
            docker_config: None,
        }
    }
}

/// How one container of the pod ended.
#[derive(Debug, Clone)]
pub struct ContainerReport {
    pub name: String,
    pub init: bool,
    /// The last run's exit; `None` when it never ran.
    pub exit: Option<Exit>,
    pub restarts: u32,
    /// How long the last run took.
    pub run_time: Duration,
    finished_at: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub struct PodReport {
    pub pod_id: String,
    pub containers: Vec<ContainerReport>,
}

impl PodReport {
    /// 0 when every container's last run succeeded; else the code of the one that failed first.
    pub fn exit_code(&self) -> i32 {
        let mut failed: Vec<_> = self
            .containers
            .iter()
            .filter_map(|c| match &c.exit {
                Some(e) if !e.success() => Some((c.finished_at, e.code)),
                None => Some((None, 1)),
                _ => None,
            })
            .collect();
        failed.sort_by_key(|(at, _)| {
            at.unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(u32::MAX as u64))
        });
        failed.first().map_or(0, |(_, code)| *code)
    }
}

/// Why the pod is being brought down.
#[derive(Debug, Clone, PartialEq)]
enum Halt {
    Shutdown,
    Evicted(String),
}

/// Runs `manifest` until its containers are done (or `shutdown` resolves), then removes the pod.
pub async fn run_pod(
    rt: &Arc<Runtime>,
    manifest: PodManifest,
    shutdown: impl Future<Output = ()>,
    opts: &RunnerOptions,
) -> Result<PodReport> {
    // A pod that a killed earlier run left in the state database would make this one a
    // duplicate; only one process holds the state directory, so such a pod is stale.
    for stale in rt.pods() {
        if stale.config.same_sandbox(&manifest.pod) {
            rt.remove_pod(&stale.id).await?;
        }
    }
    let pod_id = rt.run_pod(manifest.pod.clone())?;
    if let Some(ip) = rt.pod(&pod_id)?.ip() {
        let ports: Vec<String> = manifest
            .pod
            .port_mappings
            .iter()
            .map(|m| {
                let host = rt.network().host_port_address(m);
                format!(
                    ", hostPort {} -> {}",
                    std::net::SocketAddr::new(host, m.host_port),
                    m.container_port
                )
            })
            .collect();
        (opts.on_event)("pod", &format!("IP {ip}{}", ports.concat()));
    }
    let result = supervise(rt, &pod_id, &manifest, shutdown, opts).await;
    let _ = rt.stop_pod(&pod_id, Duration::ZERO).await;
    if let Err(e) = rt.remove_pod(&pod_id).await {
        tracing::warn!("removing pod {pod_id}: {e}");
    }
    result
}

async fn supervise(
    rt: &Arc<Runtime>,
    pod_id: &str,
    manifest: &PodManifest,
    shutdown: impl Future<Output = ()>,
    opts: &RunnerOptions,
) -> Result<PodReport> {
    // Images are pulled and every container is created before anything runs, so a bad image
    // or mount fails the pod before any guest has had a side effect.
    for config in manifest.init_containers.iter().chain(&manifest.containers) {
        let Some(registry) = crate::image::registry_of(&config.image) else {
            continue;
        };
        let credentials = match &opts.docker_config {
            Some(path) => Credentials::from_docker_config(path, &registry)?.unwrap_or_default(),
            None => Credentials::default(),
        };
        rt.ensure_image(&config.image, config.pull_policy, &credentials)
            .await
            .map_err(|e| e.context(format!("container {}", config.name)))?;
    }
    let mut first = Vec::new();
    for config in manifest.init_containers.iter().chain(&manifest.containers) {
        first.push(rt.create_container(pod_id, config.clone()).await?);
    }
    let (halt_tx, halt_rx) = watch::channel(None::<Halt>);
    let slots: Vec<Slot> = manifest
        .init_containers
        .iter()
        .map(|c| (c, true))
        .chain(manifest.containers.iter().map(|c| (c, false)))
        .zip(first)
        .map(|((config, init), id)| Slot {
            report: Mutex::new(ContainerReport {
                name: config.name.clone(),
                init,
                exit: None,
                restarts: 0,
                run_time: Duration::ZERO,
                finished_at: None,
            }),
            config: config.clone(),
            first_id: id,
        })
        .collect();
    let sup = Supervisor {
        rt,
        pod_id,
        policy: manifest.restart_policy,
        grace: manifest.grace,
        opts,
    };

    let run_all = async {
        let (init, apps) = slots.split_at(manifest.init_containers.len());
        for slot in init {
            let ok = sup.run_slot(slot, halt_rx.clone(), true).await;
            if !ok {
                return;
            }
        }
        futures::future::join_all(apps.iter().map(|s| sup.run_slot(s, halt_rx.clone(), false)))
            .await;
    };
    let watch_volumes = async {
        let pod = rt.pod(pod_id)?;
        loop {
            tokio::time::sleep(opts.volume_check).await;
            if let Some(message) = pod.volume_over_limit() {
                (opts.on_event)("pod", &format!("evicted: {message}"));
                let _ = halt_tx.send(Some(Halt::Evicted(message)));
                return std::future::pending::<Result<()>>().await;
            }
        }
    };
    let halt_on_shutdown = async {
        shutdown.await;
        (opts.on_event)(
            "pod",
            "stopping: commands end at once, wasi:http handlers drain within the grace period",
        );
        let _ = halt_tx.send(Some(Halt::Shutdown));
        std::future::pending::<Result<()>>().await
    };
    tokio::select! {
        () = run_all => {}
        Err(e) = watch_volumes => return Err(e),
        Err(e) = halt_on_shutdown => return Err(e),
    }
    Ok(PodReport {
        pod_id: pod_id.to_owned(),
        containers: slots
            .into_iter()
            .map(|s| s.report.into_inner().unwrap_or_else(|e| e.into_inner()))
            .collect(),
    })
}

struct Slot {
    config: ContainerConfig,
    first_id: String,
    report: Mutex<ContainerReport>,
}

struct Supervisor<'a> {
    rt: &'a Arc<Runtime>,
    pod_id: &'a str,
    policy: RestartPolicy,
    grace: Duration,
    opts: &'a RunnerOptions,
}

impl Supervisor<'_> {
    /// Runs one container, restarting it as the policy says. Returns whether it ended well
    /// (for init containers: whether the pod may go on).
    async fn run_slot(
        &self,
        slot: &Slot,
        mut halt: watch::Receiver<Option<Halt>>,
        init: bool,
    ) -> bool {
        let name = slot.config.name.as_str();
        let mut id = slot.first_id.clone();
        let mut attempt = 0;
        let mut quick_restarts = 0u32;
        loop {
            if halt.borrow().is_some() {
                return false;
            }
            let Ok(container) = self.rt.container(&id) else {
                return false;
            };
            if let Err(e) = self.rt.start_container(&id) {
                (self.opts.on_event)(name, &format!("cannot start: {e}"));
                return false;
            }
            let exit = self.wait_or_halt(&container, &mut halt).await;
            let (run_time, finished_at) = match container.state() {
                ContainerState::Exited {
                    started_at: Some(s),
                    finished_at,
                    ..
                } => (
                    finished_at.duration_since(s).unwrap_or_default(),
                    Some(finished_at),
                ),
                _ => (Duration::ZERO, Some(SystemTime::now())),
            };
            {
                let mut report = slot.report.lock().unwrap_or_else(|e| e.into_inner());
                report.exit = Some(exit.clone());
                report.run_time = run_time;
                report.finished_at = finished_at;
            }
            // Init containers must succeed; Always restarts them only after failure.
            let restart = if init {
                !exit.success() && self.policy != RestartPolicy::Never
            } else {
                self.policy.restarts(exit.success())
            };
            if halt.borrow().is_some() || !restart {
                return exit.success();
            }
            quick_restarts = if run_time >= self.opts.backoff_reset {
                0
            } else {
                quick_restarts + 1
            };
            let delay = self.backoff(quick_restarts);
            (self.opts.on_event)(
                name,
                &format!(
                    "exited with {} ({}); restarting in {:.1}s",
                    exit.code,
                    exit.reason,
                    delay.as_secs_f64()
                ),
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = halt.wait_for(Option::is_some) => return exit.success(),
            }
            attempt += 1;
            let _ = self.rt.remove_container(&id).await;
            let config = ContainerConfig {
                attempt,
                ..slot.config.clone()
            };
            id = match self.rt.create_container(self.pod_id, config).await {
                Ok(id) => id,
                Err(e) => {
                    (self.opts.on_event)(name, &format!("cannot restart: {e}"));
                    return false;
                }
            };
            slot.report
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .restarts = attempt;
        }
    }

    async fn wait_or_halt(&self, c: &Container, halt: &mut watch::Receiver<Option<Halt>>) -> Exit {
        tokio::select! {
            exit = c.wait() => return exit,
            _ = halt.wait_for(Option::is_some) => {}
        }
        let reason = halt.borrow().clone();
        match reason {
            Some(Halt::Evicted(message)) => {
                c.stop(Duration::ZERO, ExitReason::Evicted, &message).await
            }
            _ => {
                let message = format!("did not exit within its {:?} grace period", self.grace);
                c.stop(self.grace, ExitReason::Killed, &message).await
            }
        }
        c.wait().await
    }

    fn backoff(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        self.opts
            .backoff_initial
            .saturating_mul(factor)
            .min(self.opts.backoff_max)
    }
}
