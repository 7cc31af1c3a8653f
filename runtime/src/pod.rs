//! A pod sandbox: the unit of sharing. Its containers see the same volumes (and, with the pod
//! network, the same localhost); each container still owns its own store and lifecycle.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crate::engine::{FileBudget, PodMemory};
use crate::error::{Error, Result};
use crate::network::PodNetwork;
use crate::spec::{PodConfig, PodMemoryConfig};
use crate::volume::{PodVolumes, ResolvedMount};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PodState {
    Ready,
    NotReady,
}

pub struct Pod {
    pub id: String,
    /// The pod's config as it was made; the memory figures in force are [`Pod::memory_config`]
    /// (kubelet may change them, see [`Pod::current_config`]).
    pub config: PodConfig,
    pub created_at: SystemTime,
    pub(crate) dir: PathBuf,
    pub(crate) volumes: PodVolumes,
    /// The pod's network namespace; `None` only when a restored pod could not get its address.
    pub network: Option<Arc<PodNetwork>>,
    pub(crate) state: Mutex<PodState>,
    /// Ids of the pod's containers, in creation order.
    pub(crate) containers: Mutex<Vec<String>>,
    /// The files its guests hold open, against the pod's and each container's caps.
    pub files: Arc<FileBudget>,
    /// What its containers' guests hold together, against the pod's memory limit.
    pub memory: Arc<PodMemory>,
    /// `<dir>/etc`, holding the pod's `hostname` and `resolv.conf`, written on first use.
    pub(crate) etc: OnceLock<Result<PathBuf>>,
}

impl Pod {
    pub fn state(&self) -> PodState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pod's own memory limit and overhead in force (updates may have changed them).
    pub fn memory_config(&self) -> PodMemoryConfig {
        PodMemoryConfig {
            limit: self.memory.pod_limit(),
            overhead: self.memory.overhead(),
        }
    }

    /// The pod's config with the figures in force: what its record keeps.
    pub fn current_config(&self) -> PodConfig {
        PodConfig {
            memory: self.memory_config(),
            ..self.config.clone()
        }
    }

    pub fn container_ids(&self) -> Vec<String> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The pod's IP, once it has a network.
    pub fn ip(&self) -> Option<std::net::Ipv4Addr> {
        self.network.as_ref().map(|n| n.ip())
    }

    /// The directory container logs go under.
    pub fn log_directory(&self) -> PathBuf {
        self.config
            .log_directory
            .clone()
            .unwrap_or_else(|| self.dir.join("logs"))
    }

    /// The pod's `/etc/hostname` and `/etc/resolv.conf` (from its DNS config, when it has
    /// one), as every container sees them: file mounts (read-only unless the container mounts a
    /// writable file in /etc), unless the container mounts something of its own there. Written
    /// once per pod, by wasmpod, in the pod's directory.
    pub(crate) fn etc_mounts(&self, taken: &[ResolvedMount]) -> Result<Vec<ResolvedMount>> {
        let dir = self.etc.get_or_init(|| self.write_etc()).clone()?;
        let free = |path: &str| {
            !taken.iter().any(|m| {
                m.container_path == path
                    || (!m.is_file && crate::mounts::is_within(path, &m.container_path))
            })
        };
        // wasmpod enforces readOnly per directory: beside a writable file the container mounts
        // in /etc (kubelet's /etc/hosts), these are writable too.
        let read_only = !taken.iter().any(|m| {
            m.is_file
                && !m.read_only
                && m.container_path
                    .rsplit_once('/')
                    .is_some_and(|(d, _)| d == "/etc")
        });
        Ok(["hostname", "resolv.conf"]
            .into_iter()
            .filter(|name| dir.join(name).exists())
            .map(|name| (name, format!("/etc/{name}")))
            .filter(|(_, path)| free(path))
            .map(|(name, container_path)| ResolvedMount {
                host: dir.join(name),
                container_path,
                read_only,
                is_file: true,
                pinned: None,
            })
            .collect())
    }

    fn write_etc(&self) -> Result<PathBuf> {
        let dir = self.dir.join("etc");
        let io = |e| Error::io(dir.display(), e);
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::write(dir.join("hostname"), format!("{}\n", self.config.hostname)).map_err(io)?;
        let dns = &self.config.dns;
        if !(dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty()) {
            let mut text = String::new();
            if !dns.searches.is_empty() {
                text += &format!("search {}\n", dns.searches.join(" "));
            }
            for server in &dns.servers {
                text += &format!("nameserver {server}\n");
            }
            if !dns.options.is_empty() {
                text += &format!("options {}\n", dns.options.join(" "));
            }
            std::fs::write(dir.join("resolv.conf"), text).map_err(io)?;
        }
        Ok(dir)
    }

    /// The first emptyDir over its sizeLimit, with kubelet's eviction message.
    pub fn volume_over_limit(&self) -> Option<String> {
        self.volumes.over_limit()
    }
}
