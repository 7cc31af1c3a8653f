//! The only module that touches wasmtime: one engine per process, the compile cache (memory and
//! disk), the epoch ticker, and running a guest as an async task that can be killed.
//!
//! Every guest runs in its own `Store` on tokio. Compiled code carries epoch checks; the ticker
//! advances the epoch every [`EPOCH_TICK`] and each store yields to the executor at every tick,
//! so a spinning guest shares the cores fairly and a kill (dropping the task) lands within a tick.
//! Each container's [`Account`] carries its live limits: the memory limiter and the CPU meter
//! ([`cpu`]) read them at every step, so an update applies at once.

mod cache;
mod cpu;
mod files;
mod http;
mod memory;
mod rofs;
mod sockets;
mod stdio;
mod task;

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{InstancePre, Module, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::error::{Error, Result};
use crate::exit::{Exit, ExitReason, TRAP_CODE};
use crate::network::PodNetwork;
use cache::AotCache;
use cpu::{CpuAccount, Metered, Scheduler};
pub use cpu::{CpuLimits, CpuUsage};
use files::OpenFiles;
pub use files::{raise_descriptor_limit, FileBudget, FileLimits};
use http::{HttpEngine, HttpHost};
use memory::MemoryLimiter;
pub use memory::{PodMemory, Refusal};
use sockets::{PodSockets, SocketsView};
use stdio::{GuestInput, GuestOutput};
pub use task::Task;
use wasmtime_wasi::sockets::WasiSocketsCtxView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// How often the epoch advances: the longest a guest runs before it yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A Wasm page (memories declare their sizes in pages).
const WASM_PAGE: u64 = 64 << 10;

/// Which WASI a program speaks, told from its binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// A core module exporting `_start` (WASI preview1).
    Preview1,
    /// A component exporting `wasi:cli/run` (WASI preview2).
    Preview2,
}

impl GuestKind {
    /// Tells a core module from a component by the preamble, without parsing the rest.
    pub fn detect(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(Error::invalid(
                if bytes.starts_with(b"\0asm") || bytes.is_empty() {
                    format!("truncated WebAssembly binary ({} bytes)", bytes.len())
                } else {
                    "not a WebAssembly binary (no \\0asm magic)".to_owned()
                },
            ));
        }
        match &bytes[4..8] {
            [1, 0, 0, 0] => Ok(GuestKind::Preview1),
            [0x0d, 0, 1, 0] => Ok(GuestKind::Preview2),
            v => Err(Error::invalid(format!(
                "unsupported WebAssembly version/layer {v:02x?}"
            ))),
        }
    }
}

/// Wasm to load: bytes in memory, or a file whose digest is already known (so a cached
/// program is found without reading or hashing the file).
#[derive(Debug, Clone)]
pub enum Wasm {
    Bytes(Arc<[u8]>),
    File { path: PathBuf, digest: String },
}

impl Wasm {
    pub fn digest(&self) -> String {
        match self {
            Wasm::Bytes(b) => sha256_digest(b),
            Wasm::File { digest, .. } => digest.clone(),
        }
    }

    /// The bytes; a file's content must still match its digest.
    fn bytes(&self) -> Result<Arc<[u8]>> {
        match self {
            Wasm::Bytes(b) => Ok(b.clone()),
            Wasm::File { path, digest } => {
                let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
                if sha256_digest(&bytes) != *digest {
                    return Err(Error::invalid(format!(
                        "{} does not match its digest {digest}; the image store is damaged",
                        path.display()
                    )));
                }
                Ok(bytes.into())
            }
        }
    }
}

enum Code {
    Module(Module),
    Component(Component),
}

/// A compiled, pre-linked guest program, cheap to clone and to instantiate.
#[derive(Clone)]
pub struct Program {
    inner: Arc<ProgramInner>,
}

struct ProgramInner {
    digest: String,
    compiled: Compiled,
    /// Bytes of linear memory its largest memory starts with.
    min_memory: u64,
}

enum Compiled {
    Module(InstancePre<P1Host>),
    Component(CommandPre<P2Host>),
    Http(ProxyPre<HttpHost>),
}

impl Program {
    fn new(digest: &str, compiled: Compiled) -> Self {
        let required = match &compiled {
            Compiled::Module(pre) => Some(pre.module().resources_required()),
            Compiled::Component(pre) => pre.instance_pre().component().resources_required(),
            Compiled::Http(pre) => pre.instance_pre().component().resources_required(),
        };
        let pages = required.and_then(|r| r.max_initial_memory_size);
        Self {
            inner: Arc::new(ProgramInner {
                digest: digest.to_owned(),
                compiled,
                min_memory: pages.unwrap_or(0).saturating_mul(WASM_PAGE),
            }),
        }
    }

    /// Linear memory the program needs to start (its largest memory's initial size): a
    /// memory limit below it could never run it.
    pub fn min_memory(&self) -> u64 {
        self.inner.min_memory
    }

    /// Bytes of the compiled code image (mapped once, however many instances run it).
    pub fn code_bytes(&self) -> u64 {
        let image = match &self.inner.compiled {
            Compiled::Module(pre) => pre.module().image_range(),
            Compiled::Component(pre) => pre.instance_pre().component().image_range(),
            Compiled::Http(pre) => pre.instance_pre().component().image_range(),
        };
        (image.end as usize).saturating_sub(image.start as usize) as u64
    }

    /// `sha256:<hex>` of the Wasm binary.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }
    pub fn kind(&self) -> GuestKind {
        match self.inner.compiled {
            Compiled::Module(_) => GuestKind::Preview1,
            Compiled::Component(_) | Compiled::Http(_) => GuestKind::Preview2,
        }
    }

    /// True for a wasi:http handler, which the runtime serves instead of running to exit.
    pub fn is_http_handler(&self) -> bool {
        matches!(self.inner.compiled, Compiled::Http(_))
    }
}

/// A directory the guest sees at `guest` (a volume, or the staging dir of file mounts).
#[derive(Debug, Clone)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// Everything one run of a guest needs besides its program.
pub struct GuestSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub preopens: Vec<Preopen>,
    pub stdio: crate::stdio::Stdio,
    /// The container's limits and usage, shared by all its guests.
    pub account: Arc<Account>,
    /// The pod's network; without it the guest has no sockets.
    pub network: Option<Arc<PodNetwork>>,
    /// Where a wasi:http handler is served (a port of the pod).
    pub http_port: u16,
    /// The pod's open-file account, which also carries the per-container cap.
    pub files: Arc<FileBudget>,
    /// Cancelled when the container is asked to stop: a wasi:http handler drains.
    pub drain: tokio_util::sync::CancellationToken,
}

/// A container's live limits and what it uses, shared by all its guests (its run, its execs,
/// each wasi:http request), so that they count together as a cgroup's processes do. Its pod's
/// account counts every container's use together (see [`memory`]).
pub struct Account {
    /// Bytes of linear memory and tables the guests' instances hold.
    memory_bytes: AtomicU64,
    /// Of those, the tables' (host memory the guest cannot address), the most ever held,
    /// and how many growths a limit refused (cgroup `memory.failcnt`).
    table_bytes: AtomicU64,
    peak_bytes: AtomicU64,
    failcnt: AtomicU64,
    /// Taken to grow memory and to change the limit, so neither sees the other half done.
    memory_limit: Mutex<Option<u64>>,
    pod: Arc<PodMemory>,
    cpu: CpuAccount,
}

impl Drop for Account {
    /// The container is gone: its limit no longer counts in its pod's.
    fn drop(&mut self) {
        self.pod.leave(self.memory_limit());
    }
}

impl Account {
    fn new(memory_limit: Option<u64>, cpu: CpuAccount, pod: Arc<PodMemory>) -> Self {
        Self {
            memory_bytes: AtomicU64::new(0),
            table_bytes: AtomicU64::new(0),
            peak_bytes: AtomicU64::new(0),
            failcnt: AtomicU64::new(0),
            memory_limit: Mutex::new(memory_limit),
            pod,
            cpu,
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }

    /// CPU time the guests have used (the worker threads' CPU clock while polling them).
    pub fn cpu_time(&self) -> Duration {
        self.cpu.used()
    }

    /// CPU time with its kernel share, page faults and throttling.
    pub fn cpu_usage(&self) -> CpuUsage {
        self.cpu.usage()
    }

    /// Memory held now, of it the tables', the peak, and the growths refused.
    pub fn memory_usage(&self) -> MemoryUsage {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MemoryUsage {
            bytes: load(&self.memory_bytes),
            tables: load(&self.table_bytes),
            peak: load(&self.peak_bytes),
            failcnt: load(&self.failcnt),
        }
    }

    pub fn memory_limit(&self) -> Option<u64> {
        *self.memory_limit.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn cpu_limits(&self) -> CpuLimits {
        self.cpu.limits()
    }

    /// Sets the memory limit (and moves the pod's with it); one below what the container or
    /// its pod holds now is refused, as runc refuses it, rather than killing guests.
    pub fn set_memory_limit(&self, limit: Option<u64>) -> Result<()> {
        let mut current = self.memory_limit.lock().unwrap_or_else(|e| e.into_inner());
        let used = self.memory_bytes();
        if let Some(limit) = limit.filter(|l| *l < used) {
            return Err(Error::precondition(format!(
                "memory limit {limit} bytes is below the {used} bytes the container uses now"
            )));
        }
        self.pod.change(*current, limit)?;
        *current = limit;
        Ok(())
    }

    /// Sets the CPU limits, from the guests' next poll on.
    pub fn set_cpu_limits(&self, limits: CpuLimits) {
        self.cpu.set_limits(limits);
    }
}

/// What a container's guests hold (see [`Account::memory_usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    pub bytes: u64,
    pub tables: u64,
    pub peak: u64,
    pub failcnt: u64,
}

/// The phase (see [`crate::phase`]) of a guest's instantiation, within its first line's.
const INSTANTIATE_PHASE: &str = "first_line.instantiate";

/// The process-wide engine.
pub struct Engine {
    wasmtime: wasmtime::Engine,
    p1_linker: wasmtime::Linker<P1Host>,
    p2_linker: wasmtime::component::Linker<P2Host>,
    http: HttpEngine,
    programs: Mutex<HashMap<String, Arc<OnceCell<Program>>>>,
    aot: Option<AotCache>,
    scheduler: Arc<Scheduler>,
    loads: LoadCounts,
}

/// How the engine's loads of code were served since it started: from compiled code in
/// memory, from an AOT artifact on disk, or by compiling. Read by the daemon's metrics.
#[derive(Debug, Default)]
pub struct LoadCounts {
    pub memory: AtomicU64,
    pub disk: AtomicU64,
    pub compiled: AtomicU64,
}

impl Engine {
    /// Creates the engine; precompiled code is cached under `cache_dir` when given.
    pub fn new(cache_dir: Option<&Path>) -> Result<Arc<Self>> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true).wasm_component_model(true);
        let wasmtime = wasmtime::Engine::new(&config)
            .map_err(|e| Error::internal(format!("wasmtime engine: {e:#}")))?;

        let mut p1_linker = wasmtime::Linker::new(&wasmtime);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1_linker, |h: &mut P1Host| &mut h.wasi)
            .and_then(|()| files::add_to_linker(&mut p1_linker))
            .and_then(|()| rofs::add_to_linker(&mut p1_linker))
            .and_then(|()| add_proc_exit(&mut p1_linker))
            .map_err(|e| Error::internal(format!("linking WASI preview1: {e:#}")))?;
        let mut p2_linker = wasmtime::component::Linker::new(&wasmtime);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2_linker)
            .and_then(|()| sockets::add_to_linker(&mut p2_linker, P2Host::sockets))
            .map_err(|e| Error::internal(format!("linking WASI preview2: {e:#}")))?;

        let http = HttpEngine::new(&config, cache_dir)?;
        let aot = cache_dir
            .map(|dir| AotCache::open(dir, compat_key(&wasmtime)))
            .transpose()?;
        spawn_epoch_ticker(vec![wasmtime.weak(), http.engine.weak()]);
        Ok(Arc::new(Self {
            wasmtime,
            p1_linker,
            p2_linker,
            http,
            programs: Mutex::new(HashMap::new()),
            aot,
            scheduler: Arc::default(),
            loads: LoadCounts::default(),
        }))
    }

    /// A new container's account with these limits (not checked here: see
    /// [`CpuLimits::check`]), counted in its pod's.
    pub fn account(
        &self,
        memory_limit: Option<u64>,
        cpu: CpuLimits,
        pod: &Arc<PodMemory>,
    ) -> Arc<Account> {
        pod.join(memory_limit);
        Arc::new(Account::new(
            memory_limit,
            CpuAccount::new(cpu, self.scheduler.clone()),
            pod.clone(),
        ))
    }

    /// Compiles `wasm` (or fetches it from the memory or disk cache) off the async threads.
    /// Concurrent loads of the same binary compile it once.
    pub async fn load(self: &Arc<Self>, wasm: Wasm) -> Result<Program> {
        let digest = wasm.digest();
        let cell = {
            let mut programs = self.programs.lock().unwrap_or_else(|e| e.into_inner());
            programs.entry(digest.clone()).or_default().clone()
        };
        if let Some(program) = cell.get() {
            self.loads.memory.fetch_add(1, Ordering::Relaxed);
            return Ok(program.clone());
        }
        let program = cell
            .get_or_try_init(|| {
                let engine = self.clone();
                let digest = digest.clone();
                async move {
                    tokio::task::spawn_blocking(move || engine.compile(&digest, &wasm))
                        .await
                        .map_err(|e| Error::internal(format!("compiler task failed: {e}")))?
                }
            })
            .await?;
        Ok(program.clone())
    }

    /// Forgets the compiled code of `digest` (memory and disk): the image store no longer
    /// holds that Wasm. Guests running it keep their copy.
    pub fn forget(&self, digest: &str) {
        self.programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest);
        if let Some(aot) = &self.aot {
            aot.remove(digest);
        }
        self.http.forget(digest);
    }

    /// How loads of code were served so far.
    pub fn load_counts(&self) -> &LoadCounts {
        &self.loads
    }

    /// Whether a verified-or-not AOT artifact for this binary is on disk (for image status).
    pub fn has_artifact(&self, digest: &str) -> bool {
        self.aot.as_ref().is_some_and(|c| c.contains(digest))
    }

    fn compile(&self, digest: &str, wasm: &Wasm) -> Result<Program> {
        if let Some(pre) = self.http.cached(digest) {
            self.loads.memory.fetch_add(1, Ordering::Relaxed);
            return Ok(Program::new(digest, Compiled::Http(pre)));
        }
        let code = self.aot.as_ref().and_then(|cache| {
            cache
                .load(digest)?
                .load(&self.wasmtime)
                .inspect_err(|e| {
                    cache.reject_digest(digest, &format!("refused by wasmtime: {e:#}"))
                })
                .ok()
        });
        let code = match code {
            Some(code) => {
                self.loads.disk.fetch_add(1, Ordering::Relaxed);
                code
            }
            None => {
                self.loads.compiled.fetch_add(1, Ordering::Relaxed);
                let bytes = wasm.bytes()?;
                let code = match GuestKind::detect(&bytes)? {
                    GuestKind::Preview1 => {
                        Code::Module(Module::new(&self.wasmtime, &*bytes).map_err(invalid_wasm)?)
                    }
                    GuestKind::Preview2 => Code::Component(
                        Component::new(&self.wasmtime, &*bytes).map_err(invalid_wasm)?,
                    ),
                };
                let artifact = match &code {
                    Code::Module(m) => m.serialize(),
                    Code::Component(c) => c.serialize(),
                };
                self.store_artifact(digest, artifact);
                code
            }
        };
        let compiled = match code {
            Code::Module(module) => {
                let start = module.get_export("_start");
                if !matches!(start, Some(wasmtime::ExternType::Func(_))) {
                    return Err(Error::invalid(
                        "module does not export a _start function (a WASI preview1 command)",
                    ));
                }
                Compiled::Module(
                    self.p1_linker
                        .instantiate_pre(&module)
                        .map_err(link_error)?,
                )
            }
            Code::Component(component) if http::is_handler(&self.wasmtime, &component) => {
                Compiled::Http(self.http.compile(digest, &wasm.bytes()?)?)
            }
            Code::Component(component) => {
                let pre = self
                    .p2_linker
                    .instantiate_pre(&component)
                    .map_err(link_error)?;
                Compiled::Component(CommandPre::new(pre).map_err(|e| {
                    Error::invalid(format!(
                        "component does not export wasi:cli/run (a WASI command): {e:#}"
                    ))
                })?)
            }
        };
        Ok(Program::new(digest, compiled))
    }

    fn store_artifact(&self, digest: &str, artifact: wasmtime::Result<Vec<u8>>) {
        let (Some(cache), Ok(artifact)) = (&self.aot, artifact) else {
            return;
        };
        if let Err(e) = cache.store(digest, &artifact) {
            tracing::warn!("could not cache compiled code: {e}");
        }
    }

    /// Starts `program` as a task on the current tokio runtime; `on_exit` runs in that task
    /// once the guest has ended, before [`Task::wait`] returns.
    pub fn spawn(
        self: &Arc<Self>,
        program: &Program,
        spec: GuestSpec,
        on_exit: impl FnOnce(&Exit) + Send + 'static,
    ) -> Arc<Task> {
        let (task, ends) = Task::new(spec.stdio.stdin);
        let engine = self.clone();
        let program = program.clone();
        tokio::spawn(async move {
            let kill = async move {
                match ends.kill.await {
                    Ok(exit) => exit,
                    // Nobody can kill it any more: it runs to its end.
                    Err(_) => std::future::pending().await,
                }
            };
            let stdin = ends.stdin.map(GuestInput::new);
            let exit = engine.run(&program, spec, stdin, kill).await;
            on_exit(&exit);
            ends.exit.send_replace(Some(exit));
        });
        Arc::new(task)
    }

    /// Runs `program` to completion, or until `kill` resolves with the exit to report instead.
    /// Killing drops the guest's task (and its store) at its next yield point.
    async fn run(
        &self,
        program: &Program,
        spec: GuestSpec,
        stdin: Option<GuestInput>,
        kill: impl Future<Output = Exit>,
    ) -> Exit {
        let stderr = spec.stdio.stderr.clone();
        let stdout = spec.stdio.stdout.clone();
        let account = spec.account.clone();
        let guest = Metered::new(self.run_guest(program, spec, stdin), &account);
        let exit = tokio::select! {
            exit = guest => exit,
            exit = kill => exit,
        };
        stdout.finish();
        if !exit.message.is_empty() && exit.reason != ExitReason::Completed {
            stderr.runtime_line(&format!("wasmpod: {}", exit.message));
        }
        stderr.finish();
        exit
    }

    async fn run_guest(
        &self,
        program: &Program,
        spec: GuestSpec,
        stdin: Option<GuestInput>,
    ) -> Exit {
        if let Compiled::Http(pre) = &program.inner.compiled {
            return http::serve(self.http.engine.clone(), pre.clone(), spec).await;
        }
        let limiter = MemoryLimiter::new(spec.account.clone());
        let ctx = match wasi_builder(&spec, stdin) {
            Ok(b) => b,
            Err(e) => {
                return Exit {
                    code: 128,
                    reason: ExitReason::Error,
                    message: e.message,
                }
            }
        };
        let outcome = match &program.inner.compiled {
            Compiled::Module(pre) => {
                let mut ctx = ctx;
                let mut store = new_store(
                    &self.wasmtime,
                    P1Host {
                        wasi: ctx.build_p1(),
                        limiter,
                        files: OpenFiles::new(spec.files.clone()),
                    },
                );
                let result = async {
                    let timer = crate::phase::Timer::start(INSTANTIATE_PHASE);
                    let instance = pre.instantiate_async(&mut store).await?;
                    drop(timer);
                    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                    start.call_async(&mut store, ()).await
                }
                .await;
                (result.map(|()| 0), store.data().limiter.hit)
            }
            Compiled::Http(_) => unreachable!("served above"),
            Compiled::Component(pre) => {
                let mut ctx = ctx;
                let host = P2Host {
                    ctx: ctx.build(),
                    table: capped_table(&spec.files),
                    limiter,
                    sockets: PodSockets::new(spec.network.clone()),
                };
                let mut store = new_store(&self.wasmtime, host);
                let result = async {
                    let timer = crate::phase::Timer::start(INSTANTIATE_PHASE);
                    let command = pre.instantiate_async(&mut store).await?;
                    drop(timer);
                    command.wasi_cli_run().call_run(&mut store).await
                }
                .await;
                (
                    result.map(|r| if r.is_ok() { 0 } else { 1 }),
                    store.data().limiter.hit,
                )
            }
        };
        match outcome {
            (Ok(code), _) => Exit::code(code),
            (Err(e), refused) => match (e.downcast_ref::<I32Exit>(), refused) {
                (Some(I32Exit(code)), _) => Exit::code(*code),
                (None, Some(refusal)) => Exit::oom_killed(format!("{refusal}: {e:#}")),
                (None, None) => Exit {
                    code: TRAP_CODE,
                    reason: ExitReason::Error,
                    message: trap_message(&e),
                },
            },
        }
    }
}

/// A store that yields at every epoch tick (telling the CPU meter its guest is CPU-bound)
/// and counts its memory against the container.
fn new_store<T: HasLimiter>(engine: &wasmtime::Engine, host: T) -> Store<T> {
    let mut store = Store::new(engine, host);
    store.limiter(|h| h.limiter());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| {
        cpu::note_epoch_yield();
        Ok(UpdateDeadline::Yield(1))
    });
    store
}

fn wasi_builder(spec: &GuestSpec, stdin: Option<GuestInput>) -> Result<WasiCtxBuilder> {
    let mut b = WasiCtxBuilder::new();
    b.args(&spec.argv)
        .envs(&spec.env)
        .stdout(GuestOutput(spec.stdio.stdout.clone()))
        .stderr(GuestOutput(spec.stdio.stderr.clone()));
    if let Some(stdin) = stdin {
        b.stdin(stdin);
    }
    if let Some(cwd) = &spec.cwd {
        b.initial_cwd(cwd);
        // wasi-libc reads the working directory from PWD.
        b.env("PWD", cwd);
    }
    if spec.network.is_some() {
        // Every address is mapped and checked by the pod network (see `sockets`).
        b.inherit_network()
            .allow_tcp(true)
            .allow_udp(true)
            .allow_ip_name_lookup(true);
    }
    for p in &spec.preopens {
        let perms = if p.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&p.host, &p.guest, perms).map_err(|e| {
            Error::invalid(format!("mount {} ({}): {e:#}", p.guest, p.host.display()))
        })?;
    }
    Ok(b)
}

/// Preview1's `proc_exit` as a process's `exit`: the status's low 8 bits, as the kernel keeps
/// them. wasmtime's own refuses 126 and up, which shells use for "not runnable" (126) and "not
/// found" (127), and turns them into a trap.
fn add_proc_exit(linker: &mut wasmtime::Linker<P1Host>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "proc_exit",
        |status: i32| -> wasmtime::Result<()> { Err(I32Exit(status & 0xff).into()) },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A trap's message; running out of resource-table room is said as the cap it is.
fn trap_message(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    if text.contains("resource table has no free keys") {
        format!("the container reached its cap on open handles (files, streams, sockets): {text}")
    } else {
        text
    }
}

fn invalid_wasm(e: wasmtime::Error) -> Error {
    Error::invalid(format!("invalid WebAssembly: {e:#}"))
}

fn link_error(e: wasmtime::Error) -> Error {
    Error::invalid(format!("cannot link the program against WASI: {e:#}"))
}

/// `sha256:<hex>` of `bytes`, the name of content everywhere in wasmpod.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A short stable name for "code this engine can load": wasmtime version and settings.
fn compat_key(engine: &wasmtime::Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Advances the epochs until the engines are gone. One thread per process, whatever the load.
fn spawn_epoch_ticker(engines: Vec<wasmtime::EngineWeak>) {
    std::thread::Builder::new()
        .name("wasmpod-epoch".into())
        .spawn(move || loop {
            let mut alive = false;
            for engine in engines.iter().filter_map(|e| e.upgrade()) {
                engine.increment_epoch();
                alive = true;
            }
            if !alive {
                return;
            }
            std::thread::sleep(EPOCH_TICK);
        })
        .expect("spawning the epoch thread");
}

/// Host state of a preview1 guest.
struct P1Host {
    wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    files: OpenFiles,
}

/// A preview2 store's resource table, holding at most the container's share of handles.
fn capped_table(files: &FileBudget) -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(files.handles_per_container());
    table
}

/// Host state of a preview2 guest.
struct P2Host {
    ctx: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    sockets: PodSockets,
}

impl P2Host {
    fn sockets(&mut self) -> SocketsView<'_> {
        SocketsView {
            inner: WasiSocketsCtxView {
                ctx: self.ctx.sockets(),
                table: &mut self.table,
            },
            pod: &mut self.sockets,
        }
    }
}

impl WasiView for P2Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

trait HasLimiter: Send + 'static {
    fn limiter(&mut self) -> &mut dyn ResourceLimiter;
}
impl HasLimiter for P1Host {
    fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }
}
impl HasLimiter for P2Host {
    fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_kinds_and_rejects_garbage() {
        assert_eq!(
            GuestKind::detect(b"\0asm\x01\0\0\0").unwrap(),
            GuestKind::Preview1
        );
        assert_eq!(
            GuestKind::detect(b"\0asm\x0d\0\x01\0").unwrap(),
            GuestKind::Preview2
        );
        assert!(GuestKind::detect(b"\0asm")
            .unwrap_err()
            .message
            .contains("truncated"));
        assert!(GuestKind::detect(b"")
            .unwrap_err()
            .message
            .contains("truncated"));
        assert!(GuestKind::detect(b"#!/bin/sh\n")
            .unwrap_err()
            .message
            .contains("magic"));
        assert!(GuestKind::detect(b"\0asm\x02\0\0\0")
            .unwrap_err()
            .message
            .contains("version"));
    }
}
