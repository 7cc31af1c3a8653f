//! Volumes: emptyDir (disk and memory, shared, sizeLimit eviction), hostPath kinds, readOnly
//! mounts, subPath, and single-file mounts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmpod_runtime::error::ErrorKind;
use wasmpod_runtime::exit::ExitReason;
use wasmpod_runtime::manifest::PodManifest;
use wasmpod_runtime::runner::{self, RunnerOptions};
use wasmpod_runtime::runtime::Runtime;
use wasmpod_runtime::spec::{HostPathKind, Medium, MountSpec, VolumeSpec};
use wasmpod_tests::*;

/// The errnos (WASI numbering) a write to a read-only mount may fail with: EROFS (what a
/// preview1 guest gets), EPERM (a preview2 guest, from wasmtime-wasi), EACCES.
const READ_ONLY_ERRNOS: [&str; 3] = ["errno=63 ", "errno=2 ", "errno=69 "];

fn assert_read_only_error(ran: &Ran, what: &str) {
    assert_eq!(ran.exit.code, 1, "{what}: {:?} {:?}", ran.exit, ran.log);
    let err = ran.stderr();
    assert!(
        READ_ONLY_ERRNOS.iter().any(|e| err.contains(e)),
        "{what}: expected EPERM/EACCES/EROFS, got {err}"
    );
}

/// Runs fsprobe.`kind` with `args` over one volume and its one mount.
async fn fsprobe(
    rt: &Arc<Runtime>,
    kind: &str,
    args: &[&str],
    volume: VolumeSpec,
    mount: MountSpec,
) -> Ran {
    run_guest(
        rt,
        &wasm(&format!("fsprobe.{kind}")),
        args,
        vec![volume],
        vec![mount],
    )
    .await
}

/// Makes host directory `<tmp>/<name>` holding `files` (paths relative to it, with their
/// parents, and contents) for a test to mount.
fn host_dir(tmp: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir(&dir).unwrap();
    for (rel, contents) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_volume_example_writer_and_reader_side_by_side() {
    let (tmp, rt) = temp_runtime();
    let mut manifest = PodManifest::from_file(&example("shared-volume/pod.yaml")).unwrap();
    let logs = tmp.path().join("logs");
    manifest.pod.log_directory = Some(logs.clone());
    let report = within(
        60,
        "the shared-volume pod",
        runner::run_pod(
            &rt,
            manifest,
            std::future::pending(),
            &RunnerOptions::default(),
        ),
    )
    .await
    .unwrap();
    let names: Vec<_> = report.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["prepare", "writer", "reader"]);
    for c in &report.containers {
        let exit = c.exit.as_ref().unwrap_or_else(|| panic!("{} ran", c.name));
        assert_eq!(
            (exit.code, exit.reason),
            (0, ExitReason::Completed),
            "{}: {exit:?}",
            c.name
        );
        assert_eq!(c.restarts, 0);
    }
    assert_eq!(report.exit_code(), 0);
    // The reader saw every line the writer wrote, through the shared emptyDir.
    let reader = stream_text(&read_log(&logs.join("reader/0.log")), "stdout");
    let want: String = (1..=5)
        .map(|n| format!("read: message {n}\n"))
        .chain(["read: done\n".to_owned()])
        .collect();
    assert_eq!(reader, want);
    // The pod's emptyDir is gone with the pod.
    let pods = tmp.path().join("state/pods");
    assert_eq!(
        std::fs::read_dir(&pods).unwrap().count(),
        0,
        "run_pod removes the pod directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_empty_dir_lives_in_dev_shm_while_the_pod_runs() {
    let (_tmp, rt) = temp_runtime();
    let mut p = pod("shm");
    p.volumes = vec![empty_dir("cache", Medium::Memory, None)];
    let pod_id = rt.run_pod(p).unwrap();
    let shm = std::path::Path::new("/dev/shm").join(format!("wasmpod-{pod_id}"));
    let host = shm.join("cache");
    assert!(
        host.is_dir(),
        "{} exists while the pod runs",
        host.display()
    );

    let mut c = container(
        "w",
        &wasm("fsprobe.p2"),
        &["write", "/cache/in-memory", "kept in RAM"],
    );
    c.mounts = vec![mount("cache", None, "/cache", false)];
    let id = rt.create_container(&pod_id, c).await.unwrap();
    rt.start_container(&id).unwrap();
    let exit = within(30, "the writer", rt.wait_container(&id))
        .await
        .unwrap();
    assert_eq!(exit.code, 0, "{exit:?}");
    assert_eq!(
        std::fs::read_to_string(host.join("in-memory")).unwrap(),
        "kept in RAM",
        "the guest wrote into the tmpfs directory"
    );
    rt.remove_pod(&pod_id).await.unwrap();
    assert!(
        !host.exists(),
        "the memory emptyDir is removed with the pod"
    );
    assert!(!shm.exists(), "and so is its per-pod directory in /dev/shm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_dir_over_size_limit_evicts_every_container() {
    let (tmp, rt) = temp_runtime();
    let writer = wasm("writer.p1");
    let ticker = wasm("forever.p1");
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: evict}}
spec:
  restartPolicy: Always
  volumes:
    - name: data
      emptyDir: {{sizeLimit: 8Ki}}
  containers:
    - name: writer
      image: {writer}
      args: ["/data/big.txt", "1000000", "1"]
      volumeMounts: [{{name: data, mountPath: /data}}]
    - name: bystander
      image: {ticker}
"#,
        writer = writer.display(),
        ticker = ticker.display()
    );
    let manifest = PodManifest::parse(&yaml, tmp.path()).unwrap();
    let events = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let sink = events.clone();
    let opts = RunnerOptions {
        volume_check: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(20),
        on_event: Arc::new(move |name, msg| {
            sink.lock().unwrap().push((name.to_owned(), msg.to_owned()))
        }),
        ..RunnerOptions::default()
    };
    let report = within(
        60,
        "the pod to be evicted",
        runner::run_pod(&rt, manifest, std::future::pending(), &opts),
    )
    .await
    .unwrap();
    for c in &report.containers {
        let exit = c.exit.as_ref().unwrap();
        assert_eq!(exit.reason, ExitReason::Evicted, "{}: {exit:?}", c.name);
        assert_eq!(exit.code, 137, "{}", c.name);
        assert!(
            exit.message.contains("exceeds the limit"),
            "{}: {exit:?}",
            c.name
        );
        assert_eq!(c.restarts, 0, "an evicted pod is not restarted");
    }
    assert_eq!(report.exit_code(), 137);
    let events = events.lock().unwrap();
    assert!(
        events
            .iter()
            .any(|(n, m)| n == "pod" && m.contains("evicted") && m.contains("\"data\"")),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_directory_is_shared_with_the_host() {
    let (tmp, rt) = temp_runtime();
    let host = host_dir(tmp.path(), "host", &[("in.txt", "from the host")]);
    let ran = fsprobe(
        &rt,
        "p1",
        &[
            "read",
            "/host/in.txt",
            "--",
            "write",
            "/host/out.txt",
            "from the guest",
        ],
        host_path("h", &host, HostPathKind::Directory),
        mount("h", None, "/host", false),
    )
    .await;
    assert_eq!(ran.exit.code, 0, "{:?}", ran.log);
    assert_eq!(ran.stdout(), "from the host\n");
    assert_eq!(
        std::fs::read_to_string(host.join("out.txt")).unwrap(),
        "from the guest"
    );

    // type Directory on a missing path, or on a file, fails the pod sandbox.
    let missing = tmp.path().join("missing");
    let mut p = pod("missing");
    p.volumes = vec![host_path("h", &missing, HostPathKind::Directory)];
    let err = rt.run_pod(p).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(
        err.message.contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(!missing.exists());
    let mut p = pod("notdir");
    p.volumes = vec![host_path(
        "h",
        &host.join("in.txt"),
        HostPathKind::Directory,
    )];
    let err = rt.run_pod(p).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    assert!(err.message.contains("not a directory"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_directory_or_create_makes_the_directory() {
    let (tmp, rt) = temp_runtime();
    let made = tmp.path().join("made/on/demand");
    let ran = fsprobe(
        &rt,
        "p2",
        &["write", "/made/file", "hi"],
        host_path("m", &made, HostPathKind::DirectoryOrCreate),
        mount("m", None, "/made", false),
    )
    .await;
    assert_eq!(ran.exit.code, 0, "{:?}", ran.log);
    assert!(made.is_dir());
    assert_eq!(std::fs::read_to_string(made.join("file")).unwrap(), "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_file_is_mounted_as_a_single_file() {
    let (tmp, rt) = temp_runtime();
    let file = tmp.path().join("app.conf");
    std::fs::write(&file, "key=value\n").unwrap();
    let ran = fsprobe(
        &rt,
        "p1",
        &["read", "/config/app.conf", "--", "ls", "/config"],
        host_path("conf", &file, HostPathKind::File),
        mount("conf", None, "/config/app.conf", true),
    )
    .await;
    assert_eq!(ran.exit.code, 0, "{:?}", ran.log);
    assert_eq!(
        ran.stdout(),
        "key=value\napp.conf\n",
        "only the file is visible in its directory"
    );

    // type File on a directory is refused; FileOrCreate makes an empty file.
    let mut p = pod("notfile");
    p.volumes = vec![host_path("f", tmp.path(), HostPathKind::File)];
    let err = rt.run_pod(p).unwrap_err();
    assert!(err.message.contains("not a file"), "{err}");
    let new = tmp.path().join("created.txt");
    let ran = fsprobe(
        &rt,
        "p1",
        &["stat", "/x/created.txt"],
        host_path("f", &new, HostPathKind::FileOrCreate),
        mount("f", None, "/x/created.txt", true),
    )
    .await;
    assert_eq!(ran.exit.code, 0, "{:?}", ran.log);
    assert_eq!(ran.stdout(), "file 0\n");
    assert!(new.is_file());
}

async fn read_only_directory_mount(kind: &str) {
    let (tmp, rt) = temp_runtime();
    let host = host_dir(tmp.path(), "ro", &[("keep.txt", "original")]);
    let probe = wasm(&format!("fsprobe.{kind}"));
    let vols = || vec![host_path("ro", &host, HostPathKind::Directory)];
    let mounts = || vec![mount("ro", None, "/ro", true)];

    let ran = run_guest(&rt, &probe, &["read", "/ro/keep.txt"], vols(), mounts()).await;
    assert_eq!(ran.exit.code, 0, "{kind}: reading works: {:?}", ran.log);
    assert_eq!(ran.stdout(), "original\n");

    let attempts: [&[&str]; 5] = [
        &["write", "/ro/keep.txt", "changed"],
        &["append", "/ro/keep.txt", "more"],
        &["write", "/ro/new.txt", "x"],
        &["mkdir", "/ro/dir"],
        &["rm", "/ro/keep.txt"],
    ];
    for args in attempts {
        let ran = run_guest(&rt, &probe, args, vols(), mounts()).await;
        assert_read_only_error(&ran, &format!("{kind} {args:?}"));
    }
    assert_eq!(
        std::fs::read_to_string(host.join("keep.txt")).unwrap(),
        "original"
    );
    let names: Vec<_> = std::fs::read_dir(&host)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep.txt"], "{kind}: nothing was created");
}

p1_and_p2_tests!(
    read_only_directory_mount =>
    read_only_mount_refuses_writes_p1,
    read_only_mount_refuses_writes_p2
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_path_mounts_a_subdirectory_and_creates_it() {
    let (tmp, rt) = temp_runtime();
    let host = host_dir(tmp.path(), "vol", &[("top.txt", "top")]);
    let ran = fsprobe(
        &rt,
        "p1",
        &[
            "write",
            "/sub/inner.txt",
            "inside",
            "--",
            "ls",
            "/sub",
            "--",
            "exists",
            "/sub/top.txt",
        ],
        host_path("v", &host, HostPathKind::Directory),
        mount("v", Some("a/b"), "/sub", false),
    )
    .await;
    assert_eq!(ran.exit.code, 0, "{:?}", ran.log);
    assert_eq!(
        ran.stdout(),
        "inner.txt\nno\n",
        "the guest sees only the subPath"
    );
    assert!(host.join("a/b").is_dir(), "the subPath was created");
    assert_eq!(
        std::fs::read_to_string(host.join("a/b/inner.txt")).unwrap(),
        "inside"
    );

    // Two containers of one pod: one writes through a subPath of an emptyDir, the other
    // sees the file at that place in the whole volume.
    let mut p = pod("sub");
    p.volumes = vec![empty_dir("data", Medium::Disk, None)];
    let pod_id = rt.run_pod(p).unwrap();
    let mut w = container(
        "w",
        &wasm("fsprobe.p2"),
        &["write", "/only-sub/f", "via subPath"],
    );
    w.mounts = vec![mount("data", Some("x/y"), "/only-sub", false)];
    let mut r = container("r", &wasm("fsprobe.p1"), &["read", "/data/x/y/f"]);
    r.mounts = vec![mount("data", None, "/data", true)];
    let w = rt.create_container(&pod_id, w).await.unwrap();
    let r = rt.create_container(&pod_id, r).await.unwrap();
    rt.start_container(&w).unwrap();
    assert_eq!(rt.wait_container(&w).await.unwrap().code, 0);
    rt.start_container(&r).unwrap();
    assert_eq!(rt.wait_container(&r).await.unwrap().code, 0);
    let log = read_log(rt.container(&r).unwrap().log_path.as_deref().unwrap());
    assert_eq!(stream_text(&log, "stdout"), "via subPath\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_path_to_a_file_mounts_that_file() {
    let (tmp, rt) = temp_runtime();
    let host = host_dir(tmp.path(), "vol", &[("conf/app.ini", "[app]\n")]);
    let ran = fsprobe(
        &rt,
        "p1",
        &["read", "/etc/app.ini"],
        host_path("v", &host, HostPathKind::Directory),
        mount("v", Some("conf/app.ini"), "/etc/app.ini", true),
    )
    .await;
    assert_eq!(ran.exit.code, 0, "{:?}", ran.log);
    assert_eq!(ran.stdout(), "[app]\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_file_mount_at_etc_hosts() {
    for kind in ["p1", "p2"] {
        let (tmp, rt) = temp_runtime();
        let hosts = tmp.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n10.0.0.7 my-pod\n").unwrap();
        let vols = || vec![host_path("hosts", &hosts, HostPathKind::File)];
        let mounts = || vec![mount("hosts", None, "/etc/hosts", true)];
        let probe = wasm(&format!("fsprobe.{kind}"));
        let ran = run_guest(&rt, &probe, &["read", "/etc/hosts"], vols(), mounts()).await;
        assert_eq!(ran.exit.code, 0, "{kind}: {:?}", ran.log);
        assert_eq!(ran.stdout(), "127.0.0.1 localhost\n10.0.0.7 my-pod\n");
        let ran = run_guest(
            &rt,
            &probe,
            &["write", "/etc/hosts", "evil"],
            vols(),
            mounts(),
        )
        .await;
        assert_read_only_error(&ran, &format!("{kind}: write /etc/hosts"));
        assert_eq!(
            std::fs::read_to_string(&hosts).unwrap(),
            "127.0.0.1 localhost\n10.0.0.7 my-pod\n"
        );
    }
}

async fn termination_log(host_dir: &std::path::Path, kind: &str) {
    let (_tmp, rt) = temp_runtime();
    let term = host_dir.join("termination-log");
    std::fs::write(&term, "").unwrap();
    let ran = run_guest(
        &rt,
        &wasm(&format!("fsprobe.{kind}")),
        &["write", "/dev/termination-log", "goodbye: all done"],
        vec![host_path("term", &term, HostPathKind::File)],
        vec![mount("term", None, "/dev/termination-log", false)],
    )
    .await;
    assert_eq!(ran.exit.code, 0, "{kind}: {:?}", ran.log);
    assert_eq!(
        std::fs::read_to_string(&term).unwrap(),
        "goodbye: all done",
        "{kind}: the guest's write reached the host file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_file_mount_at_dev_termination_log() {
    let host = tempfile::tempdir().unwrap();
    termination_log(host.path(), "p1").await;
    let host = tempfile::tempdir().unwrap();
    termination_log(host.path(), "p2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_file_mount_on_another_filesystem_is_written_back() {
    // The state directory is under /tmp; a host file on /dev/shm (tmpfs) cannot be
    // hard-linked into it, so the runtime stages a copy and writes it back at exit.
    if !std::path::Path::new("/dev/shm").is_dir() {
        eprintln!("skipped: no /dev/shm");
        return;
    }
    let host = tempfile::tempdir_in("/dev/shm").unwrap();
    termination_log(host.path(), "p1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_writable_file_mounts_in_one_directory_are_refused() {
    // File mounts of one directory share one preopen, which has one set of permissions: a
    // readOnly file beside a writable one could not stay read-only, so the layout is refused
    // at creation, naming the directory, and nothing on the host changes.
    let (tmp, rt) = temp_runtime();
    let ro = tmp.path().join("ro.conf");
    let rw = tmp.path().join("rw.state");
    std::fs::write(&ro, "read only").unwrap();
    std::fs::write(&rw, "").unwrap();
    let mut p = pod("mixed");
    p.volumes = vec![
        host_path("ro", &ro, HostPathKind::File),
        host_path("rw", &rw, HostPathKind::File),
    ];
    let pod_id = rt.run_pod(p).unwrap();
    let mut c = container(
        "probe",
        &wasm("fsprobe.p1"),
        &["write", "/etc/ro.conf", "changed"],
    );
    c.mounts = vec![
        mount("ro", None, "/etc/ro.conf", true),
        mount("rw", None, "/etc/rw.state", false),
    ];
    let err = rt.create_container(&pod_id, c).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    assert!(
        err.message.contains("/etc") && err.message.contains("readOnly"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&ro).unwrap(), "read only");
    assert_eq!(std::fs::read_to_string(&rw).unwrap(), "");
    rt.remove_pod(&pod_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_sub_path_file_mount_is_written_back() {
    // A subPath naming a file, mounted writable: the guest's write reaches the file in the
    // volume (the mount source is a pinned descriptor, so it is staged as a copy).
    let (tmp, rt) = temp_runtime();
    let host = host_dir(tmp.path(), "vol", &[("state/counter", "1")]);
    let ran = fsprobe(
        &rt,
        "p2",
        &["read", "/var/counter", "--", "write", "/var/counter", "2"],
        host_path("v", &host, HostPathKind::Directory),
        mount("v", Some("state/counter"), "/var/counter", false),
    )
    .await;
    assert_eq!(ran.exit.code, 0, "{:?}", ran.log);
    assert_eq!(ran.stdout(), "1\n");
    assert_eq!(
        std::fs::read_to_string(host.join("state/counter")).unwrap(),
        "2",
        "the write reached the file in the volume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_directory_mounts_each_show_their_own_volume() {
    let (tmp, rt) = temp_runtime();
    let outer = host_dir(tmp.path(), "outer", &[("o.txt", "outer")]);
    let inner = host_dir(tmp.path(), "inner", &[("i.txt", "inner")]);
    let ran = run_guest(
        &rt,
        &wasm("fsprobe.p1"),
        &[
            "read",
            "/data/o.txt",
            "--",
            "read",
            "/data/sub/i.txt",
            "--",
            "write",
            "/data/sub/new",
            "n",
        ],
        vec![
            host_path("outer", &outer, HostPathKind::Directory),
            host_path("inner", &inner, HostPathKind::Directory),
        ],
        vec![
            mount("outer", None, "/data", true),
            mount("inner", None, "/data/sub", false),
        ],
    )
    .await;
    assert_eq!(ran.exit.code, 0, "{:?}", ran.log);
    assert_eq!(
        ran.stdout(),
        "outerinner\n",
        "both files read, through both mounts"
    );
    assert_eq!(std::fs::read_to_string(inner.join("new")).unwrap(), "n");
    assert!(!outer.join("sub").exists());
}
