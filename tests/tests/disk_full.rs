//! A full disk during an import: a clear error, nothing half-stored, and a retry succeeds once
//! there is room. The state directory is a small tmpfs this test mounts (CI runs as root).

use std::process::Command;

use wasmpod_runtime::error::ErrorKind;
use wasmpod_runtime::runtime::{Runtime, RuntimeOptions};

/// Unmounts the tmpfs when the test ends, whatever happened.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A valid preview1 command with a data segment of `size` bytes.
fn module_of(size: usize) -> Vec<u8> {
    let data = "a".repeat(size);
    let wat = format!(
        "(module (memory {}) (data (i32.const 0) \"{data}\") (func (export \"_start\")))",
        size / 65536 + 1
    );
    wat::parse_str(&wat).unwrap()
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_on_a_full_disk_fails_cleanly_and_a_retry_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "mounting a tmpfs needs root (CI runs as root)"
    );
    let _mount = Mount(state.clone());

    let rt = Runtime::new(RuntimeOptions {
        state_dir: state.clone(),
        ..Default::default()
    })
    .unwrap();
    let module = tmp.path().join("big.wasm");
    std::fs::write(&module, module_of(1 << 20)).unwrap();
    // Leave well under 1 MiB free.
    let used: u64 = 3 * (1 << 20) + (1 << 19);
    let filler = state.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; used as usize]);

    let err = rt
        .images()
        .import(&module, Some("local/big:1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ResourceExhausted, "{err}");
    assert!(
        rt.images().list().unwrap().is_empty(),
        "nothing half-stored is listed"
    );
    assert!(
        names_in(&state.join("images/content/ingest")).is_empty(),
        "no partial blob left"
    );
    assert!(rt.images().get("local/big:1").unwrap().is_none());

    std::fs::remove_file(&filler).unwrap();
    let records = rt
        .images()
        .import(&module, Some("local/big:1"))
        .await
        .unwrap();
    assert_eq!(records[0].repo_tags, ["docker.io/local/big:1"]);
    assert!(rt.images().has_artifact(&records[0]));
}
