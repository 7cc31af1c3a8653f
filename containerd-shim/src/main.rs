//! `containerd-shim-wasmpod-v1`: the binary containerd runs for `runtime_type =
//! "io.containerd.wasmpod.v1"`. Unlike a shim per pod, it starts nothing of its own: `start`
//! makes sure the node's wasmpod daemon is up, notes in the bundle which containerd the task
//! belongs to, and prints the daemon's task API address, so every task of the node is served by
//! one process. `delete` asks the daemon to delete the task and, when the daemon is gone, cleans
//! up the bundle itself.

mod args;
mod daemon;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};

use args::Args;

/// What `start` leaves in the bundle for the daemon (the daemon reads it at Create).
const REGISTRATION: &str = "wasmpod-task.json";

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("containerd-shim-wasmpod-v1: {e}");
            return ExitCode::from(2);
        }
    };
    let done = match args.action.as_str() {
        "start" => start(&args),
        "delete" => delete(&args),
        "info" => info(),
        "v" | "version" => {
            println!("containerd-shim-wasmpod-v1 {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => Err(format!(
            "unknown action {other:?}: containerd runs this shim with `start` or `delete`; the \
             task API is served by `wasmpod serve`"
        )),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("containerd-shim-wasmpod-v1 {}: {e}", args.action);
            ExitCode::FAILURE
        }
    }
}

/// The bundle: `-bundle`, else the working directory containerd runs the shim in.
fn bundle(args: &Args) -> Result<PathBuf, String> {
    match &args.bundle {
        Some(b) => Ok(b.clone()),
        None => std::env::current_dir().map_err(|e| format!("working directory: {e}")),
    }
}

fn start(args: &Args) -> Result<(), String> {
    let bundle = bundle(args)?;
    let config = daemon::Config::load()?;
    daemon::ensure_running(&config)?;
    let registration = serde_json::json!({
        "namespace": args.namespace,
        "id": args.id,
        "ttrpc_address": std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
    });
    write_new(
        &bundle.join(REGISTRATION),
        registration.to_string().as_bytes(),
    )?;
    let address = format!("unix://{}", config.socket.display());
    // containerd reconnects from this file after its own restart.
    write_new(&bundle.join("address"), address.as_bytes())?;
    print!("{address}");
    std::io::stdout().flush().map_err(|e| e.to_string())
}

/// Writes a file of the bundle, replacing what a previous attempt left.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn delete(args: &Args) -> Result<(), String> {
    let bundle = bundle(args)?;
    let response =
        match daemon::Config::load().and_then(|c| daemon::delete(&c, &args.namespace, &args.id)) {
            Ok(r) => r,
            Err(e) => {
                // The daemon is gone (or never had the task): what it held in the bundle is
                // released here, and containerd hears the task died killed.
                eprintln!(
                    "containerd-shim-wasmpod-v1 delete: {e}; cleaning up {}",
                    bundle.display()
                );
                unmount(&bundle.join("rootfs"));
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                DeleteResponse {
                    exit_status: 128 + libc::SIGKILL as u32,
                    exited_at: MessageField::some(Timestamp {
                        seconds: now.as_secs() as i64,
                        nanos: now.subsec_nanos() as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            }
        };
    let bytes = response.write_to_bytes().map_err(|e| e.to_string())?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| e.to_string())
}

/// containerd 2.x asks a runtime what it is (`-info`): a RuntimeInfo message on stdout.
fn info() -> Result<(), String> {
    let info = RuntimeInfo {
        name: "io.containerd.wasmpod.v1".into(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = info.write_to_bytes().map_err(|e| e.to_string())?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| e.to_string())
}

/// Detaches a root filesystem mount the daemon left (nothing mounted is fine).
fn unmount(path: &Path) {
    let Ok(c) = std::ffi::CString::new(path.to_string_lossy().as_bytes()) else {
        return;
    };
    // SAFETY: `c` is a NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
}

/// How long `delete` waits for the daemon.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(30);
