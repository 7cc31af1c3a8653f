//! The content-addressed blob store: `blobs/sha256/<hex>`, private to the node (directories
//! 0700, blobs 0600). A blob becomes visible only once its bytes are all there and their
//! digest and size match (written to locked scratch in `ingest/`, verified, then renamed), so a
//! crash or a lying registry never leaves a partial blob behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::reference::check_digest;
use super::scratch::{self, Scratch};
use crate::error::{Error, Result};

pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    pub fn open(root: &Path) -> Result<Self> {
        for dir in ["", "blobs", "blobs/sha256", "ingest"] {
            scratch::private_dir(&root.join(dir))?;
        }
        let store = Self {
            root: root.to_path_buf(),
        };
        store.remove_stale();
        Ok(store)
    }

    /// Deletes the leftovers of interrupted ingests (never another process's live ingest).
    pub fn remove_stale(&self) {
        scratch::remove_stale(&self.root.join("ingest"), |_| false);
    }

    /// The path of a blob (whether or not it exists). Refuses digests that are not sha256 hex.
    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(check_digest(digest)?))
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.exists())
    }

    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.path(digest)?;
        std::fs::read(&path).map_err(|e| Error::io(format!("blob {digest}"), e))
    }

    pub fn size(&self, digest: &str) -> Option<u64> {
        std::fs::metadata(self.path(digest).ok()?)
            .ok()
            .map(|m| m.len())
    }

    /// Stores `bytes` under their own digest and returns it.
    pub fn put(&self, bytes: &[u8]) -> Result<String> {
        let digest = crate::engine::sha256_digest(bytes);
        if !self.contains(&digest) {
            let mut ingest = Ingest::new(self, Some(&digest), bytes.len() as u64)?;
            ingest.write(bytes)?;
            ingest.commit()?;
        }
        Ok(digest)
    }

    /// Stores the `size` bytes `reader` yields under their digest and returns it.
    pub fn put_reader(&self, reader: &mut dyn Read, size: u64) -> Result<String> {
        let mut ingest = Ingest::new(self, None, size)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return ingest.commit(),
                Ok(n) => ingest.write(&buf[..n])?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("reading a blob", e)),
            }
        }
    }

    /// Stores a file's content and returns its digest.
    pub fn put_file(&self, path: &Path) -> Result<String> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io(path.display(), e))?
            .len();
        self.put_reader(&mut file, size)
            .map_err(|e| e.context(path.display()))
    }

    /// Streams a blob in, checking it against `digest` and `size` as it arrives.
    /// `progress` is called with the bytes received so far.
    pub async fn ingest<S, E>(
        &self,
        digest: &str,
        size: u64,
        mut stream: S,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if self.contains(digest) {
            progress(size);
            return Ok(());
        }
        let mut ingest = Ingest::new(self, Some(digest), size)?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                let text = e.to_string();
                let kind = if text.to_ascii_lowercase().contains("digest") {
                    crate::error::ErrorKind::InvalidArgument
                } else {
                    crate::error::ErrorKind::Unavailable
                };
                Error::new(kind, format!("downloading {digest}: {text}"))
            })?;
            ingest.write(&chunk)?;
            progress(ingest.written);
        }
        ingest.commit().map(drop)
    }

    /// Deletes a blob; a missing blob is fine.
    pub fn remove(&self, digest: &str) -> Result<()> {
        match std::fs::remove_file(self.path(digest)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing blob {digest}"), e))
            }
            _ => Ok(()),
        }
    }

    /// Digests of every stored blob.
    pub fn list(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|hex| format!("sha256:{hex}"))
            .filter(|digest| check_digest(digest).is_ok())
            .collect()
    }
}

/// A blob being written: hashed and counted on the way, published by `commit`.
struct Ingest<'a> {
    store: &'a ContentStore,
    scratch: Scratch,
    hasher: Sha256,
    /// The digest the content must have, when the caller knows it.
    expected: Option<String>,
    size: u64,
    written: u64,
}

impl<'a> Ingest<'a> {
    fn new(store: &'a ContentStore, expected: Option<&str>, size: u64) -> Result<Self> {
        let hint = match expected {
            Some(d) => check_digest(d)?,
            None => "blob",
        };
        Ok(Self {
            store,
            scratch: Scratch::file(&store.root.join("ingest"), hint)?,
            hasher: Sha256::new(),
            expected: expected.map(str::to_owned),
            size,
            written: 0,
        })
    }

    /// The blob, as errors name it (never its content).
    fn name(&self) -> &str {
        self.expected.as_deref().unwrap_or("being stored")
    }

    fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.written += chunk.len() as u64;
        if self.written > self.size {
            return Err(Error::invalid(format!(
                "blob {} is larger than its declared size of {} bytes",
                self.name(),
                self.size
            )));
        }
        self.hasher.update(chunk);
        let written = self.scratch.handle().write_all(chunk);
        written.map_err(|e| Error::io(format!("storing blob {}", self.name()), e))
    }

    /// Checks size and digest, then makes the blob visible; returns its digest.
    fn commit(mut self) -> Result<String> {
        if self.written != self.size {
            return Err(Error::invalid(format!(
                "blob {} has {} bytes, its descriptor says {}",
                self.name(),
                self.written,
                self.size
            )));
        }
        let actual = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if let Some(expected) = self.expected.as_deref().filter(|e| **e != actual) {
            return Err(Error::invalid(format!(
                "blob content does not match its digest: expected {expected}, got {actual}"
            )));
        }
        let dest = self.store.path(&actual)?;
        if dest.exists() {
            return Ok(actual); // the scratch copy is dropped
        }
        let storing = |e| Error::io(format!("storing blob {actual}"), e);
        self.scratch.handle().sync_all().map_err(storing)?;
        self.scratch.publish(&dest).map_err(storing)?;
        Ok(actual)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        parts: &[&'static [u8]],
    ) -> impl Stream<Item = std::result::Result<bytes::Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(bytes::Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn verifies_digest_and_size_and_leaves_nothing_on_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ContentStore::open(tmp.path()).unwrap();
        let good = crate::engine::sha256_digest(b"hello world");
        let none = |_| {};
        store
            .ingest(&good, 11, chunks(&[b"hello ", b"world"]), &none)
            .await
            .unwrap();
        assert_eq!(store.read(&good).unwrap(), b"hello world");

        let other = crate::engine::sha256_digest(b"other");
        let err = store
            .ingest(&other, 11, chunks(&[b"hello world"]), &none)
            .await
            .unwrap_err();
        assert!(err.message.contains("does not match"), "{err}");
        let err = store
            .ingest(&other, 3, chunks(&[b"hello world"]), &none)
            .await
            .unwrap_err();
        assert!(err.message.contains("larger"), "{err}");
        assert!(!store.contains(&other));
        assert!(std::fs::read_dir(tmp.path().join("ingest"))
            .unwrap()
            .next()
            .is_none());
        assert!(store.path("sha256:../../etc/passwd").is_err());
    }
}
