//! `wasmpod image …`: pull, import, export, list, inspect and remove images.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmpod_runtime::image::{Credentials, ImageRecord, PullProgress, RegistryTimeouts};

use super::daemon::Daemon;
use crate::cri::wasmpod_images::CHUNK;
use crate::proto::images_client::ImagesClient;
use crate::proto::{Empty, ImportChunk, Json, Reference};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Pull an image from its registry
    ///
    /// Credentials come from ~/.docker/config.json ($DOCKER_CONFIG). Multi-platform indexes
    /// resolve to their wasi/wasm entry; the Wasm is compiled when it arrives. Prints the
    /// image's repo digest. Through a running daemon the daemon's registry settings apply.
    ///
    /// Examples:
    ///     wasmpod image pull 127.0.0.1:5000/hello:1
    ///     wasmpod image pull --insecure-registry registry.lan:5000 registry.lan:5000/app:2
    #[command(verbatim_doc_comment)]
    Pull {
        /// Image reference (`hello` means docker.io/library/hello:latest)
        reference: String,
        #[command(flatten)]
        timeouts: TimeoutArgs,
    },
    /// Import an OCI layout tar, a `docker save` tar, or a bare .wasm
    ///
    /// A bare .wasm becomes a Wasm OCI artifact and needs --tag. Prints each imported
    /// image's id and names.
    ///
    /// Examples:
    ///     wasmpod image import hello-oci.tar --tag local/hello:1
    ///     wasmpod image import app.wasm --tag local/app:1
    #[command(verbatim_doc_comment)]
    Import {
        /// The archive or .wasm file
        file: PathBuf,
        /// Name for the image (required for a bare .wasm; otherwise replaces the archive's)
        #[arg(long)]
        tag: Option<String>,
    },
    /// Write an image as an OCI layout tar
    ///
    /// The archive imports elsewhere with `wasmpod image import` or copies to a registry
    /// with `skopeo copy oci-archive:FILE docker://…`, for offline nodes.
    ///
    /// Example:
    ///     wasmpod image export local/app:1 app-oci.tar
    #[command(verbatim_doc_comment)]
    Export {
        /// Image reference or id
        reference: String,
        /// The tar file to write
        file: PathBuf,
    },
    /// List images
    ///
    /// One line per image: reference, id, size, Wasm packaging format, creation time; or
    /// every record as JSON.
    ///
    /// Examples:
    ///     wasmpod image ls
    ///     wasmpod image ls -o json
    #[command(alias = "list", verbatim_doc_comment)]
    Ls {
        /// Table or JSON
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show an image's record, manifest, config and AOT status as JSON
    ///
    /// Example:
    ///     wasmpod image inspect local/hello:1
    #[command(verbatim_doc_comment)]
    Inspect {
        /// Image reference or id
        reference: String,
    },
    /// Remove images
    ///
    /// Removing a name removes that name; removing by id removes the whole image. Blobs no
    /// image uses any more are freed.
    ///
    /// Examples:
    ///     wasmpod image rm local/hello:1
    ///     wasmpod image rm sha256:3f1c…
    #[command(verbatim_doc_comment)]
    Rm {
        /// Image references or ids
        #[arg(required = true)]
        references: Vec<String>,
    },
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
    if let Some(daemon) = Daemon::find(&state_dir).await {
        remote(cmd, &daemon).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let rt = super::open_runtime(&state_dir, Default::default())?;
    let store = rt.images();
    match cmd {
        ImageCommand::Pull { reference, .. } => {
            let credentials = credentials(&reference)?;
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
            print_imported(&store.import(&file, tag.as_deref()).await?)
        }
        ImageCommand::Export { reference, file } => store.export(&reference, &file).await?,
        ImageCommand::Ls { output } => print_list(store.list()?, output)?,
        ImageCommand::Inspect { reference } => {
            let out = crate::cri::wasmpod_images::inspect(store, &reference)?;
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

/// The registry credentials of `reference` in docker's config file, if any.
fn credentials(reference: &str) -> anyhow::Result<Credentials> {
    let registry = wasmpod_runtime::image::registry_of(reference);
    Ok(match (super::docker_config(), registry) {
        (Some(path), Some(r)) => Credentials::from_docker_config(&path, &r)?.unwrap_or_default(),
        _ => Credentials::default(),
    })
}

/// The command through the daemon that holds the state directory: pull and rm over the CRI
/// ImageService (as kubelet pulls), the rest over `wasmpod.v1.Images`.
async fn remote(cmd: ImageCommand, daemon: &Daemon) -> anyhow::Result<()> {
    let mut cri = ImageServiceClient::new(daemon.channel.clone());
    let mut own = ImagesClient::new(daemon.channel.clone());
    let spec = |image: &str| {
        Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        })
    };
    match cmd {
        ImageCommand::Pull { reference, .. } => {
            eprintln!(
                "pulling {reference} through {} (no progress over the CRI)",
                daemon.record.describe()
            );
            let c = credentials(&reference)?;
            let auth = Some(cri::AuthConfig {
                username: c.username,
                password: c.password,
                auth: c.auth,
                server_address: String::new(),
                identity_token: c.identity_token,
                registry_token: c.registry_token,
            });
            let pulled = cri
                .pull_image(cri::PullImageRequest {
                    image: spec(&reference),
                    auth,
                    sandbox_config: None,
                })
                .await
                .map_err(|s| daemon.error(s))?
                .into_inner()
                .image_ref;
            let status = cri
                .image_status(cri::ImageStatusRequest {
                    image: spec(&pulled),
                    verbose: false,
                })
                .await
                .map_err(|s| daemon.error(s))?
                .into_inner();
            let digest = status.image.and_then(|i| i.repo_digests.into_iter().next());
            println!("{}", digest.unwrap_or(pulled));
        }
        ImageCommand::Import { file, tag } => {
            let reader = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let size = reader.metadata().await?.len();
            let chunks = import_chunks(reader, tag.unwrap_or_default(), size);
            let records: Vec<ImageRecord> = decode(own.import(chunks).await, daemon)?;
            print_imported(&records);
        }
        ImageCommand::Export { reference, file } => {
            let mut chunks = own
                .export(Reference { reference })
                .await
                .map_err(|s| daemon.error(s))?
                .into_inner();
            // Written beside the target and renamed at the end, so a failed export leaves no
            // partial archive under the name.
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            let tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("temp file in {}", dir.display()))?;
            let mut out = tokio::fs::File::from_std(tmp.reopen()?);
            while let Some(chunk) = chunks.message().await.map_err(|s| daemon.error(s))? {
                out.write_all(&chunk.data)
                    .await
                    .with_context(|| format!("writing {}", tmp.path().display()))?;
            }
            out.flush().await?;
            tmp.persist(&file)
                .with_context(|| format!("writing {}", file.display()))?;
        }
        ImageCommand::Ls { output } => {
            print_list(decode(own.list(Empty {}).await, daemon)?, output)?
        }
        ImageCommand::Inspect { reference } => {
            let out: serde_json::Value =
                decode(own.inspect(Reference { reference }).await, daemon)?;
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ImageCommand::Rm { references } => {
            for r in references {
                // RemoveImage is idempotent for kubelet; the CLI says when a name is unknown.
                let known = cri
                    .image_status(cri::ImageStatusRequest {
                        image: spec(&r),
                        verbose: false,
                    })
                    .await
                    .map_err(|s| daemon.error(s))?
                    .into_inner()
                    .image
                    .is_some();
                anyhow::ensure!(known, "image {r} not found");
                cri.remove_image(cri::RemoveImageRequest { image: spec(&r) })
                    .await
                    .map_err(|s| daemon.error(s))?;
                println!("removed {r}");
            }
        }
    }
    Ok(())
}

/// The file as import chunks; the first carries the tag and size (and is sent even for an
/// empty file). A read error ends the stream short, which the daemon refuses.
fn import_chunks(
    file: tokio::fs::File,
    tag: String,
    size: u64,
) -> impl futures::Stream<Item = ImportChunk> + Send + 'static {
    futures::stream::unfold(Some((file, Some(tag))), move |state| async move {
        let (mut file, tag) = state?;
        let mut data = vec![0; CHUNK];
        let n = match file.read(&mut data).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("reading the file to import: {e}");
                return None;
            }
        };
        if n == 0 && tag.is_none() {
            return None;
        }
        data.truncate(n);
        let first = tag.is_some();
        let next = (n > 0).then_some((file, None));
        let chunk = ImportChunk {
            tag: tag.unwrap_or_default(),
            data,
            size: if first { size } else { 0 },
        };
        Some((chunk, next))
    })
}

/// A daemon's JSON answer, decoded.
fn decode<T: serde::de::DeserializeOwned>(
    answer: Result<tonic::Response<Json>, tonic::Status>,
    daemon: &Daemon,
) -> anyhow::Result<T> {
    let json = answer.map_err(|s| daemon.error(s))?.into_inner().json;
    serde_json::from_str(&json).context("the daemon's answer")
}

fn print_imported(records: &[ImageRecord]) {
    for record in records {
        println!("{} {}", record.id, record.repo_tags.join(" "));
    }
}

fn print_list(mut images: Vec<ImageRecord>, output: Output) -> anyhow::Result<()> {
    images.sort_by(|a, b| a.repo_tags.cmp(&b.repo_tags));
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&images)?),
        Output::Table => print_table(&images),
    }
    Ok(())
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
