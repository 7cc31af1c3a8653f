//! `wasmpod run`: run a Pod manifest locally, without a cluster.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use wasmpod_runtime::log::{LogLimits, LogLine, Stream};
use wasmpod_runtime::manifest::{PodManifest, UnknownFields};
use wasmpod_runtime::network::NetworkConfig;
use wasmpod_runtime::runner::{self, PodReport, RunnerOptions};

/// Run a Kubernetes v1 Pod manifest locally.
///
/// Init containers run one after another, then the containers side by side in one pod: they
/// share the pod's volumes (emptyDir, hostPath). Output is streamed live, each line prefixed
/// with its container's name (a guest waits for a slow console), and also kept in CRI-format
/// log files under the state directory, rotated as kubelet does (--log-max-size,
/// --log-max-files).
///
/// `image:` is a path to a .wasm file (relative to the manifest), a file:// URL, or an OCI
/// image reference, pulled according to imagePullPolicy (credentials from
/// ~/.docker/config.json). WASI preview1 modules and preview2 components are told apart from
/// the binary.
///
/// restartPolicy is honoured (Always by default, as in Kubernetes) with kubelet's back-off:
/// 10s doubling up to 5 minutes. Ctrl-C or SIGTERM stops the pod: each container gets
/// terminationGracePeriodSeconds to exit, then is killed (exit 137). A second Ctrl-C exits at
/// once.
///
/// Exit status: 0 when every container succeeded, otherwise the exit code of the first
/// container that failed. A summary line per container is printed at the end.
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct RunArgs {
    /// The Pod manifest (YAML)
    manifest: PathBuf,

    /// First restart back-off, in seconds (kubelet uses 10)
    #[arg(
        long,
        value_name = "SECS",
        default_value = "10",
        value_parser = super::parse_seconds,
        allow_negative_numbers = true
    )]
    backoff: Duration,

    /// Do not print the per-container summary at the end
    #[arg(long)]
    no_summary: bool,

    /// Where pod IPs come from (a range inside 127.0.0.0/8)
    #[arg(long, value_name = "CIDR", default_value = wasmpod_runtime::network::DEFAULT_LOOPBACK_CIDR)]
    pod_cidr: String,

    /// Where hostPorts listen when the manifest names no hostIP
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    host_port_address: std::net::IpAddr,

    /// Allowed egress: "all", "none", or CIDR[:port[-port]],... (pods may narrow it with the
    /// wasmpod.io/egress-allow annotation)
    #[arg(long, value_name = "RULES", default_value = "all")]
    egress_allow: String,

    /// Rotate a container's log file when it would grow past this size (kubelet's
    /// containerLogMaxSize; at least 64Ki)
    #[arg(long, value_name = "SIZE", default_value = "10Mi", value_parser = super::parse_size)]
    log_max_size: u64,

    /// Log files kept per container, the current one included (kubelet's containerLogMaxFiles)
    #[arg(long, value_name = "N", default_value_t = wasmpod_runtime::log::DEFAULT_MAX_FILES)]
    log_max_files: u32,

    /// Ignore fields Kubernetes does not define, with a warning, instead of refusing the
    /// manifest (they are most often typos)
    #[arg(long)]
    warn_unknown_fields: bool,
}

pub async fn run(args: RunArgs, state_dir: PathBuf) -> anyhow::Result<ExitCode> {
    let log_limits = LogLimits {
        own: super::rotate_limit(args.log_max_size, args.log_max_files)?,
        ..LogLimits::default()
    };
    let unknown = match args.warn_unknown_fields {
        true => UnknownFields::Warn,
        false => UnknownFields::Error,
    };
    let manifest = PodManifest::from_file_with(&args.manifest, unknown)?;
    for warning in &manifest.warnings {
        eprintln!("warning: {warning}");
    }
    let network = NetworkConfig {
        pod_cidr: Some(args.pod_cidr.clone()),
        host_port_address: args.host_port_address,
        egress_allow: args.egress_allow.clone(),
        ..Default::default()
    };
    let (rt, _own_state) = match super::open_runtime_with(&state_dir, network.clone(), log_limits) {
        Err(e) if super::daemon::is_locked(&e) => {
            let own = OwnState::beside(&state_dir)?;
            (
                super::open_runtime_with(&own.dir, network, log_limits)?,
                Some(own),
            )
        }
        opened => (opened?, None),
    };
    let width = manifest
        .init_containers
        .iter()
        .chain(&manifest.containers)
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    let opts = RunnerOptions {
        backoff_initial: args.backoff,
        on_event: Arc::new(move |name, message| {
            eprintln!("{:width$} | wasmpod: {message}", name);
        }),
        docker_config: super::docker_config(),
        ..RunnerOptions::default()
    };
    let mut logs = rt.subscribe_logs();
    let run = runner::run_pod(&rt, manifest, super::shutdown_signal(), &opts);
    tokio::pin!(run);
    let report = loop {
        tokio::select! {
            report = &mut run => break report?,
            line = logs.recv() => match line {
                Ok(line) => print_line(&line, width),
                Err(RecvError::Lagged(n)) => print_dropped(n),
                Err(RecvError::Closed) => {}
            },
        }
    };
    loop {
        match logs.try_recv() {
            Ok(line) => print_line(&line, width),
            Err(TryRecvError::Lagged(n)) => print_dropped(n),
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    if !args.no_summary {
        print_summary(&report);
    }
    Ok(exit_code(report.exit_code()))
}

/// A state directory of this run's own, for when another process (`wasmpod serve`, another
/// run) holds the given one: the run shares nothing with it but the pod IP range, whose blocks
/// wasmpod processes claim apart. Removed when the run ends.
struct OwnState {
    dir: PathBuf,
}

impl OwnState {
    fn beside(state_dir: &Path) -> anyhow::Result<Self> {
        let dir = state_dir.join("runs").join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let holder = match super::daemon::ServeRecord::read(state_dir) {
            Some(r) => r.describe(),
            None => "another wasmpod process".to_owned(),
        };
        eprintln!(
            "wasmpod: {} is in use by {holder}; this run keeps its state (logs, pulled images) \
             in {}, removed when it ends",
            state_dir.display(),
            dir.display()
        );
        Ok(Self { dir })
    }
}

impl Drop for OwnState {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("wasmpod: removing {}: {e}", self.dir.display());
        }
    }
}

fn print_line(line: &LogLine, width: usize) {
    let text = format!("{:width$} | {}", line.container, line.text);
    match line.stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            let _ = if line.partial {
                write!(out, "{text}")
            } else {
                writeln!(out, "{text}")
            };
        }
        Stream::Stderr => eprintln!("{text}"),
    }
}

/// Guests wait for a slow console; lines are dropped only when it stalls for a second, and
/// never silently.
fn print_dropped(n: u64) {
    eprintln!("wasmpod: {n} lines dropped from the live output: the console did not keep up");
}

fn print_summary(report: &PodReport) {
    let label = |c: &runner::ContainerReport| {
        if c.init {
            format!("{} (init)", c.name)
        } else {
            c.name.clone()
        }
    };
    let width = report
        .containers
        .iter()
        .map(|c| label(c).len())
        .max()
        .unwrap_or(0)
        .max(9);
    eprintln!(
        "\n{:width$}  {:>4}  {:<10}  {:>8}  {:>10}  MESSAGE",
        "CONTAINER", "EXIT", "REASON", "RESTARTS", "TIME"
    );
    for c in &report.containers {
        let name = label(c);
        let (code, reason, message) = match &c.exit {
            Some(e) => (
                e.code.to_string(),
                e.reason.as_str(),
                e.message.lines().next().unwrap_or(""),
            ),
            None => ("-".to_owned(), "NotRun", ""),
        };
        eprintln!(
            "{name:width$}  {code:>4}  {reason:<10}  {:>8}  {:>10}  {message}",
            c.restarts,
            format!("{:.3?}", c.run_time),
        );
    }
}

/// A process exit status for a container's exit code: codes a process cannot carry become 1.
fn exit_code(code: i32) -> ExitCode {
    match u8::try_from(code) {
        Ok(c) => ExitCode::from(c),
        Err(_) => ExitCode::FAILURE,
    }
}
