//! The on-disk AOT cache: compiled code is written under `<state>/aot/`, a second Runtime
//! on the same state directory loads it instead of compiling, and a damaged artifact is
//! recompiled without harm.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use wasmpod_runtime::exit::ExitReason;
use wasmpod_tests::*;

/// The `.cwasm` artifacts under `<state>/aot/`.
fn artifacts(state: &Path) -> Vec<PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(state.join("aot"))
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Runs `image` in a fresh Runtime over `state`; returns its stdout.
async fn run_in_new_runtime(state: &Path, image: &Path) -> String {
    let rt = runtime(state);
    let ran = run_guest(&rt, image, &["cached"], vec![], vec![]).await;
    assert_eq!(
        (ran.exit.code, ran.exit.reason),
        (0, ExitReason::Completed),
        "{:?} {:?}",
        ran.exit,
        ran.log
    );
    ran.stdout()
}

async fn cache_round_trip(kind: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let image = wasm(&format!("hello.{kind}"));

    let first = run_in_new_runtime(&state, &image).await;
    assert!(first.contains("args: cached"), "{first}");
    let found = artifacts(&state);
    assert_eq!(
        found.len(),
        1,
        "{kind}: one artifact after the first run: {found:?}"
    );
    let artifact = found[0].clone();
    let digest = {
        let bytes = std::fs::read(&image).unwrap();
        wasmpod_runtime::engine::sha256_digest(&bytes)
    };
    assert!(
        artifact
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&digest),
        "{kind}: named by the Wasm's digest: {}",
        artifact.display()
    );
    let before = std::fs::metadata(&artifact).unwrap();

    // A second Runtime (a new engine, an empty memory cache) loads the artifact: the file is
    // not rewritten (a recompile would store a new file under the same name).
    let rt = runtime(&state);
    assert!(rt.engine().has_artifact(&digest));
    drop(rt);
    let second = run_in_new_runtime(&state, &image).await;
    assert_eq!(second, first);
    let after = std::fs::metadata(&artifact).unwrap();
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (before.ino(), before.mtime(), before.mtime_nsec()),
        "{kind}: the second runtime used the cached artifact instead of recompiling"
    );
    assert_eq!(artifacts(&state), std::slice::from_ref(&artifact));

    // Flip a byte in the middle of the compiled code: a new Runtime notices, recompiles, and
    // the guest runs as before.
    let mut bytes = std::fs::read(&artifact).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&artifact, &bytes).unwrap();
    let third = run_in_new_runtime(&state, &image).await;
    assert_eq!(third, first, "{kind}: runs correctly after recompiling");
    let rewritten = std::fs::read(&artifact).unwrap();
    assert_ne!(
        rewritten, bytes,
        "{kind}: the damaged artifact was replaced"
    );

    // And again with the damage in the header, and with a truncated file.
    let mut bytes = rewritten.clone();
    bytes[0] ^= 0xff;
    std::fs::write(&artifact, &bytes).unwrap();
    assert_eq!(run_in_new_runtime(&state, &image).await, first);
    std::fs::write(&artifact, &rewritten[..rewritten.len() / 3]).unwrap();
    assert_eq!(run_in_new_runtime(&state, &image).await, first);
    std::fs::write(&artifact, b"").unwrap();
    assert_eq!(run_in_new_runtime(&state, &image).await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_module_is_cached_on_disk_and_survives_corruption() {
    cache_round_trip("p1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_component_is_cached_on_disk_and_survives_corruption() {
    cache_round_trip("p2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_swapped_for_another_programs_is_not_trusted() {
    // Copying the (valid, signed) artifact of one program over another's name must not make
    // the runtime run the wrong program.
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let hello = wasm("hello.p1");
    let exit_code = wasm("exit-code.p1");
    run_in_new_runtime(&state, &hello).await;
    {
        let rt = runtime(&state);
        let ran = run_guest(&rt, &exit_code, &["0"], vec![], vec![]).await;
        assert_eq!(ran.stdout(), "exiting with 0\n");
    }
    let found = artifacts(&state);
    assert_eq!(found.len(), 2, "{found:?}");
    let digest_of = |p: &Path| wasmpod_runtime::engine::sha256_digest(&std::fs::read(p).unwrap());
    let (hello_digest, exit_digest) = (digest_of(&hello), digest_of(&exit_code));
    let name_of = |d: &str| {
        found
            .iter()
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(d))
            .unwrap()
            .clone()
    };
    std::fs::copy(name_of(&hello_digest), name_of(&exit_digest)).unwrap();
    let rt = runtime(&state);
    let ran = run_guest(&rt, &exit_code, &["0"], vec![], vec![]).await;
    assert_eq!(
        ran.stdout(),
        "exiting with 0\n",
        "the exit-code program ran, not hello"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    run_in_new_runtime(&state, &wasm("hello.p2")).await;
    let key = state.join("aot/key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the HMAC key is not readable by others");
    // A key others can read is refused with a message naming it, not trusted.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err =
        match wasmpod_runtime::runtime::Runtime::new(wasmpod_runtime::runtime::RuntimeOptions {
            state_dir: state.clone(),
            ..Default::default()
        }) {
            Ok(_) => panic!("a world-readable key was accepted"),
            Err(e) => e,
        };
    assert!(err.message.contains("key"), "{err}");
}

/// Removing an image removes the compiled code of its Wasm too: the AOT cache holds nothing
/// the image store no longer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_image_removes_its_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let rt = runtime(&state);
    let records = rt
        .images()
        .import(&wasm("hello.p1"), Some("local/aot-gc:1"))
        .await
        .unwrap();
    let digest = records[0].wasm_digest.clone();
    assert!(rt.images().has_artifact(&records[0]), "compiled on import");
    let named = |d: &str| {
        artifacts(&state)
            .iter()
            .any(|p| p.file_name().unwrap().to_string_lossy().starts_with(d))
    };
    assert!(named(&digest));
    rt.images().remove("local/aot-gc:1").await.unwrap();
    assert!(!named(&digest), "{:?}", artifacts(&state));
}
