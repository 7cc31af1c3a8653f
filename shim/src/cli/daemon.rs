//! The CLI beside a running daemon. The state directory's databases admit one process, so
//! `wasmpod serve` records its pid and socket there (`serve.json`) and the CLI's image
//! commands go through that socket while the daemon answers: their effects are the daemon's
//! at once, as with nerdctl or podman and their services.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

/// The file in the state directory naming the daemon that holds it.
const RECORD: &str = "serve.json";

/// Which `wasmpod serve` holds a state directory, and where it listens.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServeRecord {
    pub pid: u32,
    pub socket: PathBuf,
}

impl ServeRecord {
    /// Records this process as the daemon of `state_dir`, listening on `socket`.
    pub fn write(state_dir: &Path, socket: &Path) -> anyhow::Result<OwnRecord> {
        let record = ServeRecord {
            pid: std::process::id(),
            socket: std::path::absolute(socket).context("socket path")?,
        };
        let path = state_dir.join(RECORD);
        let text = serde_json::to_string(&record).context("encoding the serve record")?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(OwnRecord { path })
    }

    /// The record of `state_dir`'s daemon, if its process still lives.
    pub fn read(state_dir: &Path) -> Option<ServeRecord> {
        let text = std::fs::read(state_dir.join(RECORD)).ok()?;
        let record: ServeRecord = serde_json::from_slice(&text).ok()?;
        alive(record.pid).then_some(record)
    }

    pub fn describe(&self) -> String {
        format!(
            "wasmpod serve, pid {}, socket {}",
            self.pid,
            self.socket.display()
        )
    }
}

/// The record this daemon wrote, removed at exit unless another daemon has replaced it.
pub struct OwnRecord {
    path: PathBuf,
}

impl OwnRecord {
    pub fn remove(&self) {
        let ours = std::fs::read(&self.path)
            .ok()
            .and_then(|t| serde_json::from_slice::<ServeRecord>(&t).ok())
            .is_some_and(|r| r.pid == std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A daemon answering for the state directory.
pub struct Daemon {
    pub record: ServeRecord,
    pub channel: Channel,
}

impl Daemon {
    /// The daemon of `state_dir`, if one runs and answers on its socket.
    pub async fn find(state_dir: &Path) -> Option<Daemon> {
        let record = ServeRecord::read(state_dir)?;
        let socket = record.socket.clone();
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .ok()?;
        Some(Daemon { record, channel })
    }

    /// A daemon's refusal as an error that says who refused.
    pub fn error(&self, s: tonic::Status) -> anyhow::Error {
        anyhow::anyhow!("{} (through {})", s.message(), self.record.describe())
    }
}

/// Whether opening the state directory failed because another process holds it.
pub fn is_locked(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("Database already open")
}

/// The error for a state directory another process holds: who, and what to do.
pub fn locked_error(state_dir: &Path, e: anyhow::Error) -> anyhow::Error {
    let holder = match ServeRecord::read(state_dir) {
        Some(r) => format!("{}, which does not answer on its socket", r.describe()),
        None => "another `wasmpod run` or `wasmpod image` command".to_owned(),
    };
    e.context(format!(
        "state directory {} is in use by {holder}: wait for it to finish or stop it, or give \
         this command a --state-dir of its own",
        state_dir.display()
    ))
}
