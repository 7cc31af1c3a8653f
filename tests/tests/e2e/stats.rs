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
    let pm = c.pod_metrics(&client.0);
    assert!(pm.pod("container_network_transmit_bytes_total") >= 1001);
    assert!(pm.pod("container_network_transmit_packets_total") >= 1);
    assert!(pm.pod("container_network_receive_bytes_total") >= 1001);
    assert!(pm.pod("container_fs_usage_bytes") >= 100_000);
    assert_eq!(pm.pod("container_network_receive_errors_total"), 0);
    assert!(pm.container(&spin, "container_memory_working_set_bytes") > 0);
    assert!(pm.container(&spin, "container_memory_rss") > 0);
    assert!(pm.container(&spin, "container_start_time_seconds") > 1_600_000_000);
    assert_eq!(pm.container(&spin, "container_processes"), 1);
    assert!(pm.container(&spin, "container_threads_max") > 1);
    let max = pm.container(&spin, "container_memory_max_usage_bytes");
    assert!(max >= pm.container(&spin, "container_memory_usage_bytes"));
    pm.container(&spin, "container_cpu_usage_seconds_total");

    c.ok(&["rmp", "-a", "-f"]);
}

/// A spinning guest limited to 0.2 CPU: `metricsp` counts its bandwidth periods and the ones it
/// was throttled in, splits its CPU time into user and system, and `stats` shows the page
/// faults its polls took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_metrics_show_cpu_throttling_and_page_faults() {
    require_guests();
    let d = Daemon::start().await;
    let c = Crictl::new(&d);
    let pod_path = c.write("pod.json", &pod_json(&d, "throttled"));
    let pod = id_of(&c.ok(&["runp", &pod_path]));
    let mut config = container_json("spin", &file_image("forever.p2"), &["--spin"]);
    config["linux"] = json!({"resources": {"cpu_period": 100000, "cpu_quota": 20000}});
    let path = c.write("spin.json", &config);
    let spin = id_of(&c.ok(&["create", &pod, &path, &pod_path]));
    c.ok(&["start", &spin]);
    wait_log(&c, &spin, "spinning");

    // Throttled for at least a whole second (0.2 CPU: 0.8 s of every second).
    let m = until(
        || c.pod_metrics(&pod),
        |m| m.container(&spin, "container_cpu_cfs_throttled_seconds_total") >= 1,
    );
    let periods = m.container(&spin, "container_cpu_cfs_periods_total");
    let throttled = m.container(&spin, "container_cpu_cfs_throttled_periods_total");
    assert!(throttled >= 5, "{throttled} throttled periods");
    assert!(
        periods >= throttled,
        "{periods} periods, {throttled} throttled"
    );
    assert_eq!(m.container(&spin, "container_spec_cpu_period"), 100_000);
    let user = m.container(&spin, "container_cpu_user_seconds_total");
    let system = m.container(&spin, "container_cpu_system_seconds_total");
    let total = m.container(&spin, "container_cpu_usage_seconds_total");
    assert!(user + system <= total + 1, "{user} + {system} vs {total}");

    let s = container_stats(&c, &spin);
    assert!(num(&s["memory"]["pageFaults"]["value"]) > 0, "{s:#}");
    c.ok(&["rmp", "-a", "-f"]);
}
