//! What was measured: the commit of this checkout and the versions of the peers, asked of the
//! binaries the run actually used.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The checkout's short commit hash, with "+ uncommitted changes" when `git status` shows any.
pub fn git_commit() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        None => "unknown (not a git checkout)".into(),
        Some(hash) => match git(&["status", "--porcelain"]) {
            Some(changes) if changes.is_empty() => hash,
            _ => format!("{hash} + uncommitted changes"),
        },
    }
}

/// The wasmtime crate both binaries link: the workspace's lock file as it was when the
/// benchmark was built.
pub fn wasmtime() -> String {
    const LOCK: &str = include_str!("../../../../Cargo.lock");
    let lock: toml::Table = match toml::from_str(LOCK) {
        Ok(t) => t,
        Err(e) => return format!("unknown ({e})"),
    };
    lock.get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some("wasmtime"))
        .and_then(|p| p.get("version")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// The first line `binary --version` prints.
pub fn of(binary: &Path) -> String {
    match Command::new(binary).arg("--version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
        Ok(o) => format!("unknown ({} --version: {})", binary.display(), o.status),
        Err(e) => format!("unknown ({}: {e})", binary.display()),
    }
}

/// The executable of a running process.
pub fn exe_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}
