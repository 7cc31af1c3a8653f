//! The ttrpc task service containerd calls, over [`Tasks`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim_protos::api::{self as api, Status};
use containerd_shim_protos::cgroups_v2::metrics::{CPUStat, MemoryStat, Metrics, PidsStat};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskStart,
};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Task as TaskApi;
use ttrpc::asynchronous::TtrpcContext;
use wasmpod_runtime::error::{Error, ErrorKind};
use wasmpod_runtime::exit::{Exit, ExitReason};
use wasmpod_runtime::runtime::Runtime;
use wasmpod_runtime::stdio::Stdio;

use super::events::{timestamp, Event};
use super::process::{Phase, Process};
use super::tasks::{exit_code, Exec, Kind, Tasks};
use super::{io, spec};

/// How long a stop asked by SIGTERM may take before containerd's own SIGKILL: containerd
/// decides (it sends the kill after its timeout), so this is only a bound.
const UNTIL_KILLED: Duration = Duration::from_secs(24 * 3600);

/// The ttrpc face of [`Tasks`].
pub(super) struct TaskService(Arc<Tasks>);

impl std::ops::Deref for TaskService {
    type Target = Arc<Tasks>;
    fn deref(&self) -> &Arc<Tasks> {
        &self.0
    }
}

pub(super) fn status(kind: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
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

impl TaskService {
    pub(super) fn new(rt: Arc<Runtime>) -> Self {
        Self(Arc::new(Tasks::new(rt)))
    }
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
            let mut pumps = io::Pumps::default();
            let out = io::output(&p.stdout, &mut pumps).map_err(invalid)?;
            let stdio = match p.terminal {
                true => Stdio::merged(!p.stdin.is_empty(), out),
                false => Stdio {
                    stdin: !p.stdin.is_empty(),
                    stdout: out,
                    stderr: io::output(&p.stderr, &mut pumps).map_err(invalid)?,
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
                pumps.drained().await;
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
            entry.close_stdin();
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

    /// New CPU and memory limits (containerd's CRI UpdateContainerResources): `resources` is
    /// the OCI `LinuxResources` as JSON, applied by the runtime as the CRI server applies its
    /// own. A sandbox task runs no guest, so it has nothing to limit.
    async fn update(
        &self,
        ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        let entry = self.entry(&namespace(ctx), &req.id)?;
        let (Kind::Container { container, .. }, Some(any)) = (&entry.kind, req.resources.as_ref())
        else {
            return Ok(api::Empty::new());
        };
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| {
                invalid(format!(
                    "task {}: the resources are not OCI LinuxResources ({}): {e}",
                    req.id, any.type_url
                ))
            })?;
        self.rt
            .update_container_resources(container, spec::cri_resources(&resources))
            .map_err(rpc)?;
        Ok(api::Empty::new())
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
