//! The task service: containerd's tasks keyed by (namespace, id), each a pod sandbox or a
//! Wasm container of the shared [`Runtime`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim_protos::api::{self as api, Status};
use containerd_shim_protos::cgroups_v2::metrics::{CPUStat, MemoryStat, Metrics, PidsStat};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Task as TaskApi;
use serde::Deserialize;
use tokio::sync::watch;
use ttrpc::asynchronous::TtrpcContext;
use wasmpod_runtime::container::ContainerState;
use wasmpod_runtime::engine::Task;
use wasmpod_runtime::error::{Error, ErrorKind};
use wasmpod_runtime::exit::{Exit, ExitReason};
use wasmpod_runtime::runtime::{Bundle, Runtime};
use wasmpod_runtime::stdio::Stdio;

use super::events::{timestamp, Event, Publisher};
use super::{io, rootfs, spec};

/// What the shim binary's `start` leaves in the bundle for the daemon: who the task belongs to.
pub const REGISTRATION: &str = "wasmpod-task.json";

/// How long a stop asked by SIGTERM may take before containerd's own SIGKILL: containerd
/// decides (it sends the kill after its timeout), so this is only a bound.
const UNTIL_KILLED: Duration = Duration::from_secs(24 * 3600);

#[derive(Deserialize, Default)]
struct Registration {
    /// containerd's ttrpc address, where events go.
    #[serde(default)]
    ttrpc_address: String,
}

/// Where a task is in its life, as containerd sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Created,
    Running,
    Stopped { code: u32, at: SystemTime },
}

/// A sandbox, a container or an exec: what State and Wait report.
struct Process {
    phase: watch::Sender<Phase>,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
}

impl Process {
    fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Self {
        Self {
            phase: watch::Sender::new(Phase::Created),
            stdin: stdin.to_owned(),
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
            terminal,
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Records the exit once; false if it was already recorded.
    fn stopped(&self, code: u32, at: SystemTime) -> bool {
        self.phase.send_if_modified(|p| match p {
            Phase::Stopped { .. } => false,
            _ => {
                *p = Phase::Stopped { code, at };
                true
            }
        })
    }

    async fn wait(&self) -> (u32, SystemTime) {
        let mut rx = self.phase.subscribe();
        loop {
            if let Phase::Stopped { code, at } = *rx.borrow_and_update() {
                return (code, at);
            }
            if rx.changed().await.is_err() {
                return (255, SystemTime::now());
            }
        }
    }
}

enum Kind {
    /// A pod's sandbox: the pod itself, with no guest of its own.
    Sandbox,
    /// A Wasm container; `own_pod` when the task made its pod (a `ctr run`, no CRI sandbox).
    Container { container: String, own_pod: bool },
}

struct Exec {
    args: Vec<String>,
    process: Process,
    task: Mutex<Option<Arc<Task>>>,
}

struct Entry {
    namespace: String,
    id: String,
    bundle: PathBuf,
    events: String,
    pod: String,
    kind: Kind,
    process: Process,
    /// Where the root filesystem was mounted (unmounted at delete).
    mounted: Option<PathBuf>,
    stdin_pump: Mutex<Option<tokio::task::JoinHandle<()>>>,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
}

/// The ttrpc face of [`Tasks`].
pub struct TaskService(Arc<Tasks>);

impl std::ops::Deref for TaskService {
    type Target = Arc<Tasks>;
    fn deref(&self) -> &Arc<Tasks> {
        &self.0
    }
}

pub struct Tasks {
    rt: Arc<Runtime>,
    tasks: Mutex<HashMap<(String, String), Arc<Entry>>>,
    events: Publisher,
    pid: u32,
}

fn status(kind: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(kind, msg.into()))
}

/// The runtime's error as the ttrpc status containerd maps back to its errdefs.
fn rpc(e: Error) -> ttrpc::Error {
    let code = match e.kind {
        ErrorKind::NotFound => ttrpc::Code::NOT_FOUND,
        ErrorKind::AlreadyExists => ttrpc::Code::ALREADY_EXISTS,
        ErrorKind::InvalidArgument => ttrpc::Code::INVALID_ARGUMENT,
        ErrorKind::FailedPrecondition => ttrpc::Code::FAILED_PRECONDITION,
        ErrorKind::DeadlineExceeded => ttrpc::Code::DEADLINE_EXCEEDED,
        ErrorKind::ResourceExhausted => ttrpc::Code::RESOURCE_EXHAUSTED,
        ErrorKind::Unimplemented => ttrpc::Code::UNIMPLEMENTED,
        _ => ttrpc::Code::INTERNAL,
    };
    status(code, e.to_string())
}

/// What wasmpod's tasks cannot do yet, said as such (NotFound would read as a missing task).
fn unsupported(what: &str, id: &str) -> ttrpc::Error {
    status(
        ttrpc::Code::UNIMPLEMENTED,
        format!("wasmpod cannot {what} a Wasm task ({id}) yet"),
    )
}

fn invalid(e: impl std::fmt::Display) -> ttrpc::Error {
    status(ttrpc::Code::INVALID_ARGUMENT, e.to_string())
}

/// The containerd namespace of a call (ttrpc metadata), `default` as containerd's own.
fn namespace(ctx: &TtrpcContext) -> String {
    ctx.metadata
        .get("containerd-namespace-ttrpc")
        .or_else(|| ctx.metadata.get("containerd-namespace"))
        .and_then(|v| v.first())
        .cloned()
        .unwrap_or_else(|| "default".into())
}

fn exit_code(exit: &Exit) -> u32 {
    u32::try_from(exit.code).unwrap_or(255)
}

impl TaskService {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self(Arc::new(Tasks {
            rt,
            tasks: Mutex::default(),
            events: Publisher::default(),
            pid: std::process::id(),
        }))
    }
}

impl Tasks {
    fn entry(&self, ns: &str, id: &str) -> ttrpc::Result<Arc<Entry>> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_owned(), id.to_owned()))
            .cloned()
            .ok_or_else(|| {
                status(
                    ttrpc::Code::NOT_FOUND,
                    format!("task {id} not found in namespace {ns}"),
                )
            })
    }

    fn find_exec(&self, entry: &Entry, exec_id: &str) -> ttrpc::Result<Arc<Exec>> {
        entry
            .execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                status(
                    ttrpc::Code::NOT_FOUND,
                    format!("exec {exec_id} of task {} not found", entry.id),
                )
            })
    }

    fn publish(&self, entry: &Entry, event: Event) {
        self.events.publish(&entry.events, &entry.namespace, event);
    }

    /// Makes the task's pod and, for a container, the container in it.
    async fn create_task(&self, ns: &str, req: &api::CreateTaskRequest) -> anyhow::Result<Entry> {
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            anyhow::bail!("bundle {:?} is not an absolute path", req.bundle);
        }
        let spec = spec::read(&bundle)?;
        let registration = read_registration(&bundle);
        let process = Process::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let base = |pod: String, kind: Kind, mounted: Option<PathBuf>| Entry {
            namespace: ns.to_owned(),
            id: req.id.clone(),
            bundle: bundle.clone(),
            events: registration.ttrpc_address.clone(),
            pod,
            kind,
            process,
            mounted,
            stdin_pump: Mutex::default(),
            execs: Mutex::default(),
        };
        if spec::is_sandbox(&spec) {
            let pod = self.rt.run_pod(spec::pod_config(&spec, ns, &req.id))?;
            return Ok(base(pod, Kind::Sandbox, None));
        }
        let sandbox = spec::annotations(&spec).get(spec::SANDBOX_ID).cloned();
        let (pod, own_pod) = match sandbox {
            Some(sandbox) => (
                self.entry(ns, &sandbox)
                    .map_err(|e| anyhow::anyhow!("pod sandbox {sandbox}: {e}"))?
                    .pod
                    .clone(),
                false,
            ),
            None => (self.rt.run_pod(spec::pod_config(&spec, ns, &req.id))?, true),
        };
        let made = self.create_container(&spec, &bundle, &pod, req).await;
        match made {
            Ok((container, mounted)) => {
                Ok(base(pod, Kind::Container { container, own_pod }, mounted))
            }
            Err(e) => {
                if own_pod {
                    let _ = self.rt.remove_pod(&pod).await;
                }
                Err(e)
            }
        }
    }

    async fn create_container(
        &self,
        spec: &oci_spec::runtime::Spec,
        bundle: &Path,
        pod: &str,
        req: &api::CreateTaskRequest,
    ) -> anyhow::Result<(String, Option<PathBuf>)> {
        let config = spec::container_config(spec, &req.id, !req.stdin.is_empty())?;
        let root = spec::rootfs(spec, bundle);
        if !root.starts_with(bundle)
            || root
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            anyhow::bail!("root {} lies outside the bundle", root.display());
        }
        let mounted = match req.rootfs.is_empty() {
            true => None,
            false => {
                std::fs::create_dir_all(&root)?;
                let (mounts, target) = (req.rootfs.clone(), root.clone());
                tokio::task::spawn_blocking(move || rootfs::mount_all(&mounts, &target)).await??;
                Some(root.clone())
            }
        };
        let made = async {
            let stdout = io::output(&req.stdout)?;
            let stderr = io::output(&req.stderr)?;
            let bundle = Bundle {
                rootfs: root.clone(),
                stdout,
                stderr,
            };
            anyhow::Ok(self.rt.create_bundle_container(pod, config, bundle).await?)
        }
        .await;
        match made {
            Ok(id) => Ok((id, mounted)),
            Err(e) => {
                if let Some(m) = &mounted {
                    rootfs::unmount(m);
                }
                Err(e)
            }
        }
    }

    /// Watches a started container to its end: records the exit and tells containerd.
    fn watch_exit(self: &Arc<Self>, entry: Arc<Entry>, container: String) {
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(exit) = this.rt.wait_container(&container).await else {
                return;
            };
            let at = match this.rt.container(&container).map(|c| c.state()) {
                Ok(ContainerState::Exited { finished_at, .. }) => finished_at,
                _ => SystemTime::now(),
            };
            if exit.reason == ExitReason::OomKilled {
                this.publish(
                    &entry,
                    Event::Oom(TaskOOM {
                        container_id: entry.id.clone(),
                        ..Default::default()
                    }),
                );
            }
            this.process_exited(&entry, &entry.id, &entry.process, exit_code(&exit), at);
        });
    }

    fn process_exited(
        &self,
        entry: &Entry,
        id: &str,
        process: &Process,
        code: u32,
        at: SystemTime,
    ) {
        if process.stopped(code, at) {
            self.publish(
                entry,
                Event::Exit(TaskExit {
                    container_id: entry.id.clone(),
                    id: id.to_owned(),
                    pid: self.pid,
                    exit_status: code,
                    exited_at: MessageField::some(timestamp(at)),
                    ..Default::default()
                }),
            );
        }
    }

    /// Gives back what the task holds: its container (or pod), its root filesystem mount.
    async fn remove(&self, entry: &Entry) {
        match &entry.kind {
            Kind::Sandbox => {
                if let Err(e) = self.rt.remove_pod(&entry.pod).await {
                    tracing::debug!(pod = entry.pod, "removing a sandbox's pod: {e}");
                }
            }
            Kind::Container { container, own_pod } => {
                let _ = self.rt.remove_container(container).await;
                if *own_pod {
                    let _ = self.rt.remove_pod(&entry.pod).await;
                }
            }
        }
        if let Some(pump) = entry
            .stdin_pump
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            pump.abort();
        }
        if let Some(m) = &entry.mounted {
            rootfs::unmount(m);
        }
    }
}

/// The shim binary's note in the bundle; a task created without one publishes no events.
fn read_registration(bundle: &Path) -> Registration {
    let Ok(dir) = cap_std::fs::Dir::open_ambient_dir(bundle, cap_std::ambient_authority()) else {
        return Registration::default();
    };
    dir.read_to_string(REGISTRATION)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// A signal as the stop it asks for: KILL at once; anything else is wasmpod's stop (a WASI
/// guest has no handlers: a command ends at once with 143, a wasi:http handler drains, a
/// `wait-grace` pod runs on until containerd's SIGKILL).
fn is_kill(signal: u32) -> bool {
    signal == libc::SIGKILL as u32
}

#[async_trait]
impl TaskApi for TaskService {
    async fn create(
        &self,
        ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let ns = namespace(ctx);
        if self.entry(&ns, &req.id).is_ok() {
            return Err(status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("task {} already exists", req.id),
            ));
        }
        let entry = self
            .create_task(&ns, &req)
            .await
            .map_err(|e| match e.downcast::<Error>() {
                Ok(e) => rpc(e),
                Err(e) => invalid(format!("{e:#}")),
            })?;
        let entry = Arc::new(entry);
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ns, req.id.clone()), entry.clone());
        self.publish(
            &entry,
            Event::Create(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: self.pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid: self.pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        let entry = self.entry(&namespace(ctx), &req.id)?;
        if !req.exec_id.is_empty() {
            let exec = self.find_exec(&entry, &req.exec_id)?;
            let Kind::Container { container, .. } = &entry.kind else {
                return Err(status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    "a pod sandbox runs no execs",
                ));
            };
            let p = &exec.process;
            let out = io::output(&p.stdout).map_err(invalid)?;
            let stdio = match p.terminal {
                true => Stdio::merged(!p.stdin.is_empty(), out),
                false => Stdio {
                    stdin: !p.stdin.is_empty(),
                    stdout: out,
                    stderr: io::output(&p.stderr).map_err(invalid)?,
                },
            };
            let task = self
                .rt
                .exec(container, &exec.args, stdio)
                .await
                .map_err(rpc)?;
            if !p.stdin.is_empty() {
                let (rx, pump) = io::input(&p.stdin).map_err(invalid)?;
                let t = task.clone();
                tokio::spawn(async move {
                    t.feed_stdin(rx, true).await;
                    pump.abort();
                });
            }
            *exec.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.clone());
            p.phase.send_replace(Phase::Running);
            self.publish(
                &entry,
                Event::ExecStarted(TaskExecStarted {
                    container_id: entry.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid: self.pid,
                    ..Default::default()
                }),
            );
            let (this, entry, exec_id) = (self.0.clone(), entry.clone(), req.exec_id.clone());
            tokio::spawn(async move {
                let exit = task.wait().await;
                this.process_exited(
                    &entry,
                    &exec_id,
                    &exec.process,
                    exit_code(&exit),
                    SystemTime::now(),
                );
            });
            return Ok(api::StartResponse {
                pid: self.pid,
                ..Default::default()
            });
        }
        if entry.process.phase() != Phase::Created {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("task {} was started already", req.id),
            ));
        }
        if let Kind::Container { container, .. } = &entry.kind {
            self.rt.start_container(container).map_err(rpc)?;
            if !entry.process.stdin.is_empty() {
                let (rx, pump) = io::input(&entry.process.stdin).map_err(invalid)?;
                *entry.stdin_pump.lock().unwrap_or_else(|e| e.into_inner()) = Some(pump);
                if let Ok(task) = self.rt.container_task(container) {
                    tokio::spawn(async move { task.feed_stdin(rx, true).await });
                }
            }
            entry.process.phase.send_if_modified(|p| {
                let created = *p == Phase::Created;
                if created {
                    *p = Phase::Running;
                }
                created
            });
            self.publish(
                &entry,
                Event::Start(TaskStart {
                    container_id: entry.id.clone(),
                    pid: self.pid,
                    ..Default::default()
                }),
            );
            self.watch_exit(entry.clone(), container.clone());
        } else {
            entry.process.phase.send_replace(Phase::Running);
            self.publish(
                &entry,
                Event::Start(TaskStart {
                    container_id: entry.id.clone(),
                    pid: self.pid,
                    ..Default::default()
                }),
            );
        }
        Ok(api::StartResponse {
            pid: self.pid,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let entry = self.entry(&namespace(ctx), &req.id)?;
        let exec = match req.exec_id.is_empty() {
            true => None,
            false => Some(self.find_exec(&entry, &req.exec_id)?),
        };
        let p = exec.as_ref().map_or(&entry.process, |e| &e.process);
        let (st, code, at) = match p.phase() {
            Phase::Created => (Status::CREATED, 0, None),
            Phase::Running => (Status::RUNNING, 0, None),
            Phase::Stopped { code, at } => (Status::STOPPED, code, Some(timestamp(at))),
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: entry.bundle.display().to_string(),
            pid: self.pid,
            status: st.into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit_status: code,
            exited_at: at.into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    async fn kill(&self, ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        let entry = self.entry(&namespace(ctx), &req.id)?;
        if !req.exec_id.is_empty() {
            let exec = self.find_exec(&entry, &req.exec_id)?;
            if let Some(task) = exec.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                task.kill(Exit::killed(ExitReason::Killed, "killed"));
            }
            return Ok(api::Empty::new());
        }
        match &entry.kind {
            Kind::Sandbox => {
                let code = 128 + req.signal;
                self.process_exited(&entry, &entry.id, &entry.process, code, SystemTime::now());
            }
            Kind::Container { container, .. } => {
                if entry.process.phase() == Phase::Created {
                    // Never started: it ends here, as a process killed before it ran.
                    self.process_exited(
                        &entry,
                        &entry.id,
                        &entry.process,
                        128 + req.signal,
                        SystemTime::now(),
                    );
                    return Ok(api::Empty::new());
                }
                let c = self.rt.container(container).map_err(rpc)?;
                let grace = if is_kill(req.signal) {
                    Duration::ZERO
                } else {
                    UNTIL_KILLED
                };
                tokio::spawn(async move { c.stop(grace, ExitReason::Killed, "killed").await });
            }
        }
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let ns = namespace(ctx);
        let entry = self.entry(&ns, &req.id)?;
        if !req.exec_id.is_empty() {
            let exec = self.find_exec(&entry, &req.exec_id)?;
            let (code, at) = match exec.process.phase() {
                Phase::Stopped { code, at } => (code, at),
                Phase::Created => (0, SystemTime::now()),
                Phase::Running => {
                    return Err(status(
                        ttrpc::Code::FAILED_PRECONDITION,
                        format!("exec {} is still running", req.exec_id),
                    ))
                }
            };
            entry
                .execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.exec_id);
            return Ok(api::DeleteResponse {
                pid: self.pid,
                exit_status: code,
                exited_at: MessageField::some(timestamp(at)),
                ..Default::default()
            });
        }
        if entry.process.phase() == Phase::Running {
            if let Kind::Container { container, .. } = &entry.kind {
                let _ = self.rt.stop_container(container, Duration::ZERO).await;
                entry.process.wait().await;
            } else {
                self.process_exited(&entry, &entry.id, &entry.process, 137, SystemTime::now());
            }
        }
        let (code, at) = match entry.process.phase() {
            Phase::Stopped { code, at } => (code, at),
            _ => (0, SystemTime::now()),
        };
        self.remove(&entry).await;
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(ns, req.id.clone()));
        self.publish(
            &entry,
            Event::Delete(TaskDelete {
                container_id: req.id.clone(),
                pid: self.pid,
                exit_status: code,
                exited_at: MessageField::some(timestamp(at)),
                id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid: self.pid,
            exit_status: code,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        })
    }

    async fn wait(
        &self,
        ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let entry = self.entry(&namespace(ctx), &req.id)?;
        let (code, at) = match req.exec_id.is_empty() {
            true => entry.process.wait().await,
            false => self.find_exec(&entry, &req.exec_id)?.process.wait().await,
        };
        Ok(api::WaitResponse {
            exit_status: code,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        let entry = self.entry(&namespace(ctx), &req.id)?;
        if !matches!(entry.kind, Kind::Container { .. }) {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                "a pod sandbox runs no execs",
            ));
        }
        let process: oci_spec::runtime::Process = serde_json::from_slice(&req.spec.value)
            .map_err(|e| invalid(format!("exec {}: the process spec: {e}", req.exec_id)))?;
        let args = spec::process_parts(&process).args;
        if args.is_empty() {
            return Err(invalid(format!("exec {}: no args", req.exec_id)));
        }
        let exec = Arc::new(Exec {
            args,
            process: Process::new(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            task: Mutex::default(),
        });
        {
            let mut execs = entry.execs.lock().unwrap_or_else(|e| e.into_inner());
            if execs.contains_key(&req.exec_id) {
                return Err(status(
                    ttrpc::Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            execs.insert(req.exec_id.clone(), exec);
        }
        self.publish(
            &entry,
            Event::ExecAdded(TaskExecAdded {
                container_id: entry.id.clone(),
                exec_id: req.exec_id,
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        // WASI has no terminal: a size is accepted and has nothing to change.
        self.entry(&namespace(ctx), &req.id)?;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<api::Empty> {
        let entry = self.entry(&namespace(ctx), &req.id)?;
        if !req.stdin {
            return Ok(api::Empty::new());
        }
        if req.exec_id.is_empty() {
            if let Some(pump) = entry
                .stdin_pump
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                pump.abort();
            }
        } else if let Some(task) = self
            .find_exec(&entry, &req.exec_id)?
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            task.close_stdin();
        }
        Ok(api::Empty::new())
    }

    async fn pids(
        &self,
        ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        self.entry(&namespace(ctx), &req.id)?;
        Ok(api::PidsResponse {
            processes: vec![api::ProcessInfo {
                pid: self.pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let entry = self.entry(&namespace(ctx), &req.id)?;
        let usage = match &entry.kind {
            Kind::Container { container, .. } => self.rt.container(container).map_err(rpc)?.usage(),
            Kind::Sandbox => self.rt.pod_usage(&*self.rt.pod(&entry.pod).map_err(rpc)?),
        };
        let micros = usage.cpu.as_micros() as u64;
        let metrics = Metrics {
            pids: MessageField::some(PidsStat {
                current: 1,
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage_usec: micros,
                user_usec: micros,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                usage: usage.memory_bytes,
                anon: usage.memory_bytes,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut any = super::events::any(&metrics);
        // containerd's typeurl registry name for cgroup v2 metrics.
        any.type_url = "io.containerd.cgroups.v2.Metrics".into();
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        if !req.id.is_empty() {
            self.entry(&namespace(ctx), &req.id)?;
        }
        Ok(api::ConnectResponse {
            shim_pid: self.pid,
            task_pid: self.pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn pause(
        &self,
        _ctx: &TtrpcContext,
        req: api::PauseRequest,
    ) -> ttrpc::Result<api::Empty> {
        Err(unsupported("pause", &req.id))
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> ttrpc::Result<api::Empty> {
        Err(unsupported("resume", &req.id))
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        Err(unsupported("checkpoint", &req.id))
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        Err(unsupported("update the resources of", &req.id))
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        // containerd asks every shim to exit after each delete; this daemon serves the whole
        // node and stays.
        Ok(api::Empty::new())
    }
}
