//! A guest opening files until it fails hits its container's cap, not the daemon's descriptor
//! limit: it gets EMFILE (preview1) or a trap naming the cap (preview2), and the next pod of
//! the same runtime still starts and opens its files.

use std::sync::Arc;

use wasmpod_runtime::engine::FileLimits;
use wasmpod_runtime::exit::ExitReason;
use wasmpod_runtime::runtime::{Runtime, RuntimeOptions};
use wasmpod_runtime::spec::HostPathKind;
use wasmpod_tests::*;

const PER_CONTAINER: usize = 32;

fn capped_runtime(state: &std::path::Path) -> Arc<Runtime> {
    Runtime::new(RuntimeOptions {
        state_dir: state.to_path_buf(),
        file_limits: FileLimits {
            per_container: PER_CONTAINER,
            per_pod: 4 * PER_CONTAINER,
        },
        ..Default::default()
    })
    .unwrap()
}

async fn hold(rt: &Arc<Runtime>, kind: &str, dir: &std::path::Path, n: usize) -> Ran {
    run_guest(
        rt,
        &wasm(&format!("fsprobe.{kind}")),
        &["hold", "/data/f", &n.to_string()],
        vec![host_path("d", dir, HostPathKind::Directory)],
        vec![mount("d", None, "/data", true)],
    )
    .await
}

async fn files_are_capped_per_container(kind: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f"), "x").unwrap();
    let rt = capped_runtime(&tmp.path().join("state"));

    let hog = hold(&rt, kind, &dir, 100_000).await;
    match kind {
        "p1" => {
            assert_eq!(hog.exit.code, 1, "{:?}", hog.log);
            let held: usize = hog
                .stdout()
                .trim()
                .strip_prefix("held ")
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                held, PER_CONTAINER,
                "the cap counts the files the guest opened"
            );
            assert!(
                hog.stderr().contains("errno=33"),
                "EMFILE: {}",
                hog.stderr()
            );
        }
        _ => {
            assert_eq!(hog.exit.reason, ExitReason::Error, "{:?}", hog.exit);
            assert!(
                hog.exit.message.contains("cap on open handles"),
                "{}",
                hog.exit.message
            );
        }
    }
    // The daemon and the next pod are untouched, and the hog's files were given back.
    let next = hold(&rt, kind, &dir, 8).await;
    assert_eq!(next.exit.code, 0, "{:?}", next.log);
    assert_eq!(next.stdout(), "held 8\n");
    assert!(rt.pods().iter().all(|p| p.files.open() == 0));
}

p1_and_p2_tests!(
    files_are_capped_per_container =>
    preview1_files_are_capped_per_container,
    preview2_handles_are_capped_per_container
);
