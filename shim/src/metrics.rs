//! `wasmpod serve`'s own health on `GET /metrics` (the `[metrics]` table of the daemon's
//! config; off unless `address` is set), in the exposition format of the `prometheus-client`
//! crate (OpenMetrics text).
//!
//! Counts of pods and containers are read from the runtime at scrape time, so they always
//! equal what ListPodSandbox and ListContainers answer; latencies and errors are recorded by
//! a tower layer around the CRI server ([`CriLayer`]), so no handler needs to know; the
//! runtime's phase timings (`wasmpod_runtime::phase`) by a tracing layer ([`Phases`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::Deserialize;
use wasmpod_runtime::runtime::Runtime;

/// Where `/metrics` listens: the `[metrics]` table. No address, no listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` to serve plain-HTTP `/metrics` on, e.g. `127.0.0.1:9464`.
    pub address: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

type Histograms = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// 0.5 ms to ~16 s: a List call takes well under a millisecond, a cold compile seconds.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// 1 µs to ~8 s: a phase of a pod start takes from a microsecond (a log write) to
/// milliseconds (a state commit), a cold compile seconds.
fn phase_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 2.0, 24))
}

/// Durations of the runtime's phases by name: the `wasmpod::phase` events of
/// [`wasmpod_runtime::phase`], recorded by the tracing layer [`Phases::layer`] whatever the
/// log level. Cheap to clone (a handle).
#[derive(Clone)]
pub struct Phases {
    durations: Family<PhaseLabels, Histogram, fn() -> Histogram>,
}

impl Default for Phases {
    fn default() -> Self {
        Self {
            durations: Family::new_with_constructor(phase_histogram),
        }
    }
}

impl Phases {
    /// The layer that records phase events, with a filter of its own: it sees those events
    /// only, and sees them at any log level.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer as _;
        let only_phases = tracing_subscriber::filter::Targets::new()
            .with_target(wasmpod_runtime::phase::TARGET, tracing::Level::TRACE);
        PhaseLayer(self.clone()).with_filter(only_phases)
    }
}

struct PhaseLayer(Phases);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PhaseLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = PhaseFields::default();
        event.record(&mut fields);
        if let (Some(phase), Some(seconds)) = (fields.phase, fields.seconds) {
            self.0
                .durations
                .get_or_create(&PhaseLabels { phase })
                .observe(seconds);
        }
    }
}

/// The two fields of a phase event.
#[derive(Default)]
struct PhaseFields {
    phase: Option<String>,
    seconds: Option<f64>,
}

impl tracing::field::Visit for PhaseFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "phase" {
            self.phase = Some(value.to_owned());
        }
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if field.name() == "seconds" {
            self.seconds = Some(value);
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

/// The daemon's metrics. Cheap to clone (all handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pods: Family<StateLabels, Gauge>,
    containers: Family<StateLabels, Gauge>,
    aot_artifacts: Gauge,
    aot_dir: PathBuf,
    code_loads: Family<SourceLabels, Counter>,
    cri_latency: Histograms,
    cri_errors: Family<ErrorLabels, Counter>,
    container_start: Histogram,
    image_pulls: Family<ResultLabels, Counter>,
}

impl Metrics {
    /// `state_dir` is the runtime's: its `aot/` holds the precompiled artifacts counted.
    /// `phases` are filled by their layer, installed with the process's subscriber.
    pub fn new(state_dir: &std::path::Path, phases: Phases) -> Self {
        let mut registry = Registry::with_prefix("wasmpod");
        let pods = Family::<StateLabels, Gauge>::default();
        registry.register(
            "pods",
            "Pod sandboxes by CRI state (ready, notready)",
            pods.clone(),
        );
        let containers = Family::<StateLabels, Gauge>::default();
        registry.register(
            "containers",
            "Containers by CRI state (created, running, exited, unknown)",
            containers.clone(),
        );
        let aot_artifacts = Gauge::default();
        registry.register(
            "aot_artifacts",
            "Precompiled (AOT) code artifacts in the on-disk compile cache",
            aot_artifacts.clone(),
        );
        let code_loads = Family::<SourceLabels, Counter>::default();
        registry.register(
            "code_loads",
            "Loads of Wasm code by where the compiled code came from: the memory or disk (AOT) \
             cache (hits), or compiling (misses)",
            code_loads.clone(),
        );
        let cri_latency: Histograms = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "cri_request_duration",
            "CRI call latency by gRPC method",
            Unit::Seconds,
            cri_latency.clone(),
        );
        let cri_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "cri_errors",
            "CRI calls that failed, by gRPC method and status code",
            cri_errors.clone(),
        );
        let container_start = latency_histogram();
        registry.register_with_unit(
            "container_start_duration",
            "Duration of successful StartContainer calls (instantiation to the guest running)",
            Unit::Seconds,
            container_start.clone(),
        );
        let image_pulls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "image_pulls",
            "PullImage calls by result (success, error)",
            image_pulls.clone(),
        );
        registry.register_with_unit(
            "phase_duration",
            "Duration of the phases of the runtime's work by name: `run_pod.*`, `create.*` and \
             `start.*` inside RunPodSandbox, CreateContainer and StartContainer; after \
             StartContainer returns, `first_line.guest` (instantiation and the guest's run to \
             its first log line) and `first_line.log_write`",
            Unit::Seconds,
            phases.durations,
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            pods,
            containers,
            aot_artifacts,
            aot_dir: state_dir.join("aot"),
            code_loads,
            cri_latency,
            cri_errors,
            container_start,
            image_pulls,
        }
    }

    /// Records one finished CRI call. `code` is the gRPC status code (0 = OK).
    fn record(&self, method: &str, code: i32, seconds: f64) {
        let labels = MethodLabels {
            method: method.to_owned(),
        };
        self.cri_latency.get_or_create(&labels).observe(seconds);
        if code != 0 {
            self.cri_errors
                .get_or_create(&ErrorLabels {
                    method: method.to_owned(),
                    code: code_name(code).to_owned(),
                })
                .inc();
        }
        match method {
            "StartContainer" if code == 0 => self.container_start.observe(seconds),
            "PullImage" => {
                let result = if code == 0 { "success" } else { "error" };
                self.image_pulls
                    .get_or_create(&ResultLabels {
                        result: result.to_owned(),
                    })
                    .inc();
            }
            _ => {}
        }
    }

    /// The exposition text, with the gauges read from `rt` now.
    pub fn render(&self, rt: &Runtime) -> String {
        // One scrape at a time: the gauges are cleared and refilled.
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        self.pods.clear();
        for state in ["ready", "notready"] {
            self.pods.get_or_create(&state_label(state)).set(0);
        }
        for p in rt.pods() {
            let state = crate::cri::convert::pod_sandbox(&p).state;
            self.pods
                .get_or_create(&state_label(pod_state(state)))
                .inc();
        }
        self.containers.clear();
        for state in ["created", "running", "exited"] {
            self.containers.get_or_create(&state_label(state)).set(0);
        }
        for c in rt.containers() {
            let state = crate::cri::convert::container(&c).state;
            self.containers
                .get_or_create(&state_label(container_state(state)))
                .inc();
        }
        let artifacts = std::fs::read_dir(&self.aot_dir)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
                    .count()
            })
            .unwrap_or(0);
        self.aot_artifacts.set(artifacts as i64);
        let loads = rt.engine().load_counts();
        for (source, count) in [
            ("memory", &loads.memory),
            ("disk", &loads.disk),
            ("compile", &loads.compiled),
        ] {
            // The engine counts; a scrape (one at a time) moves the counter up to its figure.
            let counter = self.code_loads.get_or_create(&SourceLabels {
                source: source.to_owned(),
            });
            let now = count.load(std::sync::atomic::Ordering::Relaxed);
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String");
        out
    }
}

fn state_label(state: &str) -> StateLabels {
    StateLabels {
        state: state.to_owned(),
    }
}

fn pod_state(state: i32) -> &'static str {
    match k8s_cri::v1::PodSandboxState::try_from(state) {
        Ok(k8s_cri::v1::PodSandboxState::SandboxReady) => "ready",
        _ => "notready",
    }
}

fn container_state(state: i32) -> &'static str {
    use k8s_cri::v1::ContainerState as S;
    match S::try_from(state) {
        Ok(S::ContainerCreated) => "created",
        Ok(S::ContainerRunning) => "running",
        Ok(S::ContainerExited) => "exited",
        _ => "unknown",
    }
}

/// gRPC's names for its status codes, as the `code` label.
fn code_name(code: i32) -> &'static str {
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Cancelled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    }
}

/// Serves `/metrics` on `config.address` until the task is dropped; `None` when no address
/// is configured. Binding happens here so a bad or busy address fails `wasmpod serve` at
/// start with the address in the message.
pub async fn start(
    config: &MetricsConfig,
    metrics: Metrics,
    rt: Arc<Runtime>,
) -> anyhow::Result<Option<(SocketAddr, tokio::task::JoinHandle<()>)>> {
    let Some(address) = &config.address else {
        return Ok(None);
    };
    let addr: SocketAddr = address
        .parse()
        .with_context(|| format!("[metrics] address {address:?} is not host:port"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("[metrics] binding {addr}"))?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, rt) = (metrics.clone(), rt.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let reply = answer(&req, &metrics, &rt);
                    async move { Ok::<_, std::convert::Infallible>(reply) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Some((local, task)))
}

fn answer<B>(
    req: &http::Request<B>,
    metrics: &Metrics,
    rt: &Runtime,
) -> http::Response<Full<Bytes>> {
    let reply = |status, content_type, body: String| {
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if req.uri().path() != "/metrics" {
        return reply(
            http::StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".into(),
        );
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return reply(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        );
    }
    reply(
        http::StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        metrics.render(rt),
    )
}

/// A tower layer for the CRI server that times every call and counts failures by the gRPC
/// method (the last segment of the request path) and status code.
#[derive(Clone)]
pub struct CriLayer {
    pub metrics: Option<Metrics>,
}

impl<S> tower::Layer<S> for CriLayer {
    type Service = CriService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CriService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CriService<S> {
    inner: S,
    metrics: Option<Metrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for CriService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    /// The status of a failed unary call is in the response's headers (tonic answers errors
    /// trailers-only); a streaming call (GetContainerEvents) is timed to its response headers.
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return Box::pin(self.inner.call(req));
        };
        let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                Err(_) => tonic::Code::Internal as i32,
            };
            metrics.record(&method, code, started.elapsed().as_secs_f64());
            res
        })
    }
}
