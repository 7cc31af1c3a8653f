//! Where a container's Wasm comes from. The pod code asks an [`ImageSource`] for an image
//! reference and gets bytes back; local files are one source, registries plug in beside it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::{Error, Result};

/// A resolved image: the Wasm to run and what the image says about running it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The reference as resolved (`file:///abs/app.wasm`).
    pub reference: String,
    pub wasm: Arc<[u8]>,
    /// The default argv (the image's entrypoint and cmd); `[]` leaves it to the container.
    pub entrypoint: Vec<String>,
}

pub type ImageFuture<'a> = Pin<Box<dyn Future<Output = Result<Image>> + Send + 'a>>;

/// Resolves image references to Wasm.
pub trait ImageSource: Send + Sync {
    fn resolve<'a>(&'a self, reference: &'a str) -> ImageFuture<'a>;
}

/// Images that are `.wasm` files on this machine: `file:///path/app.wasm` or an absolute path.
#[derive(Debug, Default)]
pub struct LocalFiles;

/// Refuses Wasm files larger than this: no real program is, and reading one would waste memory.
pub const MAX_WASM_SIZE: u64 = 512 << 20;

impl ImageSource for LocalFiles {
    fn resolve<'a>(&'a self, reference: &'a str) -> ImageFuture<'a> {
        Box::pin(async move {
            let path = PathBuf::from(reference.strip_prefix("file://").unwrap_or(reference));
            if !path.is_absolute() {
                return Err(Error::invalid(format!(
                    "image {reference:?} is neither an absolute .wasm path nor file://; \
                     registry images are not supported yet"
                )));
            }
            let meta = tokio::fs::metadata(&path)
                .await
                .map_err(|e| Error::io(format!("image file {}", path.display()), e))?;
            if !meta.is_file() {
                return Err(Error::invalid(format!(
                    "image {} is not a file",
                    path.display()
                )));
            }
            if meta.len() > MAX_WASM_SIZE {
                return Err(Error::invalid(format!(
                    "image {} is {} bytes, over the {MAX_WASM_SIZE}-byte limit",
                    path.display(),
                    meta.len()
                )));
            }
            let wasm = tokio::fs::read(&path)
                .await
                .map_err(|e| Error::io(format!("image file {}", path.display()), e))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            Ok(Image {
                reference: format!("file://{}", path.display()),
                wasm: wasm.into(),
                entrypoint: name.into_iter().collect(),
            })
        })
    }
}
