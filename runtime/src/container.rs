//! A container: its spec, its compiled program and its state machine
//! Created → Running → Exited, with checked transitions. Each run owns its own wasmtime
//! store (inside the engine's task), so stopping or restarting never touches another guest.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use std::collections::HashMap;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::engine::{Account, Engine, GuestSpec, Program, Task};
use crate::error::{Error, Result};
use crate::exit::{Exit, ExitReason};
use crate::log::{ContainerLog, LogLimit, LogLine, LogTarget, OutputChunk, Stream};
use crate::mounts::GuestFs;
use crate::pod::Pod;
use crate::spec::{ContainerConfig, Protocol, Resources};
use crate::state::{ContainerRecord, Sync};
use crate::stdio::{Output, Stdio};

/// Names the port a wasi:http container is served on, for CRI clients.
pub const HTTP_PORT_ANNOTATION: &str = "wasmpod.io/http-port";
/// Where a wasi:http handler listens when nothing says otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Guests a container may run at once, its own and its execs' (as a cgroup's `pids.max`
/// caps its processes): a CRI client cannot grow a container's tasks without end.
pub const MAX_GUESTS: u64 = 128;

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
    /// The image as resolved (`file:///…`, or the image id).
    pub image_ref: String,
    pub created_at: SystemTime,
    pub log_path: Option<PathBuf>,
    /// The log file's directory handle and limit; `None` for restored containers.
    log: Option<(LogTarget, LogLimit)>,
    /// Where stdout and stderr go instead of the log (containerd's FIFOs): taken by the start,
    /// so they close (and containerd's readers see the end) when the guest ends.
    output: Mutex<Option<(Output, Output)>>,
    /// Whether the state database keeps the container.
    persist: bool,
    pub(crate) dir: PathBuf,
    /// What a start needs; `None` for containers restored from the state database.
    prepared: Option<Prepared>,
    /// Its live limits (which may differ from `config`'s since an update) and usage.
    account: Arc<Account>,
    /// The last CPU sample, which the next one's rate is computed from.
    cpu_rate: CpuRate,
    /// Serializes limit updates, so that the record persisted is the last one applied.
    updating: Mutex<()>,
    state: watch::Sender<ContainerState>,
    run: Mutex<Option<RunHandle>>,
    /// Every write of the guest, for attachers.
    attach: broadcast::Sender<OutputChunk>,
    execs: Mutex<Execs>,
    /// Programs execs found in the container's root, by the name typed, with the identity of
    /// the file they were read from (a writable root may change under them).
    exec_programs: Mutex<HashMap<String, (crate::exec::FileId, Program)>>,
    observer: Arc<Observer>,
}

/// CPU samples closer together than this give the previous rate: a rate over a few
/// milliseconds (two clients asking at once) is noise.
const MIN_RATE_WINDOW: Duration = Duration::from_secs(1);

/// A container's last CPU sample, kept so that each sample's rate is over the time since the
/// one before, as kubelet and cri-o compute `usage_nano_cores`.
#[derive(Default)]
struct CpuRate(Mutex<Option<CpuSample>>);

#[derive(Clone, Copy)]
struct CpuSample {
    at: Instant,
    used: Duration,
    nano_cores: u64,
}

impl CpuRate {
    /// The rate since the previous sample (since the start, `running_for` ago, for the first).
    fn sample(&self, used: Duration, running_for: Duration) -> u64 {
        let now = Instant::now();
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (since, before) = match *last {
            Some(s) if now - s.at < MIN_RATE_WINDOW => return s.nano_cores,
            Some(s) => (now - s.at, s.used),
            None => (running_for, Duration::ZERO),
        };
        let nano_cores = match since.as_nanos() {
            0 => 0,
            window => (used.saturating_sub(before).as_nanos() * 1_000_000_000 / window) as u64,
        };
        *last = Some(CpuSample {
            at: now,
            used,
            nano_cores,
        });
        nano_cores
    }
}

/// Names typed to exec whose programs a container remembers.
const EXEC_PROGRAMS_CACHED: usize = 64;

/// Chunks of output an attacher may fall behind by before it loses some.
const ATTACH_BACKLOG: usize = 256;

/// The execs running in a container; closed when the container's guest ends, which ends them.
#[derive(Default)]
struct Execs {
    closed: bool,
    next: u64,
    tasks: HashMap<u64, Arc<Task>>,
}

/// A container ready to start: its program, argv, environment and filesystem.
pub(crate) struct Prepared {
    pub program: Program,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub fs: GuestFs,
    /// Where execs find their programs: the container's root (the image's files, or the
    /// container's writable copy of them); `None` for a single-binary image shown no root.
    pub exec_root: Option<PathBuf>,
    /// The image has no files of its own (a single Wasm binary).
    pub single_binary: bool,
}

/// What a lifecycle change is, for the event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

/// A container lifecycle event.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub container_id: String,
    pub pod_id: String,
    pub kind: EventKind,
    pub at: SystemTime,
    /// The container's state when the event happened (it may have moved on by the time a
    /// subscriber reads the event).
    pub state: ContainerState,
}

/// Told of every state change: persists the record and publishes the event.
pub(crate) struct Observer {
    pub state: crate::state::StateStore,
    pub events: broadcast::Sender<ContainerEvent>,
}

impl Observer {
    pub(crate) fn changed(&self, c: &Container, kind: EventKind) {
        let persisted = match kind {
            _ if !c.persist => Ok(()),
            EventKind::Deleted => self.state.remove_container(&c.id),
            _ => self.state.put_container(&c.record(), Sync::Soon),
        };
        if let Err(e) = persisted {
            tracing::error!(container = %c.id, "persisting {kind:?}: {e}");
        }
        let _ = self.events.send(ContainerEvent {
            container_id: c.id.clone(),
            pod_id: c.pod_id.clone(),
            kind,
            at: SystemTime::now(),
            state: c.state(),
        });
    }
}

/// What a running container needs from outside: its task and how to stop it, its open log.
struct RunHandle {
    task: Arc<Task>,
    /// Asks a wasi:http handler to stop accepting and drain.
    drain: CancellationToken,
    stop: StopMode,
    log: ContainerLog,
}

/// The pod annotation that picks how its containers take a stop (`wait-grace`).
pub const STOP_ANNOTATION: &str = "wasmpod.io/stop";

/// What a stop with a grace period does to a running guest. A WASI guest has no signals, so
/// a stop means what SIGTERM means to a process that cannot catch it, unless the guest has a
/// way to learn of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// A WASI command: ended at once (143, `Error`), as SIGTERM ends a process.
    Terminate,
    /// A wasi:http handler: stops accepting at once, lets in-flight requests finish within the
    /// grace period, then exits 0.
    Drain,
    /// `wasmpod.io/stop: wait-grace`: the guest gets its whole grace period to end by itself
    /// (batch work), then is killed (137).
    WaitGrace,
}

impl StopMode {
    fn of(pod: &Pod, program: &Program) -> Result<Self> {
        match pod.config.annotations.get(STOP_ANNOTATION).map(String::as_str) {
            Some("wait-grace") => Ok(StopMode::WaitGrace),
            None | Some("") | Some("default") if program.is_http_handler() => Ok(StopMode::Drain),
            None | Some("") | Some("default") => Ok(StopMode::Terminate),
            Some(other) => Err(Error::invalid(format!(
                "pod annotation {STOP_ANNOTATION}: {other:?} is neither \"wait-grace\" nor \"default\""
            ))),
        }
    }
}

pub(crate) struct NewContainer {
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    pub image_ref: String,
    pub log: Option<(LogTarget, LogLimit)>,
    /// Where stdout and stderr go instead of the log (containerd's FIFOs).
    pub output: Option<(Output, Output)>,
    /// Whether the state database keeps the container (containerd's containers die with us).
    pub persist: bool,
    pub dir: PathBuf,
    pub prepared: Prepared,
    /// Its account, made with the config's limits.
    pub account: Arc<Account>,
}

impl Container {
    pub(crate) fn new(n: NewContainer, observer: Arc<Observer>) -> Self {
        Self {
            id: n.id,
            pod_id: n.pod_id,
            config: n.config,
            image_ref: n.image_ref,
            created_at: SystemTime::now(),
            log_path: n.log.as_ref().map(|(t, _)| t.path().to_path_buf()),
            log: n.log,
            output: Mutex::new(n.output),
            persist: n.persist,
            dir: n.dir,
            prepared: Some(n.prepared),
            account: n.account,
            cpu_rate: CpuRate::default(),
            updating: Mutex::default(),
            state: watch::Sender::new(ContainerState::Created),
            run: Mutex::new(None),
            attach: broadcast::Sender::new(ATTACH_BACKLOG),
            execs: Mutex::default(),
            exec_programs: Mutex::default(),
            observer,
        }
    }

    /// A container from the state database. Its instance did not survive the restart: if it
    /// was running it is now exited, and one that never started cannot start any more.
    pub(crate) fn restore(
        r: ContainerRecord,
        dir: PathBuf,
        account: Arc<Account>,
        observer: Arc<Observer>,
    ) -> Self {
        let state = match r.state {
            ContainerState::Running { started_at } => ContainerState::Exited {
                started_at: Some(started_at),
                finished_at: SystemTime::now(),
                exit: Exit {
                    code: 255,
                    reason: ExitReason::Error,
                    message: "wasmpod restarted; the container's instance was lost".into(),
                },
            },
            other => other,
        };
        Self {
            id: r.id,
            pod_id: r.pod_id,
            config: r.config,
            image_ref: r.image_ref,
            created_at: r.created_at,
            log_path: r.log_path,
            log: None,
            output: Mutex::default(),
            persist: true,
            dir,
            prepared: None,
            account,
            cpu_rate: CpuRate::default(),
            updating: Mutex::default(),
            state: watch::Sender::new(state),
            run: Mutex::new(None),
            attach: broadcast::Sender::new(ATTACH_BACKLOG),
            execs: Mutex::new(Execs {
                closed: true,
                ..Execs::default()
            }),
            exec_programs: Mutex::default(),
            observer,
        }
    }

    /// The record the state database keeps, with the limits in force.
    pub(crate) fn record(&self) -> ContainerRecord {
        let limits = self.resources();
        ContainerRecord {
            id: self.id.clone(),
            pod_id: self.pod_id.clone(),
            config: ContainerConfig {
                memory_limit: limits.memory_limit,
                cpu: limits.cpu,
                ..self.config.clone()
            },
            image_ref: self.image_ref.clone(),
            created_at: self.created_at,
            log_path: self.log_path.clone(),
            state: self.state(),
        }
    }

    /// What a start runs (absent for containers restored after a daemon restart).
    pub(crate) fn prepared(&self) -> Option<&Prepared> {
        self.prepared.as_ref()
    }

    pub fn state(&self) -> ContainerState {
        self.state.borrow().clone()
    }

    /// `f` of its state now, without a copy (Lists read thousands of states a second).
    pub fn with_state<R>(&self, f: impl FnOnce(&ContainerState) -> R) -> R {
        f(&self.state.borrow())
    }

    /// Whether its pod is a CRI pod of wasmpod's own (which the state database keeps), not
    /// one of containerd's task API.
    pub fn in_wasmpod_pod(&self) -> bool {
        self.persist
    }

    /// The compiled program (absent for containers restored after a restart).
    pub fn program(&self) -> Option<&Program> {
        self.prepared.as_ref().map(|p| &p.program)
    }

    pub fn usage(&self) -> ContainerUsage {
        ContainerUsage {
            memory_bytes: self.account.memory_bytes(),
            cpu: self.account.cpu_time(),
        }
    }

    /// Its CPU rate in billionths of a core (nanocores, as the CRI reports it): over the time
    /// since the previous sample, whoever took it (kubelet, crictl, a metrics scrape), or since
    /// the start for the first one.
    pub fn cpu_rate(&self) -> u64 {
        let used = self.account.cpu_time();
        let running_for = match self.state() {
            ContainerState::Running { started_at } => started_at.elapsed().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        self.cpu_rate.sample(used, running_for)
    }

    /// Its account: CPU and memory used, limits, throttling.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// Guests running in the container: its own and its execs'.
    pub fn guests(&self) -> u64 {
        let running = matches!(self.state(), ContainerState::Running { .. });
        let execs = self
            .execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tasks
            .len();
        u64::from(running) + execs as u64
    }

    /// Bytes of compiled code its program maps (the analogue of a process's text pages,
    /// shared by the containers of one image as a library's pages are).
    pub fn code_bytes(&self) -> u64 {
        self.program().map_or(0, Program::code_bytes)
    }

    /// The disk the container writes (its writable layer): its directory, which holds its
    /// writable root (when `writable_rootfs`) and its staged file mounts, plus its log files
    /// (the current one and those rotated beside it). Volumes are the pod's, not here.
    pub fn writable_usage(&self) -> crate::volume::DiskUsage {
        let mut usage = crate::volume::disk_usage(&self.dir);
        if let Some(log) = &self.log_path {
            usage += crate::volume::rotated_files_usage(log);
        }
        usage
    }

    /// Where the container's writable layer lives, identifying its filesystem.
    pub fn writable_dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The limits in force (the config's, or the last update's).
    pub fn resources(&self) -> Resources {
        Resources {
            memory_limit: self.account.memory_limit(),
            cpu: self.account.cpu_limits(),
        }
    }

    /// Applies new limits to the running guests at once and persists them. `change` gets the
    /// limits in force; on any error nothing changes.
    pub(crate) fn update_resources(
        &self,
        change: impl FnOnce(Resources) -> Result<Resources>,
    ) -> Result<Resources> {
        let _one_at_a_time = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.resources();
        let new = change(old)?;
        new.cpu.check()?;
        if let (Some(limit), Some(program)) = (new.memory_limit, self.program()) {
            check_memory_floor(limit, program)?;
        }
        self.account.set_memory_limit(new.memory_limit)?;
        self.account.set_cpu_limits(new.cpu);
        if self.persist {
            let persisted = self
                .observer
                .state
                .put_container(&self.record(), Sync::Soon);
            if let Err(e) = persisted {
                self.account.set_cpu_limits(old.cpu);
                // Refused only if the guests grew past the old limit under a higher new one
                // meanwhile: then the new one stays, as killing them is not ours to do.
                let _ = self.account.set_memory_limit(old.memory_limit);
                return Err(e);
            }
        }
        Ok(new)
    }

    /// The port a wasi:http handler is served on: the [`HTTP_PORT_ANNOTATION`] when set (an
    /// override), else the container's first declared TCP port (kubelet passes them in an
    /// annotation), else 8080.
    fn http_port(&self) -> Result<u16> {
        if let Some(v) = self.config.annotations.get(HTTP_PORT_ANNOTATION) {
            return v.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                Error::invalid(format!(
                    "annotation {HTTP_PORT_ANNOTATION}: {v:?} is not a port"
                ))
            });
        }
        Ok(self
            .config
            .ports
            .iter()
            .find(|p| p.protocol == Protocol::Tcp)
            .map_or(DEFAULT_HTTP_PORT, |p| p.container_port))
    }

    /// Starts the guest as a task on the current tokio runtime.
    pub(crate) fn start(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        pod: &Pod,
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
        let prepared = self.prepared.as_ref().ok_or_else(|| {
            Error::precondition(format!(
                "container {} was created before wasmpod restarted and cannot start; create it again",
                self.id
            ))
        })?;
        let (target, limit) = match &self.log {
            Some((target, limit)) => (Some(target), *limit),
            None => (None, LogLimit::Unlimited),
        };
        let timer = crate::phase::Timer::start("start.log_file");
        let log = ContainerLog::open(
            &pod.config.name,
            &self.config.name,
            target,
            limit,
            Some(live),
        )?;
        drop(timer);
        log.attach_to(self.attach.clone());
        let taken = self.output.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (stdout, stderr) = match taken {
            Some(pair) => pair,
            None => (
                Output::Log(log.clone(), Stream::Stdout),
                Output::Log(log.clone(), Stream::Stderr),
            ),
        };
        let stdio = match self.config.tty {
            true => Stdio::merged(self.config.stdin, stdout),
            false => Stdio {
                stdin: self.config.stdin,
                stdout,
                stderr,
            },
        };
        let spec = self.guest_spec(pod, prepared.argv.clone(), stdio)?;
        let stop = StopMode::of(pod, &prepared.program)?;
        let drain = spec.drain.clone();
        let started_at = SystemTime::now();
        let this = self.clone();
        // Instantiation and the guest's own run up to its first line: the engine's task.
        log.time_first_line(crate::phase::Timer::start("first_line.guest"));
        let task = engine.spawn(&prepared.program, spec, move |exit| {
            this.ended(started_at, exit.clone())
        });
        *run = Some(RunHandle {
            task,
            drain,
            stop,
            log,
        });
        self.state
            .send_replace(ContainerState::Running { started_at });
        let timer = crate::phase::Timer::start("start.state_write");
        self.observer.changed(self, EventKind::Started);
        drop(timer);
        Ok(())
    }

    /// What a guest of this container runs with: its volumes, env, working dir, limits and
    /// the pod's network (a container's own run, or an exec in it).
    fn guest_spec(&self, pod: &Pod, argv: Vec<String>, stdio: Stdio) -> Result<GuestSpec> {
        let prepared = self.prepared.as_ref().ok_or_else(|| {
            Error::precondition(format!(
                "container {} was created before wasmpod restarted and cannot run anything",
                self.id
            ))
        })?;
        Ok(GuestSpec {
            argv,
            env: prepared.env.clone(),
            cwd: self.config.working_dir.clone(),
            preopens: prepared.fs.preopens.clone(),
            stdio,
            account: self.account.clone(),
            network: pod.network.clone(),
            http_port: self.http_port()?,
            files: pod.files.clone(),
            drain: CancellationToken::new(),
        })
    }

    /// The guest has ended: its execs end with it, then the state says so.
    fn ended(&self, started_at: SystemTime, exit: Exit) {
        let execs = {
            let mut execs = self.execs.lock().unwrap_or_else(|e| e.into_inner());
            execs.closed = true;
            std::mem::take(&mut execs.tasks)
        };
        for task in execs.values() {
            task.kill(Exit::killed(ExitReason::Killed, "its container ended"));
        }
        if let Some(p) = &self.prepared {
            p.fs.write_back();
        }
        self.run.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.state.send_replace(ContainerState::Exited {
            started_at: Some(started_at),
            finished_at: SystemTime::now(),
            exit,
        });
        self.observer.changed(self, EventKind::Stopped);
    }

    /// Runs `argv` as a new guest in this container's context (see [`crate::exec`]): it
    /// shares the container's volumes, env, limits and network, and never outlives it.
    pub(crate) fn spawn_exec(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        pod: &Pod,
        program: &Program,
        argv: Vec<String>,
        stdio: Stdio,
    ) -> Result<Arc<Task>> {
        let spec = self.guest_spec(pod, argv, stdio)?;
        let mut execs = self.execs.lock().unwrap_or_else(|e| e.into_inner());
        if execs.closed || !matches!(*self.state.borrow(), ContainerState::Running { .. }) {
            return Err(self.not_running());
        }
        if execs.tasks.len() + 1 >= MAX_GUESTS as usize {
            return Err(Error::exhausted(format!(
                "container {} already runs {MAX_GUESTS} guests (its own and its execs'); \
                 an exec can start once one ends",
                self.id
            )));
        }
        let id = execs.next;
        execs.next += 1;
        let this = Arc::downgrade(self);
        let task = engine.spawn(program, spec, move |_| {
            if let Some(c) = this.upgrade() {
                let mut execs = c.execs.lock().unwrap_or_else(|e| e.into_inner());
                execs.tasks.remove(&id);
            }
        });
        execs.tasks.insert(id, task.clone());
        Ok(task)
    }

    fn not_running(&self) -> Error {
        Error::precondition(format!(
            "container {} is {}, not running",
            self.id,
            self.state.borrow().name()
        ))
    }

    /// The running guest's task, for attach.
    pub(crate) fn task(&self) -> Result<Arc<Task>> {
        self.run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|r| r.task.clone())
            .ok_or_else(|| self.not_running())
    }

    pub(crate) fn cached_exec_program(&self, name: &str) -> Option<(crate::exec::FileId, Program)> {
        let programs = self.exec_programs.lock().unwrap_or_else(|e| e.into_inner());
        programs.get(name).cloned()
    }

    pub(crate) fn cache_exec_program(
        &self,
        name: &str,
        file: crate::exec::FileId,
        program: Program,
    ) {
        let mut programs = self.exec_programs.lock().unwrap_or_else(|e| e.into_inner());
        // Many spellings of one path are many keys: a client cannot grow this without bound.
        if programs.len() >= EXEC_PROGRAMS_CACHED {
            programs.clear();
        }
        programs.insert(name.to_owned(), (file, program));
    }

    /// The guest's output from now on, as written.
    pub(crate) fn watch_output(&self) -> broadcast::Receiver<OutputChunk> {
        self.attach.subscribe()
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

    /// Stops a running guest as its [`StopMode`] says; past `grace` (or at once when it is
    /// zero) it is killed, reporting `reason`. A container that never started, or has exited,
    /// is left as it is; a second stop only waits for the first.
    pub async fn stop(&self, grace: Duration, reason: ExitReason, message: &str) {
        let mode = {
            let run = self.run.lock().unwrap_or_else(|e| e.into_inner());
            match (&*self.state.borrow(), run.as_ref()) {
                // As in containerd: stopping a container that never started leaves it created.
                (ContainerState::Running { .. }, Some(run)) => run.stop,
                _ => return,
            }
        };
        let ended_in_grace = match mode {
            _ if grace.is_zero() => false,
            StopMode::Terminate => {
                self.kill(Exit::terminated());
                true
            }
            StopMode::Drain => {
                if let Some(run) = self.run.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    run.drain.cancel();
                }
                tokio::time::timeout(grace, self.wait()).await.is_ok()
            }
            StopMode::WaitGrace => tokio::time::timeout(grace, self.wait()).await.is_ok(),
        };
        if !ended_in_grace {
            self.kill(Exit::killed(reason, message));
        }
        self.wait().await;
    }

    /// Ends the guest's task with `exit` (a no-op once it is ending).
    fn kill(&self, exit: Exit) {
        if let Some(run) = self.run.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            run.task.kill(exit);
        }
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

/// Refuses a memory limit below what `program` declares it needs to start.
pub(crate) fn check_memory_floor(limit: u64, program: &Program) -> Result<()> {
    let floor = program.min_memory();
    if limit < floor {
        return Err(Error::invalid(format!(
            "memory limit {limit} bytes is below the {floor} bytes of linear memory the \
             program declares it starts with"
        )));
    }
    Ok(())
}
