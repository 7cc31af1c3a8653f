//! A pod sandbox: the unit of sharing. Its containers see the same volumes (and, with the pod
//! network, the same localhost); each container still owns its own store and lifecycle.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::engine::FileBudget;
use crate::network::PodNetwork;
use crate::spec::PodConfig;
use crate::volume::PodVolumes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PodState {
    Ready,
    NotReady,
}

pub struct Pod {
    pub id: String,
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
}

impl Pod {
    pub fn state(&self) -> PodState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
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

    /// The first emptyDir over its sizeLimit, with kubelet's eviction message.
    pub fn volume_over_limit(&self) -> Option<String> {
        self.volumes.over_limit()
    }
}
