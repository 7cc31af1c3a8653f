//! containerd's task API (v2 and v3, over ttrpc) served by the node daemon, so that one
//! wasmpod process runs every Wasm task of the node's containerd (the `containerd-shim-wasmpod-v1`
//! binary only points containerd here). Everything goes through the same [`Runtime`] as the CRI
//! server: a pod sandbox task is a wasmpod pod, a container task a Wasm container in it.

mod events;
mod io;
mod process;
mod rootfs;
mod service;
mod spec;
mod tasks;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;
use wasmpod_runtime::runtime::Runtime;

/// The `[containerd]` table of the serve config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerdConfig {
    /// The ttrpc socket containerd's tasks are served on; the shim binary prints it to
    /// containerd. Unset: `containerd.sock` beside the CRI socket (so two daemons with their
    /// own CRI sockets never meet here). An empty path turns the task API off.
    pub socket: Option<PathBuf>,
}

impl ContainerdConfig {
    /// Where the task API listens for a daemon whose CRI socket is `cri_socket` (`None`: off).
    pub fn socket(&self, cri_socket: &Path) -> Option<PathBuf> {
        match &self.socket {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => Some(cri_socket.with_file_name("containerd.sock")),
        }
    }
}

/// The served task API; dropping it closes the socket and every containerd connection.
pub struct TaskServer {
    server: ttrpc::asynchronous::Server,
    socket: PathBuf,
}

impl TaskServer {
    /// Serves the task API on `socket` (a stale socket file is replaced, a live one refused).
    pub async fn start(rt: Arc<Runtime>, socket: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            anyhow::bail!("another server listens on {}", socket.display());
        }
        match std::fs::remove_file(socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing stale {}", socket.display()))
            }
            _ => {}
        }
        let service = Arc::new(service::TaskService::new(rt));
        let mut services: HashMap<String, ttrpc::asynchronous::Service> = HashMap::new();
        // containerd 1.x calls `containerd.task.v2.Task`, 2.x `…v3…`: the messages are the same.
        for (name, svc) in containerd_shim_protos::shim_async::create_task(service.clone()) {
            services.insert(name.replace(".v3.", ".v2."), svc);
        }
        services.extend(containerd_shim_protos::shim_async::create_task(service));
        let mut server = ttrpc::asynchronous::Server::new()
            .bind(&format!("unix://{}", socket.display()))
            .with_context(|| format!("binding {}", socket.display()))?
            .register_service(services);
        server
            .start()
            .await
            .with_context(|| format!("serving {}", socket.display()))?;
        tracing::info!(socket = %socket.display(), "serving containerd's task API");
        Ok(Self {
            server,
            socket: socket.to_owned(),
        })
    }

    pub async fn stop(mut self) {
        let _ = self.server.shutdown().await;
        let _ = std::fs::remove_file(&self.socket);
    }
}
