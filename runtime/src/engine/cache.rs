//! On-disk cache of precompiled (AOT) code, keyed by the Wasm's content digest and the engine's
//! compatibility hash.
//!
//! wasmtime maps an artifact and runs it as native code, so loading one is `unsafe`: it must be
//! bytes this daemon compiled, unchanged for as long as it is mapped. Reading and hashing the
//! whole file on every load would cost milliseconds per MiB on the first start after a restart;
//! instead the file system keeps the guarantee:
//!
//! - the daemon writes an artifact only from Wasm whose digest it checked when the image
//!   arrived, under that digest's name, to a temporary file it then syncs and renames into place
//!   (a crash leaves no half-written artifact, and a replaced artifact is a new inode: code
//!   already mapped never changes under a guest);
//! - the directory is the daemon user's, mode 0700, held open from startup; artifacts are 0400;
//! - each load opens the artifact through that directory handle without following symlinks and
//!   checks, on the open descriptor (no race with a rename), that it is a regular file with one
//!   link, owned by the daemon's user and writable by nobody else; wasmtime then maps that very
//!   descriptor and checks its own header (format, wasmtime version and settings).
//!
//! Whoever can still change an artifact is the daemon's own user (root on a node), who can
//! equally replace the daemon's binary or trace it: a MAC under a key that user can read would
//! not stop them. A file that fails a check is removed and its Wasm compiled again.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

use crate::error::{Error, Result};

/// Bits of an artifact's or the directory's mode that would let others change it.
const WRITABLE_BY_OTHERS: u32 = 0o022;

pub(crate) struct AotCache {
    path: PathBuf,
    dir: OwnedFd,
    owner: u32,
    compat: String,
}

/// An artifact opened and checked, to be mapped through its descriptor.
pub(crate) struct Artifact {
    file: File,
}

impl Artifact {
    /// A path naming this open file (not the cache entry, which a rename may have replaced
    /// since), for the wasmtime calls that take a path.
    fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Maps the artifact as a module or a component, whichever it holds.
    ///
    /// SAFETY (of the calls inside): the checks of [`AotCache::load`] establish that only this
    /// daemon's user wrote the file, from code this engine compiled; it is never written again
    /// (replacements are new files).
    pub(crate) fn load(&self, engine: &wasmtime::Engine) -> wasmtime::Result<super::Code> {
        let path = self.fd_path();
        match wasmtime::Engine::detect_precompiled_file(&path)? {
            Some(wasmtime::Precompiled::Module) => {
                let file = self.file.try_clone()?;
                unsafe { wasmtime::Module::deserialize_open_file(engine, file) }
                    .map(super::Code::Module)
            }
            Some(wasmtime::Precompiled::Component) => {
                self.component(engine).map(super::Code::Component)
            }
            None => Err(wasmtime::format_err!("not a wasmtime artifact")),
        }
    }

    /// Maps the artifact as a component.
    pub(crate) fn component(
        &self,
        engine: &wasmtime::Engine,
    ) -> wasmtime::Result<wasmtime::component::Component> {
        unsafe { wasmtime::component::Component::deserialize_file(engine, self.fd_path()) }
    }
}

impl AotCache {
    /// Opens (creating) the cache in `dir` for an engine with compatibility hash `compat`.
    /// The directory must be this process's user's; it is made private if it is not.
    pub(crate) fn open(dir: &Path, compat: String) -> Result<Self> {
        let io = |e: std::io::Error| Error::io(format!("AOT cache {}", dir.display()), e);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let handle = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(e.into()))?;
        let owner = rustix::process::geteuid().as_raw();
        let stat = rustix::fs::fstat(&handle).map_err(|e| io(e.into()))?;
        if stat.st_uid != owner {
            return Err(Error::invalid(format!(
                "AOT cache {} belongs to uid {}, not to this daemon's user ({owner}); \
                 refusing to load code from it",
                dir.display(),
                stat.st_uid
            )));
        }
        if stat.st_mode & 0o077 != 0 {
            rustix::fs::fchmod(&handle, Mode::from_raw_mode(0o700)).map_err(|e| io(e.into()))?;
        }
        Ok(Self {
            path: dir.to_path_buf(),
            dir: handle,
            owner,
            compat,
        })
    }

    fn name(&self, digest: &str) -> String {
        format!("{digest}-{}.cwasm", self.compat)
    }

    /// The artifact of `digest`, opened and checked (see the module's doc), if one is cached.
    /// A file that fails a check is removed and reported as a miss.
    pub(crate) fn load(&self, digest: &str) -> Option<Artifact> {
        let name = self.name(digest);
        let fd = rustix::fs::openat(
            &self.dir,
            &name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        );
        let fd = match fd {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return None,
            Err(e) => return self.reject(&name, &format!("cannot be opened ({e})")),
        };
        let stat = match rustix::fs::fstat(&fd) {
            Ok(stat) => stat,
            Err(e) => return self.reject(&name, &format!("cannot be read ({e})")),
        };
        let problem = if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            Some("is not a regular file".to_owned())
        } else if stat.st_uid != self.owner {
            Some(format!(
                "belongs to uid {}, not {}",
                stat.st_uid, self.owner
            ))
        } else if stat.st_mode & WRITABLE_BY_OTHERS != 0 {
            Some(format!(
                "is writable by others (mode {:o})",
                stat.st_mode & 0o777
            ))
        } else if stat.st_nlink != 1 {
            Some(format!("has {} hard links", stat.st_nlink))
        } else {
            None
        };
        match problem {
            Some(problem) => self.reject(&name, &problem),
            None => Some(Artifact {
                file: File::from(fd),
            }),
        }
    }

    /// Removes an artifact that cannot be trusted or used; its Wasm is compiled again.
    fn reject<T>(&self, name: &str, problem: &str) -> Option<T> {
        tracing::warn!(path = %self.path.join(name).display(), "AOT artifact {problem}; recompiling");
        let _ = rustix::fs::unlinkat(&self.dir, name, rustix::fs::AtFlags::empty());
        None
    }

    /// Removes the artifact of `digest` that wasmtime refused to load.
    pub(crate) fn reject_digest(&self, digest: &str, problem: &str) {
        self.reject::<()>(&self.name(digest), problem);
    }

    /// Stores an artifact atomically: it is visible only once complete, and read-only.
    pub(crate) fn store(&self, digest: &str, payload: &[u8]) -> Result<()> {
        let name = self.name(digest);
        let tmp = format!(".tmp-{}-{:016x}", std::process::id(), rand::random::<u64>());
        let write = || -> std::io::Result<()> {
            let fd = rustix::fs::openat(
                &self.dir,
                &tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o400),
            )?;
            let mut file = File::from(fd);
            std::io::Write::write_all(&mut file, payload)?;
            file.sync_data()?;
            rustix::fs::renameat(&self.dir, &tmp, &self.dir, &name)?;
            Ok(())
        };
        write().map_err(|e| {
            let _ = rustix::fs::unlinkat(&self.dir, &tmp, rustix::fs::AtFlags::empty());
            Error::io(format!("AOT cache {}", self.path.join(&name).display()), e)
        })
    }

    /// Deletes the artifact of `digest`, if any: its Wasm is gone from the image store.
    pub(crate) fn remove(&self, digest: &str) {
        match rustix::fs::unlinkat(&self.dir, self.name(digest), rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => tracing::warn!(digest, "removing an AOT artifact: {e}"),
        }
    }

    /// Whether a (not yet checked) artifact exists for `digest`.
    pub(crate) fn contains(&self, digest: &str) -> bool {
        rustix::fs::statat(
            &self.dir,
            self.name(digest),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn bytes(a: Artifact) -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut { a.file }, &mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_private_and_atomic() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("aot");
        let cache = AotCache::open(&dir, "c1".into()).unwrap();
        assert!(cache.load("d").is_none());
        cache.store("d", b"payload").unwrap();
        assert!(cache.contains("d"));
        assert_eq!(bytes(cache.load("d").unwrap()), b"payload");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("d-c1.cwasm")), 0o400);
        // Only the artifact is left: no temporary files.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // A replacement is a new file: a mapped artifact never changes.
        let before = std::fs::metadata(dir.join("d-c1.cwasm")).unwrap().ino();
        cache.store("d", b"again").unwrap();
        assert_ne!(
            std::fs::metadata(dir.join("d-c1.cwasm")).unwrap().ino(),
            before
        );
        cache.remove("d");
        assert!(!cache.contains("d"));
    }

    #[test]
    fn files_others_could_have_written_are_removed_not_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("aot");
        let cache = AotCache::open(&dir, "c".into()).unwrap();
        let path = dir.join("d-c.cwasm");

        cache.store("d", b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(cache.load("d").is_none(), "group-writable");
        assert!(!path.exists(), "and removed");

        cache.store("d", b"x").unwrap();
        std::fs::hard_link(&path, tmp.path().join("elsewhere")).unwrap();
        assert!(cache.load("d").is_none(), "a second link outside the cache");
        assert!(!path.exists());

        std::fs::write(tmp.path().join("target"), b"x").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("target"), &path).unwrap();
        assert!(cache.load("d").is_none(), "a symlink is not followed");
        assert!(
            tmp.path().join("target").exists(),
            "its target is untouched"
        );

        std::fs::create_dir(&path).unwrap();
        assert!(cache.load("d").is_none(), "a directory");
    }

    #[test]
    fn a_shared_directory_is_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("aot");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        AotCache::open(&dir, "c".into()).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
