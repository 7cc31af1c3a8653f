//! A container: its spec, its compiled program and its state machine
//! Created → Running → Exited, with checked transitions. Each run owns its own wasmtime
//! store (inside the engine's task), so stopping or restarting never touches another guest.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, oneshot, watch};

use crate::engine::{Engine, GuestSpec, GuestUsage, Program};
use crate::error::{Error, Result};
use crate::exit::{Exit, ExitReason};
use crate::log::{ContainerLog, LogLine};
use crate::mounts::GuestFs;
use crate::spec::ContainerConfig;

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running {
        started_at: SystemTime,
    },
    Exited {
        started_at: Option<SystemTime>,
        finished_at: SystemTime,
        exit: Exit,
    },
}

impl ContainerState {
    pub fn name(&self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running { .. } => "running",
            ContainerState::Exited { .. } => "exited",
        }
    }
}

/// Resource use of a container, for stats.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContainerUsage {
    pub memory_bytes: u64,
    pub cpu: Duration,
}

pub struct Container {
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    /// The image as resolved (`file:///…`, later a digest reference).
    pub image_ref: String,
    pub created_at: SystemTime,
    pub log_path: Option<PathBuf>,
    pub(crate) dir: PathBuf,
    program: Program,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    fs: GuestFs,
    usage: Arc<GuestUsage>,
    state: watch::Sender<ContainerState>,
    run: Mutex<Option<RunHandle>>,
}

/// What a running container needs from outside: how to kill it and its open log.
struct RunHandle {
    kill: Option<oneshot::Sender<Exit>>,
    log: ContainerLog,
}

pub(crate) struct NewContainer {
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    pub image_ref: String,
    pub log_path: Option<PathBuf>,
    pub dir: PathBuf,
    pub program: Program,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub fs: GuestFs,
}

impl Container {
    pub(crate) fn new(n: NewContainer) -> Self {
        Self {
            id: n.id,
            pod_id: n.pod_id,
            config: n.config,
            image_ref: n.image_ref,
            created_at: SystemTime::now(),
            log_path: n.log_path,
            dir: n.dir,
            program: n.program,
            argv: n.argv,
            env: n.env,
            fs: n.fs,
            usage: Arc::default(),
            state: watch::Sender::new(ContainerState::Created),
            run: Mutex::new(None),
        }
    }

    pub fn state(&self) -> ContainerState {
        self.state.borrow().clone()
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn usage(&self) -> ContainerUsage {
        ContainerUsage {
            memory_bytes: self.usage.memory_bytes.load(Ordering::Relaxed),
            cpu: Duration::from_nanos(self.usage.cpu_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Starts the guest as a task on the current tokio runtime.
    pub(crate) fn start(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        pod_name: &str,
        live: broadcast::Sender<LogLine>,
    ) -> Result<()> {
        let mut run = self.run.lock().unwrap_or_else(|e| e.into_inner());
        if *self.state.borrow() != ContainerState::Created {
            return Err(Error::precondition(format!(
                "container {} is {}, only a created container can start",
                self.id,
                self.state.borrow().name()
            )));
        }
        let log = ContainerLog::open(
            pod_name,
            &self.config.name,
            self.log_path.as_deref(),
            Some(live),
        )?;
        let spec = GuestSpec {
            argv: self.argv.clone(),
            env: self.env.clone(),
            cwd: self.config.working_dir.clone(),
            preopens: self.fs.preopens.clone(),
            log: log.clone(),
            memory_limit: self.config.memory_limit,
            usage: self.usage.clone(),
        };
        let (kill_tx, kill_rx) = oneshot::channel();
        *run = Some(RunHandle {
            kill: Some(kill_tx),
            log,
        });
        let started_at = SystemTime::now();
        self.state
            .send_replace(ContainerState::Running { started_at });
        let this = self.clone();
        let engine = engine.clone();
        tokio::spawn(async move {
            let kill = async move {
                match kill_rx.await {
                    Ok(exit) => exit,
                    Err(_) => std::future::pending().await,
                }
            };
            let exit = engine.run(&this.program, spec, kill).await;
            this.fs.write_back();
            let finished_at = SystemTime::now();
            this.run.lock().unwrap_or_else(|e| e.into_inner()).take();
            this.state.send_replace(ContainerState::Exited {
                started_at: Some(started_at),
                finished_at,
                exit,
            });
        });
        Ok(())
    }

    /// Waits until the guest has exited and returns how.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.state.subscribe();
        loop {
            if let ContainerState::Exited { exit, .. } = &*rx.borrow_and_update() {
                return exit.clone();
            }
            if rx.changed().await.is_err() {
                unreachable!("the container owns its state sender");
            }
        }
    }

    /// Gives a running guest `grace` to exit on its own, then kills it, reporting `reason`.
    /// A container that never started, or has exited, is left as it is.
    pub async fn stop(&self, grace: Duration, reason: ExitReason, message: &str) {
        {
            let _run = self.run.lock().unwrap_or_else(|e| e.into_inner());
            let state = self.state.borrow().clone();
            match state {
                ContainerState::Exited { .. } => return,
                // As in containerd: stopping a container that never started leaves it created.
                ContainerState::Created => return,
                ContainerState::Running { .. } => {}
            }
        }
        if grace.is_zero() || tokio::time::timeout(grace, self.wait()).await.is_err() {
            let kill = self
                .run
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .and_then(|r| r.kill.take());
            if let Some(kill) = kill {
                let _ = kill.send(Exit::killed(reason, message));
            }
        }
        self.wait().await;
    }

    /// Reopens the log file after rotation (a no-op when the container is not running).
    pub fn reopen_log(&self) -> Result<()> {
        match self.run.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(run) => run.log.reopen(),
            None => Err(Error::precondition(format!(
                "container {} is not running",
                self.id
            ))),
        }
    }
}
