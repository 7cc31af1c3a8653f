//! The content-addressed blob store: `blobs/sha256/<hex>`. A blob becomes visible only once
//! its bytes are all there and their digest and size match (written to `ingest/`, verified,
//! then renamed), so a crash or a lying registry never leaves a partial blob behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::reference::check_digest;
use crate::error::{Error, Result};

pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    pub fn open(root: &Path) -> Result<Self> {
        for dir in ["blobs/sha256", "ingest"] {
            let d = root.join(dir);
            std::fs::create_dir_all(&d).map_err(|e| Error::io(d.display(), e))?;
        }
        // Leftovers of an interrupted ingest are garbage.
        if let Ok(entries) = std::fs::read_dir(root.join("ingest")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
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
            let mut ingest = Ingest::new(self, &digest, bytes.len() as u64)?;
            ingest.write(bytes)?;
            ingest.commit()?;
        }
        Ok(digest)
    }

    /// Stores a file's content; when `expected` is given the content must have that digest.
    pub fn put_file(&self, path: &Path, expected: Option<&str>) -> Result<String> {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        read_chunks(path, |chunk| {
            size += chunk.len() as u64;
            hasher.update(chunk);
            Ok(())
        })?;
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        if let Some(expected) = expected.filter(|e| **e != digest) {
            return Err(Error::invalid(format!(
                "blob {expected} does not match its content ({digest})"
            )));
        }
        if !self.contains(&digest) {
            // Read again through the ingest, which checks the digest once more.
            let mut ingest = Ingest::new(self, &digest, size)?;
            read_chunks(path, |chunk| ingest.write(chunk))?;
            ingest.commit()?;
        }
        Ok(digest)
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
        let mut ingest = Ingest::new(self, digest, size)?;
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
        ingest.commit()
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
            .collect()
    }
}

/// Feeds a file to `f` in 64 KiB chunks.
fn read_chunks(path: &Path, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file
            .read(&mut buf)
            .map_err(|e| Error::io(path.display(), e))?
        {
            0 => return Ok(()),
            n => f(&buf[..n])?,
        }
    }
}

/// A blob being written: hashed and counted on the way, published by `commit`.
struct Ingest {
    tmp: PathBuf,
    dest: PathBuf,
    file: std::fs::File,
    hasher: Sha256,
    digest: String,
    size: u64,
    written: u64,
}

impl Ingest {
    fn new(store: &ContentStore, digest: &str, size: u64) -> Result<Self> {
        let dest = store.path(digest)?;
        let tmp =
            store
                .root
                .join("ingest")
                .join(format!("{}-{}", &digest[7..], rand::random::<u64>()));
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(tmp.display(), e))?;
        Ok(Self {
            tmp,
            dest,
            file,
            hasher: Sha256::new(),
            digest: digest.into(),
            size,
            written: 0,
        })
    }

    fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.written += chunk.len() as u64;
        if self.written > self.size {
            return Err(Error::invalid(format!(
                "blob {} is larger than its declared size of {} bytes",
                self.digest, self.size
            )));
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .map_err(|e| Error::io(format!("storing blob {}", self.digest), e))
    }

    fn commit(mut self) -> Result<()> {
        if self.written != self.size {
            return Err(Error::invalid(format!(
                "blob {} has {} bytes, its descriptor says {}",
                self.digest, self.written, self.size
            )));
        }
        let actual = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if actual != self.digest {
            return Err(Error::invalid(format!(
                "blob content does not match its digest: expected {}, got {actual}",
                self.digest
            )));
        }
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("storing blob {}", self.digest), e))?;
        std::fs::rename(&self.tmp, &self.dest)
            .map_err(|e| Error::io(format!("storing blob {}", self.digest), e))
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
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
