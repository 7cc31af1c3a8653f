//! Core descriptions of pods and containers, independent of any wire format. The manifest
//! parser and (later) the CRI front end both convert into these types.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// How long a stopping container may take before it is killed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
