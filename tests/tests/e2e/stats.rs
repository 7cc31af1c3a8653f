//! Stats and CRI metrics through the real crictl: `stats`, `statsp`, `metricdescs`,
//! `metricsp` against a spinning guest, an idle wasi:http handler, a guest writing its log and
//! TCP traffic between two pods.

use std::time::Duration;

use serde_json::{json, Value};
use wasmpod_tests::cri::Daemon;
use wasmpod_tests::crictl::{
    container_json, file_image, id_of, pod_json, wait_log, wait_state, Crictl,
};
use wasmpod_tests::require_guests;

/// A protobuf uint64 as crictl prints it (a string, or a number).
fn num(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not a number: {v}")),
        other => other
            .as_u64()
            .unwrap_or_else(|| panic!("not a number: {other}")),
    }
}

fn container_stats(c: &Crictl, id: &str) -> Value {
    c.json(&["stats", "-o", "json", "--id", id])["stats"][0].clone()
}

fn pod_stats(c: &Crictl, id: &str) -> Value {
    c.json(&["statsp", "-o", "json", "--id", id])["stats"][0].clone()
}

/// The pod's eth0 figures in `crictl statsp`: received and sent bytes.
fn eth0(c: &Crictl, pod: &str) -> (u64, u64) {
    let s = pod_stats(c, pod);
    let i = &s["linux"]["network"]["defaultInterface"];
    assert_eq!(i["name"], "eth0", "{s:#}");
    (num(&i["rxBytes"]["value"]), num(&i["txBytes"]["value"]))
}

/// Polls `get` until `done` holds (bounded: 30 s); the last value.
#[track_caller]
fn until<T: std::fmt::Debug>(mut get: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let mut last = get();
    for _ in 0..300 {
        if done(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
        last = get();
    }
    panic!("condition never held; last: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_shows_cpu_memory_disk_network_and_metrics() {
    require_guests();
    let d = Daemon::start().await;
    let c = Crictl::new(&d);
    let run_pod = |name: &str| {
        let path = c.write(&format!("{name}.json"), &pod_json(&d, name));
        (id_of(&c.ok(&["runp", &path])), path)
    };
    let start = |pod: &(String, String), name: &str, config: Value| {
        let path = c.write(&format!("{name}.json"), &config);
        let id = id_of(&c.ok(&["create", &pod.0, &path, &pod.1]));
        c.ok(&["start", &id]);
        id
    };
    let server = run_pod("stats-server");
    let client = run_pod("stats-client");

    // A spinning guest: a CPU rate, and linear memory.
    let spin = start(
        &client,
        "spin",
        container_json("spin", &file_image("forever.p2"), &["--spin"]),
    );
    wait_log(&c, &spin, "spinning");
    let s = until(
        || container_stats(&c, &spin),
        |s| num(&s["cpu"]["usageNanoCores"]["value"]) > 0,
    );
    assert!(num(&s["cpu"]["usageCoreNanoSeconds"]["value"]) > 0, "{s:#}");
    assert!(num(&s["memory"]["workingSetBytes"]["value"]) > 0, "{s:#}");
    assert!(num(&s["memory"]["rssBytes"]["value"]) > 0, "{s:#}");

    // An idle wasi:http handler (no request in flight) still maps its code.
    let web = start(
        &server,
        "web",
        container_json("web", &file_image("http-hello.p2"), &[]),
    );
    wait_state(&c, &web, "CONTAINER_RUNNING");
    let s = container_stats(&c, &web);
    assert!(num(&s["memory"]["workingSetBytes"]["value"]) > 0, "{s:#}");

    // A guest writing its log: its writable layer grows.
    let dir = tempfile::tempdir().unwrap();
    let mut writer = container_json(
        "writer",
        &file_image("toolbox.p2"),
        &[
            "sh",
            "-c",
            "while test ! -e /go/now; do sleep 0.1; done; seq 30000; sleep 1000",
        ],
    );
    writer["mounts"] = json!([{"container_path": "/go", "host_path": dir.path()}]);
    let writer = start(&client, "writer", writer);
    wait_state(&c, &writer, "CONTAINER_RUNNING");
    let before = num(&container_stats(&c, &writer)["writableLayer"]["usedBytes"]["value"]);
    std::fs::write(dir.path().join("now"), "").unwrap();
    wait_log(&c, &writer, "\n30000\n");
    let s = until(
        || container_stats(&c, &writer),
        |s| num(&s["writableLayer"]["usedBytes"]["value"]) >= before + 100_000,
    );
    assert!(
        !s["writableLayer"]["fsId"]["mountpoint"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{s:#}"
    );
    assert!(num(&s["writableLayer"]["inodesUsed"]["value"]) > 0, "{s:#}");

    // TCP between the pods counts on both pods' eth0.
    let echo = start(
        &server,
        "echo",
        container_json(
            "echo",
            &file_image("netprobe.p2"),
            &["tcp-echo", "0.0.0.0:7000"],
        ),
    );
    wait_log(&c, &echo, "listening on");
    let server_ip = c.json(&["inspectp", &server.0])["status"]["network"]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let (server_rx, _) = eth0(&c, &server.0);
    let (_, client_tx) = eth0(&c, &client.0);
    let message = "x".repeat(1000);
    let probe = start(
        &client,
        "probe",
        container_json(
            "probe",
            &file_image("netprobe.p2"),
            &["tcp-client", &format!("{server_ip}:7000"), &message],
        ),
    );
    wait_log(&c, &probe, "reply: ");
    let (rx, _) = until(|| eth0(&c, &server.0), |t| t.0 >= server_rx + 1001);
    let (crx, ctx) = eth0(&c, &client.0);
    assert!(
        ctx >= client_tx + 1001,
        "client sent {ctx}, before {client_tx}"
    );
    assert!(crx >= 1001, "the echo came back: {crx}");
    assert!(rx >= 1001);

    // The metrics: every one sent is described, with as many label values as keys.
    let descs = c.json(&["metricdescs", "-o", "json"]);
    let descs = descs["descriptors"].as_array().unwrap();
    let keys = |name: &str| {
        descs
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("no descriptor {name}: {descs:#?}"))["labelKeys"]
            .as_array()
            .unwrap()
            .len()
    };
    let all = c.json(&["metricsp", "-o", "json"]);
    let pm = all["podMetrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podSandboxId"] == client.0.as_str())
        .unwrap_or_else(|| panic!("no metrics of the client pod: {all:#}"))
        .clone();
    let value_of = |metrics: &Value, name: &str| -> u64 {
        let m = metrics
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {metrics:#}"));
        assert_eq!(
            m["labelValues"].as_array().unwrap().len(),
            keys(name),
            "{m:#}"
        );
        num(&m["value"]["value"])
    };
    assert!(value_of(&pm["metrics"], "container_network_transmit_bytes_total") >= 1001);
    assert!(value_of(&pm["metrics"], "container_network_transmit_packets_total") >= 1);
    assert!(value_of(&pm["metrics"], "container_network_receive_bytes_total") >= 1001);
    assert!(value_of(&pm["metrics"], "container_fs_usage_bytes") >= 100_000);
    let spin_metrics = pm["containerMetrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["containerId"] == spin.as_str())
        .unwrap()["metrics"]
        .clone();
    assert!(value_of(&spin_metrics, "container_memory_working_set_bytes") > 0);
    assert!(value_of(&spin_metrics, "container_memory_rss") > 0);
    assert!(value_of(&spin_metrics, "container_start_time_seconds") > 1_600_000_000);
    assert_eq!(value_of(&spin_metrics, "container_processes"), 1);
    value_of(&spin_metrics, "container_cpu_usage_seconds_total");

    c.ok(&["rmp", "-a", "-f"]);
}
