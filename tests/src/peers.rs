//! The real Go peers (cri-tools' `crictl` and `critest`, containerd 2.x and its `ctr`, kubelet and
//! the control plane), built from the Go module proxy with
//! the machine's Go by `scripts/peers` into a cache keyed by module and version
//! (`${WASMPOD_PEERS:-$HOME/.cache/wasmpod/peers}/<module>-<version>/<tool>`). The versions
//! live in that script only: it is asked for the path, and builds the tool first when it is
//! missing, so `cargo test` alone works on a machine with Go. Once per process per tool.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// cri-tools' `crictl`, the CRI command line.
pub fn crictl() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| peer("crictl")).clone()
}

/// cri-tools' `critest`, the CRI validation suite (a Ginkgo test binary).
pub fn critest() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| peer("critest")).clone()
}

/// containerd 2.x (the daemon with its CRI plugin): the second containerd the shim is tested
/// on, beside Debian's 1.6.
pub fn containerd2() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| peer("containerd2")).clone()
}

/// The `ctr` of containerd 2.x, speaking its daemon's API version.
pub fn ctr2() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| peer("ctr2")).clone()
}

/// containerd 2.x's `containerd-shim-runc-v2`: runc under containerd 2.x (Debian's 1.6 shim
/// cannot start its sandboxes).
pub fn shim_runc2() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| peer("shim-runc2")).clone()
}

/// Kubernetes' `kubelet`, run standalone (static pods, no API server) on `wasmpod serve`.
pub fn kubelet() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| peer("kubelet")).clone()
}

/// The control plane's tools of the kubelet's release (`kube-apiserver`, `kubectl`,
/// `kube-scheduler`, `kube-controller-manager`), for the one-node cluster (`src/cluster.rs`).
/// One lock for all four: a cluster asks for each once, and they share one build.
pub fn kube(tool: &str) -> PathBuf {
    static BINS: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut bins = BINS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = bins.iter().find(|(t, _)| t == tool) {
        return path.clone();
    }
    let path = peer(tool);
    bins.push((tool.to_owned(), path.clone()));
    path
}

/// `scripts/peers --path <tool>`: builds the tool if it is not cached (under a lock, so the
/// test processes running at once build it once) and answers its path.
fn peer(tool: &str) -> PathBuf {
    let script = crate::workspace_root().join("scripts/peers");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--path")
        .arg(tool)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "`scripts/peers {tool}` failed ({}): the tests need Go to build the real {tool} \
         (see the messages above)",
        out.status
    );
    let path = PathBuf::from(crate::text(&out.stdout).trim());
    assert!(
        path.is_file(),
        "scripts/peers answered {}, which is not a file",
        path.display()
    );
    path
}
