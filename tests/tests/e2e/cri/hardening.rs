//! A CRI client as an attacker: duplicate sandboxes, log paths through symlinks and swapped
//! directories, environment entries a guest cannot carry, floods of log output, and a socket
//! path that is not a socket.

use k8s_cri::v1 as cri;
use tonic::Code;
use wasmpod_tests::cri::{self as harness, container_config, pod_config, Daemon};
use wasmpod_tests::{read_log, require_guests, stream_text, wat_file, wat_print_lines};

use super::file_image;

fn run_request(config: &cri::PodSandboxConfig) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        ..Default::default()
    }
}

async fn sandbox_ids(rt: &mut harness::Rt) -> Vec<String> {
    rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sandbox_with_the_same_metadata_already_exists() {
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let logs = d.dir.path().join("logs/dup");
    std::fs::create_dir_all(&logs).unwrap();
    let sandbox = pod_config("dup", &logs);
    let first = harness::run_pod(&mut rt, &sandbox).await;
    let e = rt.run_pod_sandbox(run_request(&sandbox)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("dup"), "{}", e.message());
    assert_eq!(sandbox_ids(&mut rt).await, std::slice::from_ref(&first));

    // Racing requests: exactly one of them makes a sandbox.
    let race = pod_config("race", &logs);
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(d.runtime().await);
    }
    let results = futures::future::join_all(
        clients
            .iter_mut()
            .map(|c| c.run_pod_sandbox(run_request(&race))),
    )
    .await;
    let made = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(made, 1, "{results:?}");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| e.code() == Code::AlreadyExists));
    assert_eq!(sandbox_ids(&mut rt).await.len(), 2);

    // A new attempt is a new sandbox; once removed, the name is free again.
    let mut next = sandbox.clone();
    next.metadata.as_mut().unwrap().attempt += 1;
    harness::run_pod(&mut rt, &next).await;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: first,
    })
    .await
    .unwrap();
    harness::run_pod(&mut rt, &sandbox).await;
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_path_through_a_symlinked_directory_creates_nothing_outside() {
    require_guests();
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let tp = harness::new_pod(&d, &mut rt, "link").await;
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), tp.logs.join("link")).unwrap();
    for (name, path) in [("a", "link/sub/0.log"), ("b", "link/sub/deeper/0.log")] {
        let mut c = container_config(name, &file_image("hello.p1"), &[]);
        c.log_path = path.into();
        let e = tp.create(&mut rt, c).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{path}: {e:?}");
        assert!(e.message().contains("symlink"), "{path}: {}", e.message());
    }
    let planted: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
    assert!(planted.is_empty(), "created outside: {planted:?}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_the_log_directory_for_a_symlink_after_create_writes_nothing_outside() {
    require_guests();
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let tp = harness::new_pod(&d, &mut rt, "swap").await;
    let outside = tempfile::tempdir().unwrap();
    let id = tp
        .create(&mut rt, container_config("c", &file_image("hello.p1"), &[]))
        .await
        .unwrap();
    // Between CreateContainer and StartContainer the directory becomes a symlink to outside.
    let dir = tp.logs.join("c");
    std::fs::rename(&dir, tp.logs.join("moved")).unwrap();
    std::os::unix::fs::symlink(outside.path(), &dir).unwrap();
    harness::start(&mut rt, &id).await;
    let st = harness::wait_exited(&mut rt, &id).await;
    assert_eq!(st.exit_code, 0);
    let planted: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
    assert!(planted.is_empty(), "written outside: {planted:?}");
    let kept = read_log(&tp.logs.join("moved/0.log"));
    assert!(
        stream_text(&kept, "stdout").contains("Hello from wasmpod!"),
        "{kept:?}"
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopen_after_a_swap_stays_in_the_log_directory() {
    require_guests();
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let tp = harness::new_pod(&d, &mut rt, "reswap").await;
    let outside = tempfile::tempdir().unwrap();
    let id = tp
        .create(
            &mut rt,
            container_config("ticker", &file_image("forever.p1"), &[]),
        )
        .await
        .unwrap();
    harness::start(&mut rt, &id).await;
    let dir = tp.logs.join("ticker");
    harness::wait_for(|| stream_text(&read_log(&dir.join("0.log")), "stdout").contains("tick 1"))
        .await;
    // A rotation as kubelet does it, but with the directory swapped for a symlink.
    std::fs::rename(&dir, tp.logs.join("moved")).unwrap();
    std::os::unix::fs::symlink(outside.path(), &dir).unwrap();
    std::fs::rename(tp.logs.join("moved/0.log"), tp.logs.join("moved/0.log.1")).unwrap();
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let fresh = tp.logs.join("moved/0.log");
    harness::wait_for(|| stream_text(&read_log(&fresh), "stdout").contains("tick")).await;
    let planted: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
    assert!(planted.is_empty(), "written outside: {planted:?}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_entries_a_guest_cannot_carry_are_refused_by_name() {
    require_guests();
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let tp = harness::new_pod(&d, &mut rt, "env").await;
    let cases = [
        ("A=B", "x", "'='"),
        ("", "x", "empty name"),
        ("NUL\0NAME", "x", "NUL byte in its name"),
        ("NULVALUE", "a\0b", "NUL byte in its value"),
    ];
    for (i, (key, value, why)) in cases.into_iter().enumerate() {
        let mut c = container_config(&format!("c{i}"), &file_image("hello.p1"), &[]);
        c.envs.push(cri::KeyValue {
            key: key.into(),
            value: value.into(),
        });
        let e = tp.create(&mut rt, c).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{key:?}: {e:?}");
        assert!(e.message().contains(why), "{key:?}: {}", e.message());
        assert!(
            e.message().contains(&format!("{key:?}")),
            "names the variable: {}",
            e.message()
        );
    }
    d.stop();
}

/// A pod created without a log directory logs under wasmpod's state directory: those files are
/// wasmpod's own and rotated by `[logs]`; a CRI log_path gets the `cri_max_size` hard cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_guests_are_held_to_the_configured_log_limits() {
    let d = Daemon::start_with(
        "[logs]\nmax_size = \"64Ki\"\nmax_files = 2\ncri_max_size = \"64Ki\"\n",
        None,
    )
    .await;
    let mut rt = d.runtime().await;
    let image = wat_file(d.dir.path(), "flood.wasm", &wat_print_lines(50_000));
    let image = format!("file://{}", image.display());

    let mut own = pod_config("own", d.dir.path());
    own.log_directory.clear();
    let pod = harness::run_pod(&mut rt, &own).await;
    let id = harness::create(&mut rt, &pod, container_config("c", &image, &[]), &own)
        .await
        .unwrap();
    harness::start(&mut rt, &id).await;
    assert_eq!(harness::wait_exited(&mut rt, &id).await.exit_code, 0);
    let log = std::path::PathBuf::from(harness::status(&mut rt, &id).await.log_path);
    let dir = log.parent().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["0.log", "0.log.1"], "{}", dir.display());
    for f in &files {
        assert!(
            std::fs::metadata(dir.join(f)).unwrap().len() <= 64 << 10,
            "{f}"
        );
    }

    let tp = harness::new_pod(&d, &mut rt, "kubelets").await;
    let id = tp
        .create(&mut rt, container_config("c", &image, &[]))
        .await
        .unwrap();
    harness::start(&mut rt, &id).await;
    assert_eq!(harness::wait_exited(&mut rt, &id).await.exit_code, 0);
    let capped = tp.logs.join("c/0.log");
    assert!(std::fs::metadata(&capped).unwrap().len() <= 64 << 10);
    let records = read_log(&capped);
    assert!(
        records
            .last()
            .is_some_and(|r| r.text.contains("reached its 65536-byte cap")),
        "{:?}",
        records.last()
    );
    // kubelet's files are never renamed by wasmpod.
    assert_eq!(std::fs::read_dir(tp.logs.join("c")).unwrap().count(), 1);
    d.stop();
}

fn serve_at(socket: &std::path::Path, state: &std::path::Path) -> std::process::Output {
    wasmpod_tests::output_within(
        std::process::Command::new(wasmpod_tests::wasmpod_bin())
            .arg("--state-dir")
            .arg(state)
            .args(["serve", "--socket"])
            .arg(socket),
        60,
    )
}

#[test]
fn serve_refuses_to_replace_anything_but_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("precious");
    std::fs::write(&file, "keep me").unwrap();
    let out = serve_at(&file, &dir.path().join("state"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    // A symlink at the path is not followed, nor removed.
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let out = serve_at(&link, &dir.path().join("state"));
    assert!(!out.status.success());
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    // A live socket is another server's.
    let live = dir.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let out = serve_at(&live, &dir.path().join("state"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("another server listens on {}", live.display())),
        "{stderr}"
    );
    assert!(std::os::unix::net::UnixStream::connect(&live).is_ok());
}
