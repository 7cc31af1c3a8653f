//! Where the time goes, measured in the run: what the client waits for against what the server
//! spends (its own Prometheus histograms, scraped before and after, read with a real
//! Prometheus text parser), and inside the server the runtime's phases
//! (`wasmpod_phase_duration_seconds`). For the List calls, the answer's prost encode and decode
//! are timed in this process on the same message, so the round trip splits into the server's
//! handler, encoding, transport and the client's decode.

use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use prometheus_parse::{Scrape, Value};
use prost::Message;
use wasmpod_tests::cri::Rt;

use crate::compare::StartTimes;
use crate::{fmt, pct};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const CRI_CALLS: &str = "wasmpod_cri_request_duration_seconds";
const PHASES: &str = "wasmpod_phase_duration_seconds";

/// The CRI calls of a pod start and the prefixes of their phases' names, then the phases of
/// the guest's task, from its spawn inside StartContainer to its first log line (see
/// `wasmpod_runtime::phase` and the metric's help).
const START_CALLS: [(&str, &str); 3] = [
    ("RunPodSandbox", "run_pod."),
    ("CreateContainer", "create."),
    ("StartContainer", "start."),
];
const GUEST: &str = "first_line.";

/// One scrape of the daemon's `/metrics`.
pub struct Metrics(Scrape);

pub async fn scrape(port: u16) -> Res<Metrics> {
    let (code, body) = wasmpod_tests::curl(&format!("http://127.0.0.1:{port}/metrics")).await;
    if code != 200 {
        return Err(format!("/metrics answered {code}: {body}").into());
    }
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    Ok(Metrics(Scrape::parse(lines)?))
}

impl Metrics {
    /// A histogram series' `_sum` and `_count` (0 when absent: no observation yet).
    fn sum_count(&self, histogram: &str, label: &str, value: &str) -> (f64, f64) {
        let get = |suffix: &str| {
            let name = format!("{histogram}{suffix}");
            self.0
                .samples
                .iter()
                .find(|s| s.metric == name && s.labels.get(label) == Some(value))
                .map_or(0.0, |s| match s.value {
                    Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                    _ => 0.0,
                })
        };
        (get("_sum"), get("_count"))
    }

    /// The values of `label` among a histogram's series.
    fn label_values(&self, histogram: &str, label: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == histogram)
            .filter_map(|s| s.labels.get(label).map(str::to_owned))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// What a histogram series gained between two scrapes.
#[derive(Clone, Copy, Default)]
struct Gain {
    seconds: f64,
    count: f64,
}

impl Gain {
    fn mean(self) -> Duration {
        secs(self.seconds / self.count.max(1.0))
    }
}

/// Two scrapes around a piece of the run.
pub struct Window {
    pub before: Metrics,
    pub after: Metrics,
}

impl Window {
    fn gain(&self, histogram: &str, label: &str, value: &str) -> Gain {
        let (s0, c0) = self.before.sum_count(histogram, label, value);
        let (s1, c1) = self.after.sum_count(histogram, label, value);
        Gain {
            seconds: (s1 - s0).max(0.0),
            count: (c1 - c0).max(0.0),
        }
    }

    /// The phases observed in the window whose names start with `prefix`, the longest first
    /// (per call).
    fn phases(&self, prefix: &str) -> Vec<(String, Gain)> {
        let mut out: Vec<(String, Gain)> = self
            .after
            .label_values(PHASES, "phase")
            .into_iter()
            .filter(|p| p.starts_with(prefix))
            .map(|p| {
                let g = self.gain(PHASES, "phase", &p);
                (p, g)
            })
            .filter(|(_, g)| g.count > 0.0)
            .collect();
        out.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
        out
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / (v.len().max(1) as u32)
}

fn share(part: f64, whole: f64) -> String {
    if whole <= 0.0 {
        return "—".into();
    }
    format!("{:.0}%", 100.0 * part / whole)
}

/// A signed difference of durations, for a residual that noise may push below zero.
fn fmt_signed(a: Duration, b: Duration) -> String {
    if a >= b {
        fmt(a - b)
    } else {
        format!("−{}", fmt(b - a))
    }
}

/// The pod start breakdown (markdown): each CRI call's round trip against the server's time
/// for it, StartContainer's return to the first log line, and the runtime's phases in each.
/// `client` holds the client's figures of the pod starts made in `window`.
pub fn pod_start(client: &StartTimes, window: &Window) -> Vec<String> {
    let n = client.total.len();
    let mut md = vec![
        format!(
            "**Pod start over the CRI** (wasmpod, n={n}): the client's round trip of each call \
             against the server's own time for it (its `{CRI_CALLS}` histogram: sum / count \
             over the run, so a mean). What lies between is gRPC over HTTP/2 and the unix \
             socket, both ways."
        ),
        String::new(),
        "| step | client p50 | client mean | server mean | between (client − server, means) |"
            .into(),
        "|---|---|---|---|---|".into(),
    ];
    let mut server = Vec::new();
    for ((call, _), lat) in START_CALLS.iter().zip(&client.calls) {
        let gain = window.gain(CRI_CALLS, "method", call);
        server.push(gain);
        md.push(format!(
            "| {call} | {} | {} | {} | {} |",
            fmt(pct(lat, 50)),
            fmt(mean(lat)),
            fmt(gain.mean()),
            fmt_signed(mean(lat), gain.mean())
        ));
    }
    let after = mean(&client.after_start);
    md.push(format!(
        "| StartContainer's return → first log line seen | {} | {} | — | — |",
        fmt(pct(&client.after_start, 50)),
        fmt(after)
    ));
    md.push(format!(
        "| StartContainer's call → first log line seen | — | {} | — | — |",
        fmt(mean(&client.calls[2]) + after)
    ));
    md.push(format!(
        "| pod start (the figure above) | {} | {} | — | — |",
        fmt(pct(&client.total, 50)),
        fmt(mean(&client.total))
    ));
    md.push(String::new());
    md.push(
        "**Inside the server, by phase** (`wasmpod_phase_duration_seconds`, timed by the \
         runtime): the mean of each phase, its time per call, and its share of the call's \
         server time; what no phase covers is the rest of the call (CRI conversion, checks, \
         locks, the gRPC handler). The guest's own task starts inside StartContainer (before \
         its state write) and runs alongside the rest of it: its phases are shares of the \
         client's wait from calling StartContainer to seeing the first line."
            .into(),
    );
    md.push(String::new());
    md.push("| during | phase | mean | per call | share |".into());
    md.push("|---|---|---|---|---|".into());
    for ((call, prefix), gain) in START_CALLS.iter().zip(&server) {
        let calls = gain.count.max(1.0);
        let mut covered = 0.0;
        for (phase, g) in window.phases(prefix) {
            covered += g.seconds;
            md.push(format!(
                "| {call} | `{phase}` | {} | {} | {} |",
                fmt(g.mean()),
                fmt(secs(g.seconds / calls)),
                share(g.seconds, gain.seconds)
            ));
        }
        md.push(format!(
            "| {call} | rest of the call | — | {} | {} |",
            fmt(secs((gain.seconds - covered) / calls)),
            share(gain.seconds - covered, gain.seconds)
        ));
    }
    // Pods started in the window: one StartContainer each.
    let starts = server[2].count.max(1.0);
    let wait = (mean(&client.calls[2]) + after).as_secs_f64();
    for (phase, g) in window.phases(GUEST) {
        md.push(format!(
            "| the guest's task | `{phase}` | {} | {} | {} |",
            fmt(g.mean()),
            fmt(secs(g.seconds / starts)),
            share(g.seconds / starts, wait)
        ));
    }
    md
}

/// A List call's figures at one pod count.
struct ListFigures {
    round_trips: Vec<Duration>,
    server: Gain,
    encode: Duration,
    decode: Duration,
    bytes: usize,
}

/// The median time of `f` over a few runs.
fn timed(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    pct(&v, 50)
}

/// Encode and decode of `answer` by prost, in this process: the encode the server does after
/// its handler returns, and the decode the client does before the call returns.
fn codec<M: Message + Default>(answer: &M, runs: usize) -> (Duration, Duration, usize) {
    let bytes = answer.encode_to_vec();
    let encode = timed(runs, || drop(std::hint::black_box(answer.encode_to_vec())));
    let decode = timed(runs, || {
        drop(std::hint::black_box(
            M::decode(bytes.as_slice()).expect("decodes"),
        ))
    });
    (encode, decode, bytes.len())
}

/// A List call's figures from its round trips and last answer, the server's from `window`.
fn list_figures<M: Message + Default>(
    (mut round_trips, answer): (Vec<Duration>, Option<M>),
    window: &Window,
    method: &str,
    runs: usize,
) -> ListFigures {
    round_trips.sort();
    let (encode, decode, bytes) = answer.map_or_else(Default::default, |a| codec(&a, runs));
    ListFigures {
        round_trips,
        server: window.gain(CRI_CALLS, "method", method),
        encode,
        decode,
        bytes,
    }
}

/// ListContainers and ListPodSandbox with `pods` idle pods running, `rounds` of each, with
/// /metrics on `port` scraped around them; the breakdown as markdown, and each call's mean
/// server time.
pub async fn lists(
    rt: &mut Rt,
    port: u16,
    pods: usize,
    rounds: usize,
) -> Res<(Vec<String>, Vec<(&'static str, Duration)>)> {
    let before = scrape(port).await?;
    let mut containers = (Vec::new(), None);
    let mut sandboxes = (Vec::new(), None);
    for _ in 0..rounds {
        let t = Instant::now();
        let answer = rt
            .list_containers(cri::ListContainersRequest::default())
            .await?
            .into_inner();
        containers.0.push(t.elapsed());
        containers.1 = Some(answer);
        let t = Instant::now();
        let answer = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await?
            .into_inner();
        sandboxes.0.push(t.elapsed());
        sandboxes.1 = Some(answer);
    }
    let window = Window {
        before,
        after: scrape(port).await?,
    };
    let runs = rounds.max(5);
    let rows = [
        (
            "ListContainers",
            list_figures(containers, &window, "ListContainers", runs),
        ),
        (
            "ListPodSandbox",
            list_figures(sandboxes, &window, "ListPodSandbox", runs),
        ),
    ];
    let mut md = vec![
        format!(
            "**List calls at {pods} idle pods** (wasmpod, {rounds} calls each, no filter): the \
             server's time is its histogram's mean, which ends when the handler answers \
             (request decode, the listing and its conversion to CRI messages); the answer is \
             encoded afterwards, as the body is sent. Encode and decode are prost's on the \
             same answer, timed in the benchmark process (median of {runs}); transport is what \
             remains of the round trip without the three (HTTP/2 framing and flow control, \
             the socket, buffer copies). Encode is what encoding the whole message costs: a \
             server that reuses cached encodings spends less there, and its transport is that \
             much more than the column says."
        ),
        String::new(),
        "| call | answer | client round trip p50 | server handler (mean) | encode | transport and the rest | client decode |".into(),
        "|---|---|---|---|---|---|---|".into(),
    ];
    for (call, f) in &rows {
        let rtt = pct(&f.round_trips, 50);
        let known = f.server.mean() + f.encode + f.decode;
        md.push(format!(
            "| {call} | {:.0} KiB | {} | {} | {} | {} | {} |",
            f.bytes as f64 / 1024.0,
            fmt(rtt),
            fmt(f.server.mean()),
            fmt(f.encode),
            fmt_signed(rtt, known),
            fmt(f.decode),
        ));
    }
    let server = rows
        .iter()
        .map(|(call, f)| (*call, f.server.mean()))
        .collect();
    Ok((md, server))
}
