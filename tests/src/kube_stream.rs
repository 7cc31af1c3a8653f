//! `kube-stream`, a small Go program (`tests/go/kube-stream`) driving a streaming endpoint
//! with client-go's real executors and port-forwarder: `exec` and `attach` over SPDY or
//! WebSocket, `port-forward` with one HTTP GET through it. It is what kubectl and the API
//! server use against kubelet's `/exec`, `/attach` and `/portForward`, so the kubelet tests
//! talk to wasmpod through the same client code. Its usage is in its `main.go`.
//!
//! Built from the module's pinned `go.mod` and `go.sum` with the machine's Go into
//! `<target dir>/kube-stream/kube-stream`, once per process, and again only when `main.go`,
//! `go.mod` or `go.sum` change (a stamp beside the binary holds their hash).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::{output_within, text, workspace_root};

/// The files the binary is built from; their hash is the stamp.
const SOURCES: [&str; 3] = ["main.go", "go.mod", "go.sum"];

/// A bound on one `go build` (the first one may download the modules), far above its need.
const BUILD_SECS: u64 = 900;

/// The built `kube-stream`, built first when missing or out of date (once per process).
pub fn kube_stream() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build).clone()
}

/// The Go module's directory.
/// How one kube-stream run ended: (exit code, stdout, stderr).
pub type Ran = (i32, String, String);

/// Runs `kube-stream` with `args` (bounded: 120 s; its own timeouts are shorter).
pub fn run(args: &[&str]) -> Ran {
    let out = output_within(Command::new(kube_stream()).args(args), 120);
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("kube-stream {args:?} was killed: {out:?}"));
    (code, text(&out.stdout), text(&out.stderr))
}

pub fn source_dir() -> PathBuf {
    workspace_root().join("tests/go/kube-stream")
}

/// The cargo target directory this test executable was built into. Derived from the
/// executable's path as [`crate::workspace_bin`] does (tests run from `<target>/<profile>/deps`,
/// the bench from `<target>/<profile>`), so a custom `--target-dir` is followed too.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("the executable has a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    dir.parent().expect("<target>/<profile>").to_path_buf()
}

/// The SHA-256 of the sources, each named, so a change to any of them shows.
fn stamp(src: &Path) -> String {
    let mut hash = Sha256::new();
    for name in SOURCES {
        let bytes = std::fs::read(src.join(name))
            .unwrap_or_else(|e| panic!("reading {}: {e}", src.join(name).display()));
        hash.update(name.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    format!("{:x}", hash.finalize())
}

fn build() -> PathBuf {
    let src = source_dir();
    let out_dir = target_dir().join("kube-stream");
    let bin = out_dir.join("kube-stream");
    let stamp_path = out_dir.join("kube-stream.stamp");
    let want = stamp(&src);
    if bin.is_file() && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(&want) {
        return bin;
    }
    std::fs::create_dir_all(&out_dir).expect("creating the kube-stream build directory");
    // Temporary names of this process's own, renamed into place: another test process
    // building at the same time never sees (or runs) a half-written binary.
    let tmp = out_dir.join(format!(".kube-stream.tmp.{}", std::process::id()));
    let started = std::time::Instant::now();
    let out = output_within(
        Command::new("go")
            .current_dir(&src)
            .args(["build", "-trimpath", "-o"])
            .arg(&tmp)
            .arg(".")
            // -mod=readonly: the committed go.mod and go.sum are what is built, never updated.
            // -buildvcs=false: the module sits in the project's git tree, whose state is no
            // part of the program (and git may refuse a tree owned by another user).
            .env("GOFLAGS", "-mod=readonly -buildvcs=false")
            .env("CGO_ENABLED", "0")
            // go.mod may name a newer Go than the machine's: fetched like a module.
            .env("GOTOOLCHAIN", "auto")
            .env("GOWORK", "off"),
        BUILD_SECS,
    );
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        panic!(
            "building kube-stream in {} failed ({}): the tests need Go (1.26 or newer, or \
             GOTOOLCHAIN=auto with the module proxy)\n{}{}",
            src.display(),
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    std::fs::rename(&tmp, &bin).expect("moving kube-stream into place");
    let tmp_stamp = out_dir.join(format!(".kube-stream.stamp.{}", std::process::id()));
    std::fs::write(&tmp_stamp, &want).expect("writing the kube-stream stamp");
    std::fs::rename(&tmp_stamp, &stamp_path).expect("moving the kube-stream stamp into place");
    eprintln!(
        "built {} in {:.1}s",
        bin.display(),
        started.elapsed().as_secs_f64()
    );
    bin
}

#[cfg(test)]
mod tests {
    use super::*;

    /// It builds, its help names every subcommand, and it was built with client-go v0.36.
    #[test]
    fn builds_and_names_its_subcommands() {
        let bin = kube_stream();
        let out = output_within(Command::new(&bin).arg("-h"), 60);
        assert!(out.status.success(), "{out:?}");
        let usage = text(&out.stdout);
        for sub in ["exec|attach", "port-forward", "version"] {
            assert!(usage.contains(&format!("kube-stream {sub}")), "{usage}");
        }
        assert!(usage.contains("-transport spdy|websocket"), "{usage}");
        let out = output_within(Command::new(&bin).arg("version"), 60);
        assert!(out.status.success(), "{out:?}");
        let version = text(&out.stdout);
        assert!(version.contains("k8s.io/client-go v0.36."), "{version}");
        // A second call in this process answers the same path without building.
        assert_eq!(kube_stream(), bin);
    }
}
