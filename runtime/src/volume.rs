//! Pod volumes: creating emptyDirs, checking hostPaths, resolving a container's volumeMount
//! (with its subPath) to a host file or directory without letting symlinks lead out of the
//! volume, and measuring emptyDir usage against `sizeLimit`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::error::{Error, Result};
use crate::spec::{HostPathKind, Medium, MountSource, MountSpec, VolumeSource, VolumeSpec};

/// Memory-backed emptyDirs live on this tmpfs, so no mount (and no privilege) is needed.
const SHM: &str = "/dev/shm";

#[derive(Debug)]
struct Volume {
    host: PathBuf,
    size_limit: Option<u64>,
    /// Created by wasmpod for this pod, so removed with it.
    owned: bool,
}

/// The volumes of one pod.
#[derive(Debug, Default)]
pub struct PodVolumes {
    volumes: HashMap<String, Volume>,
}

/// A mount resolved to something on the host the guest may be given.
#[derive(Debug, Clone)]
pub struct ResolvedMount {
    /// A path to the mount's source. For subPath mounts it names an open descriptor
    /// (`/proc/self/fd/N`), so a symlink swapped in later cannot redirect it.
    pub host: PathBuf,
    pub container_path: String,
    pub read_only: bool,
    pub is_file: bool,
    /// Keeps the descriptor behind `host` open while the mount is in use.
    pub pinned: Option<Arc<OwnedFd>>,
}

impl PodVolumes {
    /// Creates the pod's emptyDirs (under `pod_dir`, or on tmpfs for `medium: Memory`) and
    /// checks its hostPaths.
    /// On error, whatever was created already is removed again.
    pub fn create(pod_dir: &Path, pod_id: &str, specs: &[VolumeSpec]) -> Result<Self> {
        let mut this = Self::default();
        match this.create_all(pod_dir, pod_id, specs) {
            Ok(()) => Ok(this),
            Err(e) => {
                this.remove();
                Err(e)
            }
        }
    }

    fn create_all(&mut self, pod_dir: &Path, pod_id: &str, specs: &[VolumeSpec]) -> Result<()> {
        for spec in specs {
            if self.volumes.contains_key(&spec.name) {
                return Err(Error::invalid(format!("two volumes named {}", spec.name)));
            }
            let volume = match &spec.source {
                VolumeSource::EmptyDir { medium, size_limit } => {
                    let base = match medium {
                        Medium::Memory if Path::new(SHM).is_dir() => {
                            PathBuf::from(SHM).join(format!("wasmpod-{pod_id}"))
                        }
                        Medium::Memory => {
                            return Err(Error::precondition(format!(
                                "volume {}: medium Memory needs a tmpfs at {SHM}",
                                spec.name
                            )))
                        }
                        Medium::Disk => pod_dir.join("volumes"),
                    };
                    let host = base.join(&spec.name);
                    std::fs::create_dir_all(&host)
                        .map_err(|e| Error::io(format!("volume {}", spec.name), e))?;
                    Volume {
                        host,
                        size_limit: *size_limit,
                        owned: true,
                    }
                }
                VolumeSource::HostPath { path, kind } => {
                    check_host_path(&spec.name, path, *kind)?;
                    Volume {
                        host: path.clone(),
                        size_limit: None,
                        owned: false,
                    }
                }
            };
            self.volumes.insert(spec.name.clone(), volume);
        }
        Ok(())
    }

    /// Resolves a mount to its host source. Volume subPaths are opened inside the volume, so
    /// `..`, absolute symlinks and symlinks pointing outside are refused.
    pub fn resolve(&self, mount: &MountSpec) -> Result<ResolvedMount> {
        let container_path = normalize_guest_path(&mount.container_path)?;
        let (host, pinned) = match &mount.source {
            MountSource::Host(path) => (path.clone(), None),
            MountSource::Volume { name, sub_path } => {
                let volume = self.volumes.get(name).ok_or_else(|| {
                    Error::invalid(format!(
                        "volumeMount {container_path} names volume {name:?}, which the pod does not have"
                    ))
                })?;
                match sub_path.as_deref().filter(|s| !s.is_empty()) {
                    None => (volume.host.clone(), None),
                    Some(sub) => {
                        let fd = open_sub_path(&volume.host, sub)
                            .map_err(|e| e.context(format!("volume {name}, subPath {sub:?}")))?;
                        (
                            PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
                            Some(fd),
                        )
                    }
                }
            }
        };
        let meta = std::fs::metadata(&host)
            .map_err(|e| Error::io(format!("mount source {}", host.display()), e))?;
        Ok(ResolvedMount {
            host,
            container_path,
            read_only: mount.read_only,
            is_file: !meta.is_dir(),
            pinned: pinned.map(Arc::new),
        })
    }

    /// What the volumes wasmpod made for the pod (its emptyDirs) take on disk.
    pub fn owned_usage(&self) -> DiskUsage {
        let mut usage = DiskUsage::default();
        for v in self.volumes.values().filter(|v| v.owned) {
            usage += disk_usage(&v.host);
        }
        usage
    }

    /// The first emptyDir whose usage exceeds its sizeLimit, as kubelet's eviction message.
    pub fn over_limit(&self) -> Option<String> {
        let mut names: Vec<_> = self.volumes.keys().collect();
        names.sort();
        names.into_iter().find_map(|name| {
            let v = &self.volumes[name];
            let limit = v.size_limit?;
            let used = disk_usage(&v.host).bytes;
            (used > limit).then(|| {
                format!("Usage of EmptyDir volume {name:?} exceeds the limit {limit} bytes (used {used} bytes)")
            })
        })
    }

    /// Deletes the volumes wasmpod created; hostPaths are left alone.
    pub fn remove(&self) {
        for v in self.volumes.values().filter(|v| v.owned) {
            if let Err(e) = std::fs::remove_dir_all(&v.host) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %v.host.display(), "removing volume: {e}");
                }
            }
            if let Some(parent) = v.host.parent().filter(|p| p.starts_with(SHM)) {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

fn check_host_path(name: &str, path: &Path, kind: HostPathKind) -> Result<()> {
    if !path.is_absolute() {
        return Err(Error::invalid(format!(
            "volume {name}: hostPath {} must be absolute",
            path.display()
        )));
    }
    // As Kubernetes validation does: `a/../b` would make `a` when created, and what the path
    // names would depend on symlinks along it.
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(Error::invalid(format!(
            "volume {name}: hostPath {} must not contain '..'",
            path.display()
        )));
    }
    let meta = std::fs::metadata(path);
    let what = |want: &str| {
        Error::invalid(format!(
            "volume {name}: hostPath {} is not {want}",
            path.display()
        ))
    };
    match kind {
        HostPathKind::DirectoryOrCreate if meta.is_err() => std::fs::create_dir_all(path)
            .map_err(|e| Error::io(format!("volume {name}: creating {}", path.display()), e)),
        HostPathKind::FileOrCreate if meta.is_err() => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| Error::io(format!("volume {name}: creating {}", path.display()), e)),
        _ => {
            let meta = meta
                .map_err(|e| Error::io(format!("volume {name}: hostPath {}", path.display()), e))?;
            match kind {
                HostPathKind::Directory | HostPathKind::DirectoryOrCreate if !meta.is_dir() => {
                    Err(what("a directory"))
                }
                HostPathKind::File | HostPathKind::FileOrCreate if !meta.is_file() => {
                    Err(what("a file"))
                }
                _ => Ok(()),
            }
        }
    }
}

/// Checks a subPath is a plain relative path and opens it inside `root`; a missing subPath
/// becomes a new directory, as kubelet does.
fn open_sub_path(root: &Path, sub: &str) -> Result<OwnedFd> {
    let rel = Path::new(sub);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Error::invalid("must be a relative path without '..'"));
    }
    let dir = Dir::open_ambient_dir(root, ambient_authority())
        .map_err(|e| Error::io(root.display(), e))?;
    let meta = match dir.metadata(rel) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            dir.create_dir_all(rel)
                .map_err(|e| Error::io("creating it", e))?;
            dir.metadata(rel).map_err(|e| Error::io("opening it", e))?
        }
        Err(e) => return Err(escape_error(e)),
    };
    if meta.is_dir() {
        Ok(dir.open_dir(rel).map_err(escape_error)?.into())
    } else {
        Ok(dir.open(rel).map_err(escape_error)?.into_std().into())
    }
}

fn escape_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        Error::invalid(format!("leads outside the volume: {e}"))
    } else {
        Error::io("opening it", e)
    }
}

/// Makes a guest mount path canonical: absolute, no `.`/`..`, no trailing slash.
pub fn normalize_guest_path(path: &str) -> Result<String> {
    if !path.starts_with('/') {
        return Err(Error::invalid(format!(
            "mount path {path:?} must be absolute"
        )));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(Error::invalid(format!(
                    "mount path {path:?} must not contain '..'"
                )))
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// What a directory tree takes on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes in allocated blocks, like `du`.
    pub bytes: u64,
    pub inodes: u64,
}

impl std::ops::AddAssign for DiskUsage {
    fn add_assign(&mut self, other: Self) {
        self.bytes += other.bytes;
        self.inodes += other.inodes;
    }
}

/// What a file and the files rotated beside it (`<name>.<suffix>`: `0.log.1`, kubelet's
/// `0.log.20240102-150405`) take on disk.
pub fn rotated_files_usage(file: &Path) -> DiskUsage {
    let mut usage = DiskUsage::default();
    let (Some(dir), Some(name)) = (file.parent(), file.file_name().and_then(|n| n.to_str())) else {
        return usage;
    };
    let rotated = format!("{name}.");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let entry_name = entry.file_name();
        let Some(n) = entry_name.to_str() else {
            continue;
        };
        if n != name && !n.starts_with(&rotated) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            usage.bytes += meta.blocks() * 512;
            usage.inodes += 1;
        }
    }
    usage
}

/// The size of the filesystem holding `path` (statvfs), for capacity figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsCapacity {
    pub bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

pub fn fs_capacity(path: &Path) -> Option<FsCapacity> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(FsCapacity {
        bytes: st.f_blocks.saturating_mul(st.f_frsize),
        inodes: st.f_files,
        inodes_free: st.f_ffree,
    })
}

/// Measures a directory tree without following symlinks.
pub fn disk_usage(root: &Path) -> DiskUsage {
    let mut usage = DiskUsage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            usage.bytes += meta.blocks() * 512;
            usage.inodes += 1;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_dir(name: &str, size_limit: Option<u64>) -> VolumeSpec {
        VolumeSpec {
            name: name.into(),
            source: VolumeSource::EmptyDir {
                medium: Medium::Disk,
                size_limit,
            },
        }
    }

    fn mount(volume: &str, sub: Option<&str>, path: &str) -> MountSpec {
        MountSpec {
            source: MountSource::Volume {
                name: volume.into(),
                sub_path: sub.map(Into::into),
            },
            container_path: path.into(),
            read_only: false,
        }
    }

    #[test]
    fn guest_paths_are_normalized() {
        assert_eq!(normalize_guest_path("/data/").unwrap(), "/data");
        assert_eq!(normalize_guest_path("//a/./b").unwrap(), "/a/b");
        assert_eq!(normalize_guest_path("/").unwrap(), "/");
        assert!(normalize_guest_path("data").is_err());
        assert!(normalize_guest_path("/a/../etc").is_err());
    }

    #[test]
    fn sub_paths_stay_inside_the_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let vols = PodVolumes::create(tmp.path(), "p", &[empty_dir("data", None)]).unwrap();
        let root = tmp.path().join("volumes/data");
        std::os::unix::fs::symlink(&outside, root.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("rel-link")).unwrap();

        let ok = vols.resolve(&mount("data", Some("new/dir"), "/x")).unwrap();
        assert!(root.join("new/dir").is_dir());
        assert_eq!(
            std::fs::canonicalize(&ok.host).unwrap(),
            std::fs::canonicalize(root.join("new/dir")).unwrap()
        );
        for bad in ["../outside", "/etc", "abs-link", "rel-link", "rel-link/x"] {
            let err = vols.resolve(&mount("data", Some(bad), "/x")).unwrap_err();
            assert_eq!(
                err.kind,
                crate::error::ErrorKind::InvalidArgument,
                "{bad}: {err}"
            );
        }
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing created outside"
        );
        let err = vols.resolve(&mount("nope", None, "/x")).unwrap_err();
        assert!(err.message.contains("\"nope\""), "{err}");
    }

    #[test]
    fn size_limit_is_measured_and_volumes_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let vols = PodVolumes::create(tmp.path(), "p", &[empty_dir("small", Some(8192))]).unwrap();
        assert!(vols.over_limit().is_none());
        std::fs::write(tmp.path().join("volumes/small/big"), vec![1u8; 64 * 1024]).unwrap();
        assert!(vols.over_limit().unwrap().contains("\"small\""));
        vols.remove();
        assert!(!tmp.path().join("volumes/small").exists());
    }

    #[test]
    fn host_path_kinds_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let hp = |path: &Path, kind| VolumeSpec {
            name: "h".into(),
            source: VolumeSource::HostPath {
                path: path.to_path_buf(),
                kind,
            },
        };
        let pod = tmp.path().join("pod");
        assert!(PodVolumes::create(&pod, "p", &[hp(&file, HostPathKind::Directory)]).is_err());
        assert!(PodVolumes::create(&pod, "p", &[hp(tmp.path(), HostPathKind::File)]).is_err());
        assert!(PodVolumes::create(&pod, "p", &[hp(&file, HostPathKind::File)]).is_ok());
        let made = tmp.path().join("made/here");
        PodVolumes::create(&pod, "p", &[hp(&made, HostPathKind::DirectoryOrCreate)]).unwrap();
        assert!(made.is_dir());
        let missing = tmp.path().join("missing");
        let err = PodVolumes::create(&pod, "p", &[hp(&missing, HostPathKind::Directory)]);
        assert_eq!(err.unwrap_err().kind, crate::error::ErrorKind::NotFound);
    }

    #[test]
    fn a_host_path_through_dotdot_is_refused_before_anything_is_made() {
        let tmp = tempfile::tempdir().unwrap();
        let pod = tmp.path().join("pod");
        for kind in [HostPathKind::DirectoryOrCreate, HostPathKind::FileOrCreate] {
            let sneaky = tmp.path().join("extra/../target");
            let spec = VolumeSpec {
                name: "h".into(),
                source: VolumeSource::HostPath { path: sneaky, kind },
            };
            let err = PodVolumes::create(&pod, "p", &[spec]).unwrap_err();
            assert_eq!(err.kind, crate::error::ErrorKind::InvalidArgument, "{err}");
            assert!(err.message.contains("'..'"), "{err}");
            assert!(!tmp.path().join("extra").exists(), "{kind:?}");
            assert!(!tmp.path().join("target").exists(), "{kind:?}");
        }
    }
}
