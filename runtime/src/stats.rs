//! What containers and pods use, for CRI stats and metrics: CPU (cumulative and a rate),
//! memory, the disk they write and the pod's network traffic. Front ends only convert these.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::container::{Container, ContainerState};
use crate::engine::{CpuUsage, MemoryUsage};
use crate::exit::ExitReason;
use crate::network::Traffic;
use crate::pod::Pod;
use crate::runtime::Runtime;
use crate::spec::Resources;
use crate::volume::{fs_capacity, DiskUsage, FsCapacity};

/// Memory a container holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Linear memory of its live instances (a wasi:http handler's in-flight requests
    /// included): anonymous memory, its RSS.
    pub linear: u64,
    /// Its program's compiled code, mapped while it may run (its file-backed pages).
    pub code: u64,
}

impl Memory {
    /// Usage and working set: all of it is in use (nothing is reclaimable cache).
    pub fn working_set(&self) -> u64 {
        self.linear + self.code
    }
}

impl std::ops::AddAssign for Memory {
    fn add_assign(&mut self, other: Self) {
        self.linear += other.linear;
        self.code += other.code;
    }
}

/// Disk written, and the filesystem it is on.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// A directory on the filesystem (its identifier for CRI clients).
    pub dir: PathBuf,
    pub usage: DiskUsage,
    pub capacity: Option<FsCapacity>,
}

#[derive(Debug, Clone)]
pub struct ContainerStats {
    pub at: SystemTime,
    pub cpu: Duration,
    /// The same CPU time with its kernel share, page faults and throttling.
    pub cpu_stat: CpuUsage,
    /// Peak, tables and refused growths of its memory.
    pub memory_stat: MemoryUsage,
    /// Its memory swapped out: known (zero) only while none of the daemon's is.
    pub swap: Option<u64>,
    /// CPU rate in nanocores (see [`Container::cpu_rate`]).
    pub nano_cores: u64,
    pub memory: Memory,
    /// Its writable layer (see [`Container::writable_usage`]).
    pub writable: Disk,
    pub guests: u64,
    pub started_at: Option<SystemTime>,
    pub limits: Resources,
    /// Whether its run ended at its memory limit.
    pub oom_killed: bool,
}

#[derive(Clone)]
pub struct PodStats {
    pub at: SystemTime,
    pub cpu: Duration,
    pub nano_cores: u64,
    pub memory: Memory,
    /// Its ephemeral storage: its containers' writable layers and its emptyDirs.
    pub ephemeral: Disk,
    /// What its guests exchanged with peers other than the pod (its `eth0`).
    pub traffic: Traffic,
    pub open_files: u64,
    pub open_sockets: u64,
    pub containers: Vec<(Arc<Container>, ContainerStats)>,
}

impl Runtime {
    pub fn container_stats(&self, c: &Container) -> ContainerStats {
        let state = c.state();
        // Code is mapped only while the container may run; an exited one holds nothing.
        let running = matches!(state, ContainerState::Running { .. });
        let dir = c.writable_dir().to_path_buf();
        let account = c.account();
        ContainerStats {
            at: SystemTime::now(),
            cpu: c.usage().cpu,
            cpu_stat: account.cpu_usage(),
            memory_stat: account.memory_usage(),
            swap: (daemon_swap() == Some(0)).then_some(0),
            nano_cores: c.cpu_rate(),
            memory: Memory {
                linear: c.usage().memory_bytes,
                code: if running { c.code_bytes() } else { 0 },
            },
            writable: Disk {
                usage: c.writable_usage(),
                capacity: fs_capacity(&dir),
                dir,
            },
            guests: c.guests(),
            started_at: match state {
                ContainerState::Running { started_at } => Some(started_at),
                ContainerState::Exited { started_at, .. } => started_at,
                ContainerState::Created => None,
            },
            oom_killed: matches!(&state, ContainerState::Exited { exit, .. } if exit.reason == ExitReason::OomKilled),
            limits: c.resources(),
        }
    }

    pub fn pod_stats(&self, pod: &Pod) -> PodStats {
        let containers: Vec<_> = self
            .pod_containers(pod)
            .into_iter()
            .map(|c| {
                let s = self.container_stats(&c);
                (c, s)
            })
            .collect();
        let mut memory = Memory::default();
        let mut ephemeral = pod.volumes.owned_usage();
        for (_, s) in &containers {
            memory += s.memory;
            ephemeral += s.writable.usage;
        }
        let dir = pod.dir.clone();
        PodStats {
            at: SystemTime::now(),
            cpu: containers.iter().map(|(_, s)| s.cpu).sum(),
            nano_cores: containers.iter().map(|(_, s)| s.nano_cores).sum(),
            memory,
            ephemeral: Disk {
                usage: ephemeral,
                capacity: fs_capacity(&dir),
                dir,
            },
            traffic: pod
                .network
                .as_ref()
                .map(|n| n.traffic())
                .unwrap_or_default(),
            open_files: pod.files.open() as u64,
            open_sockets: pod.network.as_ref().map_or(0, |n| n.open_sockets() as u64),
            containers,
        }
    }
}

/// The daemon's swapped-out memory (`VmSwap`), where the guests' memory lives: while it is
/// zero, no guest has any memory swapped out. Read at most once a second, so that stats of
/// thousands of containers do not read `/proc` thousands of times.
fn daemon_swap() -> Option<u64> {
    static LAST: std::sync::Mutex<Option<(std::time::Instant, Option<u64>)>> =
        std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    match *last {
        Some((at, swap)) if at.elapsed() < Duration::from_secs(1) => swap,
        _ => {
            let swap = std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|status| {
                    let kib = status.lines().find_map(|l| l.strip_prefix("VmSwap:"))?;
                    kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
                })
                .map(|kib| kib * 1024);
            *last = Some((std::time::Instant::now(), swap));
            swap
        }
    }
}
