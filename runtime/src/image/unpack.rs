//! Unpacking tar layers of "compat" images into a root filesystem, treating every layer as
//! hostile. All writes go through a cap-std `Dir` for the root, so no path, symlink or hard
//! link can reach outside it; on top of that, entries that only an attacker would write
//! (absolute paths, `..`, links leading out, device nodes) fail the image with a message, and
//! decompressed size and entry count are capped (bombs, whiteout floods).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, Permissions};

use crate::error::{Error, Result};

/// Caps that keep a hostile image from filling the disk or spinning the unpacker.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Decompressed bytes across all layers.
    pub max_bytes: u64,
    /// Tar entries across all layers (whiteouts included).
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            max_entries: 100_000,
        }
    }
}

/// Unpacks `layers` (paths of layer blobs, in order) into the empty directory `rootfs`.
pub fn unpack(rootfs: &Path, layers: &[PathBuf], limits: UnpackLimits) -> Result<()> {
    let root = Dir::open_ambient_dir(rootfs, ambient_authority())
        .map_err(|e| Error::io(rootfs.display(), e))?;
    let mut budget = Budget::new(limits);
    let mut entries_left = limits.max_entries;
    for (i, layer) in layers.iter().enumerate() {
        let file = File::open(layer).map_err(|e| Error::io(layer.display(), e))?;
        unpack_layer(
            &root,
            decompress(BufReader::new(file))?,
            &mut budget,
            &mut entries_left,
        )
        .map_err(|e| e.context(format!("layer {}", i + 1)))?;
    }
    // Checked on the finished tree: a later entry can turn an earlier, harmless link into
    // one that leads out (`y -> x/..` is inside until `x -> .` arrives).
    check_links(&root)
}

/// What is left of the decompressed bytes allowed.
pub(super) struct Budget {
    bytes_left: u64,
    max_bytes: u64,
}

impl Budget {
    pub(super) fn new(limits: UnpackLimits) -> Self {
        Self {
            bytes_left: limits.max_bytes,
            max_bytes: limits.max_bytes,
        }
    }
}

/// Counts one tar entry against the limit.
pub(super) fn count_entry(entries_left: &mut u64) -> Result<()> {
    match entries_left.checked_sub(1) {
        Some(left) => {
            *entries_left = left;
            Ok(())
        }
        None => Err(Error::invalid("too many entries (a whiteout flood?)")),
    }
}

/// Picks the decompressor from the stream's magic bytes (gzip, zstd, or plain tar).
pub(super) fn decompress<'a>(mut r: BufReader<File>) -> Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf().map_err(|e| Error::io("reading layer", e))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::Decoder::with_buffer(r).map_err(|e| Error::io("zstd layer", e))?)
    } else {
        Box::new(r)
    })
}

/// Counts decompressed bytes and fails once the budget is spent.
pub(super) struct Capped<'a, R> {
    pub(super) inner: R,
    pub(super) budget: &'a mut Budget,
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.budget.bytes_left {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!(
                    "layers expand past {} bytes (a decompression bomb?)",
                    self.budget.max_bytes
                ),
            ));
        }
        self.budget.bytes_left -= n as u64;
        Ok(n)
    }
}

fn unpack_layer(
    root: &Dir,
    layer: Box<dyn Read + '_>,
    budget: &mut Budget,
    entries_left: &mut u64,
) -> Result<()> {
    let mut archive = tar::Archive::new(Capped {
        inner: layer,
        budget,
    });
    let entries = archive.entries().map_err(tar_error)?;
    for entry in entries {
        let mut entry = entry.map_err(tar_error)?;
        count_entry(entries_left)?;
        let raw = entry.path().map_err(tar_error)?.into_owned();
        let path = clean(&raw)?;
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue; // the root itself
        };
        let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
        if let Some(hidden) = name.strip_prefix(".wh.") {
            if hidden == ".wh..opq" {
                clear_dir(root, &parent)?;
            } else {
                remove_any(root, &parent.join(hidden))?;
            }
            continue;
        }
        if !parent.as_os_str().is_empty() {
            root.create_dir_all(&parent).map_err(|e| io_at(&path, e))?;
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Directory => {
                if root.symlink_metadata(&path).is_ok_and(|m| !m.is_dir()) {
                    remove_any(root, &path)?;
                }
                root.create_dir_all(&path).map_err(|e| io_at(&path, e))?;
                set_mode(root, &path, mode | 0o700)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_any(root, &path)?;
                let mut out = root.create(&path).map_err(|e| io_at(&path, e))?;
                std::io::copy(&mut entry, &mut out).map_err(|e| io_at(&path, e))?;
                set_mode(root, &path, mode)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(tar_error)?
                    .unwrap_or_default()
                    .into_owned();
                remove_any(root, &path)?;
                root.symlink(&target, &path).map_err(|e| io_at(&path, e))?;
                // Caught here when it already leads out, with a clear message; the check of
                // the finished tree catches links that later entries turn outwards.
                check_link(root, &path)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(tar_error)?
                    .unwrap_or_default()
                    .into_owned();
                let target = clean(&target)
                    .map_err(|e| e.context(format!("hard link {}", path.display())))?;
                remove_any(root, &path)?;
                root.hard_link(&target, root, &path).map_err(|e| {
                    Error::invalid(format!(
                        "hard link {} -> {}: {e}",
                        path.display(),
                        target.display()
                    ))
                })?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(Error::invalid(format!(
                    "{} is a device node or fifo; images may not carry them",
                    path.display()
                )))
            }
            _ => {} // PAX/GNU metadata records are handled by the tar reader.
        }
    }
    Ok(())
}

/// A layer path made relative and plain; absolute paths and `..` are refused.
pub(super) fn clean(raw: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::invalid(format!(
                    "entry {} has an absolute path",
                    raw.display()
                )))
            }
            Component::ParentDir => {
                return Err(Error::invalid(format!(
                    "entry {} climbs out with '..'",
                    raw.display()
                )))
            }
        }
    }
    Ok(out)
}

fn remove_any(root: &Dir, path: &Path) -> Result<()> {
    match root.symlink_metadata(path) {
        Ok(m) if m.is_dir() => root.remove_dir_all(path).map_err(|e| io_at(path, e)),
        Ok(_) => root.remove_file(path).map_err(|e| io_at(path, e)),
        Err(_) => Ok(()),
    }
}

fn clear_dir(root: &Dir, dir: &Path) -> Result<()> {
    let entries = if dir.as_os_str().is_empty() {
        root.entries()
    } else {
        root.read_dir(dir)
    };
    let Ok(entries) = entries else { return Ok(()) };
    for e in entries.flatten() {
        remove_any(root, &dir.join(e.file_name()))?;
    }
    Ok(())
}

fn set_mode(root: &Dir, path: &Path, mode: u32) -> Result<()> {
    root.set_permissions(
        path,
        Permissions::from_std(std::fs::Permissions::from_mode(mode)),
    )
    .map_err(|e| io_at(path, e))
}

fn io_at(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        Error::invalid(format!("{} leads outside the image: {e}", path.display()))
    } else {
        Error::io(path.display(), e)
    }
}

pub(super) fn tar_error(e: std::io::Error) -> Error {
    Error::invalid(format!("malformed layer: {e}"))
}

/// Refuses a tree holding a symlink that, followed as the kernel follows it, climbs above the
/// root: each link of a chain can look inside on its own (`x -> .`, `y -> x/..`).
fn check_links(root: &Dir) -> Result<()> {
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let entries = if dir.as_os_str().is_empty() {
            root.entries()
        } else {
            root.read_dir(&dir)
        }
        .map_err(|e| io_at(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_at(&dir, e))?;
            let path = dir.join(entry.file_name());
            let kind = entry.file_type().map_err(|e| io_at(&path, e))?;
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_symlink() {
                check_link(root, &path)?;
            }
        }
    }
    Ok(())
}

/// Refuses the symlink at `path` if, followed as the kernel follows it, it climbs above the
/// root. Too many links on the way is ELOOP for the kernel too: harmless.
fn check_link(root: &Dir, path: &Path) -> Result<()> {
    if let Err(Unresolved::Outside) = resolve(path, |p| link_in(root, p)) {
        let target = root.read_link_contents(path).unwrap_or_default();
        return Err(Error::invalid(format!(
            "symlink {} -> {} leads outside the image",
            path.display(),
            target.display()
        )));
    }
    Ok(())
}

fn link_in(root: &Dir, path: &Path) -> Option<Link> {
    root.symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_symlink())?;
    root.read_link_contents(path).ok().map(Link::Symbolic)
}

/// What path resolution finds at a path that is a link.
#[derive(Clone)]
pub(super) enum Link {
    /// A symlink's target, relative to the link's directory.
    Symbolic(PathBuf),
    /// A tar hard link: the path it names, from the root.
    Hard(PathBuf),
}

/// Why a path does not resolve below its root.
#[derive(Debug, PartialEq)]
pub(super) enum Unresolved {
    /// A step climbs above the root (or a link is absolute).
    Outside,
    /// More than 40 links (the kernel's limit) on the way.
    TooDeep,
}

/// Resolves `path` below a root as the kernel does (every link followed, `..` going up from
/// the directory reached so far), `lookup` saying which paths are links. Paths that do not
/// exist are taken as plain names. Never touches the host: `lookup` answers from a directory
/// handle or from an archive's own table.
pub(super) fn resolve(
    path: &Path,
    lookup: impl Fn(&Path) -> Option<Link>,
) -> std::result::Result<PathBuf, Unresolved> {
    const MAX_LINKS: usize = 40;
    let mut todo = VecDeque::new();
    push_front(&mut todo, path)?;
    let mut done = PathBuf::new();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        let Some(name) = part else {
            if !done.pop() {
                return Err(Unresolved::Outside);
            }
            continue;
        };
        let next = done.join(&name);
        let target = match lookup(&next) {
            None => {
                done = next;
                continue;
            }
            Some(Link::Symbolic(target)) => target,
            Some(Link::Hard(target)) => {
                done = PathBuf::new();
                target
            }
        };
        links += 1;
        if links > MAX_LINKS {
            return Err(Unresolved::TooDeep);
        }
        push_front(&mut todo, &target)?;
    }
    Ok(done)
}

/// Queues `path`'s components (`None` for `..`) ahead of the rest.
fn push_front(
    todo: &mut VecDeque<Option<OsString>>,
    path: &Path,
) -> std::result::Result<(), Unresolved> {
    for c in path.components().rev() {
        match c {
            Component::Normal(name) => todo.push_front(Some(name.to_owned())),
            Component::ParentDir => todo.push_front(None),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(Unresolved::Outside),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn links(table: &[(&str, &str)]) -> impl Fn(&Path) -> Option<Link> {
        let table: HashMap<PathBuf, PathBuf> = table
            .iter()
            .map(|(l, t)| (PathBuf::from(l), PathBuf::from(t)))
            .collect();
        move |p| table.get(p).cloned().map(Link::Symbolic)
    }

    #[test]
    fn chains_of_inside_links_that_lead_out_are_caught() {
        let chain = links(&[("x", "."), ("y", "x/.."), ("d/l", ".."), ("a", "d/l/y")]);
        assert_eq!(resolve(Path::new("y"), &chain), Err(Unresolved::Outside));
        assert_eq!(
            resolve(Path::new("a/etc"), &chain),
            Err(Unresolved::Outside)
        );
        assert_eq!(resolve(Path::new("x/x/f"), &chain), Ok(PathBuf::from("f")));
        assert_eq!(
            resolve(Path::new("d/l/d/f"), &chain),
            Ok(PathBuf::from("d/f"))
        );
        assert_eq!(resolve(Path::new("/etc"), &chain), Err(Unresolved::Outside));
        let abs = links(&[("l", "/etc")]);
        assert_eq!(resolve(Path::new("l"), &abs), Err(Unresolved::Outside));
        let fine = links(&[("b/c", "../e"), ("e", "f/g")]);
        assert_eq!(
            resolve(Path::new("b/c/h"), &fine),
            Ok(PathBuf::from("f/g/h"))
        );
    }

    #[test]
    fn link_loops_stop() {
        let table = links(&[("a", "b"), ("b", "a")]);
        assert_eq!(resolve(Path::new("a"), &table), Err(Unresolved::TooDeep));
    }

    #[test]
    fn unpacked_chain_through_links_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        let mut layer = tar::Builder::new(Vec::new());
        // Deep enough below `x/x/...` that the `..`s reach `/`, each link inside on its own.
        let up = format!("{}{}", "x/".repeat(30), "../".repeat(30));
        for (name, target) in [("x", "."), ("up", up.as_str())] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            layer.append_link(&mut h, name, target).unwrap();
        }
        let path = tmp.path().join("layer.tar");
        std::fs::write(&path, layer.into_inner().unwrap()).unwrap();
        let e = unpack(&rootfs, &[path], UnpackLimits::default()).unwrap_err();
        assert!(e.message.contains("up -> "), "{e}");
        assert!(e.message.contains("leads outside the image"), "{e}");
    }
}
