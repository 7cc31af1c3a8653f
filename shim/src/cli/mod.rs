//! Command-line parsing and dispatch; each subcommand lives in its own file.

mod daemon;
mod image;
mod run;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wasmpod_runtime::image::RegistryConfig;
use wasmpod_runtime::log::{LogLimit, LogLimits};
use wasmpod_runtime::network::NetworkConfig;
use wasmpod_runtime::runtime::{Runtime, RuntimeOptions};

#[derive(Parser)]
#[command(
    name = "wasmpod",
    version,
    about = "Run Kubernetes Pods whose containers are WebAssembly programs"
)]
struct Cli {
    /// Where pods' scratch space, images and the compiled-code cache live
    /// [default: /var/lib/wasmpod as root, else $XDG_STATE_HOME/wasmpod or ~/.local/state/wasmpod]
    #[arg(long, global = true, value_name = "DIR", env = "WASMPOD_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// Pull from MIRROR before REGISTRY: `docker.io=127.0.0.1:5001` (repeatable)
    #[arg(
        long = "registry-mirror",
        global = true,
        value_name = "REGISTRY=MIRROR"
    )]
    mirrors: Vec<String>,

    /// Reach this registry over plain HTTP (loopback registries always are; repeatable)
    #[arg(long = "insecure-registry", global = true, value_name = "HOST[:PORT]")]
    insecure: Vec<String>,

    /// Log level: error, warn, info, debug, trace (RUST_LOG filters override it)
    #[arg(long, global = true, value_name = "LEVEL", env = "WASMPOD_LOG")]
    log_level: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(run::RunArgs),
    /// Pull, import, export, list, inspect and remove images
    ///
    /// Images live in the state directory. While `wasmpod serve` holds it, these commands go
    /// through the daemon's socket, so what they change the daemon sees at once.
    ///
    /// Examples:
    ///     wasmpod image pull 127.0.0.1:5000/hello:1
    ///     wasmpod image import app.wasm --tag local/app:1
    ///     wasmpod image ls
    ///     wasmpod image rm local/app:1
    #[command(subcommand, verbatim_doc_comment)]
    Image(image::ImageCommand),
    Serve(serve::ServeArgs),
}

static REGISTRIES: std::sync::OnceLock<RegistryConfig> = std::sync::OnceLock::new();

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match start(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut registries = registry_config(&cli.mirrors, &cli.insecure)?;
    let mut state_dir = cli.state_dir;
    let mut log_level = cli.log_level;
    let serve_config = match &cli.command {
        Command::Serve(args) => {
            let config = args.load_config()?;
            state_dir = state_dir.or(config.state_dir.clone());
            log_level = log_level
                .or(config.log_level.clone())
                .or(Some("info".into()));
            registries
                .insecure
                .extend(config.registry.insecure.iter().cloned());
            for (registry, mirrors) in &config.registry.mirrors {
                registries
                    .mirrors
                    .entry(registry.clone())
                    .or_default()
                    .extend(mirrors.iter().cloned());
            }
            registries.timeouts = config.registry.timeouts(registries.timeouts)?;
            Some(config)
        }
        Command::Image(cmd) => {
            registries.timeouts = cmd.registry_timeouts(registries.timeouts)?;
            None
        }
        _ => None,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(log_level.as_deref().unwrap_or("warn")))
        .context("log level")?;
    // The phase timings exist for /metrics only.
    let phases = serve_config
        .as_ref()
        .filter(|c| c.metrics.address.is_some())
        .map(|_| crate::metrics::Phases::default());
    init_logging(filter, phases.as_ref());
    let _ = REGISTRIES.set(registries);
    let state_dir = state_dir.unwrap_or_else(default_state_dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args, state_dir).await,
            Command::Image(cmd) => image::run(cmd, state_dir).await,
            Command::Serve(args) => {
                serve::run(args, serve_config.unwrap_or_default(), state_dir, phases).await
            }
        }
    })
}

/// Log lines to stderr by `filter`; with `phases`, the runtime's phase events to their
/// histograms, each layer with a filter of its own.
fn init_logging(filter: tracing_subscriber::EnvFilter, phases: Option<&crate::metrics::Phases>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    // The `log` crate's records (from dependencies) are wanted up to the log level only, not
    // to the trace level the phase layer raises the process's maximum to.
    let log_level = match filter.max_level_hint() {
        Some(tracing::level_filters::LevelFilter::OFF) => log::LevelFilter::Off,
        Some(tracing::level_filters::LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(tracing::level_filters::LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(tracing::level_filters::LevelFilter::INFO) => log::LevelFilter::Info,
        Some(tracing::level_filters::LevelFilter::DEBUG) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(stderr_colours())
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(lines)
        .with(phases.map(|p| p.layer()))
        .init();
    log::set_max_level(log_level);
}

/// The runtime over the state directory, with the registry settings of the command line.
fn open_runtime(state_dir: &Path, network: NetworkConfig) -> anyhow::Result<Arc<Runtime>> {
    open_runtime_with(state_dir, network, LogLimits::default())
}

/// [`open_runtime`] with limits for container log files. A state directory another process
/// holds fails with an error naming it.
fn open_runtime_with(
    state_dir: &Path,
    network: NetworkConfig,
    log_limits: LogLimits,
) -> anyhow::Result<Arc<Runtime>> {
    let options = RuntimeOptions {
        state_dir: state_dir.to_path_buf(),
        registries: REGISTRIES.get().cloned().unwrap_or_default(),
        network,
        log_limits,
        ..Default::default()
    };
    Runtime::new(options)
        .with_context(|| format!("state directory {}", state_dir.display()))
        .map_err(|e| match daemon::is_locked(&e) {
            true => daemon::locked_error(state_dir, e),
            false => e,
        })
}

/// A duration flag in seconds (`1.5`): refused with a reason, not a panic, when negative, not a
/// number, or beyond what a `Duration` holds.
fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| match secs {
        s if s.is_nan() => "not a number of seconds".to_owned(),
        s if s < 0.0 => "a duration cannot be negative".to_owned(),
        _ => format!(
            "too large: at most {} seconds",
            std::time::Duration::MAX.as_secs()
        ),
    })
}

/// A size as Kubernetes writes quantities (`10Mi`, `1G`, `65536`), for size flags and keys.
fn parse_size(s: &str) -> Result<u64, String> {
    wasmpod_runtime::log::parse_size(s).map_err(|e| e.to_string())
}

/// A rotation limit from a size and a file count, checked against the minimums.
fn rotate_limit(max_size: u64, max_files: u32) -> anyhow::Result<LogLimit> {
    Ok(LogLimit::Rotate {
        max_size,
        max_files,
    }
    .check()?)
}

fn registry_config(mirrors: &[String], insecure: &[String]) -> anyhow::Result<RegistryConfig> {
    let mut config = RegistryConfig {
        insecure: insecure.to_vec(),
        ..Default::default()
    };
    for m in mirrors {
        let (registry, mirror) = m
            .split_once('=')
            .with_context(|| format!("--registry-mirror {m:?} is not REGISTRY=MIRROR"))?;
        config
            .mirrors
            .entry(registry.to_owned())
            .or_default()
            .push(mirror.to_owned());
    }
    Ok(config)
}

/// docker's `config.json`, where the CLI finds registry credentials.
fn docker_config() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
        .map(|d| d.join("config.json"))
}

/// Colour only on a terminal, and not with NO_COLOR set (no-color.org): under systemd stderr
/// goes to journald, where escape codes are noise.
fn stderr_colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/wasmpod");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("wasmpod")
}

/// Resolves at the first Ctrl-C or SIGTERM; a second one ends the process at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("wasmpod: second signal, exiting without waiting");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
