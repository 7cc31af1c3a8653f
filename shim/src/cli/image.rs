//! `wasmpod image …`: pull, import, export, list, inspect and remove images.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use clap::{Args, Subcommand, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use wasmpod_runtime::image::{Credentials, ImageRecord, PullProgress, RegistryTimeouts};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Pull an image from its registry (credentials from ~/.docker/config.json)
    Pull {
        reference: String,
        #[command(flatten)]
        timeouts: TimeoutArgs,
    },
    /// Import an OCI layout tar, a `docker save` tar, or a bare .wasm (needs --tag)
    Import {
        file: PathBuf,
        #[arg(long)]
        tag: Option<String>,
    },
    /// Write an image as an OCI layout tar
    Export { reference: String, file: PathBuf },
    /// List images
    #[command(alias = "list")]
    Ls {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show an image's record, manifest, config and AOT status as JSON
    Inspect { reference: String },
    /// Remove an image name (by id: the whole image); unused blobs are freed
    Rm { references: Vec<String> },
}

/// How long the registry may take (a stalled one fails the pull instead of hanging it).
#[derive(Args)]
pub struct TimeoutArgs {
    /// Seconds to connect to the registry
    #[arg(long, value_name = "SECS", default_value_t = RegistryTimeouts::DEFAULT.connect.as_secs())]
    connect_timeout: u64,
    /// Seconds the registry may send nothing
    #[arg(long, value_name = "SECS", default_value_t = RegistryTimeouts::DEFAULT.read.as_secs())]
    read_timeout: u64,
    /// Seconds for all the downloads of the pull
    #[arg(long, value_name = "SECS", default_value_t = RegistryTimeouts::DEFAULT.pull.as_secs())]
    pull_timeout: u64,
}

impl ImageCommand {
    /// `timeouts` with the ones a pull's flags set.
    pub fn registry_timeouts(
        &self,
        timeouts: RegistryTimeouts,
    ) -> anyhow::Result<RegistryTimeouts> {
        let ImageCommand::Pull { timeouts: t, .. } = self else {
            return Ok(timeouts);
        };
        Ok(timeouts.with_secs(
            Some(t.connect_timeout),
            Some(t.read_timeout),
            Some(t.pull_timeout),
        )?)
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub async fn run(cmd: ImageCommand, state_dir: PathBuf) -> anyhow::Result<ExitCode> {
    let rt = super::open_runtime(&state_dir, Default::default())?;
    let store = rt.images();
    match cmd {
        ImageCommand::Pull { reference, .. } => {
            let registry = wasmpod_runtime::image::registry_of(&reference);
            let credentials = match (super::docker_config(), registry) {
                (Some(path), Some(r)) => {
                    Credentials::from_docker_config(&path, &r)?.unwrap_or_default()
                }
                _ => Credentials::default(),
            };
            let bars = Bars::default();
            let record = store.pull(&reference, &credentials, Some(&bars)).await?;
            println!(
                "{}",
                record
                    .repo_digests
                    .first()
                    .unwrap_or(&record.manifest_digest)
            );
        }
        ImageCommand::Import { file, tag } => {
            for record in store.import(&file, tag.as_deref()).await? {
                println!("{} {}", record.id, record.repo_tags.join(" "));
            }
        }
        ImageCommand::Export { reference, file } => store.export(&reference, &file).await?,
        ImageCommand::Ls { output } => {
            let mut images = store.list()?;
            images.sort_by(|a, b| a.repo_tags.cmp(&b.repo_tags));
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&images)?),
                Output::Table => print_table(&images),
            }
        }
        ImageCommand::Inspect { reference } => {
            let record = store
                .get(&reference)?
                .ok_or_else(|| anyhow::anyhow!("image {reference} not found"))?;
            let (manifest, config) = store.raw_json(&record)?;
            let out = serde_json::json!({
                "image": record,
                "aot": if store.has_artifact(&record) { "compiled" } else { "missing" },
                "manifest": manifest,
                "config": config,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ImageCommand::Rm { references } => {
            for r in references {
                store.remove(&r).await?;
                println!("removed {r}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(images: &[ImageRecord]) {
    let rows: Vec<[String; 5]> = images
        .iter()
        .map(|i| {
            [
                i.repo_tags
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "<none>".into()),
                i.id.trim_start_matches("sha256:")[..12].to_owned(),
                human_size(i.size),
                i.format.as_str().to_owned(),
                i.run.created.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["REFERENCE", "IMAGE ID", "SIZE", "FORMAT", "CREATED"];
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 5]| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// One progress bar per blob of a pull.
#[derive(Default)]
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl PullProgress for Bars {
    fn start(&self, digest: &str, media_type: &str, size: u64) {
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        let kind = media_type.rsplit(['.', '/']).next().unwrap_or(media_type);
        bar.set_message(format!(
            "{} {kind}",
            &digest.trim_start_matches("sha256:")[..12]
        ));
        self.bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest.to_owned(), bar);
    }
    fn advance(&self, digest: &str, done: u64) {
        if let Some(bar) = self
            .bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
        {
            bar.set_position(done);
        }
    }
    fn finish(&self, digest: &str) {
        if let Some(bar) = self
            .bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
        {
            bar.finish();
        }
    }
}
