//! A full disk during an import: a clear error, nothing half-stored, and a retry succeeds once
//! there is room; on a disk filled to the last byte, `wasmpod image rm` still works and frees
//! space; garbage is collected at start. The state directory is a small tmpfs each test mounts
//! (CI runs as root).

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
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

fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A tmpfs of `size` at `<tmp>/state`, unmounted when dropped.
fn small_disk(tmp: &Path, size: &str) -> (PathBuf, Mount) {
    let state = tmp.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "mounting a tmpfs needs root (CI runs as root)"
    );
    (state.clone(), Mount(state))
}

/// Bytes free on the filesystem of `path`.
fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Writes `path` until the disk is full (ENOSPC); returns how much it wrote.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    let mut written = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => return written,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return written,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// An OCI layout tar holding one compat image: a plain tar layer with `/app.wasm`.
fn compat_layout(wasm: &[u8]) -> Vec<u8> {
    let sha = |b: &[u8]| -> String {
        use sha2::Digest;
        format!("sha256:{:x}", sha2::Sha256::digest(b))
    };
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(wasm.len() as u64);
    h.set_mode(0o755);
    layer.append_data(&mut h, "app.wasm", wasm).unwrap();
    let layer = layer.into_inner().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm", "os": "wasip1",
        "config": {"Entrypoint": ["/app.wasm"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(&layer)]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha(&manifest), "size": manifest.len(),
        "annotations": {"io.containerd.image.name": "local/compat:1"},
    }]}))
    .unwrap();
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        out.append_data(&mut h, name, bytes).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for blob in [&manifest, &config, &layer] {
        add(&format!("blobs/sha256/{}", &sha(blob)[7..]), blob);
    }
    out.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_on_a_full_disk_fails_cleanly_and_a_retry_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, _mount) = small_disk(tmp.path(), "4m");

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

/// A compat image import that runs out of space after unpacking its root filesystem (storing
/// the Wasm it found there) leaves neither that root filesystem nor the blobs it stored. Then,
/// with the disk filled to the last byte, a new `wasmpod image rm` process still starts and
/// removes an image, freeing its space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_no_half_import_and_rm_still_works() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, _mount) = small_disk(tmp.path(), "8m");
    let rt = Runtime::new(RuntimeOptions {
        state_dir: state.clone(),
        ..Default::default()
    })
    .unwrap();
    let big = tmp.path().join("big.wasm");
    std::fs::write(&big, module_of(1 << 20)).unwrap();
    rt.images().import(&big, Some("local/big:1")).await.unwrap();
    let blobs_dir = state.join("images/content/blobs/sha256");
    let blobs_before = names_in(&blobs_dir);

    // Room for the layer blob and the unpacked root filesystem (1 MiB each), not for the
    // Wasm blob stored from it.
    let archive = tmp.path().join("compat.tar");
    std::fs::write(&archive, compat_layout(&module_of((1 << 20) + 7))).unwrap();
    let room = (5 << 20) / 2;
    let filler = state.join("filler");
    std::fs::write(&filler, vec![0u8; (free_bytes(&state) - room) as usize]).unwrap();
    let err = rt.images().import(&archive, None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::ResourceExhausted, "{err}");
    assert_eq!(rt.images().list().unwrap().len(), 1);
    assert!(
        names_in(&state.join("images/rootfs")).is_empty(),
        "the failed import left a root filesystem: {:?}",
        names_in(&state.join("images/rootfs"))
    );
    assert_eq!(
        names_in(&blobs_dir),
        blobs_before,
        "the failed import left blobs"
    );
    assert!(names_in(&state.join("images/content/ingest")).is_empty());
    drop(rt);

    fill(&state.join("filler-2"));
    assert!(free_bytes(&state) < 4096);
    let out = wasmpod_tests::output_within(
        wasmpod_tests::wasmpod(&state).args(["image", "rm", "local/big:1"]),
        120,
    );
    assert!(
        out.status.success(),
        "image rm on a full disk: {}",
        wasmpod_tests::text(&out.stderr)
    );
    assert!(free_bytes(&state) >= 1 << 20, "rm freed no space");
    assert!(
        names_in(&blobs_dir).is_empty(),
        "{:?}",
        names_in(&blobs_dir)
    );
    let out = wasmpod_tests::output_within(
        wasmpod_tests::wasmpod(&state).args(["image", "ls", "-o", "json"]),
        120,
    );
    assert_eq!(wasmpod_tests::text(&out.stdout).trim(), "[]");
}

/// What a crash leaves (a blob no image uses, an unpacked root filesystem of no image, an
/// abandoned partial blob) is collected when the store opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_collected_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, _mount) = small_disk(tmp.path(), "8m");
    let open = || {
        Runtime::new(RuntimeOptions {
            state_dir: state.clone(),
            ..Default::default()
        })
        .unwrap()
    };
    let rt = open();
    let module = tmp.path().join("app.wasm");
    std::fs::write(&module, module_of(16)).unwrap();
    let record = rt
        .images()
        .import(&module, Some("local/app:1"))
        .await
        .unwrap()[0]
        .clone();
    drop(rt);
    let images = state.join("images");
    let orphan_blob = images.join("content/blobs/sha256").join("ab".repeat(32));
    std::fs::write(&orphan_blob, b"no image uses me").unwrap();
    let orphan_rootfs = images.join("rootfs").join("cd".repeat(32));
    std::fs::create_dir_all(orphan_rootfs.join("etc")).unwrap();
    let partial = images.join("content/ingest/interrupted");
    std::fs::write(&partial, b"half a blob").unwrap();

    let rt = open();
    assert!(!orphan_blob.exists() && !orphan_rootfs.exists() && !partial.exists());
    assert_eq!(rt.images().list().unwrap(), vec![record.clone()]);
    assert!(images
        .join("content/blobs/sha256")
        .join(&record.wasm_digest[7..])
        .exists());
}
