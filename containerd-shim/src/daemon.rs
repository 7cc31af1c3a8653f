//! The node daemon (`wasmpod serve`) as the shim sees it: where its task API is, how to start
//! it when nothing runs it, how to ask it to delete a task.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::{DeleteRequest, DeleteResponse};
use containerd_shim_protos::TaskClient;
use serde::Deserialize;

/// How long `start` waits for a daemon it started to listen.
const STARTUP: Duration = Duration::from_secs(30);

/// What the shim needs of the daemon's config file.
#[derive(Debug)]
pub struct Config {
    /// The config file, passed on to a daemon the shim starts (absent: the defaults).
    pub file: Option<PathBuf>,
    /// The daemon's ttrpc task API socket.
    pub socket: PathBuf,
}

#[derive(Deserialize, Default)]
struct File {
    /// The CRI socket: the task API's default lies beside it.
    socket: Option<PathBuf>,
    #[serde(default)]
    containerd: Section,
}

#[derive(Deserialize, Default)]
struct Section {
    socket: Option<PathBuf>,
}

impl Config {
    /// `$WASMPOD_CONFIG` (containerd passes its environment on), else /etc/wasmpod/config.toml
    /// when it exists, else the defaults.
    pub fn load() -> Result<Self, String> {
        let (path, required) = match std::env::var_os("WASMPOD_CONFIG") {
            Some(p) => (PathBuf::from(p), true),
            None => (PathBuf::from("/etc/wasmpod/config.toml"), false),
        };
        let parsed: File = match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self {
                    file: None,
                    socket: PathBuf::from("/run/wasmpod/containerd.sock"),
                })
            }
            Err(e) => return Err(format!("config file {}: {e}", path.display())),
        };
        let socket = match (parsed.containerd.socket, parsed.socket) {
            (Some(p), _) if p.as_os_str().is_empty() => {
                return Err(format!(
                    "config file {}: [containerd] socket is \"\": the daemon's task API is off",
                    path.display()
                ))
            }
            (Some(p), _) => p,
            (None, Some(cri)) => cri.with_file_name("containerd.sock"),
            (None, None) => PathBuf::from("/run/wasmpod/containerd.sock"),
        };
        Ok(Self {
            file: Some(path),
            socket,
        })
    }
}

fn answers(config: &Config) -> bool {
    std::os::unix::net::UnixStream::connect(&config.socket).is_ok()
}

/// Makes sure the daemon listens: systemd's unit when systemd runs the node, else the
/// `wasmpod` beside this binary (or on PATH), started detached. A lock beside the socket keeps
/// concurrent starts from racing to start two.
pub fn ensure_running(config: &Config) -> Result<(), String> {
    if answers(config) {
        return Ok(());
    }
    let dir = config
        .socket
        .parent()
        .ok_or("the socket path has no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock_path = config.socket.with_extension("start.lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "locking {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    if answers(config) {
        return Ok(());
    }
    let via_systemd = std::path::Path::new("/run/systemd/system").exists()
        && Command::new("systemctl")
            .args(["start", "wasmpod.service"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !via_systemd {
        spawn(config, dir)?;
    }
    let deadline = Instant::now() + STARTUP;
    while Instant::now() < deadline {
        if answers(config) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "the wasmpod daemon did not listen on {} within {}s (see {})",
        config.socket.display(),
        STARTUP.as_secs(),
        dir.join("wasmpod.log").display()
    ))
}

/// Starts `wasmpod serve` in a session of its own, so it outlives this shim and containerd.
fn spawn(config: &Config, dir: &std::path::Path) -> Result<(), String> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("wasmpod")))
        .filter(|p| p.is_file());
    let program = beside.unwrap_or_else(|| PathBuf::from("wasmpod"));
    let log_path = dir.join("wasmpod.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut cmd = Command::new(&program);
    cmd.arg("serve");
    if let Some(file) = &config.file {
        cmd.arg("--config").arg(file);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        // Not in containerd's working directory (the bundle, which containerd deletes).
        .current_dir("/");
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from the shim's session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .map(drop)
        .map_err(|e| format!("starting {} serve: {e}", program.display()))
}

/// Asks the daemon to delete task `id` of `namespace`.
pub fn delete(config: &Config, namespace: &str, id: &str) -> Result<DeleteResponse, String> {
    let client = ttrpc::Client::connect(&format!("unix://{}", config.socket.display()))
        .map_err(|e| format!("the wasmpod daemon at {}: {e}", config.socket.display()))?;
    let mut metadata = HashMap::new();
    metadata.insert(
        "containerd-namespace-ttrpc".to_owned(),
        vec![namespace.to_owned()],
    );
    let mut ctx = ttrpc::context::with_metadata(metadata);
    ctx.timeout_nano = crate::DELETE_TIMEOUT.as_nanos() as i64;
    TaskClient::new(client)
        .delete(
            ctx,
            &DeleteRequest {
                id: id.to_owned(),
                ..Default::default()
            },
        )
        .map_err(|e| format!("the daemon's Delete: {e}"))
}
