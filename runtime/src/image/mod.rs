//! Where a container's Wasm comes from. The pod code asks an [`ImageSource`] for an image
//! reference and gets the Wasm back: [`LocalFiles`] reads `.wasm` paths, the [`ImageStore`]
//! serves OCI images it pulled or imported (and local paths through `LocalFiles`).

mod archive;
mod content;
mod format;
mod reference;
mod registry;
mod scratch;
mod store;
mod unpack;

pub use format::WasmFormat;
pub use registry::{Credentials, RegistryConfig, RegistryTimeouts};
pub use store::{ImageRecord, ImageStore, PullPolicy, PullProgress};
pub use unpack::UnpackLimits;

/// The registry host of an OCI image reference (`hello` → `docker.io`); `None` for local files
/// and references that do not parse.
pub fn registry_of(image: &str) -> Option<String> {
    if image.starts_with("file://") || image.starts_with('/') {
        return None;
    }
    reference::parse(image)
        .ok()
        .map(|r| r.registry().to_owned())
}

use crate::engine::Wasm;
use crate::error::{Error, Result};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

/// A resolved image: the Wasm to run and what the image says about running it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The reference as resolved (`file:///abs/app.wasm`, or the image id).
    pub reference: String,
    pub wasm: Wasm,
    /// The default argv (the image's entrypoint and cmd).
    pub entrypoint: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// The image's files, shown read-only at `/` ("compat" images).
    pub rootfs: Option<PathBuf>,
}

pub type ImageFuture<'a> = Pin<Box<dyn Future<Output = Result<Image>> + Send + 'a>>;

/// Resolves image references to Wasm.
pub trait ImageSource: Send + Sync {
    fn resolve<'a>(&'a self, reference: &'a str) -> ImageFuture<'a>;
}

/// Images that are `.wasm` files on this machine: `file:///path/app.wasm` or an absolute path.
/// A file's digest is remembered by (device, inode, size, mtime), so a start with an unchanged
/// file finds its compiled program without reading the file again.
#[derive(Debug, Default)]
pub struct LocalFiles {
    digests: std::sync::Mutex<std::collections::HashMap<PathBuf, (FileKey, String)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
}

/// Refuses Wasm files larger than this: no real program is, and reading one would waste memory.
pub const MAX_WASM_SIZE: u64 = 512 << 20;

impl ImageSource for LocalFiles {
    fn resolve<'a>(&'a self, reference: &'a str) -> ImageFuture<'a> {
        Box::pin(async move {
            let path = PathBuf::from(reference.strip_prefix("file://").unwrap_or(reference));
            if !path.is_absolute() {
                return Err(Error::invalid(format!(
                    "image {reference:?} is not an absolute .wasm path or file:// URL"
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
            let key = FileKey::of(&meta);
            let known = {
                let digests = self.digests.lock().unwrap_or_else(|e| e.into_inner());
                digests
                    .get(&path)
                    .filter(|(k, _)| *k == key)
                    .map(|(_, d)| d.clone())
            };
            let wasm = match known {
                Some(digest) => Wasm::File {
                    path: path.clone(),
                    digest,
                },
                None => {
                    let bytes: std::sync::Arc<[u8]> = tokio::fs::read(&path)
                        .await
                        .map_err(|e| Error::io(format!("image file {}", path.display()), e))?
                        .into();
                    let digest = crate::engine::sha256_digest(&bytes);
                    let mut digests = self.digests.lock().unwrap_or_else(|e| e.into_inner());
                    digests.insert(path.clone(), (key, digest));
                    Wasm::Bytes(bytes)
                }
            };
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            Ok(Image {
                reference: format!("file://{}", path.display()),
                wasm,
                entrypoint: name.into_iter().collect(),
                env: Vec::new(),
                working_dir: None,
                rootfs: None,
            })
        })
    }
}
