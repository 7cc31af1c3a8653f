//! Caps on the host descriptors guests hold, so that one guest cannot take the descriptors
//! of the whole daemon (and with them every other pod's ability to open a log or a socket).
//!
//! - A preview1 guest opens files only through `path_open`; this layer sits in front of it
//!   (and of `fd_close` and `fd_renumber`) and counts the descriptors the guest holds against
//!   its container, its pod and the node. Past a cap the guest gets `EMFILE` (its container or
//!   pod is full) or `ENFILE` (the node is), as a process gets from the kernel.
//! - A preview2 guest's handles (files, directories, streams, pollables, sockets) all live in
//!   its resource table, whose capacity is capped per container: past it the host call traps
//!   and the container exits with an error saying so.
//! - The daemon raises its own descriptor limit at start and keeps a quarter of it for itself:
//!   guests together never get more than the rest.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use wasmtime::{AsContextMut, Caller, Extern};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as abi, WasiSnapshotPreview1};
use wiggle::GuestMemory;

use super::P1Host;

/// WASI preview1 errno values.
const ERRNO_MFILE: i32 = 33;
const ERRNO_NFILE: i32 = 41;

/// Resource-table entries a preview2 guest may hold per file it may open: each open file
/// usually brings a stream and a pollable along.
pub const HANDLES_PER_FILE: usize = 4;

/// Descriptor caps for guests.
#[derive(Debug, Clone, Copy)]
pub struct FileLimits {
    /// Files one container may hold open (the `ulimit -n` of a container).
    pub per_container: usize,
    /// Files the containers of one pod may hold open together.
    pub per_pod: usize,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            per_container: 1024,
            per_pod: 4096,
        }
    }
}

/// The open-file account of one pod, shared by its containers' stores.
#[derive(Debug)]
pub struct FileBudget {
    limits: FileLimits,
    open: AtomicUsize,
}

impl FileBudget {
    pub fn new(limits: FileLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: AtomicUsize::new(0),
        })
    }

    /// Files the pod's guests hold open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Resource-table capacity of one preview2 store.
    pub(super) fn handles_per_container(&self) -> usize {
        self.limits.per_container.saturating_mul(HANDLES_PER_FILE)
    }
}

/// Descriptors all guests of this process hold, and how many they may (set at start by
/// [`raise_descriptor_limit`]; unlimited until then, as in a test harness).
static NODE_OPEN: AtomicUsize = AtomicUsize::new(0);
static NODE_LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Raises this process's descriptor limit to its hard limit and gives guests three quarters
/// of it; returns the guests' share.
pub fn raise_descriptor_limit() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let current = getrlimit(Resource::Nofile);
    // Every running guest holds a descriptor per directory it sees (its root, /etc, volumes)
    // and its log: a dense node needs more than a login shell's hard limit. Privileged, the
    // daemon takes what the kernel allows (fs.nr_open), as systemd's LimitNOFILE does.
    let kernel = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let ceiling = kernel
        .filter(|k| current.maximum.is_some_and(|m| *k > m))
        .map(|k| Rlimit {
            current: Some(k),
            maximum: Some(k),
        })
        .filter(|r| setrlimit(Resource::Nofile, *r).is_ok())
        .and_then(|r| r.maximum);
    let maximum = ceiling.or(current.maximum);
    let raised = Rlimit {
        current: maximum,
        maximum,
    };
    let soft = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => maximum,
        Err(e) => {
            tracing::warn!("raising the open-file limit: {e}");
            current.current
        }
    }
    .map_or(1 << 20, |n| n.min(1 << 30) as usize);
    let share = soft - soft / 4;
    NODE_LIMIT.store(share, Ordering::Relaxed);
    share
}

/// The descriptors one store holds against its container's, pod's and node's caps.
pub(super) struct OpenFiles {
    budget: Arc<FileBudget>,
    fds: HashSet<u32>,
}

impl OpenFiles {
    pub(super) fn new(budget: Arc<FileBudget>) -> Self {
        Self {
            budget,
            fds: HashSet::new(),
        }
    }

    /// Takes one file from every account, or says which errno the guest gets.
    fn reserve(&mut self) -> Result<(), i32> {
        if self.fds.len() >= self.budget.limits.per_container {
            return Err(ERRNO_MFILE);
        }
        let per_pod = self.budget.limits.per_pod;
        if !take(&self.budget.open, per_pod) {
            return Err(ERRNO_MFILE);
        }
        if !take(&NODE_OPEN, NODE_LIMIT.load(Ordering::Relaxed)) {
            self.budget.open.fetch_sub(1, Ordering::Relaxed);
            return Err(ERRNO_NFILE);
        }
        Ok(())
    }

    fn release(&self, n: usize) {
        self.budget.open.fetch_sub(n, Ordering::Relaxed);
        NODE_OPEN.fetch_sub(n, Ordering::Relaxed);
    }

    /// Records an open that succeeded as `fd` (a reservation was taken for it).
    fn opened(&mut self, fd: u32) {
        if !self.fds.insert(fd) {
            self.release(1);
        }
    }

    fn closed(&mut self, fd: u32) {
        if self.fds.remove(&fd) {
            self.release(1);
        }
    }
}

/// A killed guest's store is dropped with its files open: give them back.
impl Drop for OpenFiles {
    fn drop(&mut self) {
        self.release(self.fds.len());
    }
}

/// Adds one to `count` unless it is at `limit`.
fn take(count: &AtomicUsize, limit: usize) -> bool {
    count
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

/// The guest's memory and the host state, as wasmtime-wasi's own preview1 glue takes them.
pub(super) fn memory_and_host<'a>(
    caller: &'a mut Caller<'_, P1Host>,
) -> wasmtime::Result<(GuestMemory<'a>, &'a mut P1Host)> {
    let fuel = caller.as_context_mut().hostcall_fuel();
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        wasmtime::bail!("missing required memory export");
    };
    let (bytes, host) = memory.data_and_store_mut(caller);
    host.wasi.set_hostcall_fuel(fuel);
    Ok((GuestMemory::Unshared(bytes), host))
}

/// Puts the counting `path_open`, `fd_close` and `fd_renumber` in front of wasmtime-wasi's.
pub(super) fn add_to_linker(linker: &mut wasmtime::Linker<P1Host>) -> wasmtime::Result<()> {
    const MODULE: &str = "wasi_snapshot_preview1";
    linker.allow_shadowing(true);
    type PathOpen = (i32, i32, i32, i32, i32, i64, i64, i32, i32);
    linker.func_wrap_async(
        MODULE,
        "path_open",
        |mut caller: Caller<'_, P1Host>, args: PathOpen| {
            Box::new(async move {
                let (fd, lookup, path, len, oflags, base, inheriting, fdflags, out) = args;
                if let Err(errno) = caller.data_mut().files.reserve() {
                    return Ok(errno);
                }
                let (mut memory, host) = memory_and_host(&mut caller)?;
                let result = abi::path_open(
                    &mut host.wasi,
                    &mut memory,
                    fd,
                    lookup,
                    path,
                    len,
                    oflags,
                    base,
                    inheriting,
                    fdflags,
                    out,
                )
                .await;
                let result = match super::rofs::opens_for_writing(oflags, base, fdflags) {
                    true => result.map(super::rofs::read_only_is_erofs),
                    false => result,
                };
                let opened = match (&result, &memory) {
                    (Ok(0), GuestMemory::Unshared(bytes)) => read_u32(bytes, out),
                    _ => None,
                };
                match opened {
                    Some(new_fd) => host.files.opened(new_fd),
                    None => host.files.release(1),
                }
                result
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_close",
        |mut caller: Caller<'_, P1Host>, (fd,): (i32,)| {
            Box::new(async move {
                let (mut memory, host) = memory_and_host(&mut caller)?;
                let result = abi::fd_close(&mut host.wasi, &mut memory, fd).await;
                if let Ok(0) = result {
                    host.files.closed(fd as u32);
                }
                result
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_renumber",
        |mut caller: Caller<'_, P1Host>, (from, to): (i32, i32)| {
            Box::new(async move {
                let (mut memory, host) = memory_and_host(&mut caller)?;
                let result = abi::fd_renumber(&mut host.wasi, &mut memory, from, to).await;
                if let Ok(0) = result {
                    let moved = host.files.fds.remove(&(from as u32));
                    host.files.closed(to as u32);
                    if moved {
                        host.files.fds.insert(to as u32);
                    }
                }
                result
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

fn read_u32(bytes: &[u8], at: i32) -> Option<u32> {
    let at = usize::try_from(at).ok()?;
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(word.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_container_and_pod_and_gives_back_on_drop() {
        let budget = FileBudget::new(FileLimits {
            per_container: 2,
            per_pod: 3,
        });
        let mut a = OpenFiles::new(budget.clone());
        let mut b = OpenFiles::new(budget.clone());
        for fd in [10, 11] {
            a.reserve().unwrap();
            a.opened(fd);
        }
        assert_eq!(a.reserve(), Err(ERRNO_MFILE), "container cap");
        b.reserve().unwrap();
        b.opened(10);
        assert_eq!(b.reserve(), Err(ERRNO_MFILE), "pod cap");
        a.closed(11);
        a.closed(11);
        assert_eq!(budget.open(), 2, "a double close gives back once");
        b.reserve().unwrap();
        b.opened(11);
        drop(a);
        drop(b);
        assert_eq!(budget.open(), 0);
    }
}
