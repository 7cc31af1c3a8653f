//! A container's view of the filesystem: its mounts turned into WASI preopens.
//!
//! WASI preopens are directories, yet kubelet mounts single files (`/etc/hosts`,
//! `/dev/termination-log`). A file mount is placed in a private staging directory of the
//! container, preopened at the file's parent path: as a hard link when the source is on the
//! same filesystem (writes are shared live), otherwise as a copy that is written back when
//! the container exits.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::Preopen;
use crate::error::{Error, Result};
use crate::volume::ResolvedMount;

/// The preopens of one container, and the copies to write back when it exits.
#[derive(Debug, Default)]
pub struct GuestFs {
    pub preopens: Vec<Preopen>,
    write_back: Vec<(PathBuf, PathBuf)>,
    _pinned: Vec<Arc<OwnedFd>>,
}

impl GuestFs {
    /// Lays out `mounts` over the image's read-only `rootfs` (seen at `/`; mounts shadow it),
    /// staging file mounts under `staging` (a directory private to the container).
    pub fn build(
        mounts: Vec<ResolvedMount>,
        rootfs: Option<&Path>,
        staging: &Path,
    ) -> Result<Self> {
        let mut fs = GuestFs::default();
        if let Some(rootfs) = rootfs {
            fs.preopens.push(Preopen {
                host: rootfs.to_path_buf(),
                guest: "/".into(),
                read_only: true,
            });
        }
        let mut seen = BTreeMap::new();
        for m in &mounts {
            if seen.insert(m.container_path.clone(), ()).is_some() {
                return Err(Error::invalid(format!(
                    "two mounts on {}",
                    m.container_path
                )));
            }
        }
        let dirs: Vec<&ResolvedMount> = mounts.iter().filter(|m| !m.is_file).collect();
        let mut file_parents: BTreeMap<String, Vec<&ResolvedMount>> = BTreeMap::new();
        for m in mounts.iter().filter(|m| m.is_file) {
            let (parent, _) = split_parent(&m.container_path)?;
            if let Some(d) = dirs
                .iter()
                .find(|d| is_within(&m.container_path, &d.container_path))
            {
                return Err(Error::invalid(format!(
                    "file mount {} lies inside directory mount {}; mount its directory instead",
                    m.container_path, d.container_path
                )));
            }
            file_parents.entry(parent).or_default().push(m);
        }
        for d in &dirs {
            fs.preopens.push(Preopen {
                host: d.host.clone(),
                guest: d.container_path.clone(),
                read_only: d.read_only,
            });
        }
        for (i, (parent, files)) in file_parents.into_iter().enumerate() {
            // A preopen has one set of permissions: a read-only file beside a writable one
            // could not be kept read-only, so that layout is refused rather than weakened.
            if files.iter().any(|f| f.read_only) && files.iter().any(|f| !f.read_only) {
                return Err(Error::invalid(format!(
                    "file mounts in {parent} mix readOnly and writable files; wasmpod enforces \
                     readOnly per directory: mount them in different directories"
                )));
            }
            let dir = staging.join(format!("files-{i}"));
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
            for f in &files {
                let (_, name) = split_parent(&f.container_path)?;
                let staged = dir.join(name);
                fs.stage(f, &staged)?;
            }
            fs.preopens.push(Preopen {
                host: dir,
                guest: parent,
                read_only: files.iter().all(|f| f.read_only),
            });
        }
        fs._pinned = mounts.iter().filter_map(|m| m.pinned.clone()).collect();
        Ok(fs)
    }

    /// Links the file in (a shared inode); read-only files (their directory is preopened
    /// read-only) and files on other filesystems are copied.
    fn stage(&mut self, mount: &ResolvedMount, staged: &Path) -> Result<()> {
        let _ = std::fs::remove_file(staged);
        if !mount.read_only && std::fs::hard_link(&mount.host, staged).is_ok() {
            return Ok(());
        }
        std::fs::copy(&mount.host, staged).map_err(|e| {
            Error::io(
                format!(
                    "file mount {} ({})",
                    mount.container_path,
                    mount.host.display()
                ),
                e,
            )
        })?;
        if !mount.read_only {
            self.write_back
                .push((staged.to_path_buf(), mount.host.clone()));
        }
        Ok(())
    }

    /// Copies writable file mounts that had to be staged as copies back to their sources.
    pub fn write_back(&self) {
        for (staged, source) in &self.write_back {
            if let Err(e) = std::fs::copy(staged, source) {
                tracing::warn!(source = %source.display(), "writing back a file mount: {e}");
            }
        }
    }
}

fn split_parent(path: &str) -> Result<(String, &str)> {
    match path.rsplit_once('/') {
        Some((_, "")) | None => Err(Error::invalid(format!(
            "file mount path {path:?} has no name"
        ))),
        Some(("", name)) => Ok(("/".to_owned(), name)),
        Some((parent, name)) => Ok((parent.to_owned(), name)),
    }
}

fn is_within(path: &str, dir: &str) -> bool {
    dir == "/"
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(host: &Path, path: &str, read_only: bool) -> ResolvedMount {
        ResolvedMount {
            host: host.to_path_buf(),
            container_path: path.into(),
            read_only,
            is_file: host.is_file(),
            pinned: None,
        }
    }

    #[test]
    fn files_are_staged_by_parent_and_dirs_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let hosts = tmp.path().join("hosts");
        let term = tmp.path().join("term");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        std::fs::write(&term, "").unwrap();
        let staging = tmp.path().join("staging");
        let fs = GuestFs::build(
            vec![
                resolved(tmp.path(), "/data", false),
                resolved(&hosts, "/etc/hosts", true),
                resolved(&term, "/dev/termination-log", false),
            ],
            None,
            &staging,
        )
        .unwrap();
        let guests: Vec<_> = fs.preopens.iter().map(|p| p.guest.as_str()).collect();
        assert_eq!(guests, ["/data", "/dev", "/etc"]);
        let etc = &fs.preopens[2];
        assert!(etc.read_only);
        assert_eq!(
            std::fs::read_to_string(etc.host.join("hosts")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        // The writable file is the same inode: a write shows at the source at once.
        std::fs::write(fs.preopens[1].host.join("termination-log"), "bye").unwrap();
        assert_eq!(std::fs::read_to_string(&term).unwrap(), "bye");
    }

    #[test]
    fn conflicts_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "").unwrap();
        let staging = tmp.path().join("s");
        let two = vec![
            resolved(tmp.path(), "/data", false),
            resolved(tmp.path(), "/data", true),
        ];
        assert!(GuestFs::build(two, None, &staging)
            .unwrap_err()
            .message
            .contains("two mounts"));
        let nested = vec![
            resolved(tmp.path(), "/etc", false),
            resolved(&file, "/etc/hosts", true),
        ];
        assert!(GuestFs::build(nested, None, &staging)
            .unwrap_err()
            .message
            .contains("inside"));
    }
}
