//! Helpers shared by the runtime's fuzz targets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every path under `top` (not following symlinks) but those named in `skip` directly under
/// it, with file contents: compared before and after, it shows what a run created or changed
/// outside what it was given.
pub fn snapshot_except(top: &Path, skip: &[&str]) -> BTreeMap<PathBuf, Vec<u8>> {
    let skipped: Vec<PathBuf> = skip.iter().map(|s| top.join(s)).collect();
    let mut out = BTreeMap::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if skipped.contains(&path) {
                continue;
            }
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path.clone());
            }
            let content = if kind.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                Vec::new()
            };
            out.insert(path, content);
        }
    }
    out
}
