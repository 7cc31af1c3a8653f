//! Wasm-native exec and attach through the runtime's API: what runs, in which context, with
//! which exit, and that an exec never outlives its container. The toolbox (a multi-call WASI
//! program) is the guest: as a single-binary image it runs itself with the exec's argv; from its
//! OCI image, exec finds applets by name in `/bin`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use wasmpod_runtime::error::ErrorKind;
use wasmpod_runtime::exec::{StreamIo, EXEC_OUTPUT_CAP, NOT_FOUND_CODE, NOT_RUNNABLE_CODE};
use wasmpod_runtime::exit::{ExitReason, KILLED_CODE};
use wasmpod_runtime::runtime::Runtime;
use wasmpod_runtime::spec::{ContainerConfig, Medium};
use wasmpod_tests::images::{layout_tar, Image};
use wasmpod_tests::*;

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// The toolbox as a single-binary image running `command` (argv[0] picks the applet).
fn toolbox(name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        command: words(command),
        ..container(name, &wasm("toolbox.p1"), &[])
    }
}

/// Starts `config` in a new pod; returns the container id once it runs.
async fn running(rt: &Arc<Runtime>, config: ContainerConfig) -> String {
    let mut p = pod("exec");
    p.volumes.push(empty_dir("data", Medium::Disk, None));
    let pod_id = rt.run_pod(p).unwrap();
    let id = rt.create_container(&pod_id, config).await.unwrap();
    rt.start_container(&id).unwrap();
    id
}

/// Imports `image` (an OCI layout written under `dir`) into `rt`'s store; returns its id.
async fn import(rt: &Runtime, dir: &std::path::Path, image: Image) -> String {
    let layout = image.write_layout(&dir.join("layout"));
    let archive = layout_tar(&layout, &dir.join("image.tar"));
    let mut records = rt.images().import(&archive, None).await.unwrap();
    records.remove(0).id
}

async fn exec(rt: &Runtime, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let out = rt
        .exec_sync(id, &words(cmd), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_gives_exact_output_and_exit_codes() {
    let (_tmp, rt) = temp_runtime();
    let id = running(&rt, toolbox("t", &["pause"])).await;
    assert_eq!(
        exec(&rt, &id, &["echo", "-n", "hello"]).await,
        (0, "hello".into(), String::new())
    );
    assert_eq!(
        exec(&rt, &id, &["sh", "-c", "echo out; echo err >&2; exit 7"]).await,
        (7, "out\n".into(), "err\n".into())
    );
    assert_eq!(exec(&rt, &id, &["false"]).await.0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_shares_the_containers_volumes_env_and_hostname() {
    let (_tmp, rt) = temp_runtime();
    let mut config = toolbox(
        "t",
        &["sh", "-c", "echo from-container > /data/shared; pause"],
    );
    config.env.push(("GREETING".into(), "hi".into()));
    config.mounts.push(mount("data", None, "/data", false));
    let id = running(&rt, config).await;
    for _ in 0..500 {
        if exec(&rt, &id, &["test", "-f", "/data/shared"]).await.0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, out, _) = exec(
        &rt,
        &id,
        &[
            "sh",
            "-c",
            "cat /data/shared; echo $GREETING; echo $HOSTNAME",
        ],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "from-container\nhi\nexec\n"));
    // What an exec writes, the container sees.
    assert_eq!(
        exec(&rt, &id, &["sh", "-c", "echo from-exec > /data/back"])
            .await
            .0,
        0
    );
    assert_eq!(
        exec(&rt, &id, &["cat", "/data/back"]).await.1,
        "from-exec\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_finds_applets_in_the_image_files_and_says_127_or_126_otherwise() {
    let (tmp, rt) = temp_runtime();
    let image = import(
        &rt,
        tmp.path(),
        Image::toolbox().file("bin/script", b"#!/bin/sh\necho not wasm\n"),
    )
    .await;
    let id = running(
        &rt,
        ContainerConfig {
            name: "t".into(),
            image: image.clone(),
            command: words(&["/bin/pause"]),
            ..Default::default()
        },
    )
    .await;
    // Found on PATH (a link to the multi-call module; argv[0] keeps the typed name) or by path.
    assert_eq!(exec(&rt, &id, &["echo", "found"]).await.1, "found\n");
    assert_eq!(
        exec(&rt, &id, &["/bin/echo", "by path"]).await.1,
        "by path\n"
    );
    let (code, _, err) = exec(&rt, &id, &["no-such-tool"]).await;
    assert_eq!(code, NOT_FOUND_CODE);
    assert!(err.contains("executable file not found in $PATH"), "{err}");
    let (code, _, err) = exec(&rt, &id, &["/bin/missing"]).await;
    assert_eq!(code, NOT_FOUND_CODE);
    assert!(err.contains("no such file or directory"), "{err}");
    let (code, _, err) = exec(&rt, &id, &["script"]).await;
    assert_eq!(code, NOT_RUNNABLE_CODE);
    assert!(err.contains("exec format error"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_on_a_container_that_is_not_running_is_a_failed_precondition() {
    let (_tmp, rt) = temp_runtime();
    let pod_id = rt.run_pod(pod("exec")).unwrap();
    let id = rt
        .create_container(&pod_id, toolbox("t", &["true"]))
        .await
        .unwrap();
    let created = rt
        .exec_sync(&id, &words(&["echo"]), None)
        .await
        .unwrap_err();
    assert_eq!(created.kind, ErrorKind::FailedPrecondition, "{created:?}");
    rt.start_container(&id).unwrap();
    rt.wait_container(&id).await.unwrap();
    let exited = rt
        .exec_sync(&id, &words(&["echo"]), None)
        .await
        .unwrap_err();
    assert_eq!(exited.kind, ErrorKind::FailedPrecondition, "{exited:?}");
    let gone = rt
        .exec_sync("nope", &words(&["echo"]), None)
        .await
        .unwrap_err();
    assert_eq!(gone.kind, ErrorKind::NotFound, "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_exec_and_answers_deadline_exceeded() {
    let (_tmp, rt) = temp_runtime();
    let id = running(&rt, toolbox("t", &["pause"])).await;
    let e = rt
        .exec_sync(
            &id,
            &words(&["sleep", "1000"]),
            Some(Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::DeadlineExceeded, "{e:?}");
    // The container is untouched.
    assert_eq!(exec(&rt, &id, &["echo", "still"]).await.1, "still\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_container_ends_its_execs() {
    let (_tmp, rt) = temp_runtime();
    let id = running(&rt, toolbox("t", &["pause"])).await;
    let (tx, mut rx) = mpsc::channel(4);
    let io = StreamIo {
        stdout: Some(tx),
        ..Default::default()
    };
    let rt2 = rt.clone();
    let id2 = id.clone();
    let exec = tokio::spawn(async move {
        rt2.exec_streams(
            &id2,
            &words(&["sh", "-c", "echo started; sleep 1000"]),
            false,
            io,
        )
        .await
    });
    assert_eq!(rx.recv().await.unwrap(), &b"started\n"[..]);
    rt.stop_container(&id, Duration::from_secs(30))
        .await
        .unwrap();
    let exit = exec.await.unwrap().unwrap();
    assert_eq!((exit.code, exit.reason), (KILLED_CODE, ExitReason::Killed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_output_is_capped_and_the_cap_is_said() {
    let (_tmp, rt) = temp_runtime();
    let id = running(&rt, toolbox("t", &["pause"])).await;
    let out = rt
        .exec_sync(
            &id,
            &words(&["dd", "if=/dev/zero", "bs=1048576", "count=17"]),
            Some(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout.len(), EXEC_OUTPUT_CAP);
    let err = String::from_utf8_lossy(&out.stderr);
    let dropped = 17 * 1048576 - EXEC_OUTPUT_CAP;
    assert!(
        err.contains(&format!("{dropped} bytes of stdout dropped")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_reads_its_stdin_to_eof() {
    let (_tmp, rt) = temp_runtime();
    let id = running(&rt, toolbox("t", &["pause"])).await;
    let (in_tx, in_rx) = mpsc::channel(4);
    let (out_tx, mut out_rx) = mpsc::channel(4);
    let io = StreamIo {
        stdin: Some(in_rx),
        stdout: Some(out_tx),
        stderr: None,
    };
    let rt2 = rt.clone();
    let exec = tokio::spawn(async move { rt2.exec_streams(&id, &words(&["cat"]), true, io).await });
    in_tx.send(b"line one\n"[..].into()).await.unwrap();
    assert_eq!(out_rx.recv().await.unwrap(), &b"line one\n"[..]);
    in_tx.send(b"two"[..].into()).await.unwrap();
    drop(in_tx);
    assert_eq!(out_rx.recv().await.unwrap(), &b"two"[..]);
    assert_eq!(exec.await.unwrap().unwrap().code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_feeds_a_shell_and_stdin_once_ends_it() {
    let (_tmp, rt) = temp_runtime();
    let id = running(
        &rt,
        ContainerConfig {
            stdin: true,
            stdin_once: true,
            ..toolbox("t", &["sh"])
        },
    )
    .await;
    let (in_tx, in_rx) = mpsc::channel(4);
    let (out_tx, mut out_rx) = mpsc::channel(16);
    let (err_tx, _err_rx) = mpsc::channel(16);
    let io = StreamIo {
        stdin: Some(in_rx),
        stdout: Some(out_tx),
        stderr: Some(err_tx),
    };
    let rt2 = rt.clone();
    let id2 = id.clone();
    let attach = tokio::spawn(async move { rt2.attach(&id2, io).await });
    in_tx.send(b"echo -n hello\n"[..].into()).await.unwrap();
    assert_eq!(out_rx.recv().await.unwrap(), &b"hello"[..]);
    // A second attacher without stdin sees the same output.
    let (watch_tx, mut watch_rx) = mpsc::channel(16);
    let watcher = {
        let rt = rt.clone();
        let id = id.clone();
        tokio::spawn(async move {
            rt.attach(
                &id,
                StreamIo {
                    stdout: Some(watch_tx),
                    ..Default::default()
                },
            )
            .await
        })
    };
    // Attaching takes a moment to subscribe: repeat until the watcher has seen a line.
    let mut seen = false;
    for i in 0..100 {
        in_tx
            .send(format!("echo round {i}\n").into())
            .await
            .unwrap();
        let mine = out_rx.recv().await.unwrap();
        assert_eq!(mine, format!("round {i}\n").as_bytes());
        if let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_millis(50), watch_rx.recv()).await
        {
            assert!(line.starts_with(b"round "), "{line:?}");
            seen = true;
            break;
        }
    }
    assert!(seen, "the second attacher saw nothing");
    drop(in_tx);
    attach.await.unwrap().unwrap();
    watcher.await.unwrap().unwrap();
    assert_eq!(rt.wait_container(&id).await.unwrap().code, 0);
    // With stdin closed for good, attaching with stdin again is refused: the guest has ended.
    let again = rt
        .attach(
            &id,
            StreamIo {
                stdin: Some(mpsc::channel(1).1),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(again.kind, ErrorKind::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_with_stdin_needs_a_container_created_with_stdin() {
    let (_tmp, rt) = temp_runtime();
    let id = running(&rt, toolbox("t", &["pause"])).await;
    let e = rt
        .attach(
            &id,
            StreamIo {
                stdin: Some(mpsc::channel(1).1),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition);
    assert!(e.message.contains("not created with stdin"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview1_exit_statuses_up_to_255_are_exact() {
    let (_tmp, rt) = temp_runtime();
    let id = running(&rt, toolbox("t", &["pause"])).await;
    for code in [126, 127, 200, 255] {
        let (got, _, err) = exec(&rt, &id, &["sh", "-c", &format!("exit {code}")]).await;
        assert_eq!(got, code, "{err}");
    }
    let (got, _, err) = exec(&rt, &id, &["sh", "-c", "no-such-command"]).await;
    assert_eq!(got, NOT_FOUND_CODE);
    assert_eq!(err, "sh: no-such-command: not found\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_handler_is_not_a_command_to_exec() {
    let (_tmp, rt) = temp_runtime();
    let id = running(&rt, container("web", &wasm("http-hello.p2"), &[])).await;
    let (code, _, err) = exec(&rt, &id, &["http-hello", "x"]).await;
    assert_eq!(code, NOT_RUNNABLE_CODE);
    assert!(err.contains("wasi:http handler, not a command"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_see_the_pods_hostname_and_resolv_conf_in_etc() {
    let (_tmp, rt) = temp_runtime();
    let mut p = pod("dns-pod");
    p.dns.servers = vec!["10.10.10.10".into()];
    p.dns.searches = vec!["google.com".into()];
    p.dns.options = vec!["ndots:8".into()];
    let pod_id = rt.run_pod(p).unwrap();
    let id = rt
        .create_container(&pod_id, toolbox("t", &["pause"]))
        .await
        .unwrap();
    rt.start_container(&id).unwrap();
    assert_eq!(
        exec(&rt, &id, &["cat", "/etc/resolv.conf"]).await,
        (
            0,
            "search google.com\nnameserver 10.10.10.10\noptions ndots:8\n".into(),
            String::new()
        )
    );
    assert_eq!(
        exec(&rt, &id, &["cat", "/etc/hostname"]).await.1,
        "dns-pod\n"
    );
    assert_eq!(exec(&rt, &id, &["hostname"]).await.1, "dns-pod\n");
    // Read-only: a guest cannot change what its neighbours see.
    assert_ne!(
        exec(&rt, &id, &["sh", "-c", "echo x > /etc/hostname"])
            .await
            .0,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writable_etc_hosts_mount_goes_with_the_pods_etc_files() {
    // kubelet mounts its /etc/hosts writable: the pod's own /etc files must not make the
    // container's /etc a mix of read-only and writable files, which wasmpod refuses.
    let (tmp, rt) = temp_runtime();
    let hosts = tmp.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let mut p = pod("hosts");
    p.volumes.push(host_path(
        "hosts",
        &hosts,
        wasmpod_runtime::spec::HostPathKind::File,
    ));
    p.dns.servers = vec!["10.0.0.10".into()];
    let pod_id = rt.run_pod(p).unwrap();
    let mut config = toolbox("t", &["pause"]);
    config
        .mounts
        .push(mount("hosts", None, "/etc/hosts", false));
    let id = rt.create_container(&pod_id, config).await.unwrap();
    rt.start_container(&id).unwrap();
    assert_eq!(
        exec(&rt, &id, &["ls", "/etc"]).await.1,
        "hostname\nhosts\nresolv.conf\n"
    );
    assert_eq!(
        exec(&rt, &id, &["cat", "/etc/hosts"]).await.1,
        "127.0.0.1 localhost\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writable_root_is_a_private_copy_and_a_read_only_one_says_erofs() {
    let (tmp, rt) = temp_runtime();
    let image = import(&rt, tmp.path(), Image::toolbox()).await;
    let config = |name: &str, writable_rootfs| ContainerConfig {
        name: name.into(),
        image: image.clone(),
        command: words(&["/bin/pause"]),
        writable_rootfs,
        ..Default::default()
    };
    let a = running(&rt, config("a", true)).await;
    let b = running(&rt, config("b", true)).await;
    let ro = running(&rt, config("ro", false)).await;
    // critest's ReadOnlyRootfs specs, as they run them.
    let script = "touch test.go && [ -f test.go ] && echo Found";
    assert_eq!(exec(&rt, &a, &["sh", "-c", script]).await.1, "Found\n");
    assert_eq!(
        exec(&rt, &ro, &["sh", "-c", script]).await,
        (
            1,
            String::new(),
            "touch: test.go: Read-only file system\n".into()
        )
    );
    // Each container writes its own copy: the image and the neighbour are untouched.
    assert_eq!(exec(&rt, &a, &["rm", "/bin/cat"]).await.0, 0);
    assert_eq!(exec(&rt, &a, &["cat", "/test.go"]).await.0, NOT_FOUND_CODE);
    assert_eq!(
        exec(&rt, &b, &["cat", "/test.go"]).await.2,
        "cat: can't open '/test.go': No such file or directory\n"
    );
    assert_eq!(exec(&rt, &ro, &["ls", "/bin/cat"]).await.1, "/bin/cat\n");
    // A single-binary image gets an empty writable root.
    let single = running(
        &rt,
        ContainerConfig {
            writable_rootfs: true,
            ..toolbox("s", &["pause"])
        },
    )
    .await;
    assert_eq!(
        exec(&rt, &single, &["sh", "-c", "echo hi > /x; cat /x; ls /"])
            .await
            .1,
        "hi\nx\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_paths_of_a_writable_root_refuse_writes() {
    let (tmp, rt) = temp_runtime();
    let image = import(&rt, tmp.path(), Image::toolbox()).await;
    let id = running(
        &rt,
        ContainerConfig {
            name: "t".into(),
            image,
            command: words(&["/bin/pause"]),
            writable_rootfs: true,
            // kubelet's defaults name /proc paths a Wasm root does not have: ignored.
            readonly_paths: words(&["/tmp/", "/proc/sys", "/../etc"]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        exec(&rt, &id, &["touch", "/tmp/test"]).await,
        (
            1,
            String::new(),
            "touch: /tmp/test: Read-only file system\n".into()
        )
    );
    assert_eq!(exec(&rt, &id, &["touch", "/elsewhere"]).await.0, 0);
}
