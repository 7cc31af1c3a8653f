//! `wasmpod serve`: the CRI server for kubelet and crictl.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use tokio::net::UnixListener;
use wasmpod_runtime::image::RegistryTimeouts;
use wasmpod_runtime::log::{LogLimit, LogLimits};
use wasmpod_runtime::network::NetworkConfig;

/// Serve the Kubernetes CRI (RuntimeService + ImageService) on a unix socket.
///
/// Settings come from the config file (TOML, all keys optional), overridden by flags:
///
///     socket = "/run/wasmpod/wasmpod.sock"   # root; else $XDG_RUNTIME_DIR/wasmpod/wasmpod.sock
///     state_dir = "/var/lib/wasmpod"         # root; else $XDG_STATE_HOME/wasmpod
///     log_level = "info"                     # error, warn, info, debug, trace
///     [registry]
///     insecure = ["registry.local:5000"]     # plain HTTP besides loopback registries
///     mirrors = { "docker.io" = ["mirror.local:5000"] }
///     connect_timeout = 10                   # seconds to connect to a registry
///     read_timeout = 60                      # seconds a registry may send nothing
///     pull_timeout = 1800                    # seconds for all the downloads of a pull
///     [network]
///     mode = "loopback"                      # pod IPs from pod_cidr inside 127.0.0.0/8;
///                                            # "node": the node's pod CIDR on a dummy interface
///     pod_cidr = "127.100.0.0/16"            # node mode: or unset to take kubelet's
///     interface = "wasmpod0"                 # node mode's dummy interface
///     host_port_address = "127.0.0.1"        # where hostPorts listen by default
///     egress_allow = "all"                   # or CIDR[:port[-port]] list, or "none"
///     max_sockets_per_pod = 1024
///     unprivileged_port_start = 1024         # guests bind ports from here up
///     [logs]
///     max_size = "10Mi"                      # logs wasmpod places itself (pods without a
///     max_files = 5                          #   log directory): rotated as kubelet does
///     cri_max_size = "1Gi"                   # hard cap on CRI log_path files, which kubelet
///                                            #   rotates; unset: no cap
///     [http]
///     ca_bundles = ["/etc/wasmpod/ca.pem"]   # PEM CAs guests' outgoing https:// trusts
///                                            #   besides the system's roots
///     [streaming]                            # exec, attach, port-forward sessions
///     address = "127.0.0.1:0"                # where their URLs point (port 0: any free one)
///     tls_cert = "/etc/wasmpod/stream.crt"   # with tls_key: https URLs
///     tls_key = "/etc/wasmpod/stream.key"
///     idle_timeout = 14400                   # seconds a session may carry nothing
///     creation_timeout = 30                  # seconds to open a session's streams
///     [containerd]                           # containerd's tasks (containerd-shim-wasmpod-v1)
///     socket = "/run/wasmpod/containerd.sock"  # the ttrpc task API [default: containerd.sock
///                                            #   beside the CRI socket]; "" turns it off
///     [metrics]                              # Prometheus /metrics over plain HTTP
///     address = "127.0.0.1:9464"             # unset (the default): no listener
///
/// SIGTERM or Ctrl-C drains in-flight calls and exits; pods and containers are kept in the
/// state database and listed again at the next start.
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct ServeArgs {
    /// The unix socket to listen on
    #[arg(long, env = "WASMPOD_SOCKET")]
    socket: Option<PathBuf>,
    /// Config file [default: /etc/wasmpod/config.toml when it exists]
    #[arg(long, env = "WASMPOD_CONFIG")]
    config: Option<PathBuf>,
}

/// The config file's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    #[serde(default)]
    pub registry: RegistrySection,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub logs: LogsSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub streaming: crate::streaming::StreamingConfig,
    #[serde(default)]
    pub containerd: crate::containerd::ContainerdConfig,
    #[serde(default)]
    pub metrics: crate::metrics::MetricsConfig,
}

/// wasi:http guests' outgoing requests.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// PEM files of CAs `https://` trusts besides the system's roots.
    #[serde(default)]
    pub ca_bundles: Vec<PathBuf>,
}

/// Container log limits. wasmpod rotates only the log files it places itself; files at a CRI
/// client's log_path are kubelet's to rotate (it renames them and calls ReopenContainerLog),
/// so they get at most a hard cap where no kubelet rotates them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsSection {
    pub max_size: Option<String>,
    pub max_files: Option<u32>,
    pub cri_max_size: Option<String>,
}

impl LogsSection {
    fn limits(&self) -> anyhow::Result<LogLimits> {
        let size = |key: &str, value: &str| {
            super::parse_size(value).map_err(|e| anyhow::anyhow!("[logs] {key}: {e}"))
        };
        let max_size = match &self.max_size {
            Some(v) => size("max_size", v)?,
            None => wasmpod_runtime::log::DEFAULT_MAX_SIZE,
        };
        let max_files = self
            .max_files
            .unwrap_or(wasmpod_runtime::log::DEFAULT_MAX_FILES);
        let client = match &self.cri_max_size {
            Some(v) => LogLimit::Cap {
                max_size: size("cri_max_size", v)?,
            }
            .check()
            .context("[logs] cri_max_size")?,
            None => LogLimit::Unlimited,
        };
        Ok(LogLimits {
            own: super::rotate_limit(max_size, max_files).context("[logs]")?,
            client,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    #[serde(default)]
    pub insecure: Vec<String>,
    #[serde(default)]
    pub mirrors: std::collections::HashMap<String, Vec<String>>,
    pub connect_timeout: Option<u64>,
    pub read_timeout: Option<u64>,
    pub pull_timeout: Option<u64>,
}

impl RegistrySection {
    /// `timeouts` with the ones this section sets.
    pub fn timeouts(&self, timeouts: RegistryTimeouts) -> anyhow::Result<RegistryTimeouts> {
        timeouts
            .with_secs(self.connect_timeout, self.read_timeout, self.pull_timeout)
            .context("[registry]")
    }
}

impl ServeArgs {
    /// Reads the config file named by `--config`, or the default one if present.
    pub fn load_config(&self) -> anyhow::Result<ServeConfig> {
        let (path, required) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from("/etc/wasmpod/config.toml"), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(ServeConfig::default())
            }
            Err(e) => Err(e).with_context(|| format!("config file {}", path.display())),
        }
    }
}

/// How long a stopping server waits for in-flight calls.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// `phases` is given when `[metrics]` has an address: the phase timings its layer records.
pub async fn run(
    args: ServeArgs,
    config: ServeConfig,
    state_dir: PathBuf,
    phases: Option<crate::metrics::Phases>,
) -> anyhow::Result<ExitCode> {
    let socket = args.socket.or(config.socket).unwrap_or_else(default_socket);
    let log_limits = config.logs.limits()?;
    wasmpod_runtime::tls::trust(&config.http.ca_bundles).context("[http] ca_bundles")?;
    let rt = super::open_runtime_with(&state_dir, config.network, log_limits)?;
    // Before the socket: a bad [metrics] address fails the start with nothing to undo.
    let metrics = phases.map(|phases| crate::metrics::Metrics::new(&state_dir, phases));
    let metrics_server = match &metrics {
        Some(m) => crate::metrics::start(&config.metrics, m.clone(), rt.clone()).await?,
        None => None,
    };
    if let Some((address, _)) = &metrics_server {
        tracing::info!(%address, "serving /metrics");
    }
    let listener = bind(&socket)?;
    // The CLI finds this daemon through the state directory and goes through its socket.
    let record = match super::daemon::ServeRecord::write(&state_dir, &socket) {
        Ok(record) => record,
        Err(e) => {
            listener.socket.remove();
            return Err(e);
        }
    };
    tracing::info!(socket = %socket.display(), state_dir = %state_dir.display(), "serving the CRI");
    // In-flight calls get a moment to finish; idle client connections (kubelet keeps one open)
    // do not hold the exit up.
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel();
    let shutdown = async {
        super::shutdown_signal().await;
        let _ = stopping_tx.send(());
    };
    let stop_streaming = tokio_util::sync::CancellationToken::new();
    let _stop_streaming = stop_streaming.clone().drop_guard();
    let streaming = crate::streaming::StreamingServer::start(
        &config.streaming,
        crate::cri::streaming_backend(rt.clone()),
        stop_streaming,
    )
    .await
    .context("[streaming] server")?;
    tracing::info!(address = %streaming.local_addr(), "serving exec, attach and port-forward sessions");
    let tasks = match config.containerd.socket(&socket) {
        None => None,
        Some(path) => Some(
            crate::containerd::TaskServer::start(rt.clone(), &path)
                .await
                .context("[containerd] task API")?,
        ),
    };
    let served = tokio::select! {
        served = crate::cri::serve(rt, streaming, listener.listener, shutdown, metrics) => served.context("CRI server"),
        _ = async {
            let _ = stopping.await;
            tokio::time::sleep(DRAIN).await;
        } => {
            tracing::info!("clients still connected after {DRAIN:?}; exiting");
            Ok(())
        }
    };
    if let Some(tasks) = tasks {
        tasks.stop().await;
    }
    if let Some((_, task)) = metrics_server {
        task.abort();
    }
    listener.socket.remove();
    record.remove();
    served?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn default_socket() -> PathBuf {
    if super::is_root() {
        return PathBuf::from("/run/wasmpod/wasmpod.sock");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("wasmpod/wasmpod.sock")
}

/// The socket file this server made, removed at exit only if it is still that file.
struct OwnSocket {
    path: PathBuf,
    id: (u64, u64),
}

impl OwnSocket {
    fn remove(&self) {
        let same =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if same {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct Bound {
    listener: UnixListener,
    socket: OwnSocket,
}

/// Binds the socket 0660 in a 0700 directory. Only a stale socket (one nobody listens on, as
/// a crash leaves behind) is replaced: a live one belongs to another server, and any other
/// file at the path is not ours to delete.
fn bind(socket: &Path) -> anyhow::Result<Bound> {
    let dir = socket.parent().context("socket path has no directory")?;
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                anyhow::bail!("another server listens on {}", socket.display());
            }
            std::fs::remove_file(socket)
                .with_context(|| format!("removing stale socket {}", socket.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to replace it",
            socket.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", socket.display())),
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    let meta = std::fs::symlink_metadata(socket)?;
    let bound = Bound {
        listener,
        socket: OwnSocket {
            path: socket.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        },
    };
    if let Err(e) = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660)) {
        bound.socket.remove();
        return Err(e).with_context(|| format!("making {} 0660", socket.display()));
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses_and_typos_do_not() {
        let shipped: ServeConfig =
            toml::from_str(include_str!("../../../dist/config.toml")).unwrap();
        assert_eq!(
            shipped.socket.unwrap(),
            PathBuf::from("/run/wasmpod/wasmpod.sock")
        );
        assert!(toml::from_str::<ServeConfig>("sokcet = \"/x\"").is_err());
        let mirrors: ServeConfig =
            toml::from_str("[registry]\nmirrors = { \"docker.io\" = [\"m:5000\"] }").unwrap();
        assert_eq!(mirrors.registry.mirrors["docker.io"], ["m:5000"]);
        let defaults = RegistryTimeouts::default();
        assert_eq!(shipped.registry.timeouts(defaults).unwrap(), defaults);
        let zero: ServeConfig = toml::from_str("[registry]\nread_timeout = 0").unwrap();
        assert!(format!("{:#}", zero.registry.timeouts(defaults).unwrap_err()).contains("read"));
        let net: ServeConfig =
            toml::from_str("[network]\nmode = \"node\"\npod_cidr = \"10.244.1.0/24\"").unwrap();
        assert_eq!(net.network.pod_cidr.as_deref(), Some("10.244.1.0/24"));
        assert!(toml::from_str::<ServeConfig>("[network]\nmode = \"bridge\"").is_err());
        let http: ServeConfig = toml::from_str("[http]\nca_bundles = [\"/ca.pem\"]").unwrap();
        assert_eq!(http.http.ca_bundles, [PathBuf::from("/ca.pem")]);
        assert_eq!(shipped.logs.limits().unwrap(), LogLimits::default());
        let streaming = crate::streaming::StreamingConfig::default();
        assert_eq!(shipped.streaming.address, streaming.address);
        assert_eq!(shipped.streaming.idle_timeout, streaming.idle_timeout);
        assert_eq!(
            shipped.streaming.creation_timeout,
            streaming.creation_timeout
        );
        let logs: ServeConfig =
            toml::from_str("[logs]\nmax_size = \"1Mi\"\nmax_files = 2\ncri_max_size = \"100Mi\"")
                .unwrap();
        assert_eq!(
            logs.logs.limits().unwrap(),
            LogLimits {
                own: LogLimit::Rotate {
                    max_size: 1 << 20,
                    max_files: 2
                },
                client: LogLimit::Cap {
                    max_size: 100 << 20
                },
            }
        );
        let tiny: ServeConfig = toml::from_str("[logs]\nmax_size = \"1Ki\"").unwrap();
        assert!(format!("{:#}", tiny.logs.limits().unwrap_err()).contains("minimum"));
    }
}
