//! Temporary files and directories of the image store (blobs being written, layers being
//! unpacked). Each is held under an exclusive `flock` by the process writing it, so cleanup
//! (which any wasmpod process may run) deletes only entries whose lock it can take: scratch
//! whose writer is gone.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Names of scratch entries start with this (never a digest, so never an image's name).
const PREFIX: &str = ".tmp-";

/// A locked scratch entry; dropping it deletes the entry (unless it was renamed away first)
/// and releases the lock.
pub(super) struct Scratch {
    path: PathBuf,
    /// The open entry: the lock, and for a file the handle written through.
    handle: File,
    dir: bool,
}

impl Scratch {
    /// A new private (0600) file in `dir`, named after `hint`.
    pub(super) fn file(dir: &Path, hint: &str) -> Result<Self> {
        Self::create(dir, hint, false)
    }

    /// A new private (0700) directory in `dir`, named after `hint`.
    pub(super) fn dir(dir: &Path, hint: &str) -> Result<Self> {
        Self::create(dir, hint, true)
    }

    fn create(parent: &Path, hint: &str, dir: bool) -> Result<Self> {
        loop {
            let path = parent.join(format!("{PREFIX}{hint}-{:016x}", rand::random::<u64>()));
            let handle = if dir {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .and_then(|()| File::open(&path))
            } else {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
            }
            .map_err(|e| Error::io(path.display(), e))?;
            handle.lock().map_err(|e| Error::io(path.display(), e))?;
            // Another process's cleanup may have taken the lock between our create and our
            // lock, and deleted the entry: then it has no links left, and we start over.
            let meta = handle
                .metadata()
                .map_err(|e| Error::io(path.display(), e))?;
            if meta.nlink() > 0 {
                return Ok(Self { path, handle, dir });
            }
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The file's handle (for a directory: the directory itself, open read-only).
    pub(super) fn handle(&mut self) -> &mut File {
        &mut self.handle
    }

    /// Renames the entry to `dest`; it is then no longer scratch.
    pub(super) fn publish(mut self, dest: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, dest)?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        let _ = if self.dir {
            std::fs::remove_dir_all(&self.path)
        } else {
            std::fs::remove_file(&self.path)
        };
    }
}

/// Deletes the entries of `dir` but those `keep` names, unless a live process holds them.
pub(super) fn remove_stale(dir: &Path, keep: impl Fn(&str) -> bool) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if keep(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        // O_NOFOLLOW: a symlink planted here is removed as a link, never followed.
        let Ok(handle) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        if handle.try_lock().is_err() {
            continue; // its writer is alive
        }
        let removed = if kind.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            tracing::warn!("removing stale {}: {e}", path.display());
        }
    }
}

/// Creates `path` (and its parents) and makes it 0700: what the store keeps is the node's.
pub(super) fn private_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| Error::io(path.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_spares_held_scratch_and_removes_abandoned_scratch() {
        let tmp = tempfile::tempdir().unwrap();
        let held = Scratch::file(tmp.path(), "held").unwrap();
        let held_dir = Scratch::dir(tmp.path(), "held").unwrap();
        let abandoned = tmp.path().join(format!("{PREFIX}abandoned"));
        std::fs::write(&abandoned, b"x").unwrap();
        let abandoned_dir = tmp.path().join(format!("{PREFIX}abandoned-dir"));
        std::fs::create_dir_all(abandoned_dir.join("sub")).unwrap();
        let other = tmp.path().join("kept");
        std::fs::write(&other, b"x").unwrap();

        remove_stale(tmp.path(), |name| name == "kept");
        assert!(held.path().exists() && held_dir.path().exists());
        assert!(!abandoned.exists() && !abandoned_dir.exists());
        assert!(other.exists());
        assert_eq!(
            std::fs::metadata(held.path()).unwrap().mode() & 0o777,
            0o600
        );

        let published = tmp.path().join("published");
        held.publish(&published).unwrap();
        assert!(published.exists());
        drop(held_dir);
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
