//! `wasmpod serve`'s Prometheus `/metrics`: scraped over HTTP and read with a real Prometheus
//! text parser (prometheus-parse), the gauges equal what the CRI lists, CRI calls are timed by
//! method and failures counted by code, the runtime's phases are timed; off by default, and a
//! bad address fails the start.

use std::process::Stdio;

use k8s_cri::v1 as cri;
use prometheus_parse::{Sample, Scrape, Value};
use wasmpod_tests::cri::{self as harness, container_config, Daemon};
use wasmpod_tests::{curl, free_port, output_within, require_guests, text, wasm, wasmpod};

async fn scrape(port: u16) -> Scrape {
    let (code, body) = curl(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    Scrape::parse(lines).unwrap_or_else(|e| panic!("parsing /metrics: {e}\n{body}"))
}

/// The sample named `name` whose labels include all of `labels`.
fn find<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
}

/// A gauge's or counter's value (0 when absent: Prometheus' reading of a missing series).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(s, name, labels).map(|x| &x.value) {
        None => 0.0,
        Some(Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v)) => *v,
        Some(other) => panic!("{name}: not a number: {other:?}"),
    }
}

/// How many observations a histogram series has.
fn observations(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    match find(s, name, labels).map(|x| &x.value) {
        Some(Value::Histogram(buckets)) => {
            buckets.iter().map(|b| b.count).fold(0.0, f64::max) as u64
        }
        None => 0,
        Some(other) => panic!("{name}: not a histogram: {other:?}"),
    }
}

async fn listed(rt: &mut harness::Rt) -> (Vec<cri::PodSandbox>, Vec<cri::Container>) {
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    let containers = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    (pods, containers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_cri_and_count_calls_and_errors() {
    require_guests();
    let port = free_port();
    let d = Daemon::start_with(
        &format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n"),
        None,
    )
    .await;
    let state = d.dir.path().join("state");
    let image = "docker.io/local/hello:1";
    let out = output_within(
        wasmpod(&state)
            .args(["image", "import", "--tag", "local/hello:1"])
            .arg(wasm("hello.p1")),
        120,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut rt = d.runtime().await;
    let pod = harness::new_pod(&d, &mut rt, "metered").await;
    let ran = pod
        .create(&mut rt, container_config("ran", image, &["hi"]))
        .await
        .unwrap();
    harness::start(&mut rt, &ran).await;
    harness::wait_exited(&mut rt, &ran).await;
    let _created = pod
        .create(&mut rt, container_config("created", image, &[]))
        .await
        .unwrap();

    // An unknown container: NotFound, counted under its method and code.
    let err = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: "no-such-container".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // A pull nobody answers: an image pull with result "error".
    let pull = harness::image_client(&d)
        .await
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: format!("127.0.0.1:{}/nothing/here:1", free_port()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert!(pull.is_err());

    let s = scrape(port).await;
    let (pods, containers) = listed(&mut rt).await;
    let ready = pods
        .iter()
        .filter(|p| p.state == cri::PodSandboxState::SandboxReady as i32)
        .count();
    assert_eq!(
        value(&s, "wasmpod_pods", &[("state", "ready")]),
        ready as f64
    );
    assert_eq!(
        value(&s, "wasmpod_pods", &[("state", "notready")]),
        (pods.len() - ready) as f64
    );
    for (state, label) in [
        (cri::ContainerState::ContainerCreated, "created"),
        (cri::ContainerState::ContainerRunning, "running"),
        (cri::ContainerState::ContainerExited, "exited"),
    ] {
        let n = containers
            .iter()
            .filter(|c| c.state == state as i32)
            .count();
        assert_eq!(
            value(&s, "wasmpod_containers", &[("state", label)]),
            n as f64,
            "{label}"
        );
    }
    assert_eq!(value(&s, "wasmpod_containers", &[("state", "exited")]), 1.0);
    assert_eq!(
        value(&s, "wasmpod_containers", &[("state", "created")]),
        1.0
    );

    let latency = "wasmpod_cri_request_duration_seconds";
    assert!(observations(&s, latency, &[("method", "RunPodSandbox")]) >= 1);
    assert!(observations(&s, latency, &[("method", "CreateContainer")]) >= 2);
    assert!(observations(&s, latency, &[("method", "Version")]) >= 1);
    assert_eq!(
        observations(&s, "wasmpod_container_start_duration_seconds", &[]),
        1
    );
    // The runtime's phases, recorded whatever the log level (the harness runs it at warn):
    // one pod, two creates, one start whose guest wrote a line.
    let phase = "wasmpod_phase_duration_seconds";
    for (name, times) in [
        ("run_pod.state_write", 1),
        ("run_pod.network_attach", 1),
        ("create.code_load", 2),
        ("create.log_directory", 2),
        ("create.state_write", 2),
        ("start.log_file", 1),
        ("start.state_write", 1),
        ("first_line.guest", 1),
        ("first_line.log_write", 1),
    ] {
        assert_eq!(observations(&s, phase, &[("phase", name)]), times, "{name}");
    }
    let errors = "wasmpod_cri_errors_total";
    let not_found = [("method", "ContainerStatus"), ("code", "NotFound")];
    assert_eq!(value(&s, errors, &not_found), 1.0);
    assert_eq!(
        value(&s, "wasmpod_image_pulls_total", &[("result", "error")]),
        1.0
    );

    // One more bad call, one more error; a successful call adds none.
    let _ = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: "still-missing".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    harness::status(&mut rt, &ran).await;
    let s = scrape(port).await;
    assert_eq!(value(&s, errors, &not_found), 2.0);
    // Two creates of one image: the first loads from disk or compiles (and leaves an AOT
    // artifact), the second finds the code in memory.
    assert!(value(&s, "wasmpod_aot_artifacts", &[]) >= 1.0);
    let loads = |source| value(&s, "wasmpod_code_loads_total", &[("source", source)]);
    assert_eq!(loads("disk") + loads("compile"), 1.0);
    assert!(loads("memory") >= 1.0);

    let (code, _) = curl(&format!("http://127.0.0.1:{port}/other")).await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_by_default() {
    // Nothing listens on the conventional port unless configured: the daemon's config has no
    // [metrics], so its process has no TCP listener at all.
    let d = Daemon::start().await;
    let pid = d.pid().unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    let sockets: std::collections::HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.display().to_string())
        .filter(|l| l.starts_with("socket:["))
        .map(|l| l[8..l.len() - 1].to_owned())
        .collect();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap()
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    // Listening sockets (state 0A) of the daemon other than the streaming server's one.
    let listening: Vec<&str> = tcp
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 9 && f[3] == "0A" && sockets.contains(f[9])
        })
        .collect();
    assert!(
        listening.len() <= 1,
        "only the streaming server listens on TCP: {listening:?}"
    );
}

#[test]
fn a_bad_metrics_address_fails_the_start_clearly() {
    let dir = tempfile::tempdir().unwrap();
    for (address, expect) in [
        (
            "not an address",
            "[metrics] address \"not an address\" is not host:port",
        ),
        ("192.0.2.1:9464", "[metrics] binding 192.0.2.1:9464"),
    ] {
        let config = dir.path().join("config.toml");
        std::fs::write(&config, format!("[metrics]\naddress = \"{address}\"\n")).unwrap();
        let mut cmd = wasmpod(&dir.path().join("state"));
        cmd.args(["serve", "--socket"])
            .arg(dir.path().join("s.sock"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null());
        let out = output_within(&mut cmd, 60);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{address}: {stderr}");
        assert!(stderr.contains(expect), "{address}: {stderr}");
        assert!(!dir.path().join("s.sock").exists(), "no socket left behind");
    }
}
