//! The local runner (`runner::run_pod`): restartPolicy with back-off, init containers in
//! order, a failing init container, and the pod's exit code.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use wasmpod_runtime::exit::ExitReason;
use wasmpod_runtime::manifest::PodManifest;
use wasmpod_runtime::runner::{self, PodReport, RunnerOptions};
use wasmpod_tests::*;

/// Events the runner reported, and a count of "restarting" ones to wait on.
struct Events {
    all: Arc<Mutex<Vec<(String, String)>>>,
    restarts: watch::Receiver<usize>,
}

fn options() -> (RunnerOptions, Events) {
    let all = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = watch::channel(0usize);
    let sink = all.clone();
    let opts = RunnerOptions {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        volume_check: Duration::from_millis(50),
        on_event: Arc::new(move |name: &str, msg: &str| {
            sink.lock().unwrap().push((name.to_owned(), msg.to_owned()));
            if msg.contains("restarting") {
                tx.send_modify(|n| *n += 1);
            }
        }),
        ..RunnerOptions::default()
    };
    (opts, Events { all, restarts: rx })
}

fn manifest(yaml: &str, logs: &Path) -> PodManifest {
    let mut m = PodManifest::parse(yaml, &example("wasm")).unwrap();
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    m.pod.log_directory = Some(logs.to_path_buf());
    m
}

/// One test's setup: a log directory for the pod, fast back-off options, and the events the
/// runner reports through them.
struct Harness {
    logs: tempfile::TempDir,
    opts: RunnerOptions,
    events: Events,
}

impl Harness {
    fn new() -> Self {
        let (opts, events) = options();
        Self {
            logs: tempfile::tempdir().unwrap(),
            opts,
            events,
        }
    }

    /// The records of `<log dir>/<rel>` (`<name>/<attempt>.log`).
    fn log(&self, rel: &str) -> Vec<LogRecord> {
        read_log(&self.logs.path().join(rel))
    }

    /// A shutdown signal that fires once the runner has reported `n` restarts.
    fn after_restarts(&self, n: usize) -> impl std::future::Future<Output = ()> {
        let mut restarts = self.events.restarts.clone();
        async move {
            restarts.wait_for(|count| *count >= n).await.unwrap();
        }
    }

    /// Runs the pod in a fresh runtime until `shutdown` or until it ends by itself.
    async fn run(&self, yaml: &str, shutdown: impl std::future::Future<Output = ()>) -> PodReport {
        let state = tempfile::tempdir().unwrap();
        let rt = runtime(state.path());
        within(
            60,
            "the pod to finish",
            runner::run_pod(&rt, manifest(yaml, self.logs.path()), shutdown, &self.opts),
        )
        .await
        .unwrap()
    }

    /// Runs the pod until all its containers are done (no shutdown).
    async fn run_to_end(&self, yaml: &str) -> PodReport {
        self.run(yaml, std::future::pending()).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_restarts_a_failing_container_until_shutdown() {
    let h = Harness::new();
    let shutdown = h.after_restarts(3);
    let report = h
        .run(
            &pod_yaml(
                "crashy",
                "OnFailure",
                r#"
  containers:
    - {name: fail, image: exit-code.p1.wasm, args: ["4"]}
"#,
            ),
            shutdown,
        )
        .await;
    let c = &report.containers[0];
    assert!(
        c.restarts >= 2,
        "restarted at least twice: {c:?} {:?}",
        h.events.all
    );
    let exit = c.exit.as_ref().unwrap();
    assert_exit(exit, 4, ExitReason::Error);
    assert_eq!(report.exit_code(), 4);
    // Each attempt logs to its own file: <name>/<attempt>.log.
    for attempt in 0..=c.restarts.min(2) {
        let log = h.log(&format!("fail/{attempt}.log"));
        assert_eq!(
            stream_text(&log, "stdout"),
            "exiting with 4\n",
            "attempt {attempt}"
        );
    }
    let all = h.events.all.lock().unwrap();
    let restarting: Vec<_> = all
        .iter()
        .filter(|(_, m)| m.contains("restarting"))
        .collect();
    assert!(
        restarting
            .iter()
            .all(|(n, m)| n == "fail" && m.contains("exited with 4")),
        "{all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_does_not_restart_success() {
    let h = Harness::new();
    let report = h
        .run_to_end(&pod_yaml(
            "fine",
            "OnFailure",
            r#"
  containers:
    - {name: ok, image: exit-code.p2.wasm, args: ["0"]}
"#,
        ))
        .await;
    let c = &report.containers[0];
    assert_eq!(c.restarts, 0, "{:?}", h.events.all);
    assert_eq!(c.exit.as_ref().unwrap().reason, ExitReason::Completed);
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_restarts_even_a_successful_container() {
    let h = Harness::new();
    // The shutdown may land during the back-off after the 3rd exit: 2 restarts done by then.
    let shutdown = h.after_restarts(3);
    let report = h
        .run(
            &pod_yaml(
                "again",
                "Always",
                r#"
  containers:
    - {name: hello, image: hello.p1.wasm}
"#,
            ),
            shutdown,
        )
        .await;
    let c = &report.containers[0];
    assert!(c.restarts >= 2, "{c:?}");
    assert_eq!(c.exit.as_ref().unwrap().code, 0);
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_does_not_restart_and_reports_the_code() {
    let h = Harness::new();
    let report = h
        .run_to_end(&pod_yaml(
            "once",
            "Never",
            r#"
  containers:
    - {name: fail, image: exit-code.p1.wasm, args: ["5"]}
"#,
        ))
        .await;
    let c = &report.containers[0];
    assert_eq!(c.restarts, 0);
    let exit = c.exit.as_ref().unwrap();
    assert_exit(exit, 5, ExitReason::Error);
    assert_eq!(report.exit_code(), 5);
    assert_eq!(*h.events.restarts.borrow(), 0, "{:?}", h.events.all);
    assert!(!h.logs.path().join("fail/1.log").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_before_the_app() {
    let h = Harness::new();
    // init-a makes the file; init-b must see it (it reads before appending); the app must
    // see both, so it ran after both.
    let report = h
        .run_to_end(&pod_yaml(
            "inits",
            "Never",
            r#"
  volumes: [{name: data, emptyDir: {}}]
  initContainers:
    - name: init-a
      image: fsprobe.p1.wasm
      args: [write, /data/order, "a"]
      volumeMounts: [{name: data, mountPath: /data}]
    - name: init-b
      image: fsprobe.p2.wasm
      args: [read, /data/order, --, append, /data/order, "b"]
      volumeMounts: [{name: data, mountPath: /data}]
  containers:
    - name: app
      image: fsprobe.p1.wasm
      args: [read, /data/order]
      volumeMounts: [{name: data, mountPath: /data, readOnly: true}]
"#,
        ))
        .await;
    let names: Vec<_> = report
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.init))
        .collect();
    assert_eq!(names, [("init-a", true), ("init-b", true), ("app", false)]);
    for c in &report.containers {
        assert_eq!(c.exit.as_ref().unwrap().code, 0, "{c:?}");
    }
    let app = h.log("app/0.log");
    assert_eq!(stream_text(&app, "stdout"), "ab\n");
    let b = h.log("init-b/0.log");
    assert_eq!(stream_text(&b, "stdout"), "a\n");
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_init_container_with_never_stops_the_pod() {
    let h = Harness::new();
    let report = h
        .run_to_end(&pod_yaml(
            "badinit",
            "Never",
            r#"
  initContainers:
    - {name: first, image: exit-code.p1.wasm, args: ["9"]}
    - {name: second, image: hello.p1.wasm}
  containers:
    - {name: app, image: hello.p1.wasm}
    - {name: app2, image: hello.p2.wasm}
"#,
        ))
        .await;
    let first = &report.containers[0];
    assert_eq!(first.exit.as_ref().unwrap().code, 9);
    assert_eq!(first.restarts, 0);
    for c in &report.containers[1..] {
        assert!(c.exit.is_none(), "{} never ran: {c:?}", c.name);
        let log = h.log(&format!("{}/0.log", c.name));
        assert!(
            log.is_empty(),
            "{} logged nothing: it never ran: {log:?}",
            c.name
        );
    }
    assert_eq!(report.exit_code(), 9, "the failed init container's code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_init_container_with_on_failure_is_retried() {
    let h = Harness::new();
    let shutdown = h.after_restarts(2);
    let report = h
        .run(
            &pod_yaml(
                "retryinit",
                "OnFailure",
                r#"
  initContainers:
    - {name: init, image: exit-code.p1.wasm, args: ["2"]}
  containers:
    - {name: app, image: hello.p1.wasm}
"#,
            ),
            shutdown,
        )
        .await;
    assert!(report.containers[0].restarts >= 1, "{report:?}");
    assert!(report.containers[1].exit.is_none(), "{report:?}");
    assert_eq!(report.exit_code(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_exit_code_is_the_first_failure() {
    let h = Harness::new();
    // "late" fails after its 1 s timeout, "early" fails at once: the pod's code is early's,
    // although late comes first in the manifest.
    let report = h
        .run_to_end(&pod_yaml(
            "codes",
            "Never",
            r#"
  volumes: [{name: data, emptyDir: {}}]
  containers:
    - name: late
      image: reader.p1.wasm
      args: [/data/never-written, "1000"]
      volumeMounts: [{name: data, mountPath: /data}]
    - {name: fine, image: hello.p2.wasm}
    - {name: early, image: exit-code.p1.wasm, args: ["6"]}
"#,
        ))
        .await;
    let codes: Vec<_> = report
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.exit.as_ref().unwrap().code))
        .collect();
    assert_eq!(codes, [("late", 1), ("fine", 0), ("early", 6)]);
    assert_eq!(report.exit_code(), 6);

    // All succeed: 0.
    let report = h
        .run_to_end(&pod_yaml(
            "allgood",
            "Never",
            r#"
  containers:
    - {name: a, image: hello.p1.wasm}
    - {name: b, image: hello.p2.wasm}
    - {name: c, image: exit-code.p2.wasm, args: ["0"]}
"#,
        ))
        .await;
    assert_eq!(report.exit_code(), 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_the_grace_period_then_kills() {
    let h = Harness::new();
    let (tx, mut rx) = watch::channel(false);
    let state = tempfile::tempdir().unwrap();
    let rt = runtime(state.path());
    let mut live = rt.subscribe_logs();
    let m = manifest(
        &pod_yaml(
            "forever",
            "Always",
            r#"
  terminationGracePeriodSeconds: 0
  containers:
    - {name: ticker, image: forever.p1.wasm}
    - {name: spinner, image: forever.p2.wasm, args: ["--spin"]}
"#,
        ),
        h.logs.path(),
    );
    let shutdown = async move {
        rx.wait_for(|v| *v).await.unwrap();
    };
    let run = runner::run_pod(&rt, m, shutdown, &h.opts);
    let trigger = async {
        // Shut down once both guests have printed.
        let mut seen = std::collections::HashSet::new();
        while seen.len() < 2 {
            let line = live.recv().await.unwrap();
            seen.insert(line.container.to_string());
        }
        tx.send(true).unwrap();
    };
    let (report, ()) = within(60, "the pod to stop", async { tokio::join!(run, trigger) }).await;
    let report = report.unwrap();
    for c in &report.containers {
        let exit = c.exit.as_ref().unwrap();
        assert_eq!(
            (exit.code, exit.reason),
            (137, ExitReason::Killed),
            "{}: {exit:?}",
            c.name
        );
        assert_eq!(c.restarts, 0, "a stopping pod does not restart");
    }
    assert_eq!(report.exit_code(), 137);
    assert!(
        h.events
            .all
            .lock()
            .unwrap()
            .iter()
            .any(|(n, m)| n == "pod" && m.contains("stopping")),
        "{:?}",
        h.events.all
    );
    // The pod is removed once run_pod returns.
    assert!(rt.pods().is_empty());
    assert!(rt.containers().is_empty());
}
