//! Core descriptions of pods and containers, independent of any wire format. The manifest
//! parser and (later) the CRI front end both convert into these types.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::engine::CpuLimits;
use crate::error::{Error, Result};

/// What a pod sandbox is made of.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodConfig {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// Which creation of this sandbox it is (kubelet counts them).
    #[serde(default)]
    pub attempt: u32,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Pod-level volumes the runtime manages (emptyDir, hostPath).
    pub volumes: Vec<VolumeSpec>,
    /// Directory the containers' log files go under (`<dir>/<name>/<attempt>.log` by default).
    pub log_directory: Option<PathBuf>,
    /// Name servers, search domains and resolver options for the pod's name lookups.
    #[serde(default)]
    pub dns: DnsConfig,
    /// hostPorts: host listeners forwarded to the pod's ports.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// Which of the node's namespaces the pod asks to share (all are refused, see
    /// [`PodConfig::check_namespaces`]).
    #[serde(default)]
    pub host_namespaces: HostNamespaces,
    /// A network namespace made by someone else (containerd and CNI) for the pod's sockets;
    /// without it the pod gets wasmpod's own virtual network.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Who keeps the pod's record: containerd's pods live only as long as the daemon (containerd
    /// counts them dead when it goes), so they are neither persisted nor listed on the CRI.
    #[serde(default)]
    pub owner: PodOwner,
    /// The pod-level memory limit and overhead kubelet passes (see [`PodMemoryConfig`]).
    #[serde(default)]
    pub memory: PodMemoryConfig,
}

/// A pod's memory as kubelet passes it (`LinuxPodSandboxConfig.resources` and `.overhead`).
/// Its containers together may hold at most `limit`; without it, at most the sum of their
/// limits and `overhead` when every container has a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMemoryConfig {
    pub limit: Option<u64>,
    pub overhead: u64,
}

impl PodMemoryConfig {
    /// From the CRI's signed figures (0 for "not set", -1 for "no limit").
    pub fn from_cri(limit: i64, overhead: i64) -> Result<Self> {
        let overhead = memory_figure("pod overhead memory", overhead, None)?;
        Ok(Self {
            limit: memory_figure("pod memory limit", limit, None)?,
            overhead: overhead.unwrap_or(0),
        })
    }

    /// These figures changed by an update (CRI UpdatePodSandboxResources), read as an update
    /// of a container's: 0 keeps the current figure, -1 removes the limit (or the overhead),
    /// other negatives are refused.
    pub fn updated(self, limit: i64, overhead: i64) -> Result<Self> {
        let overhead = memory_figure("pod overhead memory", overhead, Some(self.overhead))?;
        Ok(Self {
            limit: memory_figure("pod memory limit", limit, self.limit)?,
            overhead: overhead.unwrap_or(0),
        })
    }
}

/// A CRI memory figure: 0 keeps `unset`, -1 means no limit, other negatives are refused.
fn memory_figure(what: &str, m: i64, unset: Option<u64>) -> Result<Option<u64>> {
    match m {
        0 => Ok(unset),
        -1 => Ok(None),
        m if m < 0 => Err(Error::invalid(format!("{what} {m} is negative"))),
        m => Ok(Some(m as u64)),
    }
}

/// Who created a pod and keeps track of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodOwner {
    /// wasmpod's CRI server or the local runner: persisted, listed on the CRI.
    #[default]
    Wasmpod,
    /// A containerd that hands its tasks to this daemon.
    Containerd,
}

/// The node namespaces a pod may ask for (`hostNetwork`, `hostPID`, `hostIPC`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNamespaces {
    pub network: bool,
    pub pid: bool,
    pub ipc: bool,
}

impl PodConfig {
    /// Refuses host namespaces, the one decision for the manifest runner and the CRI: a Wasm
    /// guest has no processes or System V IPC to share, and its sockets live in the pod's own
    /// network namespace (the node's network is not offered yet), so granting any of them
    /// silently would be a lie.
    pub fn check_namespaces(&self) -> Result<()> {
        let ns = self.host_namespaces;
        for (asked, what, why) in [
            (ns.network, "hostNetwork", "its sockets live in the pod's own network namespace; sharing the node's network is not supported"),
            (ns.pid, "hostPID", "a Wasm guest has no processes to share"),
            (ns.ipc, "hostIPC", "a Wasm guest has no System V IPC to share"),
        ] {
            if asked {
                return Err(Error::invalid(format!(
                    "{what}: a Wasm pod cannot use the node's namespace: {why}"
                )));
            }
        }
        Ok(())
    }

    /// Whether `other` names the same sandbox: kubelet tells sandboxes apart by name,
    /// namespace, uid and attempt, so two alive at once would be ambiguous.
    pub fn same_sandbox(&self, other: &PodConfig) -> bool {
        (&self.name, &self.namespace, &self.uid, self.attempt)
            == (&other.name, &other.namespace, &other.uid, other.attempt)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: u16,
    pub host_port: u16,
    /// Where on the host to listen; the node's default host-port address when unset.
    pub host_ip: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// A named pod volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    pub source: VolumeSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VolumeSource {
    /// A scratch directory that lives as long as the pod.
    EmptyDir {
        medium: Medium,
        size_limit: Option<u64>,
    },
    /// A path on the host.
    HostPath { path: PathBuf, kind: HostPathKind },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Medium {
    Disk,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostPathKind {
    /// No check: use whatever is there (a directory or a file).
    Unchecked,
    Directory,
    DirectoryOrCreate,
    File,
    FileOrCreate,
}

/// What a container runs and sees.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub name: String,
    pub attempt: u32,
    /// The image reference as the user wrote it.
    pub image: String,
    /// The reference kubelet saw in the Pod spec before resolving it (CRI
    /// `user_specified_image`), echoed back in status.
    #[serde(default)]
    pub user_specified_image: String,
    /// When the local runner pulls the image (kubelet pulls on its own and ignores this).
    pub pull_policy: crate::image::PullPolicy,
    /// Overrides the image's entrypoint; the first element is the guest's argv[0].
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<MountSpec>,
    /// Linear-memory limit across the container's instances, in bytes.
    pub memory_limit: Option<u64>,
    /// CPU limit and shares, enforced by the engine.
    #[serde(default)]
    pub cpu: CpuLimits,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Log file, relative to the pod's log directory.
    pub log_path: Option<PathBuf>,
    /// Ports the container declares; a wasi:http handler is served on the first TCP one.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    /// The guest reads stdin from attachers; without it, stdin is empty.
    #[serde(default)]
    pub stdin: bool,
    /// Stdin ends when the first attacher closes it.
    #[serde(default)]
    pub stdin_once: bool,
    /// A terminal was asked for: WASI has none, so stderr is merged into stdout.
    #[serde(default)]
    pub tty: bool,
    /// The guest may write in `/`: a copy of the image's files private to the container (the
    /// CRI's and Kubernetes' default). Off, the image's files are shown read-only.
    #[serde(default)]
    pub writable_rootfs: bool,
    /// Directories of the root the guest may not write (CRI `readonly_paths`); paths the root
    /// does not have are ignored, as runc ignores them.
    #[serde(default)]
    pub readonly_paths: Vec<String>,
}

/// Refuses env entries a guest's `environ` cannot carry: an empty name, a name with `=` (it
/// would read back as another variable) and NUL bytes (they cut the C string). The manifest and
/// the CRI both reach this through [`Runtime::create_container`](crate::runtime::Runtime).
pub fn check_env(env: &[(String, String)]) -> Result<()> {
    for (i, (name, value)) in env.iter().enumerate() {
        let problem = if name.is_empty() {
            "has an empty name"
        } else if name.contains('=') {
            "has '=' in its name"
        } else if name.contains('\0') {
            "has a NUL byte in its name"
        } else if value.contains('\0') {
            "has a NUL byte in its value"
        } else {
            continue;
        };
        return Err(Error::invalid(format!(
            "env variable {i} ({name:?}) {problem}"
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: String,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// Where a container mount comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MountSource {
    /// A volume of the pod, optionally narrowed to a path inside it.
    Volume {
        name: String,
        sub_path: Option<String>,
    },
    /// A host path given directly (the CRI's way: kubelet has resolved volumes already).
    Host(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountSpec {
    pub source: MountSource,
    /// Absolute path inside the guest.
    pub container_path: String,
    pub read_only: bool,
}

/// The limits of a container that can change while it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_limit: Option<u64>,
    pub cpu: CpuLimits,
}

/// CPU and memory figures as the CRI and the OCI runtime spec carry them
/// (`LinuxContainerResources`): signed, with 0 meaning "not set" and -1 "no limit".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CriResources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit: i64,
}

impl Resources {
    /// A new container's limits: what is not set takes its default (no limit, a 100 ms period,
    /// 1024 shares). Out-of-bounds figures are refused, as runc refuses them.
    pub fn from_cri(r: CriResources) -> Result<Self> {
        if r.cpu_quota > 0 && r.cpu_period == 0 {
            return Err(Error::invalid(format!(
                "cpu quota {} µs with a cpu period of 0: the period must be 1000..=1000000 µs",
                r.cpu_quota
            )));
        }
        Self::default().updated(r)
    }

    /// These limits changed by an update (CRI UpdateContainerResources), which, as containerd
    /// reads it, changes only the figures it sets.
    pub fn updated(self, r: CriResources) -> Result<Self> {
        let mut new = self;
        new.memory_limit = memory_figure("memory limit", r.memory_limit, self.memory_limit)?;
        new.cpu.quota_us = match r.cpu_quota {
            0 => self.cpu.quota_us,
            -1 => None,
            q if q < 0 => {
                return Err(Error::invalid(format!(
                    "cpu quota {q} µs is negative (-1 or 0 mean no limit)"
                )))
            }
            q => Some(q as u64),
        };
        new.cpu.period_us = match r.cpu_period {
            0 => self.cpu.period_us,
            p if p < 0 => return Err(Error::invalid(format!("cpu period {p} µs is negative"))),
            p => p as u64,
        };
        new.cpu.shares = match r.cpu_shares {
            0 => self.cpu.shares,
            s if s < 0 => return Err(Error::invalid(format!("cpu shares {s} are negative"))),
            // The kernel raises 1 to its minimum, 2 (kubelet never asks less than 2).
            1 => 2,
            s => s as u64,
        };
        new.cpu.check()?;
        Ok(new)
    }

    /// As the CRI carries them (0 for "no limit").
    pub fn to_cri(self) -> CriResources {
        CriResources {
            cpu_period: self.cpu.period_us as i64,
            cpu_quota: self.cpu.quota_us.map_or(0, |q| q as i64),
            cpu_shares: self.cpu.shares as i64,
            memory_limit: self
                .memory_limit
                .map_or(0, |m| m.min(i64::MAX as u64) as i64),
        }
    }
}

/// How long a stopping container may take before it is killed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn cri(cpu_period: i64, cpu_quota: i64, cpu_shares: i64, memory_limit: i64) -> CriResources {
        CriResources {
            cpu_period,
            cpu_quota,
            cpu_shares,
            memory_limit,
        }
    }

    #[test]
    fn cri_figures_at_creation() {
        let r = Resources::from_cri(cri(100_000, 20_000, 512, 64 << 20)).unwrap();
        assert_eq!(r.cpu.cores(), Some(0.2));
        assert_eq!((r.cpu.shares, r.memory_limit), (512, Some(64 << 20)));
        assert_eq!(
            Resources::from_cri(CriResources::default()).unwrap(),
            Resources::default()
        );
        assert_eq!(Resources::from_cri(r.to_cri()).unwrap(), r);
        for bad in [
            cri(0, 20_000, 0, 0),
            cri(100_000, -2, 0, 0),
            cri(100_000, 999, 0, 0),
            cri(-1, 0, 0, 0),
            cri(999, 0, 0, 0),
            cri(1_000_001, 0, 0, 0),
            cri(0, 0, 262_145, 0),
            cri(0, 0, -5, 0),
            cri(0, 0, 0, -2),
        ] {
            let e = Resources::from_cri(bad).unwrap_err();
            assert_eq!(e.kind, crate::error::ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn a_pod_update_changes_what_it_sets() {
        let pod = PodMemoryConfig {
            limit: Some(100),
            overhead: 10,
        };
        let same = |limit, overhead| pod.updated(limit, overhead).unwrap();
        assert_eq!(same(0, 0), pod);
        assert_eq!(
            same(200, 20),
            PodMemoryConfig {
                limit: Some(200),
                overhead: 20
            }
        );
        assert_eq!(
            same(-1, -1),
            PodMemoryConfig {
                limit: None,
                overhead: 0
            }
        );
        for (limit, overhead, what) in [
            (-2, 0, "pod memory limit -2"),
            (0, -3, "pod overhead memory -3"),
            (i64::MIN, 5, "pod memory limit"),
        ] {
            let e = pod.updated(limit, overhead).unwrap_err();
            assert_eq!(e.kind, crate::error::ErrorKind::InvalidArgument, "{e}");
            assert!(e.message.contains(what), "{e}");
        }
    }

    #[test]
    fn an_update_changes_what_it_sets() {
        let r = Resources::from_cri(cri(100_000, 20_000, 512, 64 << 20)).unwrap();
        // crictl update --cpu-quota 50000: the period stays.
        let up = r.updated(cri(0, 50_000, 0, 0)).unwrap();
        assert_eq!(
            (up.cpu.cores(), up.cpu.shares, up.memory_limit),
            (Some(0.5), 512, Some(64 << 20))
        );
        let unlimited = r.updated(cri(0, -1, 0, -1)).unwrap();
        assert_eq!(
            (unlimited.cpu.quota_us, unlimited.memory_limit),
            (None, None)
        );
        assert!(r.updated(cri(0, 0, 300_000, 0)).is_err());
    }
}
