//! containerd's tasks keyed by (namespace, id), each a pod sandbox or a Wasm container of the
//! shared [`Runtime`]: making them, watching them end, giving back what they hold.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim_protos::api::{self as api};
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::MessageField;
use serde::Deserialize;
use wasmpod_runtime::container::ContainerState;
use wasmpod_runtime::engine::Task;
use wasmpod_runtime::exit::{Exit, ExitReason};
use wasmpod_runtime::runtime::{Bundle, Runtime};

use super::events::{timestamp, Event, Publisher};
use super::process::Process;
use super::service::status;
use super::{io, rootfs, spec};

/// What the shim binary's `start` leaves in the bundle for the daemon: who the task belongs to.
pub const REGISTRATION: &str = "wasmpod-task.json";

#[derive(Deserialize, Default)]
pub(super) struct Registration {
    /// containerd's ttrpc address, where events go.
    #[serde(default)]
    pub(super) ttrpc_address: String,
}

pub(super) enum Kind {
    /// A pod's sandbox: the pod itself, with no guest of its own.
    Sandbox,
    /// A Wasm container; `own_pod` when the task made its pod (a `ctr run`, no CRI sandbox).
    Container { container: String, own_pod: bool },
}

pub(super) struct Exec {
    pub(super) args: Vec<String>,
    pub(super) process: Process,
    pub(super) task: Mutex<Option<Arc<Task>>>,
}

pub(super) struct Entry {
    pub(super) namespace: String,
    pub(super) id: String,
    pub(super) bundle: PathBuf,
    pub(super) events: String,
    pub(super) pod: String,
    pub(super) kind: Kind,
    pub(super) process: Process,
    /// Where the root filesystem was mounted (unmounted at delete).
    pub(super) mounted: Option<PathBuf>,
    pub(super) stdin_pump: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The output pumps of the container's guest, drained before its exit is told.
    pub(super) output: Mutex<io::Pumps>,
    pub(super) execs: Mutex<HashMap<String, Arc<Exec>>>,
}

impl Entry {
    /// Stops feeding the guest's stdin from containerd's FIFO; the guest then reads its end.
    pub(super) fn close_stdin(&self) {
        if let Some(pump) = self
            .stdin_pump
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            pump.abort();
        }
    }
}

pub(super) struct Tasks {
    pub(super) rt: Arc<Runtime>,
    pub(super) tasks: Mutex<HashMap<(String, String), Arc<Entry>>>,
    pub(super) events: Publisher,
    pub(super) pid: u32,
}

pub(super) fn exit_code(exit: &Exit) -> u32 {
    u32::try_from(exit.code).unwrap_or(255)
}

impl Tasks {
    pub(super) fn new(rt: Arc<Runtime>) -> Self {
        Self {
            rt,
            tasks: Mutex::default(),
            events: Publisher::default(),
            pid: std::process::id(),
        }
    }

    pub(super) fn entry(&self, ns: &str, id: &str) -> ttrpc::Result<Arc<Entry>> {
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

    pub(super) fn find_exec(&self, entry: &Entry, exec_id: &str) -> ttrpc::Result<Arc<Exec>> {
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

    pub(super) fn publish(&self, entry: &Entry, event: Event) {
        self.events.publish(&entry.events, &entry.namespace, event);
    }

    /// Makes the task's pod and, for a container, the container in it.
    pub(super) async fn create_task(
        &self,
        ns: &str,
        req: &api::CreateTaskRequest,
    ) -> anyhow::Result<Entry> {
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            anyhow::bail!("bundle {:?} is not an absolute path", req.bundle);
        }
        let spec = spec::read(&bundle)?;
        let registration = read_registration(&bundle);
        let process = Process::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let base = |pod: String, kind: Kind, mounted: Option<PathBuf>, output| Entry {
            namespace: ns.to_owned(),
            id: req.id.clone(),
            bundle: bundle.clone(),
            events: registration.ttrpc_address.clone(),
            pod,
            kind,
            process,
            mounted,
            stdin_pump: Mutex::default(),
            output: Mutex::new(output),
            execs: Mutex::default(),
        };
        if spec::is_sandbox(&spec) {
            let pod = self.rt.run_pod(spec::pod_config(&spec, ns, &req.id))?;
            return Ok(base(pod, Kind::Sandbox, None, io::Pumps::default()));
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
            Ok((container, mounted, output)) => Ok(base(
                pod,
                Kind::Container { container, own_pod },
                mounted,
                output,
            )),
            Err(e) => {
                if own_pod {
                    let _ = self.rt.remove_pod(&pod).await;
                }
                Err(e)
            }
        }
    }

    pub(super) async fn create_container(
        &self,
        spec: &oci_spec::runtime::Spec,
        bundle: &Path,
        pod: &str,
        req: &api::CreateTaskRequest,
    ) -> anyhow::Result<(String, Option<PathBuf>, io::Pumps)> {
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
        let mut pumps = io::Pumps::default();
        let made = async {
            let stdout = io::output(&req.stdout, &mut pumps)?;
            let stderr = io::output(&req.stderr, &mut pumps)?;
            let bundle = Bundle {
                rootfs: root.clone(),
                stdout,
                stderr,
            };
            anyhow::Ok(self.rt.create_bundle_container(pod, config, bundle).await?)
        }
        .await;
        match made {
            Ok(id) => Ok((id, mounted, pumps)),
            Err(e) => {
                if let Some(m) = &mounted {
                    rootfs::unmount(m);
                }
                Err(e)
            }
        }
    }

    /// Watches a started container to its end: records the exit and tells containerd.
    pub(super) fn watch_exit(self: &Arc<Self>, entry: Arc<Entry>, container: String) {
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(exit) = this.rt.wait_container(&container).await else {
                return;
            };
            let at = match this.rt.container(&container).map(|c| c.state()) {
                Ok(ContainerState::Exited { finished_at, .. }) => finished_at,
                _ => SystemTime::now(),
            };
            let pumps =
                std::mem::take(&mut *entry.output.lock().unwrap_or_else(|e| e.into_inner()));
            pumps.drained().await;
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

    pub(super) fn process_exited(
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
    pub(super) async fn remove(&self, entry: &Entry) {
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
        entry.close_stdin();
        if let Some(m) = &entry.mounted {
            rootfs::unmount(m);
        }
    }
}

/// The shim binary's note in the bundle; a task created without one publishes no events.
pub(super) fn read_registration(bundle: &Path) -> Registration {
    let Ok(dir) = cap_std::fs::Dir::open_ambient_dir(bundle, cap_std::ambient_authority()) else {
        return Registration::default();
    };
    dir.read_to_string(REGISTRATION)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}
