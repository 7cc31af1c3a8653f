//! The real `crictl` (cri-tools, built by `scripts/peers`) pointed at a [`Daemon`]: the
//! commands an operator types, with JSON configs in the daemon's temp dir, and the small
//! helpers the crictl tests share (pod and container configs, ids, polling `inspect` and
//! `logs`, listing).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cri::Daemon;
use crate::{output_within, peers, text, wasm};

/// A hang guard for one crictl command, far above what any needs.
pub const COMMAND_SECS: u64 = 120;

/// `crictl` pointed at one daemon's socket, with its config files in the daemon's temp dir.
pub struct Crictl {
    pub bin: PathBuf,
    pub endpoint: String,
    /// Where its config file and the JSON configs [`Crictl::write`] makes are.
    pub dir: PathBuf,
}

impl Crictl {
    pub fn new(d: &Daemon) -> Self {
        let dir = d.dir.path().join("crictl");
        std::fs::create_dir_all(&dir).unwrap();
        let endpoint = format!("unix://{}", d.socket.display());
        // A config file of its own, so none of the machine's (/etc/crictl.yaml) applies; it
        // says what the flags say.
        std::fs::write(
            dir.join("crictl.yaml"),
            format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 30\n"),
        )
        .unwrap();
        Crictl {
            bin: peers::crictl(),
            endpoint,
            dir,
        }
    }

    /// crictl with `args`, every setting on the command line; stdio is the caller's to set
    /// (a background crictl: `port-forward`, `attach`, `events`).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        // No client config from the machine: every setting is on the command line.
        cmd.env_remove("CONTAINER_RUNTIME_ENDPOINT")
            .env_remove("IMAGE_SERVICE_ENDPOINT")
            .env_remove("CRI_CONFIG_FILE")
            .arg("--config")
            .arg(self.dir.join("crictl.yaml"))
            .args(["--runtime-endpoint", &self.endpoint])
            .args(["--image-endpoint", &self.endpoint])
            .args(["--timeout", "30s"])
            .args(args);
        cmd
    }

    /// Runs crictl with `args` whatever the outcome (stdin empty).
    pub fn output(&self, args: &[&str]) -> Output {
        output_within(&mut self.command(args), COMMAND_SECS)
    }

    /// Runs crictl with `args`, failing the test unless it succeeds; its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "crictl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs crictl with `args`, expecting it to fail; its stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            !out.status.success(),
            "crictl {args:?} succeeded, a failure was expected:\nstdout: {}",
            text(&out.stdout)
        );
        text(&out.stderr)
    }

    /// Runs crictl with `args` and parses its stdout as JSON.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("crictl {args:?}: {e}:\n{out}"))
    }

    /// `crictl metricsp` of one pod, checked against `crictl metricdescs`: every metric sent
    /// is described, with as many label values as its descriptor has keys.
    pub fn pod_metrics(&self, pod: &str) -> PodMetrics {
        let descs = self.json(&["metricdescs", "-o", "json"]);
        let all = self.json(&["metricsp", "-o", "json"]);
        let pod = all["podMetrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["podSandboxId"] == pod)
            .unwrap_or_else(|| panic!("no metrics of pod {pod}: {all:#}"))
            .clone();
        let metrics = |v: &Value| -> Vec<Metric> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let name = m["name"].as_str().unwrap().to_owned();
                    let labels: Vec<String> = m["labelValues"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|l| l.as_str().unwrap().to_owned())
                        .collect();
                    let desc = descs["descriptors"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|d| d["name"] == name.as_str())
                        .unwrap_or_else(|| panic!("{name} is sent but not described"));
                    assert_eq!(
                        labels.len(),
                        desc["labelKeys"].as_array().unwrap().len(),
                        "{m:#}"
                    );
                    let value = m["value"]["value"].as_str().map_or_else(
                        || m["value"]["value"].as_u64().unwrap_or(0),
                        |s| s.parse().unwrap(),
                    );
                    Metric {
                        name,
                        labels,
                        value,
                    }
                })
                .collect()
        };
        PodMetrics {
            pod: metrics(&pod["metrics"]),
            containers: pod["containerMetrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["containerId"].as_str().unwrap().to_owned(),
                        metrics(&c["metrics"]),
                    )
                })
                .collect(),
        }
    }

    /// Writes `value` as `name` in the config dir; its path as text.
    pub fn write(&self, name: &str, value: &Value) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()).unwrap();
        path.display().to_string()
    }
}

/// A pod config as `crictl runp` reads it, logging under the daemon's temp dir.
pub fn pod_json(d: &Daemon, name: &str) -> Value {
    let logs = d.dir.path().join("logs").join(name);
    std::fs::create_dir_all(&logs).unwrap();
    json!({
        "metadata": {"name": name, "namespace": "crictl", "uid": format!("uid-{name}"), "attempt": 1},
        "hostname": name,
        "log_directory": logs.display().to_string(),
        "labels": {"app": name},
        "annotations": {"note": "from crictl"},
    })
}

/// A container config as `crictl create` reads it.
pub fn container_json(name: &str, image: &str, args: &[&str]) -> Value {
    json!({
        "metadata": {"name": name},
        "image": {"image": image},
        "args": args,
        "envs": [{"key": "GREETING", "value": "hello through crictl"}],
        "labels": {"tier": "wasm"},
        "log_path": format!("{name}/0.log"),
    })
}

/// The `file://` image of a guest built by `examples/build.sh` (`file_image("hello.p1")`).
pub fn file_image(name: &str) -> String {
    format!("file://{}", wasm(name).display())
}

/// The one line crictl prints for `runp`, `create`, `run`: a 64-hex-digit id.
#[track_caller]
pub fn id_of(out: &str) -> String {
    let id = out.trim();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "not an id: {out:?}"
    );
    id.to_owned()
}

/// `crictl inspect <id>`'s `status` object.
pub fn status(c: &Crictl, id: &str) -> Value {
    c.json(&["inspect", id])["status"].clone()
}

/// Polls `crictl inspect` until the container's state is `state` (bounded: 60 s); its status.
#[track_caller]
pub fn wait_state(c: &Crictl, id: &str, state: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        last = status(c, id);
        if last["state"] == state {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("container {id} never reached {state}; last status:\n{last:#}");
}

/// Polls `crictl logs` until stdout holds `needle` (bounded: 60 s); the stdout.
#[track_caller]
pub fn wait_log(c: &Crictl, id: &str, needle: &str) -> String {
    let mut last = String::new();
    for _ in 0..600 {
        last = c.ok(&["logs", id]);
        if last.contains(needle) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("container {id} never logged {needle:?}; its log:\n{last}");
}

/// `crictl ps -a -o json`'s containers, with `filters` (`--pod ID`, `--name RE`, …).
pub fn ps(c: &Crictl, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["ps", "-a", "-o", "json"];
    args.extend_from_slice(filters);
    c.json(&args)["containers"].as_array().unwrap().clone()
}

/// `crictl pods -o json`'s sandboxes.
pub fn pods(c: &Crictl) -> Vec<Value> {
    c.json(&["pods", "-o", "json"])["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// `crictl events -o json` running in the background, its events parsed as they come; the
/// process is killed (by its pid) when dropped.
pub struct Events {
    child: Child,
    rx: mpsc::Receiver<Value>,
}

impl Events {
    pub fn start(c: &Crictl) -> Self {
        let mut child = c
            .command(&["events", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting crictl events");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // One pretty-printed JSON object per event, one after the other.
            for event in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
                let Ok(e) = event else { break };
                if tx.send(e).is_err() {
                    break;
                }
            }
        });
        Events { child, rx }
    }

    /// `crictl events` once it is known to see events: the stream has no "subscribed" mark,
    /// so probe containers are created in pod `pod_id` (config at `pod_path`) until one's
    /// event comes through; every later change is seen.
    pub fn subscribe(c: &Crictl, pod_id: &str, pod_path: &str) -> Self {
        let events = Self::start(c);
        let probe_path = c.write(
            "probe.json",
            &container_json("probe", &file_image("hello.p1"), &[]),
        );
        for n in 0..60 {
            let mut probe = container_json(&format!("probe-{n}"), &file_image("hello.p1"), &[]);
            probe["log_path"] = format!("probe/{n}.log").into();
            std::fs::write(&probe_path, probe.to_string()).unwrap();
            c.ok(&["create", pod_id, &probe_path, pod_path]);
            if events.next_within(1).is_some() {
                return events;
            }
        }
        panic!("crictl events never reported a probe container");
    }

    /// The next event, if one comes within `secs` (a poll interval or a hang guard).
    pub fn next_within(&self, secs: u64) -> Option<Value> {
        self.rx.recv_timeout(Duration::from_secs(secs)).ok()
    }

    /// The events of container `id` up to and including its `last` one (bounded).
    #[track_caller]
    pub fn of_until(&self, id: &str, last: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let e = self.next_within(60).unwrap_or_else(|| {
                panic!("no {last} event for {id}; its events so far: {seen:#?}")
            });
            if e["containerId"] == id {
                let done = e["containerEventType"] == last;
                seen.push(e);
                if done {
                    return seen;
                }
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One metric of `crictl metricsp`.
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    pub labels: Vec<String>,
    pub value: u64,
}

/// A pod's metrics (see [`Crictl::pod_metrics`]): its own, and each container's by id.
#[derive(Debug)]
pub struct PodMetrics {
    pub pod: Vec<Metric>,
    pub containers: Vec<(String, Vec<Metric>)>,
}

impl PodMetrics {
    /// The value of the pod's metric `name` (its first series), which must be sent.
    pub fn pod(&self, name: &str) -> u64 {
        value_in(&self.pod, name)
    }

    /// The value of container `id`'s metric `name` (its first series), which must be sent.
    pub fn container(&self, id: &str, name: &str) -> u64 {
        let (_, metrics) = self
            .containers
            .iter()
            .find(|(c, _)| c == id)
            .unwrap_or_else(|| panic!("no metrics of container {id}: {self:#?}"));
        value_in(metrics, name)
    }
}

fn value_in(metrics: &[Metric], name: &str) -> u64 {
    metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no {name} in {metrics:#?}"))
        .value
}
