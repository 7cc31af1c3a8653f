//! The toolbox and its image end to end: the OCI layout built by `images.rs` is reproducible,
//! `wasmpod image import` takes it (the entrypoint `/bin/sh` read through its relative link),
//! and containers of the image run the applets with exact exit codes; the preview2 build
//! serves HTTP at the pod IP.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wasmpod_runtime::container::ContainerState;
use wasmpod_runtime::exit::ExitReason;
use wasmpod_runtime::runtime::Runtime;
use wasmpod_runtime::spec::{ContainerConfig, HostPathKind};
use wasmpod_tests::images::{layout_tar, toolbox_layout, Image};
use wasmpod_tests::*;

const IMAGE: &str = "toolbox:test";

/// A container of the toolbox image running `command`.
fn toolbox(command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        name: "toolbox".into(),
        image: IMAGE.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn run(rt: &Arc<Runtime>, config: ContainerConfig) -> Ran {
    run_container(rt, pod("toolbox"), config)
        .await
        .expect("running the toolbox image")
}

/// Runs `command` in the toolbox image: (exit code, stdout, stderr).
async fn sh(rt: &Arc<Runtime>, command: &[&str]) -> (i32, String, String) {
    let ran = run(rt, toolbox(command)).await;
    (ran.exit.code, ran.stdout(), ran.stderr())
}

#[test]
fn the_layout_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let a = toolbox_layout(&tmp.path().join("a"));
    let b = toolbox_layout(&tmp.path().join("b"));
    let files = |dir: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = ["index.json", "oci-layout"]
            .iter()
            .map(|n| (n.to_string(), std::fs::read(dir.join(n)).unwrap()))
            .collect();
        for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            v.push((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            ));
        }
        v.sort();
        v
    };
    assert_eq!(files(&a), files(&b));
    assert_eq!(
        files(&a).len(),
        5,
        "index, oci-layout, manifest, config, layer"
    );
    let ta = layout_tar(&a, &tmp.path().join("a.tar"));
    let tb = layout_tar(&b, &tmp.path().join("b.tar"));
    assert_eq!(std::fs::read(ta).unwrap(), std::fs::read(tb).unwrap());
    // Every applet is a relative link to the toolbox.
    let tar = Image::toolbox().layer_tar();
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut links = 0;
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        if e.header().entry_type() == tar::EntryType::Symlink {
            assert_eq!(e.link_name().unwrap().unwrap(), Path::new("toolbox"));
            links += 1;
        }
    }
    assert_eq!(links, wasmpod_toolbox::applets::NAMES.len());
}

#[tokio::test]
async fn the_image_imports_and_runs_the_applets() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let layout = toolbox_layout(&tmp.path().join("layout"));
    let archive = layout_tar(&layout, &tmp.path().join("toolbox-oci.tar"));
    let out = output_within(
        wasmpod(&state)
            .args(["image", "import"])
            .arg(&archive)
            .args(["--tag", IMAGE]),
        300,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("toolbox:test"),
        "{}",
        text(&out.stdout)
    );

    let rt = runtime(&state);
    // The image's own entrypoint, /bin/sh, reads its (empty) stdin and ends.
    assert_eq!(sh(&rt, &[]).await, (0, String::new(), String::new()));
    let script = "echo a; false || echo b; for i in 1 2; do echo $i; done | wc -l";
    assert_eq!(
        sh(&rt, &["sh", "-c", script]).await,
        (0, "a\nb\n2\n".into(), String::new())
    );
    // (The log ends an unfinished last line as a full one, so count the bytes instead.)
    assert_eq!(
        sh(&rt, &["sh", "-c", "echo -n hello | wc -c"]).await.1,
        "5\n"
    );
    for (command, code) in [
        (&["true"][..], 0),
        (&["false"][..], 1),
        (&["sh", "-c", "exit 3"][..], 3),
        (&["sh", "-c", "exit 125"][..], 125),
        (&["pgrep", "sleep"][..], 1),
        (&["test", "-d", "/bin"][..], 0),
        (&["[", "-f", "/bin/nosuch", "]"][..], 1),
        (&["sleep", "0.2"][..], 0),
    ] {
        assert_eq!(sh(&rt, command).await.0, code, "{command:?}");
    }
    // 127 inside the shell and as the guest's exit (wasmpod's preview1 `proc_exit` takes any
    // status up to 255; wasmtime-wasi's own traps from 126 on).
    assert_eq!(
        sh(&rt, &["sh", "-c", "nosuch; echo $?"]).await,
        (0, "127\n".into(), "sh: nosuch: not found\n".into())
    );
    let (code, _, err) = sh(&rt, &["sh", "-c", "nosuch"]).await;
    assert_eq!(code, 127);
    assert_eq!(err, "sh: nosuch: not found\n");
    let (code, _, err) = sh(&rt, &["sh", "-c", "if true; then"]).await;
    assert_eq!(code, 2);
    assert!(err.starts_with("sh: syntax error: "), "{err}");
    // The image's files, links included.
    let (code, out, err) = sh(&rt, &["ls", "-A", "/bin"]).await;
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.lines().any(|l| l == "sh") && out.lines().any(|l| l == "toolbox"),
        "{out}"
    );
    assert_eq!(sh(&rt, &["hostname"]).await.1, "toolbox\n");
    assert_eq!(
        sh(&rt, &["sh", "-c", "echo $PATH; pwd"]).await.1,
        "/usr/local/bin:/usr/bin:/bin\n/\n"
    );
    // stdin is empty: cat ends at once, read fails.
    assert_eq!(sh(&rt, &["cat"]).await, (0, String::new(), String::new()));
    assert_eq!(sh(&rt, &["sh", "-c", "read x; echo $?"]).await.1, "1\n");
    // The image's root is read-only, and says so as the kernel does.
    let (code, _, err) = sh(&rt, &["touch", "/bin/new"]).await;
    assert_eq!(
        (code, err.as_str()),
        (1, "touch: /bin/new: Read-only file system\n")
    );
    let (code, _, err) = sh(&rt, &["mkdir", "/bin/d"]).await;
    assert_eq!(code, 1);
    assert!(err.ends_with(": Read-only file system\n"), "{err}");
    let (code, _, err) = sh(&rt, &["rm", "/bin/echo"]).await;
    assert_eq!(code, 1);
    assert!(err.ends_with(": Read-only file system\n"), "{err}");

    // A file of a volume.
    let host = tmp.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("f"), "from the host\n").unwrap();
    let mut p = pod("toolbox");
    p.volumes = vec![host_path("data", &host, HostPathKind::Directory)];
    let mut c = toolbox(&[
        "sh",
        "-c",
        "cat /data/f; cat /data/nosuch; echo made > /data/out; wc -l < /data/f",
    ]);
    c.mounts = vec![mount("data", None, "/data", false)];
    let ran = run_container(&rt, p, c).await.unwrap();
    assert_eq!(ran.exit.code, 0, "{:?}", ran.exit);
    assert_eq!(ran.stdout(), "from the host\n1\n");
    assert_eq!(
        ran.stderr(),
        "cat: can't open '/data/nosuch': No such file or directory\n"
    );
    assert_eq!(std::fs::read_to_string(host.join("out")).unwrap(), "made\n");

    // dd's block is allocated whole: 20 MiB under a 15 MiB limit is an OOM kill.
    let mut c = toolbox(&["sh", "-c", "dd if=/dev/zero of=/dev/null bs=20M"]);
    c.memory_limit = Some(15 << 20);
    let ran = run(&rt, c).await;
    assert_exit(&ran.exit, 137, ExitReason::OomKilled);
    let (code, _, err) = sh(
        &rt,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=3"],
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        err.starts_with("3+0 records in\n3+0 records out\n"),
        "{err}"
    );
}

#[tokio::test]
async fn a_shell_loop_logs_as_it_goes() {
    let (_tmp, rt) = temp_runtime();
    let c = container("loop", &wasm("toolbox.p1"), &[]);
    let c = ContainerConfig {
        command: ["sh", "-c", "while true; do echo hello World; sleep 1; done"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..c
    };
    let id = start_in_new_pod(&rt, "loop", c).await;
    let path = rt.container(&id).unwrap().log_path.clone().unwrap();
    within(30, "three lines of the loop in its log", async {
        loop {
            let lines = read_log(&path);
            if lines.len() >= 3 {
                assert!(lines
                    .iter()
                    .all(|r| r.text == "hello World" && r.stream == "stdout"));
                break;
            }
            assert!(matches!(
                rt.container(&id).unwrap().state(),
                ContainerState::Running { .. }
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    rt.stop_container(&id, Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_preview2_build_serves_http() {
    let (_tmp, rt) = temp_runtime();
    let pod_id = rt.run_pod(pod("web")).unwrap();
    let ip = rt.pod(&pod_id).unwrap().ip().expect("the pod has an IP");
    let mut c = container("web", &wasm("toolbox.p2"), &[]);
    c.command = vec!["httpd".into(), "-p".into(), "8080".into()];
    let id = rt.create_container(&pod_id, c).await.unwrap();
    rt.start_container(&id).unwrap();
    let path = rt.container(&id).unwrap().log_path.clone().unwrap();
    within(30, "httpd's start-up line", async {
        while !read_log(&path)
            .iter()
            .any(|r| r.text.starts_with("httpd: listening on"))
        {
            assert!(
                matches!(
                    rt.container(&id).unwrap().state(),
                    ContainerState::Running { .. } | ContainerState::Created
                ),
                "{:?}",
                read_log(&path)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let (code, body) = curl(&format!("http://{ip}:8080/")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("It works!"), "{body}");
    let (code, _) = curl(&format!("http://{ip}:8080/nope")).await;
    assert_eq!(code, 404);
    rt.stop_container(&id, Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn deep_scripts_end_cleanly_in_wasm() {
    // As deep as the shell allows, then deeper: an error, never a stack overflow (a trap).
    let (_tmp, rt) = temp_runtime();
    let toolbox = wasm("toolbox.p1");
    let nested_ifs = format!(
        "{}echo deep{}",
        "if true; then ".repeat(40),
        "; fi".repeat(40)
    );
    let nested_subst = format!("echo {}x{}", "$(echo ".repeat(20), ")".repeat(20));
    let nested_arith = format!("echo $(({}1{}))", "(".repeat(20), ")".repeat(20));
    let cases: [(&str, i32, &str); 5] = [
        (&nested_ifs, 0, "deep\n"),
        (&nested_subst, 0, "x\n"),
        ("f() { f; }; f", 2, ""),
        ("x='eval \"$x\"'; eval \"$x\"", 2, ""),
        (&nested_arith, 0, "1\n"),
    ];
    for (script, code, out) in cases {
        let mut c = container("deep", &toolbox, &[]);
        c.command = vec!["sh".into(), "-c".into(), script.into()];
        let ran = run_container(&rt, pod("deep"), c).await.unwrap();
        assert_eq!(
            (ran.exit.code, ran.stdout().as_str()),
            (code, out),
            "{script}: {}",
            ran.stderr()
        );
    }
    // Functions whose bodies nest: bounded as a whole, not only per construct.
    let deep = format!(
        "f() {{ {}f{}; }}; f",
        "if true; then ".repeat(40),
        "; fi".repeat(40)
    );
    let mut c = container("deep", &toolbox, &[]);
    c.command = vec!["sh".into(), "-c".into(), deep];
    let ran = run_container(&rt, pod("deep"), c).await.unwrap();
    assert_eq!(
        (ran.exit.code, ran.stderr().as_str()),
        (2, "sh: too deeply nested\n")
    );
    let too_deep = format!(
        "{}echo deep{}",
        "if true; then ".repeat(400),
        "; fi".repeat(400)
    );
    let mut c = container("deep", &toolbox, &[]);
    c.command = vec!["sh".into(), "-c".into(), too_deep];
    let ran = run_container(&rt, pod("deep"), c).await.unwrap();
    assert_eq!(ran.exit.code, 2);
    assert_eq!(ran.stderr(), "sh: syntax error: too deeply nested\n");
}
