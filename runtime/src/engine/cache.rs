//! On-disk cache of precompiled (AOT) code, keyed by the Wasm's content digest and the engine's
//! compatibility hash.
//!
//! Loading precompiled code is `unsafe` in wasmtime: the bytes are trusted to be code that this
//! engine produced. The cache directory is therefore treated as untrusted input: every artifact
//! carries an HMAC-SHA256 over its digest and payload under a per-node key (kept 0600 beside
//! the cache), and an artifact whose tag does not verify is deleted and recompiled.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"WPAOT01\n";
const TAG_LEN: usize = 32;

pub(crate) struct AotCache {
    dir: PathBuf,
    key: [u8; 32],
    compat: String,
}

impl AotCache {
    /// Opens (creating) the cache in `dir` for an engine with compatibility hash `compat`.
    pub(crate) fn open(dir: &Path, compat: String) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
        let key = load_or_create_key(&dir.join("key"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
            compat,
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.compat))
    }

    fn tag(&self, digest: &str, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(digest.as_bytes());
        mac.update(&[0]);
        mac.update(self.compat.as_bytes());
        mac.update(&[0]);
        mac.update(payload);
        mac
    }

    /// The verified artifact for `digest`, if one is cached. A tampered or truncated artifact
    /// is removed and reported as a miss.
    pub(crate) fn load(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.path(digest);
        let mut bytes = std::fs::read(&path).ok()?;
        let verified = bytes.len() >= MAGIC.len() + TAG_LEN
            && bytes.starts_with(MAGIC)
            && self
                .tag(digest, &bytes[MAGIC.len() + TAG_LEN..])
                .verify_slice(&bytes[MAGIC.len()..MAGIC.len() + TAG_LEN])
                .is_ok();
        if !verified {
            tracing::warn!(path = %path.display(), "AOT artifact failed its integrity check; recompiling");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        bytes.drain(..MAGIC.len() + TAG_LEN);
        Some(bytes)
    }

    /// Stores an artifact atomically: it is visible only once complete.
    pub(crate) fn store(&self, digest: &str, payload: &[u8]) -> Result<()> {
        let path = self.path(digest);
        let tag = self.tag(digest, payload).finalize().into_bytes();
        let mut tmp = tempfile_in(&self.dir)?;
        let write = (|| {
            tmp.1.write_all(MAGIC)?;
            tmp.1.write_all(&tag)?;
            tmp.1.write_all(payload)?;
            tmp.1.sync_data()?;
            std::fs::rename(&tmp.0, &path)
        })();
        if let Err(e) = write {
            let _ = std::fs::remove_file(&tmp.0);
            return Err(Error::io(format!("AOT cache {}", path.display()), e));
        }
        Ok(())
    }

    /// Whether a (not yet verified) artifact exists for `digest`.
    /// Deletes the artifact of `digest`, if any: its Wasm is gone from the image store.
    pub(crate) fn remove(&self, digest: &str) {
        match std::fs::remove_file(self.path(digest)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(digest, "removing an AOT artifact: {e}"),
        }
    }

    pub(crate) fn contains(&self, digest: &str) -> bool {
        self.path(digest).exists()
    }
}

fn tempfile_in(dir: &Path) -> Result<(PathBuf, std::fs::File)> {
    let name = format!(".tmp-{}-{}", std::process::id(), rand::random::<u64>());
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(path.display(), e))?;
    Ok((path, file))
}

fn load_or_create_key(path: &Path) -> Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() == 32 => {
            let mode = std::fs::metadata(path).map_err(|e| Error::io(path.display(), e))?;
            if mode.permissions().mode() & 0o077 != 0 {
                return Err(Error::invalid(format!(
                    "AOT cache key {} is readable by others; refusing to trust it",
                    path.display()
                )));
            }
            Ok(bytes.try_into().expect("length checked"))
        }
        Ok(_) => Err(Error::invalid(format!(
            "AOT cache key {} is corrupt; delete it (the cache is rebuilt)",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            let dir = path.parent().expect("key has a parent");
            let (tmp, mut file) = tempfile_in(dir)?;
            file.write_all(&key)
                .map_err(|e| Error::io(tmp.display(), e))?;
            // Another process may have won the race: use whichever key landed first.
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&tmp);
                    Ok(key)
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&tmp);
                    load_or_create_key(path)
                }
            }
        }
        Err(e) => Err(Error::io(path.display(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let dir = tempfile::tempdir().unwrap();
        let cache = AotCache::open(dir.path(), "c1".into()).unwrap();
        assert!(cache.load("d").is_none());
        cache.store("d", b"payload").unwrap();
        assert_eq!(cache.load("d").unwrap(), b"payload");

        // A flipped byte in the payload is caught and the artifact dropped.
        let path = cache.path("d");
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(cache.load("d").is_none());
        assert!(!path.exists());

        // An artifact stored under another digest does not verify under this one.
        cache.store("other", b"payload").unwrap();
        std::fs::copy(cache.path("other"), cache.path("d")).unwrap();
        assert!(cache.load("d").is_none());

        // Truncated files are misses, not panics.
        std::fs::write(cache.path("d"), b"WPAOT01\nxx").unwrap();
        assert!(cache.load("d").is_none());
    }

    #[test]
    fn key_is_kept_across_opens_and_private() {
        let dir = tempfile::tempdir().unwrap();
        AotCache::open(dir.path(), "c".into())
            .unwrap()
            .store("d", b"x")
            .unwrap();
        let again = AotCache::open(dir.path(), "c".into()).unwrap();
        assert_eq!(again.load("d").unwrap(), b"x");
        let mode = std::fs::metadata(dir.path().join("key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
