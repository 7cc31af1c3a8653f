//! `wasmpod.v1.Images` beside the CRI on the daemon's socket: the image calls the CRI has no
//! verb for (import, export) and the CLI's own views (list, inspect), so `wasmpod image` works
//! while the daemon holds the state directory. Transport only: the image store does the work.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Request, Response, Status, Streaming};
use wasmpod_runtime::error::{Error, Result as CoreResult};
use wasmpod_runtime::image::ImageStore;
use wasmpod_runtime::runtime::Runtime;

use super::convert::status;
use crate::proto::images_server::Images;
use crate::proto::{Chunk, Empty, ImportChunk, Json, Reference};

/// Bytes per message of an import or export: well under the message limit either way.
pub const CHUNK: usize = 1 << 20;

pub struct ImagesApi {
    pub rt: Arc<Runtime>,
}

/// What `wasmpod image inspect` prints: the record, its AOT status, manifest and config.
pub fn inspect(store: &ImageStore, reference: &str) -> CoreResult<serde_json::Value> {
    let record = store
        .get(reference)?
        .ok_or_else(|| Error::not_found(format!("image {reference} not found")))?;
    let (manifest, config) = store.raw_json(&record)?;
    Ok(serde_json::json!({
        "image": record,
        "aot": if store.has_artifact(&record) { "compiled" } else { "missing" },
        "manifest": manifest,
        "config": config,
    }))
}

fn json(value: &impl serde::Serialize) -> Result<Response<Json>, Status> {
    serde_json::to_string(value)
        .map(|json| Response::new(Json { json }))
        .map_err(|e| Status::internal(format!("encoding the answer: {e}")))
}

fn io_status(what: &str, e: std::io::Error) -> Status {
    Status::internal(format!("{what}: {e}"))
}

impl ImagesApi {
    /// A transfer file inside the state directory: the store imports from and exports to
    /// paths, and the state directory is private to the daemon and on its filesystem.
    fn transfer_file(&self) -> Result<tempfile::NamedTempFile, Status> {
        let dir = self.rt.state_dir();
        tempfile::Builder::new()
            .prefix(".transfer-")
            .tempfile_in(dir)
            .map_err(|e| io_status(&format!("temp file in {}", dir.display()), e))
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;

#[tonic::async_trait]
impl Images for ImagesApi {
    async fn import(&self, r: Request<Streaming<ImportChunk>>) -> Result<Response<Json>, Status> {
        let mut chunks = r.into_inner();
        let tmp = self.transfer_file()?;
        let file = tmp
            .reopen()
            .map_err(|e| io_status("opening the transfer file", e))?;
        let mut file = tokio::fs::File::from_std(file);
        let (mut tag, mut size, mut received) = (None, 0, 0);
        while let Some(chunk) = chunks.message().await? {
            if tag.is_none() {
                (tag, size) = (Some(chunk.tag), chunk.size);
            }
            received += chunk.data.len() as u64;
            file.write_all(&chunk.data)
                .await
                .map_err(|e| io_status("writing the transfer file", e))?;
        }
        if received != size {
            return Err(Status::aborted(format!(
                "the import ended after {received} of {size} bytes"
            )));
        }
        file.flush()
            .await
            .map_err(|e| io_status("writing the transfer file", e))?;
        let tag = tag.filter(|t| !t.is_empty());
        let records = self
            .rt
            .images()
            .import(tmp.path(), tag.as_deref())
            .await
            .map_err(status)?;
        json(&records)
    }

    type ExportStream = ChunkStream;

    async fn export(&self, r: Request<Reference>) -> Result<Response<ChunkStream>, Status> {
        let tmp = self.transfer_file()?;
        self.rt
            .images()
            .export(&r.into_inner().reference, tmp.path())
            .await
            .map_err(status)?;
        let file = std::fs::File::open(tmp.path())
            .map_err(|e| io_status("opening the exported archive", e))?;
        // The open file outlives its name: dropping `tmp` unlinks it now.
        drop(tmp);
        let chunks =
            futures::stream::unfold(Some(tokio::fs::File::from_std(file)), |file| async move {
                let mut file = file?;
                let mut data = vec![0; CHUNK];
                match file.read(&mut data).await {
                    Ok(0) => None,
                    Ok(n) => {
                        data.truncate(n);
                        Some((Ok(Chunk { data }), Some(file)))
                    }
                    Err(e) => Some((Err(io_status("reading the exported archive", e)), None)),
                }
            });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn list(&self, _: Request<Empty>) -> Result<Response<Json>, Status> {
        json(&self.rt.images().list().map_err(status)?)
    }

    async fn inspect(&self, r: Request<Reference>) -> Result<Response<Json>, Status> {
        json(&inspect(self.rt.images(), &r.into_inner().reference).map_err(status)?)
    }
}
