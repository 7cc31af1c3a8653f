//! [`Runtime`]: the one API every front end calls. It owns the engine, the image source and
//! every pod and container of this process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use crate::container::{
    Container, ContainerEvent, ContainerState, ContainerUsage, EventKind, NewContainer, Observer,
    Prepared,
};
use crate::engine::{raise_descriptor_limit, Engine, FileBudget, FileLimits, PodMemory, Wasm};
use crate::error::{Error, Result};
use crate::exit::{Exit, ExitReason};
use crate::image::{
    Credentials, Image, ImageSource, ImageStore, PullPolicy, RegistryConfig, UnpackLimits,
};
use crate::log::{LogLimits, LogLine, LogTarget, LIVE_CAPACITY};
use crate::mounts::GuestFs;
use crate::network::{Network, NetworkConfig};
use crate::phase::Timer;
use crate::pod::{Pod, PodState};
use crate::spec::{ContainerConfig, CriResources, PodConfig, PodMemoryConfig, PodOwner, Resources};
use crate::state::{PodRecord, StateStore, Sync};
use crate::stdio::Output;
use crate::volume::PodVolumes;

/// How a runtime is set up.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Pods' scratch space, the image store and the AOT cache live here.
    pub state_dir: PathBuf,
    pub registries: RegistryConfig,
    pub unpack_limits: UnpackLimits,
    pub network: NetworkConfig,
    /// How container log files are kept from filling the disk.
    pub log_limits: LogLimits,
    /// Open files per container and per pod.
    pub file_limits: FileLimits,
}

pub struct Runtime {
    engine: Arc<Engine>,
    images: Arc<ImageStore>,
    state_dir: PathBuf,
    pods: RwLock<HashMap<String, Arc<Pod>>>,
    containers: RwLock<HashMap<String, Arc<Container>>>,
    logs: broadcast::Sender<LogLine>,
    log_limits: LogLimits,
    observer: Arc<Observer>,
    network: Network,
    file_limits: FileLimits,
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> Result<Arc<Self>> {
        let dir = &options.state_dir;
        std::fs::create_dir_all(dir.join("pods")).map_err(|e| Error::io(dir.display(), e))?;
        crate::tls::install_provider();
        let guest_files = raise_descriptor_limit();
        tracing::debug!(guest_files, "descriptor limit raised");
        let engine = Engine::new(Some(&dir.join("aot")))?;
        let images = ImageStore::open(
            &dir.join("images"),
            engine.clone(),
            options.registries,
            options.unpack_limits,
        )?;
        let network = Network::new(options.network)?;
        let observer = Arc::new(Observer {
            state: StateStore::open(&dir.join("state.redb"))?,
            events: broadcast::channel(4096).0,
        });
        let rt = Self {
            engine,
            images: Arc::new(images),
            state_dir: options.state_dir,
            pods: RwLock::default(),
            containers: RwLock::default(),
            logs: broadcast::channel(LIVE_CAPACITY).0,
            log_limits: options.log_limits,
            observer,
            network,
            file_limits: options.file_limits,
        };
        rt.restore()?;
        Ok(Arc::new(rt))
    }

    /// Brings back the pods and containers of the state database after a restart.
    fn restore(&self) -> Result<()> {
        let (pods, containers) = self.observer.state.load()?;
        for r in pods {
            let dir = self.state_dir.join("pods").join(&r.id);
            let volumes = PodVolumes::create(&dir, &r.id, &r.config.volumes).unwrap_or_else(|e| {
                tracing::warn!(pod = %r.id, "volumes of a restored pod: {e}");
                PodVolumes::default()
            });
            let keep = r.ip.as_deref().and_then(|ip| ip.parse().ok());
            let network = self
                .network
                .attach(&r.config, keep)
                .inspect_err(|e| tracing::warn!(pod = %r.id, "network of a restored pod: {e}"))
                .ok();
            let pod = Pod {
                id: r.id.clone(),
                created_at: r.created_at,
                dir,
                volumes,
                network,
                state: Mutex::new(r.state),
                containers: Mutex::default(),
                files: FileBudget::new(self.file_limits),
                memory: PodMemory::new(r.config.memory.limit, r.config.memory.overhead),
                config: r.config,
                etc: Default::default(),
            };
            write(&self.pods).insert(r.id, Arc::new(pod));
        }
        for r in containers {
            let Ok(pod) = self.pod(&r.pod_id) else {
                let _ = self.observer.state.remove_container(&r.id);
                continue;
            };
            let dir = pod.dir.join("containers").join(&r.id);
            let was_running = matches!(r.state, ContainerState::Running { .. });
            let account = self
                .engine
                .account(r.config.memory_limit, r.config.cpu, &pod.memory);
            let c = Arc::new(Container::restore(r, dir, account, self.observer.clone()));
            if was_running {
                self.observer.state.put_container(&c.record(), Sync::Now)?;
            }
            pod.containers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(c.id.clone());
            write(&self.containers).insert(c.id.clone(), c);
        }
        Ok(())
    }

    /// Takes the node's pod CIDR (kubelet's UpdateRuntimeConfig); node mode puts pods there.
    pub fn set_pod_cidr(&self, cidr: &str) -> Result<()> {
        if cidr.is_empty() {
            return Ok(());
        }
        self.network.set_pod_cidr(cidr)
    }

    /// Where pods' scratch space, images and the state database live.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Reopens a running container's log file after kubelet rotated it.
    pub fn reopen_container_log(&self, id: &str) -> Result<()> {
        self.container(id)?.reopen_log()
    }

    /// Every container lifecycle event from now on.
    pub fn subscribe_events(&self) -> broadcast::Receiver<ContainerEvent> {
        self.observer.events.subscribe()
    }

    /// Records that could not be read at start-up, set aside.
    pub fn quarantined_records(&self) -> Result<Vec<String>> {
        self.observer.state.quarantined()
    }

    fn persist_pod(&self, pod: &Pod) -> Result<()> {
        if pod.config.owner != PodOwner::Wasmpod {
            return Ok(());
        }
        self.observer.state.put_pod(
            &PodRecord {
                id: pod.id.clone(),
                config: pod.current_config(),
                created_at: pod.created_at,
                state: pod.state(),
                ip: pod.ip().map(|ip| ip.to_string()),
            },
            Sync::Soon,
        )
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }

    /// Makes a container's image available by its pull policy (local files need nothing).
    pub async fn ensure_image(
        &self,
        reference: &str,
        policy: PullPolicy,
        credentials: &Credentials,
    ) -> Result<()> {
        if reference.starts_with("file://") || reference.starts_with('/') {
            return Ok(());
        }
        self.images
            .ensure(reference, policy, credentials)
            .await
            .map(drop)
    }

    /// Every log line of every container from now on.
    pub fn subscribe_logs(&self) -> broadcast::Receiver<LogLine> {
        self.logs.subscribe()
    }

    /// Creates a pod sandbox and its volumes; returns its id. A sandbox with the same name,
    /// namespace, uid and attempt as one not yet removed is refused, as containerd refuses it.
    pub fn run_pod(&self, config: PodConfig) -> Result<String> {
        config.check_namespaces()?;
        self.check_unique_pod(&config)?;
        let id = new_id();
        // Made on first use (volumes, file mounts, logs): most CRI pods need none of it.
        let dir = self.state_dir.join("pods").join(&id);
        let timer = Timer::start("run_pod.volumes");
        let volumes = match PodVolumes::create(&dir, &id, &config.volumes) {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        drop(timer);
        let timer = Timer::start("run_pod.network_attach");
        let attached = self.network.attach(&config, None);
        drop(timer);
        let network = match attached {
            Ok(n) => n,
            Err(e) => {
                volumes.remove();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let pod = Pod {
            id: id.clone(),
            created_at: SystemTime::now(),
            dir,
            volumes,
            network: Some(network),
            state: Mutex::new(PodState::Ready),
            containers: Mutex::default(),
            files: FileBudget::new(self.file_limits),
            memory: PodMemory::new(config.memory.limit, config.memory.overhead),
            config,
            etc: Default::default(),
        };
        let pod = Arc::new(pod);
        let unwind = |pod: &Pod| {
            if let Some(net) = &pod.network {
                self.network.release_unused(net);
            }
            pod.volumes.remove();
            let _ = std::fs::remove_dir_all(&pod.dir);
        };
        {
            // Checked again under the lock: a concurrent run with the same metadata may have
            // finished meanwhile.
            let mut pods = write(&self.pods);
            if pods.values().any(|p| p.config.same_sandbox(&pod.config)) {
                drop(pods);
                unwind(&pod);
                return Err(duplicate_pod(&pod.config));
            }
            pods.insert(id.clone(), pod.clone());
        }
        let timer = Timer::start("run_pod.state_write");
        let persisted = self.persist_pod(&pod);
        drop(timer);
        if let Err(e) = persisted {
            write(&self.pods).remove(&id);
            unwind(&pod);
            return Err(e);
        }
        Ok(id)
    }

    fn check_unique_pod(&self, config: &PodConfig) -> Result<()> {
        if read(&self.pods)
            .values()
            .any(|p| p.config.same_sandbox(config))
        {
            return Err(duplicate_pod(config));
        }
        Ok(())
    }

    pub fn pod(&self, id: &str) -> Result<Arc<Pod>> {
        read(&self.pods)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("pod sandbox {id} not found")))
    }

    pub fn pods(&self) -> Vec<Arc<Pod>> {
        read(&self.pods).values().cloned().collect()
    }

    /// Stops every container of the pod (each gets `grace`), then marks the pod not ready.
    pub async fn stop_pod(&self, id: &str, grace: Duration) -> Result<()> {
        let pod = self.pod(id)?;
        let stops = self
            .pod_containers(&pod)
            .into_iter()
            .map(|c| async move { c.stop(grace, ExitReason::Killed, "pod stopped").await });
        futures::future::join_all(stops).await;
        if let Some(net) = &pod.network {
            net.stop_host_ports().await;
        }
        *pod.state.lock().unwrap_or_else(|e| e.into_inner()) = PodState::NotReady;
        self.persist_pod(&pod)
    }

    /// Removes the pod, its containers (killing any still running) and its emptyDirs.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let pod = self.pod(id)?;
        for c in self.pod_containers(&pod) {
            self.remove_container(&c.id).await?;
        }
        if pod.config.owner == PodOwner::Wasmpod {
            self.observer.state.remove_pod(id)?;
        }
        self.release_pod(&pod).await;
        write(&self.pods).remove(id);
        Ok(())
    }

    /// Gives back what a pod holds on the node: its address, hostPorts, volumes and directory.
    async fn release_pod(&self, pod: &Pod) {
        if let Some(net) = &pod.network {
            self.network.detach(net).await;
        }
        pod.volumes.remove();
        match std::fs::remove_dir_all(&pod.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(pod = pod.id, "removing pod directory: {e}");
            }
            _ => {}
        }
    }

    /// The pod's containers, in creation order.
    pub fn pod_containers(&self, pod: &Pod) -> Vec<Arc<Container>> {
        let all = read(&self.containers);
        pod.container_ids()
            .iter()
            .filter_map(|id| all.get(id).cloned())
            .collect()
    }

    /// Resolves the image, compiles it (cached), lays out the mounts; returns the container id.
    pub async fn create_container(&self, pod_id: &str, config: ContainerConfig) -> Result<String> {
        self.create(pod_id, config, None).await
    }

    /// Creates a container from a bundle containerd prepared: its program is `command[0]`
    /// found in the bundle's root filesystem (on the env's `PATH`), which the guest sees at `/`
    /// in place; its output goes where `bundle` says rather than to a log file.
    pub async fn create_bundle_container(
        &self,
        pod_id: &str,
        config: ContainerConfig,
        bundle: Bundle,
    ) -> Result<String> {
        self.create(pod_id, config, Some(bundle)).await
    }

    async fn create(
        &self,
        pod_id: &str,
        config: ContainerConfig,
        bundle: Option<Bundle>,
    ) -> Result<String> {
        let pod = self.pod(pod_id)?;
        if pod.state() != PodState::Ready {
            return Err(Error::precondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        if config.name.is_empty() {
            return Err(Error::invalid("container name is empty"));
        }
        self.check_unique_name(&pod, &config)?;
        let ctx = format!("container {}", config.name);
        config.cpu.check().map_err(|e| e.context(&ctx))?;
        let timer = Timer::start("create.image_resolve");
        let image = match &bundle {
            None => self.images.resolve(&config.image).await,
            Some(b) => bundle_image(b, &config).await,
        }
        .map_err(|e| e.context(&ctx))?;
        drop(timer);
        let timer = Timer::start("create.code_load");
        let program = self
            .engine
            .load(image.wasm.clone())
            .await
            .map_err(|e| e.context(format!("{ctx}: image {}", image.reference)))?;
        drop(timer);
        if let Some(limit) = config.memory_limit {
            crate::container::check_memory_floor(limit, &program).map_err(|e| e.context(&ctx))?;
        }
        if let Some(limit) = pod.memory.pod_limit() {
            crate::container::check_memory_floor(limit, &program)
                .map_err(|e| e.context(format!("{ctx}: the pod's own limit")))?;
        }

        let env = merge_env(
            std::iter::once(("HOSTNAME".to_owned(), pod.config.hostname.clone()))
                .chain(image.env.iter().cloned())
                .chain(config.env.iter().cloned()),
        );
        crate::spec::check_env(&env).map_err(|e| e.context(&ctx))?;
        let id = new_id();
        let dir = pod.dir.join("containers").join(&id);
        let mut mounts = config
            .mounts
            .iter()
            .map(|m| pod.volumes.resolve(m))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| e.context(&ctx))?;
        let timer = Timer::start("create.guest_fs");
        let etc = pod.etc_mounts(&mounts).map_err(|e| e.context(&ctx))?;
        mounts.extend(etc);
        let fs = match &bundle {
            None => GuestFs::build(
                mounts,
                image.rootfs.as_deref(),
                &dir,
                config.writable_rootfs,
                &config.readonly_paths,
            ),
            Some(b) => GuestFs::build_in_place(
                mounts,
                &b.rootfs,
                !config.writable_rootfs,
                &dir,
                &config.readonly_paths,
            ),
        }
        .map_err(|e| e.context(&ctx))?;
        drop(timer);
        let exec_root = fs.root().map(Path::to_path_buf);
        let argv = if config.command.is_empty() {
            image.entrypoint.clone()
        } else {
            config.command.clone()
        }
        .into_iter()
        .chain(config.args.iter().cloned())
        .collect();
        let config = ContainerConfig {
            working_dir: config.working_dir.or_else(|| image.working_dir.clone()),
            ..config
        };
        let (log, output) = match bundle {
            None => {
                let timer = Timer::start("create.log_directory");
                let log = log_target(&pod.log_directory(), &config).map_err(|e| e.context(&ctx))?;
                drop(timer);
                // A log directory the client named is the client's to rotate; ours we rotate.
                let limit = match pod.config.log_directory {
                    Some(_) => self.log_limits.client,
                    None => self.log_limits.own,
                };
                (Some((log, limit)), None)
            }
            Some(b) => (None, Some((b.stdout, b.stderr))),
        };
        let account = self
            .engine
            .account(config.memory_limit, config.cpu, &pod.memory);
        let container = Arc::new(Container::new(
            NewContainer {
                account,
                id: id.clone(),
                pod_id: pod_id.to_owned(),
                image_ref: image.reference,
                log,
                output,
                persist: pod.config.owner == PodOwner::Wasmpod,
                dir,
                prepared: Prepared {
                    program,
                    argv,
                    env,
                    fs,
                    exec_root,
                    single_binary: image.rootfs.is_none(),
                },
                config,
            },
            self.observer.clone(),
        ));
        {
            // Checked again: another create with the same name may have finished meanwhile.
            let mut ids = pod.containers.lock().unwrap_or_else(|e| e.into_inner());
            let all = read(&self.containers);
            if ids
                .iter()
                .filter_map(|i| all.get(i))
                .any(|c| same_name(c, &container.config))
            {
                return Err(duplicate(&container.config));
            }
            drop(all);
            ids.push(id.clone());
            write(&self.containers).insert(id.clone(), container.clone());
        }
        let timer = Timer::start("create.state_write");
        self.observer.changed(&container, EventKind::Created);
        drop(timer);
        Ok(id)
    }

    /// Changes a container's CPU and memory limits (CRI UpdateContainerResources): the figures
    /// `update` sets, at once for its running guests, and in its record. A memory limit below
    /// what it uses now is refused (FailedPrecondition), out-of-bounds figures too
    /// (InvalidArgument); then nothing changes. Returns the limits now in force.
    pub fn update_container_resources(&self, id: &str, update: CriResources) -> Result<Resources> {
        let c = self.container(id)?;
        let pod = self.pod(&c.pod_id).ok();
        let pod_limit = pod.as_ref().and_then(|p| p.memory.pod_limit());
        let new = c
            .update_resources(|current| current.updated(update))
            .map_err(|e| e.context(format!("updating the resources of container {id}")))?;
        // kubelet's pod limit moved with the container's: its record keeps the new figure.
        if let Some(pod) = pod.filter(|p| p.memory.pod_limit() != pod_limit) {
            if let Err(e) = self.persist_pod(&pod) {
                tracing::warn!(pod = %pod.id, "recording the pod's memory limit: {e}");
            }
        }
        Ok(new)
    }

    /// Changes a pod's own limits (CRI UpdatePodSandboxResources, which kubelet calls after
    /// resizing the pod's containers): `resources` (kubelet's pod-level figures, without the
    /// overhead) and `overhead`, each figure read as in a container update (0 keeps, -1
    /// removes). The memory limit takes effect at once for the pod's guests and is kept in the
    /// pod's record. Refused, with nothing changed: a bad figure (InvalidArgument, CPU figures
    /// by a container's bounds too, though the engine has no pod-level CPU limit and keeps
    /// none), a limit below what a container of the pod declares it starts with
    /// (InvalidArgument), and a limit below what the pod holds now (FailedPrecondition, as
    /// runc refuses it). Returns the memory figures now in force.
    pub fn update_pod_resources(
        &self,
        id: &str,
        resources: CriResources,
        overhead: CriResources,
    ) -> Result<PodMemoryConfig> {
        let ctx = || format!("updating the resources of pod sandbox {id}");
        let pod = self.pod(id)?;
        let old = pod.memory_config();
        let new = old
            .updated(resources.memory_limit, overhead.memory_limit)
            .map_err(|e| e.context(ctx()))?;
        for (what, figures) in [("resources", resources), ("overhead", overhead)] {
            let cpu = CriResources {
                memory_limit: 0,
                ..figures
            };
            Resources::default()
                .updated(cpu)
                .map_err(|e| e.context(format!("{}: {what}", ctx())))?;
        }
        if let Some(limit) = new.limit {
            // Containers that may still run; an exited one never runs again.
            for c in self.pod_containers(&pod) {
                let exited = matches!(c.state(), ContainerState::Exited { .. });
                let Some(program) = c.program().filter(|_| !exited) else {
                    continue;
                };
                crate::container::check_memory_floor(limit, program)
                    .map_err(|e| e.context(format!("{}: container {}", ctx(), c.config.name)))?;
            }
        }
        pod.memory
            .set_pod_limit(new.limit, new.overhead)
            .map_err(|e| e.context(ctx()))?;
        if let Err(e) = self.persist_pod(&pod) {
            // Refused only if the guests grew past the old limit meanwhile: then the new one
            // stays, as killing them is not ours to do.
            let _ = pod.memory.set_pod_limit(old.limit, old.overhead);
            return Err(e.context(ctx()));
        }
        Ok(new)
    }

    /// What the pod's containers use together.
    pub fn pod_usage(&self, pod: &Pod) -> ContainerUsage {
        self.pod_containers(pod).iter().map(|c| c.usage()).fold(
            ContainerUsage::default(),
            |a, u| ContainerUsage {
                memory_bytes: a.memory_bytes + u.memory_bytes,
                cpu: a.cpu + u.cpu,
            },
        )
    }

    fn check_unique_name(&self, pod: &Pod, config: &ContainerConfig) -> Result<()> {
        if self
            .pod_containers(pod)
            .iter()
            .any(|c| same_name(c, config))
        {
            return Err(duplicate(config));
        }
        Ok(())
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        read(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("container {id} not found")))
    }

    pub fn containers(&self) -> Vec<Arc<Container>> {
        read(&self.containers).values().cloned().collect()
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        let pod = self.pod(&c.pod_id)?;
        c.start(&self.engine, &pod, self.logs.clone())
    }

    /// Gives the guest `grace` to exit, then kills it (exit 137, reason `Killed`).
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let c = self.container(id)?;
        let message = format!(
            "stopped; did not exit within its {}s grace period",
            grace.as_secs()
        );
        c.stop(grace, ExitReason::Killed, &message).await;
        Ok(())
    }

    pub async fn wait_container(&self, id: &str) -> Result<Exit> {
        Ok(self.container(id)?.wait().await)
    }

    /// Removes a container, killing it first if it still runs.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        if matches!(c.state(), ContainerState::Running { .. }) {
            c.stop(Duration::ZERO, ExitReason::Killed, "container removed")
                .await;
        }
        if let Ok(pod) = self.pod(&c.pod_id) {
            pod.containers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|i| i != id);
        }
        let _ = std::fs::remove_dir_all(&c.dir);
        write(&self.containers).remove(id);
        self.observer.changed(&c, EventKind::Deleted);
        Ok(())
    }
}

/// A container bundle containerd prepared (see [`Runtime::create_bundle_container`]).
pub struct Bundle {
    /// The root filesystem, mounted from the snapshotter's mounts.
    pub rootfs: PathBuf,
    pub stdout: Output,
    pub stderr: Output,
}

/// The image a bundle amounts to: `command[0]` looked up in its root filesystem.
async fn bundle_image(bundle: &Bundle, config: &ContainerConfig) -> Result<Image> {
    let Some(arg0) = config.command.first().cloned() else {
        return Err(Error::invalid("the OCI spec's process has no args"));
    };
    let path = config
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    let cwd = config.working_dir.clone().unwrap_or_else(|| "/".into());
    let root = bundle.rootfs.clone();
    let name = arg0.clone();
    let found = tokio::task::spawn_blocking(move || {
        crate::exec::lookup(&root, &name, path.as_deref(), &cwd, None)
    })
    .await
    .map_err(|e| Error::internal(format!("program lookup: {e}")))?;
    let wasm = match found {
        crate::exec::Lookup::Wasm(bytes, _) => Wasm::Bytes(bytes.into()),
        crate::exec::Lookup::NotWasm(p) => {
            return Err(Error::invalid(format!(
                "{arg0:?}: {p} in the root filesystem is not a WebAssembly program (wasmpod \
                 runs Wasm only; use a compat image whose entrypoint is a .wasm file)"
            )))
        }
        _ => {
            return Err(Error::not_found(format!(
                "{arg0:?}: no such program in the root filesystem {}",
                bundle.rootfs.display()
            )))
        }
    };
    Ok(Image {
        reference: bundle.rootfs.display().to_string(),
        wasm,
        entrypoint: Vec::new(),
        env: Vec::new(),
        working_dir: None,
        rootfs: Some(bundle.rootfs.clone()),
    })
}

fn duplicate_pod(config: &PodConfig) -> Error {
    Error::exists(format!(
        "a pod sandbox named {} in namespace {} with uid {} and attempt {} already exists",
        config.name, config.namespace, config.uid, config.attempt
    ))
}

fn same_name(c: &Container, config: &ContainerConfig) -> bool {
    c.config.name == config.name && c.config.attempt == config.attempt
}

fn duplicate(config: &ContainerConfig) -> Error {
    Error::exists(format!(
        "the pod already has a container named {} with attempt {}",
        config.name, config.attempt
    ))
}

/// The container's log file: its `log_path` inside the pod's log directory, or
/// `<name>/<attempt>.log` as kubelet lays them out, its directory opened by handle.
fn log_target(log_dir: &Path, config: &ContainerConfig) -> Result<LogTarget> {
    let rel = match &config.log_path {
        Some(p) => p.clone(),
        None => PathBuf::from(&config.name).join(format!("{}.log", config.attempt)),
    };
    LogTarget::open(log_dir, &rel)
}

/// Environment in order of definition where a later definition of a name replaces the
/// earlier one in place (the container's env over the image's over HOSTNAME), as in Kubernetes.
/// Linear in the number of variables: a pod may define hundreds of thousands.
fn merge_env(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut slots: HashMap<String, usize> = HashMap::new();
    for (k, v) in vars {
        match slots.entry(k) {
            std::collections::hash_map::Entry::Occupied(slot) => out[*slot.get()].1 = v,
            std::collections::hash_map::Entry::Vacant(slot) => {
                out.push((slot.key().clone(), v));
                slot.insert(out.len() - 1);
            }
        }
    }
    out
}

/// A 64-hex-digit id, as container runtimes use.
fn new_id() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn open(dir: &Path) -> Arc<Runtime> {
        Runtime::new(RuntimeOptions {
            state_dir: dir.to_path_buf(),
            ..Default::default()
        })
        .unwrap()
    }

    fn memory(limit: i64) -> CriResources {
        CriResources {
            memory_limit: limit,
            ..CriResources::default()
        }
    }

    fn pod_config(limit: Option<u64>, overhead: u64) -> PodConfig {
        PodConfig {
            name: "resized".into(),
            namespace: "default".into(),
            uid: "uid-resized".into(),
            hostname: "resized".into(),
            memory: PodMemoryConfig { limit, overhead },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_pod_update_raises_and_lowers_its_limit_and_a_restart_keeps_it() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = open(tmp.path());
        let id = rt.run_pod(pod_config(Some(64 << 20), 0)).unwrap();
        let pod = rt.pod(&id).unwrap();

        let raised = rt
            .update_pod_resources(&id, memory(128 << 20), memory(1 << 20))
            .unwrap();
        let expected = PodMemoryConfig {
            limit: Some(128 << 20),
            overhead: 1 << 20,
        };
        assert_eq!(raised, expected);
        assert_eq!(pod.memory.limit(), Some(128 << 20));
        assert_eq!(pod.current_config().memory, expected);
        // 0 keeps a figure: only the limit is lowered.
        let lowered = rt
            .update_pod_resources(&id, memory(32 << 20), memory(0))
            .unwrap();
        assert_eq!(lowered.limit, Some(32 << 20));
        assert_eq!(lowered.overhead, 1 << 20);

        drop((pod, rt));
        let rt = open(tmp.path());
        assert_eq!(rt.pod(&id).unwrap().memory_config(), lowered);
        assert_eq!(rt.pod(&id).unwrap().memory.limit(), Some(32 << 20));
    }

    #[tokio::test]
    async fn bad_figures_and_unknown_pods_are_refused_and_nothing_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = open(tmp.path());
        let id = rt.run_pod(pod_config(Some(64 << 20), 0)).unwrap();
        let pod = rt.pod(&id).unwrap();
        let before = pod.memory_config();
        let bad_cpu = CriResources {
            cpu_quota: -7,
            ..memory(128 << 20)
        };
        for (resources, overhead, says) in [
            (memory(-2), memory(0), "pod memory limit -2"),
            (memory(128 << 20), memory(-5), "pod overhead memory -5"),
            (bad_cpu, memory(0), "resources: cpu quota -7"),
            (memory(0), bad_cpu, "overhead: cpu quota -7"),
        ] {
            let e = rt
                .update_pod_resources(&id, resources, overhead)
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
            assert!(e.message.contains(says), "{e}");
            assert!(e.message.contains(&id), "{e}");
            assert_eq!(pod.memory_config(), before);
        }
        let e = rt
            .update_pod_resources("no-such-pod", memory(1 << 20), memory(0))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    }
}
