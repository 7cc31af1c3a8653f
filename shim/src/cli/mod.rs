//! Command-line parsing and dispatch; each subcommand lives in its own file.

mod image;
mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wasmpod_runtime::image::RegistryConfig;
use wasmpod_runtime::runtime::{Runtime, RuntimeOptions};

#[derive(Parser)]
#[command(
    name = "wasmpod",
    version,
    about = "Run Kubernetes Pods whose containers are WebAssembly programs"
)]
struct Cli {
    /// Where pods' scratch space and the compiled-code cache live
    /// [default: /var/lib/wasmpod as root, else $XDG_STATE_HOME/wasmpod or ~/.local/state/wasmpod]
    #[arg(long, global = true, env = "WASMPOD_STATE_DIR")]
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

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(run::RunArgs),
    #[command(subcommand)]
    Image(image::ImageCommand),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let state_dir = cli.state_dir.unwrap_or_else(default_state_dir);
    let registries = match registry_config(&cli.mirrors, &cli.insecure) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let _ = REGISTRIES.set(registries);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args, state_dir).await,
            Command::Image(cmd) => image::run(cmd, state_dir).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

static REGISTRIES: std::sync::OnceLock<RegistryConfig> = std::sync::OnceLock::new();

/// The runtime over the state directory, with the registry settings of the command line.
fn open_runtime(state_dir: &Path) -> anyhow::Result<Arc<Runtime>> {
    let options = RuntimeOptions {
        state_dir: state_dir.to_path_buf(),
        registries: REGISTRIES.get().cloned().unwrap_or_default(),
        ..Default::default()
    };
    Runtime::new(options).with_context(|| format!("state directory {}", state_dir.display()))
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

fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/wasmpod");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("wasmpod")
}
