//! The CLI beside a running `wasmpod serve` on the same state directory: every command works
//! while the daemon holds it, and what the CLI changes the daemon sees at once.

use std::process::Command;

use k8s_cri::v1 as cri;
use wasmpod_tests::cri::{self as harness, container_config, Daemon, Registry};
use wasmpod_tests::{example, output_within, require_guests, text, wasm, wasmpod};

/// Runs a CLI command to completion and returns its stdout; fails the test if it fails.
fn ok(cmd: &mut Command) -> String {
    let out = output_within(cmd, 120);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The daemon's record for `image`, over the CRI.
async fn daemon_image(d: &Daemon, image: &str) -> Option<cri::Image> {
    harness::image_client(d)
        .await
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_commands_go_through_the_running_daemon() {
    require_guests();
    let d = Daemon::start().await;
    let state = d.dir.path().join("state");
    let name = "docker.io/local/hello:1";

    let imported = ok(wasmpod(&state)
        .args(["image", "import", "--tag", "local/hello:1"])
        .arg(wasm("hello.p1")));
    assert!(imported.contains(name), "{imported}");
    let table = ok(wasmpod(&state).args(["image", "ls"]));
    assert!(
        table.contains(name) && table.contains("IMAGE ID"),
        "{table}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(wasmpod(&state).args(["image", "ls", "-o", "json"]))).unwrap();
    assert_eq!(listed[0]["repo_tags"][0], name, "{listed}");
    let inspected: serde_json::Value =
        serde_json::from_str(&ok(wasmpod(&state).args(["image", "inspect", name]))).unwrap();
    assert_eq!(inspected["image"]["repo_tags"][0], name, "{inspected}");
    assert!(inspected["manifest"].is_object(), "{inspected}");

    // The next CreateContainer finds the image the CLI imported.
    let mut rt = d.runtime().await;
    let pod = harness::new_pod(&d, &mut rt, "from-cli").await;
    let id = pod
        .create(&mut rt, container_config("hello", name, &["via", "cli"]))
        .await
        .unwrap();
    harness::start(&mut rt, &id).await;
    let st = harness::wait_exited(&mut rt, &id).await;
    assert_eq!(st.exit_code, 0, "{st:?}");

    // Export streams out of the daemon; importing it again under another name round-trips.
    let archive = d.dir.path().join("hello-oci.tar");
    ok(wasmpod(&state)
        .args(["image", "export", name])
        .arg(&archive));
    assert!(std::fs::metadata(&archive).unwrap().len() > 0);
    let again = ok(wasmpod(&state)
        .args(["image", "import", "--tag", "local/again:1"])
        .arg(&archive));
    assert!(again.contains("docker.io/local/again:1"), "{again}");
    assert!(daemon_image(&d, "local/again:1").await.is_some());

    // A pull through the daemon lands in the daemon's store.
    let registry = Registry::start(d.dir.path()).await;
    let pushed = registry.push_wasm(&wasm("hello.p2"), "cli/pulled:1", d.dir.path());
    let digest = ok(wasmpod(&state).args(["image", "pull", &pushed]));
    assert!(digest.trim().contains("@sha256:"), "{digest}");
    assert!(daemon_image(&d, &pushed).await.is_some());

    // rm removes from the daemon's store; an unknown name is an error, as without a daemon.
    let removed = ok(wasmpod(&state).args(["image", "rm", name, &pushed]));
    assert!(removed.contains(&format!("removed {name}")), "{removed}");
    assert!(daemon_image(&d, name).await.is_none());
    assert!(daemon_image(&d, &pushed).await.is_none());
    let missing = output_within(wasmpod(&state).args(["image", "rm", name]), 60);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("not found"),
        "{}",
        text(&missing.stderr)
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_works_beside_the_daemon_in_a_state_of_its_own() {
    require_guests();
    let d = Daemon::start().await;
    let state = d.dir.path().join("state");
    let out = output_within(
        wasmpod(&state).arg("run").arg(example("hello/pod.yaml")),
        120,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{}{stderr}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("hello from the preview 1 module"),
        "{}",
        text(&out.stdout)
    );
    let pid = d.pid().unwrap();
    assert!(
        stderr.contains(&format!("wasmpod serve, pid {pid}")),
        "the notice names the daemon: {stderr}"
    );
    // The run's own state is gone; the daemon still answers.
    let runs = state.join("runs");
    assert!(
        std::fs::read_dir(&runs).map_or(true, |mut r| r.next().is_none()),
        "left behind in {}",
        runs.display()
    );
    let mut rt = d.runtime().await;
    rt.version(cri::VersionRequest::default()).await.unwrap();
    d.stop();
}

#[test]
fn image_commands_have_help() {
    let help = |args: &[&str]| {
        let out = output_within(Command::new(wasmpod_tests::wasmpod_bin()).args(args), 60);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let top = help(&["image", "--help"]);
    for sub in ["pull", "import", "export", "ls", "inspect", "rm"] {
        assert!(
            top.contains(sub),
            "`wasmpod image --help` lists {sub}: {top}"
        );
        let text = help(&["image", sub, "--help"]);
        assert!(
            text.contains("Example") && text.contains(&format!("wasmpod image {sub}")),
            "`wasmpod image {sub} --help` explains with an example: {text}"
        );
        assert!(text.lines().count() >= 8, "{text}");
    }
    assert!(
        top.contains("Example") && top.contains("wasmpod serve"),
        "{top}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_does_not_answer_is_named_in_the_error() {
    let d = Daemon::start().await;
    let state = d.dir.path().join("state");
    // The daemon's record now points at a socket nobody listens on, as for a daemon that has
    // stopped answering: the CLI cannot go through it and must say who holds the directory.
    let gone = d.dir.path().join("gone.sock");
    let pid = d.pid().unwrap();
    std::fs::write(
        state.join("serve.json"),
        serde_json::json!({"pid": pid, "socket": gone}).to_string(),
    )
    .unwrap();
    let out = output_within(wasmpod(&state).args(["image", "ls"]), 60);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "wasmpod serve, pid {pid}, socket {}",
            gone.display()
        )) && stderr.contains("--state-dir"),
        "{stderr}"
    );
    d.stop();
}
