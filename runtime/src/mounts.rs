//! A container's view of the filesystem: its mounts turned into WASI preopens.
//!
//! WASI preopens are directories, yet kubelet mounts single files (`/etc/hosts`,
//! `/dev/termination-log`). A file mount is placed in a private staging directory of the
//! container, preopened at the file's parent path. A writable file on the staging directory's
//! filesystem is hard-linked in (one inode: writes are shared live, nothing to copy back). A
//! read-only file, or a writable one on another filesystem, is copied in; the writable copy is
//! written back when the container exits.
//!
//! The guest can rename, replace or symlink anything in its staging directory and in the
//! volumes it mounts, so no path it can influence is ever resolved again after creation: the
//! source is opened once (refusing a symlink as its last component, and anything but a
//! regular file), the staged entry is only reached through the staging directory's handle with
//! no symlink following, and the write-back goes to the source's descriptor opened at
//! creation, never to its path.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs as rfs;

use crate::engine::Preopen;
use crate::error::{Error, Result};
use crate::volume::ResolvedMount;

/// The preopens of one container, and the copies to write back when it exits.
#[derive(Debug, Default)]
pub struct GuestFs {
    pub preopens: Vec<Preopen>,
    write_back: Vec<WriteBack>,
    _pinned: Vec<Arc<OwnedFd>>,
}

/// A writable file mount that had to be copied in: where the copy lies (a name inside the
/// staging directory, reached only through its handle) and the source, open for writing.
#[derive(Debug)]
struct WriteBack {
    staging: OwnedFd,
    name: CString,
    source: File,
    container_path: String,
}

impl GuestFs {
    /// Lays out `mounts` over the image's `rootfs` (seen at `/`; mounts shadow it), staging
    /// file mounts under `staging` (a directory private to the container). A `writable_root`
    /// is a copy of the image's files private to the container (an empty directory for an
    /// image without files), as a container runtime's writable layer; else the image's files
    /// are shown read-only.
    pub fn build(
        mounts: Vec<ResolvedMount>,
        rootfs: Option<&Path>,
        staging: &Path,
        writable_root: bool,
        readonly_paths: &[String],
    ) -> Result<Self> {
        let mut fs = GuestFs::default();
        if writable_root {
            let root = staging.join("root");
            std::fs::create_dir_all(&root).map_err(|e| Error::io(root.display(), e))?;
            if let Some(rootfs) = rootfs {
                copy_tree(rootfs, &root).map_err(|e| {
                    Error::io(
                        format!("copying the image's files to {}", root.display()),
                        e,
                    )
                })?;
            }
            fs.root_preopens(&root, false, readonly_paths);
        } else if let Some(rootfs) = rootfs {
            fs.root_preopens(rootfs, true, &[]);
        }
        fs.lay_out(mounts, staging)
    }

    /// Lays out `mounts` over `root`, a directory already private to the container
    /// (containerd's rootfs mount), shown in place.
    pub fn build_in_place(
        mounts: Vec<ResolvedMount>,
        root: &Path,
        read_only: bool,
        staging: &Path,
        readonly_paths: &[String],
    ) -> Result<Self> {
        let mut fs = GuestFs::default();
        fs.root_preopens(root, read_only, readonly_paths);
        fs.lay_out(mounts, staging)
    }

    /// `/` on `root`; each of `readonly_paths` the root has over it, read-only (the deepest
    /// preopen wins a path).
    fn root_preopens(&mut self, root: &Path, read_only: bool, readonly_paths: &[String]) {
        for path in readonly_paths {
            if let Some(dir) = dir_in_root(root, path) {
                self.preopens.push(Preopen {
                    host: dir,
                    guest: normalize_guest(path),
                    read_only: true,
                });
            }
        }
        self.preopens.push(Preopen {
            host: root.to_path_buf(),
            guest: "/".into(),
            read_only,
        });
    }

    /// Adds `mounts`, file mounts staged under `staging`.
    fn lay_out(mut self, mounts: Vec<ResolvedMount>, staging: &Path) -> Result<Self> {
        let fs = &mut self;
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
            let handle = open_dir(&dir)?;
            for f in &files {
                let (_, name) = split_parent(&f.container_path)?;
                fs.stage(f, &handle, name)?;
            }
            fs.preopens.push(Preopen {
                host: dir,
                guest: parent,
                read_only: files.iter().all(|f| f.read_only),
            });
        }
        fs._pinned = mounts.iter().filter_map(|m| m.pinned.clone()).collect();
        Ok(self)
    }

    /// The host directory the guest sees at `/`, if it sees one.
    pub fn root(&self) -> Option<&Path> {
        self.preopens
            .iter()
            .find(|p| p.guest == "/")
            .map(|p| p.host.as_path())
    }

    /// Puts one file mount into the staging directory `dir` as `name`: a hard link to the
    /// source when writable and on the same filesystem, else a copy (written back on exit
    /// when writable).
    fn stage(&mut self, mount: &ResolvedMount, dir: &OwnedFd, name: &str) -> Result<()> {
        let what = || {
            format!(
                "file mount {} ({})",
                mount.container_path,
                mount.host.display()
            )
        };
        let source = open_source(mount).map_err(|e| e.context(what()))?;
        let name = CString::new(name).map_err(|_| Error::invalid("file mount name has a NUL"))?;
        match rfs::unlinkat(dir, name.as_c_str(), rfs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(Error::io(what(), e.into())),
        }
        if !mount.read_only {
            let by_fd = format!("/proc/self/fd/{}", source.as_raw_fd());
            match rfs::linkat(
                rfs::CWD,
                by_fd.as_str(),
                dir,
                name.as_c_str(),
                rfs::AtFlags::SYMLINK_FOLLOW,
            ) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::XDEV) => {}
                Err(e) => return Err(Error::io(what(), e.into())),
            }
        }
        let staged = rfs::openat(
            dir,
            name.as_c_str(),
            rfs::OFlags::WRONLY | rfs::OFlags::CREATE | rfs::OFlags::EXCL | rfs::OFlags::CLOEXEC,
            rfs::Mode::from_raw_mode(0o644),
        )
        .map_err(|e| Error::io(what(), e.into()))?;
        copy_all(&source, &mut File::from(staged)).map_err(|e| Error::io(what(), e))?;
        if !mount.read_only {
            self.write_back.push(WriteBack {
                staging: dir.try_clone().map_err(|e| Error::io(what(), e))?,
                name,
                source,
                container_path: mount.container_path.clone(),
            });
        }
        Ok(())
    }

    /// Copies writable file mounts that had to be staged as copies back to their sources.
    /// A staged entry that is no longer a regular file (the guest swapped in a symlink, a
    /// directory) is refused and the source left as it was.
    pub fn write_back(&self) {
        for wb in &self.write_back {
            if let Err(e) = wb.run() {
                tracing::warn!(mount = %wb.container_path, "file mount not written back: {e}");
            }
        }
    }
}

impl WriteBack {
    fn run(&self) -> std::io::Result<()> {
        let staged = rfs::openat(
            &self.staging,
            self.name.as_c_str(),
            rfs::OFlags::RDONLY
                | rfs::OFlags::NOFOLLOW
                | rfs::OFlags::NONBLOCK
                | rfs::OFlags::CLOEXEC,
            rfs::Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => {
                std::io::Error::other("the staged file was replaced by a symlink")
            }
            e => e.into(),
        })?;
        let staged = File::from(staged);
        if !staged.metadata()?.file_type().is_file() {
            return Err(std::io::Error::other(
                "the staged file is no longer a regular file",
            ));
        }
        let mut source = &self.source;
        source.set_len(0)?;
        source.seek(SeekFrom::Start(0))?;
        copy_all(&staged, &mut source)
    }
}

/// Opens a file mount's source once: the pinned descriptor of a subPath (reopened through
/// `/proc/self/fd`, which names that inode and no path), or the path given by the trusted
/// client with its last component not a symlink. Only regular files are mounted.
fn open_source(mount: &ResolvedMount) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(!mount.read_only);
    if mount.pinned.is_none() {
        options.custom_flags(libc::O_NOFOLLOW);
    }
    let file = options.open(&mount.host).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            Error::invalid("the source is a symlink")
        } else {
            Error::io("opening the source", e)
        }
    })?;
    let kind = file
        .metadata()
        .map_err(|e| Error::io("opening the source", e))?
        .file_type();
    if !kind.is_file() {
        return Err(Error::invalid("the source is not a regular file"));
    }
    Ok(file)
}

/// Opens a directory wasmpod made, refusing a symlink in its place.
fn open_dir(path: &Path) -> Result<OwnedFd> {
    rfs::open(
        path,
        rfs::OFlags::RDONLY | rfs::OFlags::DIRECTORY | rfs::OFlags::NOFOLLOW | rfs::OFlags::CLOEXEC,
        rfs::Mode::empty(),
    )
    .map_err(|e| Error::io(path.display(), e.into()))
}

/// Copies the whole of `from` (from its start) to `to`'s current position.
fn copy_all(from: &File, to: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut from = from;
    from.seek(SeekFrom::Start(0))?;
    std::io::copy(&mut from, to).map(drop)
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

/// `path` of the guest as a host directory inside `root`, if it is a directory there reached
/// without a symlink (the root is the container's fresh copy of the image's files).
fn dir_in_root(root: &Path, path: &str) -> Option<std::path::PathBuf> {
    let rel = path.trim_start_matches('/').trim_end_matches('/');
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return None;
    }
    let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority()).ok()?;
    let mut at = std::path::PathBuf::new();
    for part in rel.split('/') {
        at.push(part);
        let kind = dir.symlink_metadata(&at).ok()?.file_type();
        if !kind.is_dir() {
            return None;
        }
    }
    Some(root.join(rel))
}

/// `/a/b/` as `/a/b`.
fn normalize_guest(path: &str) -> String {
    format!("/{}", path.trim_matches('/'))
}

/// Copies the tree `from` (an unpacked image: wasmpod's own, its links already checked to stay
/// inside) into the empty directory `to` through directory handles: links are copied as links,
/// never followed, and nothing outside `to` is written.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use cap_std::fs::Dir;
    use std::io::copy;
    let src = Dir::open_ambient_dir(from, cap_std::ambient_authority())?;
    let dst = Dir::open_ambient_dir(to, cap_std::ambient_authority())?;
    let mut dirs = vec![std::path::PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let entries = match dir.as_os_str().is_empty() {
            true => src.entries()?,
            false => src.read_dir(&dir)?,
        };
        for entry in entries {
            let entry = entry?;
            let path = dir.join(entry.file_name());
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dst.create_dir(&path)?;
                dirs.push(path);
            } else if kind.is_symlink() {
                dst.symlink(src.read_link_contents(&path)?, &path)?;
            } else if kind.is_file() {
                let mut input = src.open(&path)?;
                let mut output = dst.create(&path)?;
                copy(&mut input, &mut output)?;
                output.set_permissions(input.metadata()?.permissions())?;
            }
        }
    }
    Ok(())
}

pub(crate) fn is_within(path: &str, dir: &str) -> bool {
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
            false,
            &[],
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
        assert!(GuestFs::build(two, None, &staging, false, &[])
            .unwrap_err()
            .message
            .contains("two mounts"));
        let nested = vec![
            resolved(tmp.path(), "/etc", false),
            resolved(&file, "/etc/hosts", true),
        ];
        assert!(GuestFs::build(nested, None, &staging, false, &[])
            .unwrap_err()
            .message
            .contains("inside"));
    }

    /// A writable file on another filesystem (tmpfs) than the staging directory is copied in
    /// and written back; what the guest swaps in afterwards is never followed.
    #[test]
    fn write_back_follows_no_swapped_in_symlink() {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let canary = tmp.path().join("canary");
        std::fs::write(&canary, "host secret").unwrap();
        let source = shm.path().join("term");
        let build = |n: &str| {
            std::fs::write(&source, "before").unwrap();
            GuestFs::build(
                vec![resolved(&source, "/dev/termination-log", false)],
                None,
                &tmp.path().join(n),
                false,
                &[],
            )
            .unwrap()
        };

        // The guest writes its copy: the write reaches the source on exit.
        let fs = build("a");
        let staged = fs.preopens[0].host.join("termination-log");
        assert_eq!(std::fs::read_to_string(&staged).unwrap(), "before");
        std::fs::write(&staged, "after").unwrap();
        fs.write_back();
        assert_eq!(std::fs::read_to_string(&source).unwrap(), "after");

        // The guest replaces its copy with a symlink to a host file: nothing is read through it.
        let fs = build("b");
        let staged = fs.preopens[0].host.join("termination-log");
        std::fs::remove_file(&staged).unwrap();
        std::os::unix::fs::symlink(&canary, &staged).unwrap();
        fs.write_back();
        assert_eq!(std::fs::read_to_string(&source).unwrap(), "before");

        // The source's path is swapped for a symlink to a host file: the write-back goes to
        // the file opened at creation, never through the new path.
        let fs = build("c");
        std::fs::write(fs.preopens[0].host.join("termination-log"), "pwned").unwrap();
        std::fs::remove_file(&source).unwrap();
        std::os::unix::fs::symlink(&canary, &source).unwrap();
        fs.write_back();
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "host secret");
        std::fs::remove_file(&source).unwrap();
    }

    #[test]
    fn a_symlinked_or_special_source_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, "x").unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = GuestFs::build(
            vec![resolved(&link, "/etc/hosts", true)],
            None,
            &tmp.path().join("s"),
            false,
            &[],
        )
        .unwrap_err();
        assert!(err.message.contains("symlink"), "{err}");
        let err = GuestFs::build(
            vec![ResolvedMount {
                is_file: true,
                ..resolved(Path::new("/dev/null"), "/etc/null", true)
            }],
            None,
            &tmp.path().join("s"),
            false,
            &[],
        )
        .unwrap_err();
        assert!(err.message.contains("regular file"), "{err}");
    }
}
