//! The on-disk AOT cache: compiled code is written under `<state>/aot/`, a second Runtime
//! on the same state directory loads it instead of compiling, and a damaged artifact is
//! recompiled without harm.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
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

/// Replaces the read-only artifact's content in place, as only its owner could.
fn rewrite(artifact: &Path, bytes: &[u8]) {
    std::fs::set_permissions(artifact, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(artifact, bytes).unwrap();
    std::fs::set_permissions(artifact, std::fs::Permissions::from_mode(0o400)).unwrap();
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

    // An artifact others could have written is not mapped: removed, compiled again, replaced.
    std::fs::set_permissions(&artifact, std::fs::Permissions::from_mode(0o664)).unwrap();
    let third = run_in_new_runtime(&state, &image).await;
    assert_eq!(third, first, "{kind}: runs correctly after recompiling");
    let replaced = std::fs::metadata(&artifact).unwrap();
    assert_eq!(
        replaced.mode() & 0o777,
        0o400,
        "{kind}: replaced by a read-only artifact"
    );
    let rewritten = std::fs::read(&artifact).unwrap();

    // Damage wasmtime sees (the header, a truncated or empty file) is recompiled too.
    let mut bytes = rewritten.clone();
    bytes[0] ^= 0xff;
    rewrite(&artifact, &bytes);
    assert_eq!(run_in_new_runtime(&state, &image).await, first);
    rewrite(&artifact, &rewritten[..rewritten.len() / 3]);
    assert_eq!(run_in_new_runtime(&state, &image).await, first);
    rewrite(&artifact, b"");
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
async fn an_artifact_linked_to_another_programs_is_not_trusted() {
    // A symlink or a second hard link at one program's artifact name, to another program's
    // (valid) artifact, must not make the runtime run the wrong program.
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
    let (hello_artifact, exit_artifact) = (name_of(&hello_digest), name_of(&exit_digest));
    for link in [
        std::os::unix::fs::symlink::<&Path, &Path>,
        |a: &Path, b: &Path| std::fs::hard_link(a, b),
    ] {
        std::fs::remove_file(&exit_artifact).unwrap();
        link(&hello_artifact, &exit_artifact).unwrap();
        let rt = runtime(&state);
        let ran = run_guest(&rt, &exit_code, &["0"], vec![], vec![]).await;
        assert_eq!(
            ran.stdout(),
            "exiting with 0\n",
            "the exit-code program ran, not hello"
        );
    }
    let rt = runtime(&state);
    let ran = run_guest(&rt, &hello, &["still"], vec![], vec![]).await;
    assert!(ran.stdout().contains("args: still"), "{:?}", ran.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_private_to_the_daemons_user() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    run_in_new_runtime(&state, &wasm("hello.p2")).await;
    let aot = state.join("aot");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&aot), 0o700);
    for artifact in artifacts(&state) {
        assert_eq!(mode(&artifact), 0o400, "{}", artifact.display());
    }
    // A cache directory of another user is refused with a message naming it, not used.
    std::os::unix::fs::chown(&aot, Some(65534), None).unwrap();
    let err =
        match wasmpod_runtime::runtime::Runtime::new(wasmpod_runtime::runtime::RuntimeOptions {
            state_dir: state.clone(),
            ..Default::default()
        }) {
            Ok(_) => panic!("another user's cache was accepted"),
            Err(e) => e,
        };
    assert!(err.message.contains("AOT cache"), "{err}");
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
