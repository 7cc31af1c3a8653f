//! Unpacking tar layers of "compat" images into a root filesystem, treating every layer as
//! hostile. All writes go through a cap-std `Dir` for the root, so no path, symlink or hard
//! link can reach outside it; on top of that, entries that only an attacker would write
//! (absolute paths, `..`, links leading out, device nodes) fail the image with a message, and
//! decompressed size and entry count are capped (bombs, whiteout floods).

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
    let mut budget = Budget {
        bytes_left: limits.max_bytes,
        max_bytes: limits.max_bytes,
    };
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
    Ok(())
}

struct Budget {
    bytes_left: u64,
    max_bytes: u64,
}

/// Picks the decompressor from the stream's magic bytes (gzip, zstd, or plain tar).
fn decompress<'a>(mut r: BufReader<File>) -> Result<Box<dyn Read + 'a>> {
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
struct Capped<'a, R> {
    inner: R,
    budget: &'a mut Budget,
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
        if *entries_left == 0 {
            return Err(Error::invalid(
                "too many entries in the image's layers (a whiteout flood?)",
            ));
        }
        *entries_left -= 1;
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
                check_symlink(&path, &target)?;
                check_no_link_in_parents(root, &path)?;
                remove_any(root, &path)?;
                root.symlink(&target, &path).map_err(|e| io_at(&path, e))?;
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
fn clean(raw: &Path) -> Result<PathBuf> {
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

/// A symlink may point anywhere inside the image, never above its root.
fn check_symlink(link: &Path, target: &Path) -> Result<()> {
    let leads_out = || {
        Error::invalid(format!(
            "symlink {} -> {} leads outside the image",
            link.display(),
            target.display()
        ))
    };
    if target.is_absolute() {
        return Err(leads_out());
    }
    let mut depth = link.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return Err(leads_out());
        }
    }
    Ok(())
}

/// A symlink's depth check holds only if its parents are real directories: refuse one placed
/// through another symlink (`d/l -> ..` then `d/l/l2 -> ..` would point above the root).
fn check_no_link_in_parents(root: &Dir, path: &Path) -> Result<()> {
    let mut prefix = PathBuf::new();
    for c in path.parent().into_iter().flat_map(Path::components) {
        prefix.push(c);
        if root
            .symlink_metadata(&prefix)
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(Error::invalid(format!(
                "symlink {} leads outside the image: it is placed through the symlink {}",
                path.display(),
                prefix.display()
            )));
        }
    }
    Ok(())
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

fn tar_error(e: std::io::Error) -> Error {
    Error::invalid(format!("malformed layer: {e}"))
}
