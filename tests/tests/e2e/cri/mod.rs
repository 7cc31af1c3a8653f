//! End-to-end tests of `wasmpod serve`: the real binary on a temp socket, driven by a CRI
//! client (the CRI proto through tonic) in the call sequences crictl and kubelet use.

use std::collections::HashMap;
use std::time::Duration;

use k8s_cri::v1 as cri;
use tonic::Code;
use wasmpod_tests::cri::{
    self as harness, container_config, pod_config, Daemon, Registry, TestPod,
};
use wasmpod_tests::{read_log, require_guests, stream_text, wasm};

mod hardening;
mod inspect;
mod kubelet_conventions;
mod network;

fn file_image(name: &str) -> String {
    format!("file://{}", wasm(name).display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_sequence_runs_a_pod_to_completion() {
    require_guests();
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;

    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("wasmpod", "v1")
    );
    let status = rt
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ready = status
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "RuntimeReady")
        .unwrap();
    assert!(ready.status);

    let logs = d.dir.path().join("logs/hello");
    std::fs::create_dir_all(&logs).unwrap();
    let sandbox = pod_config("hello", &logs);
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let ctr = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config(
                "hello",
                &file_image("hello.p1"),
                &["a", "b"],
            )),
            sandbox_config: Some(sandbox),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    harness::start(&mut rt, &ctr).await;
    let status = harness::wait_exited(&mut rt, &ctr).await;
    assert_eq!(status.exit_code, 0);
    assert_eq!(status.reason, "Completed");
    assert!(status.started_at > 0 && status.finished_at >= status.started_at);
    assert_eq!(status.labels.get("tier").map(String::as_str), Some("wasm"));
    assert_eq!(status.annotations.get("a").map(String::as_str), Some("b"));
    assert_eq!(
        status.log_path,
        logs.join("hello/0.log").display().to_string()
    );
    assert_eq!(status.image.unwrap().image, file_image("hello.p1"));

    // crictl logs reads the file at log_path.
    let records = read_log(std::path::Path::new(&status.log_path));
    let out = stream_text(&records, "stdout");
    assert!(
        out.contains("Hello from wasmpod!")
            && out.contains("GREETING=from the CRI")
            && out.contains("args: a b"),
        "{out}"
    );

    // crictl ps -a with the filters it uses.
    let list = |filter: cri::ContainerFilter| {
        let mut rt = rt.clone();
        async move { harness::list_containers(&mut rt, filter).await }
    };
    assert_eq!(list(cri::ContainerFilter::default()).await.len(), 1);
    assert_eq!(
        list(cri::ContainerFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        list(cri::ContainerFilter {
            id: ctr[..12].into(),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    let exited = Some(cri::ContainerStateValue {
        state: cri::ContainerState::ContainerExited as i32,
    });
    assert_eq!(
        list(cri::ContainerFilter {
            state: exited,
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    let running = Some(cri::ContainerStateValue {
        state: cri::ContainerState::ContainerRunning as i32,
    });
    assert!(list(cri::ContainerFilter {
        state: running,
        ..Default::default()
    })
    .await
    .is_empty());
    let selector = HashMap::from([("tier".to_string(), "other".to_string())]);
    assert!(list(cri::ContainerFilter {
        label_selector: selector,
        ..Default::default()
    })
    .await
    .is_empty());

    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].metadata.as_ref().unwrap().attempt, 1);
    assert_eq!(
        pods[0].annotations.get("note").map(String::as_str),
        Some("kept as is")
    );

    rt.stop_container(cri::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .unwrap();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let st = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap();
    assert_eq!(
        st.into_inner().status.unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();

    // Stop and remove are idempotent; status calls say NotFound.
    rt.stop_container(cri::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .unwrap();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let e = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: ctr,
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod,
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_pod_with_shared_empty_dir_and_file_mounts() {
    require_guests();
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    // kubelet resolves volumes to host paths and mounts single files.
    let volume = d.dir.path().join("kubelet/volumes/data");
    std::fs::create_dir_all(&volume).unwrap();
    let hosts = d.dir.path().join("kubelet/etc-hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let term = d.dir.path().join("kubelet/termination-log");
    std::fs::write(&term, "").unwrap();
    let TestPod {
        sandbox,
        id: pod,
        logs,
    } = harness::new_pod(&d, &mut rt, "pair").await;
    let mount = |host: &std::path::Path, path: &str, ro: bool| cri::Mount {
        host_path: host.display().to_string(),
        container_path: path.into(),
        readonly: ro,
        ..Default::default()
    };
    let mut writer = container_config(
        "writer",
        &file_image("writer.p1"),
        &["/data/messages.txt", "3", "50"],
    );
    writer.mounts = vec![
        mount(&volume, "/data", false),
        mount(&hosts, "/etc/hosts", true),
        mount(&term, "/dev/termination-log", false),
    ];
    let mut reader = container_config(
        "reader",
        &file_image("reader.p2"),
        &["/data/messages.txt", "30000"],
    );
    reader.mounts = vec![mount(&volume, "/data", false)];
    let mut prober = container_config(
        "probe",
        &file_image("fsprobe.p1"),
        &[
            "read",
            "/etc/hosts",
            "--",
            "write",
            "/dev/termination-log",
            "done",
        ],
    );
    prober.mounts = writer.mounts.clone();
    let mut ids = Vec::new();
    for config in [reader, writer, prober] {
        let id = harness::create(&mut rt, &pod, config, &sandbox)
            .await
            .unwrap();
        harness::start(&mut rt, &id).await;
        ids.push(id);
    }
    for id in &ids {
        let st = harness::wait_exited(&mut rt, id).await;
        assert_eq!(
            st.exit_code,
            0,
            "{}: {}",
            st.metadata.unwrap().name,
            st.message
        );
    }
    let reader_log = stream_text(&read_log(&logs.join("reader/0.log")), "stdout");
    assert!(
        reader_log.contains("read: message 3") && reader_log.contains("read: done"),
        "{reader_log}"
    );
    let probe_log = stream_text(&read_log(&logs.join("probe/0.log")), "stdout");
    assert!(probe_log.contains("127.0.0.1 localhost"), "{probe_log}");
    assert_eq!(std::fs::read_to_string(&term).unwrap(), "done");

    // Duplicate (name, attempt) in one sandbox.
    let err = harness::create(
        &mut rt,
        &pod,
        container_config("writer", &file_image("hello.p1"), &[]),
        &sandbox,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_rotation_reopen_and_events_and_stats() {
    require_guests();
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let mut events = rt
        .get_container_events(cri::GetEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let TestPod {
        sandbox,
        id: pod,
        logs,
    } = harness::new_pod(&d, &mut rt, "tick").await;
    let id = harness::create(
        &mut rt,
        &pod,
        container_config("ticker", &file_image("forever.p1"), &[]),
        &sandbox,
    )
    .await
    .unwrap();
    harness::start(&mut rt, &id).await;
    let log = logs.join("ticker/0.log");
    harness::wait_for(|| stream_text(&read_log(&log), "stdout").contains("tick 1")).await;

    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let stats = stats.stats.unwrap();
    assert!(
        stats.memory.unwrap().working_set_bytes.unwrap().value > 0,
        "a running guest holds linear memory"
    );
    let pod_stats = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pod_stats.stats.len(), 1);

    // kubelet's rotation: move the file away, ask for a reopen, new lines land in a new file.
    std::fs::rename(&log, logs.join("ticker/0.log.1")).unwrap();
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    harness::wait_for(|| log.exists() && stream_text(&read_log(&log), "stdout").contains("tick"))
        .await;

    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    let st = harness::wait_exited(&mut rt, &id).await;
    // A WASI command cannot catch the SIGTERM: it ends at once, as such a process would.
    assert_eq!((st.exit_code, st.reason.as_str()), (143, "Error"));
    let e = rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        if ev.container_id == id {
            kinds.push(ev.container_event_type);
            assert_eq!(ev.pod_sandbox_status.unwrap().id, pod);
        }
    }
    use cri::ContainerEventType as E;
    assert_eq!(
        kinds,
        [
            E::ContainerCreatedEvent as i32,
            E::ContainerStartedEvent as i32,
            E::ContainerStoppedEvent as i32
        ]
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_killed_daemon() {
    require_guests();
    let mut d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let tp = harness::new_pod(&d, &mut rt, "keep").await;
    let pod = tp.id.clone();
    let id = tp
        .create(
            &mut rt,
            container_config("ticker", &file_image("forever.p1"), &[]),
        )
        .await
        .unwrap();
    harness::start(&mut rt, &id).await;
    let before = harness::status(&mut rt, &id).await;
    assert_eq!(before.state, cri::ContainerState::ContainerRunning as i32);

    d.kill9();
    d.restart().await;
    let mut rt = d.runtime().await;
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [pod.as_str()]
    );
    let after = harness::status(&mut rt, &id).await;
    assert_eq!(after.created_at, before.created_at);
    assert_eq!(after.started_at, before.started_at);
    assert_eq!(after.state, cri::ContainerState::ContainerExited as i32);
    assert_ne!(after.exit_code, 0);
    assert!(after.message.contains("restarted"), "{}", after.message);
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest { container_id: id })
        .await
        .unwrap();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();

    // A clean stop (SIGTERM) exits 0 and removes the socket; a restart lists nothing removed.
    assert!(d.terminate().success());
    assert!(!d.socket.exists());
    d.restart().await;
    let mut rt = d.runtime().await;
    assert!(rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
        .is_empty());
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses() {
    require_guests();
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut nameless = pod_config("x", d.dir.path());
    nameless.metadata.as_mut().unwrap().name.clear();
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(nameless),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("name"), "{}", e.message());

    let TestPod {
        sandbox,
        id: pod,
        logs,
    } = harness::new_pod(&d, &mut rt, "bad").await;
    let e = harness::create(
        &mut rt,
        "no-such-pod",
        container_config("a", &file_image("hello.p1"), &[]),
        &sandbox,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let mut no_meta = container_config("a", &file_image("hello.p1"), &[]);
    no_meta.metadata = None;
    assert_eq!(
        harness::create(&mut rt, &pod, no_meta, &sandbox)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    let mut missing_mount = container_config("b", &file_image("hello.p1"), &[]);
    missing_mount.mounts = vec![cri::Mount {
        host_path: "/no/such/dir".into(),
        container_path: "/x".into(),
        ..Default::default()
    }];
    let e = harness::create(&mut rt, &pod, missing_mount, &sandbox)
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::NotFound | Code::InvalidArgument),
        "{e}"
    );
    assert!(e.message().contains("/no/such/dir"), "{}", e.message());

    let mut escape = container_config("c", &file_image("hello.p1"), &[]);
    escape.log_path = "../../escape.log".into();
    assert_eq!(
        harness::create(&mut rt, &pod, escape, &sandbox)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    let outside = d.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, logs.join("link")).unwrap();
    let mut via_link = container_config("d", &file_image("hello.p1"), &[]);
    via_link.log_path = "link/d.log".into();
    let e = harness::create(&mut rt, &pod, via_link, &sandbox)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written outside"
    );

    let mut bad_wasm = container_config(
        "e",
        &format!("file://{}", d.dir.path().join("garbage.wasm").display()),
        &[],
    );
    std::fs::write(d.dir.path().join("garbage.wasm"), b"not wasm at all").unwrap();
    bad_wasm.log_path = "e/0.log".into();
    let e = harness::create(&mut rt, &pod, bad_wasm, &sandbox)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("container e"), "{}", e.message());

    let selector = HashMap::from([("bad key!".to_string(), "v".to_string())]);
    let e = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: selector,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let e = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: "x".into(),
            cmd: vec!["ls".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // A request over the 16 MiB limit is answered with an error, and the server lives on.
    let mut huge = pod_config("huge", &logs);
    huge.annotations.insert("blob".into(), "x".repeat(17 << 20));
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(huge),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.code(),
            Code::ResourceExhausted | Code::OutOfRange | Code::Internal | Code::Unknown
        ),
        "{e}"
    );
    let mut rt = d.runtime().await;
    rt.version(cri::VersionRequest::default()).await.unwrap();

    let e = harness::image_client(&d)
        .await
        .image_status(cri::ImageStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let unknown = cri::ImageStatusRequest {
        image: Some(cri::ImageSpec {
            image: "nope:1".into(),
            ..Default::default()
        }),
        verbose: false,
    };
    assert!(harness::image_client(&d)
        .await
        .image_status(unknown)
        .await
        .unwrap()
        .into_inner()
        .image
        .is_none());
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_service_pulls_lists_and_removes() {
    require_guests();
    let d = Daemon::start().await;
    let registry = Registry::start(d.dir.path()).await;
    let name = registry.push_wasm(&wasm("hello.p2"), "cri/hello:1", d.dir.path());
    let mut images = harness::image_client(&d).await;
    let spec = || {
        Some(cri::ImageSpec {
            image: name.clone(),
            ..Default::default()
        })
    };
    let pulled = images
        .pull_image(cri::PullImageRequest {
            image: spec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(pulled.image_ref.starts_with("sha256:"));
    let status = images
        .image_status(cri::ImageStatusRequest {
            image: spec(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    let image = status.image.unwrap();
    assert_eq!(image.id, pulled.image_ref);
    assert!(image.repo_tags.contains(&name), "{:?}", image.repo_tags);
    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(listed.len(), 1);
    let fs = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);

    // A container from the pulled image, by name.
    let mut rt = d.runtime().await;
    let tp = harness::new_pod(&d, &mut rt, "img").await;
    let id = tp
        .create(&mut rt, container_config("app", &name, &[]))
        .await
        .unwrap();
    harness::start(&mut rt, &id).await;
    let st = harness::wait_exited(&mut rt, &id).await;
    assert_eq!(st.exit_code, 0, "{}", st.message);
    assert_eq!(st.image_ref, pulled.image_ref);

    images
        .remove_image(cri::RemoveImageRequest { image: spec() })
        .await
        .unwrap();
    images
        .remove_image(cri::RemoveImageRequest { image: spec() })
        .await
        .unwrap();
    assert!(images
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
        .is_empty());
    let missing = cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: format!("{}/cri/nope:1", registry.host),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        images.pull_image(missing).await.unwrap_err().code(),
        Code::NotFound
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_private_and_a_stale_one_is_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/wasmpod.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    // A socket file nobody listens on, as a crash leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let d = Daemon::start_at(dir, socket.clone()).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    // A second server on the same socket refuses to steal it.
    let out = std::process::Command::new(wasmpod_tests::wasmpod_bin())
        .arg("--state-dir")
        .arg(d.dir.path().join("state2"))
        .args(["serve", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another server listens on"));
    let fresh = tempfile::tempdir().unwrap();
    let private = fresh.path().join("new/wasmpod.sock");
    let d2 = Daemon::start_at(fresh, private.clone()).await;
    let dir_mode = std::fs::metadata(private.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    d2.stop();
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_is_quarantined_not_fatal() {
    require_guests();
    let mut d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let tp = harness::new_pod(&d, &mut rt, "q").await;
    let id = tp
        .create(
            &mut rt,
            container_config("ok", &file_image("hello.p1"), &[]),
        )
        .await
        .unwrap();
    assert!(d.terminate().success());

    let db = d.dir.path().join("state/state.redb");
    let store = wasmpod_runtime::state::StateStore::open(&db).unwrap();
    store
        .put_raw_container("deadbeef", b"{ this is not a record")
        .unwrap();
    drop(store);

    d.restart().await;
    let mut rt = d.runtime().await;
    let ids: Vec<String> = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, [id]);
    assert!(d.terminate().success());
    let store = wasmpod_runtime::state::StateStore::open(&db).unwrap();
    assert_eq!(store.quarantined().unwrap(), ["deadbeef"]);
}
