//! The benchmark peer works: Debian's containerd (CRI plugin) + runc on a temp root and socket,
//! driven by the same CRI client as `wasmpod serve`, runs hello pods end to end and leaves no
//! process, mount or pod behind.

use k8s_cri::v1 as cri;
use wasmpod_tests::containerd::{self, Containerd};
use wasmpod_tests::cri::{container_config, create, run_pod, start, wait_for};
use wasmpod_tests::{read_log, stream_text};

/// One containerd at a time: they share /run/containerd and the `k8s.io` cgroups, and the
/// timings printed are for a machine with nothing else of ours running.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_snapshotter() {
    peer_case(containerd::NATIVE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlayfs_snapshotter() {
    peer_case(containerd::OVERLAYFS).await;
}

async fn peer_case(snapshotter: &str) {
    let _serial = SERIAL.lock().await;
    let c = match Containerd::try_start_with(snapshotter).await {
        Ok(c) => c,
        // Not skipped: why the peer cannot run here is the finding.
        Err(e) => panic!("containerd + runc ({snapshotter}) cannot run here: {e:#}"),
    };
    let mut rt = c.runtime().await;
    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "containerd", "{v:?}");
    println!(
        "peer: {} {} (CRI {}), snapshotter {}, images {} {} {}",
        v.runtime_name,
        v.runtime_version,
        v.runtime_api_version,
        c.snapshotter(),
        c.pause_image(),
        c.hello_image(),
        c.idle_image()
    );
    let pids = c.pids();
    assert_eq!(pids.first().copied(), c.containerd_pid(), "{pids:?}");

    for i in 0..3 {
        let run = c
            .pod_lifecycle(&mut rt, &format!("hello-{i}"), c.hello_image())
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        println!(
            "containerd ({snapshotter}) pod {i}: RunPodSandbox -> first log line {:?}, \
             whole lifecycle {:?}",
            run.first_line, run.total
        );
        assert_eq!(
            stream_text(&run.log, "stdout"),
            "hello from runc\n",
            "{run:?}"
        );
    }

    // A failed lifecycle says which call failed and removes its pod.
    let err = c
        .pod_lifecycle(&mut rt, "missing", "wasmpod.local/peer/missing:1")
        .await
        .expect_err("no such image");
    assert!(format!("{err:#}").contains("CreateContainer"), "{err:#}");

    let containers = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "{containers:?}");
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    // Each pod's shim exits with its sandbox.
    assert_eq!(c.pids(), c.containerd_pid().into_iter().collect::<Vec<_>>());

    // An idle pod left running, so Drop has a shim, containers and mounts to clean up.
    let logs = c.pod_log_dir("idle");
    std::fs::create_dir_all(&logs).unwrap();
    let sandbox = containerd::host_network_pod_config("idle", &logs);
    let pod = run_pod(&mut rt, &sandbox).await;
    let config = container_config("idle", c.idle_image(), &[]);
    let id = create(&mut rt, &pod, config, &sandbox).await.unwrap();
    start(&mut rt, &id).await;
    let log = logs.join("idle/0.log");
    wait_for(|| stream_text(&read_log(&log), "stdout") == "tick 1\n").await;
    let shims = containerd::shim_pids(&c.socket);
    assert_eq!(shims.len(), 1, "one shim for the idle pod: {shims:?}");
    let in_containers = c.container_pids();
    assert_eq!(in_containers.len(), 2, "pause + idle: {in_containers:?}");
    // Real cgroups: runc put the containers in cgroupfs groups under `k8s.io`, and CRI reads
    // their memory from there.
    for pid in &in_containers {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cgroups.lines().any(|l| l.contains(":memory:/k8s.io/")),
            "pid {pid}: {cgroups}"
        );
    }
    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    assert!(memory.is_some_and(|b| b > 0), "{memory:?}");
    println!(
        "with one idle pod: runtime pids {:?}, container pids {in_containers:?}, \
         idle container working set {} KiB",
        c.pids(),
        memory.unwrap() / 1024
    );

    let dir = c.dir.path().to_path_buf();
    assert!(
        !containerd::mounts_under(&dir).is_empty(),
        "the idle pod's rootfs is mounted"
    );
    let all: Vec<u32> = c.pids().into_iter().chain(in_containers).collect();
    drop(rt);
    drop(c);
    let left = containerd::processes_under(&dir);
    assert!(left.is_empty(), "left running: {left:?}");
    for pid in all {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, s)| &s[..1]);
        assert!(
            matches!(state, None | Some("Z")),
            "pid {pid} still runs: {stat}"
        );
    }
    assert!(containerd::mounts_under(&dir).is_empty());
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
