//! Test images built in the repo, reproducibly: OCI image layout directories (`oci-layout`,
//! `index.json`, `blobs/sha256/…`) with one gzip tar layer, written from fixed content with
//! fixed timestamps and sorted entries, so that the same inputs give the same digests.
//!
//! The toolbox image holds `/bin/toolbox` (the multi-call program, `examples/wasm/
//! toolbox.p1.wasm`) and a relative symlink per applet (`/bin/sh -> toolbox`, …): wasmpod reads
//! the entrypoint through the link and exec finds applets by name in `/bin`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

/// The time every file and the config carry (2024-01-01T00:00:00Z).
pub const EPOCH: u64 = 1_704_067_200;
const CREATED: &str = "2024-01-01T00:00:00Z";

/// An entry of the image's filesystem.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Dir {
        mode: u32,
    },
    File {
        bytes: Vec<u8>,
        mode: u32,
    },
    /// A symbolic link; keep targets relative (wasmpod refuses absolute ones).
    Symlink {
        target: String,
    },
}

/// An image to write as an OCI layout.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// Paths without a leading `/` (`bin/sh`); parents are added as directories.
    pub files: BTreeMap<String, Entry>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    /// The config's `User` (`1002`, `www-data`, `1003:1003`), empty for none.
    pub user: String,
    pub labels: BTreeMap<String, String>,
    /// The `org.opencontainers.image.ref.name` annotation of the index entry, if any.
    pub ref_name: Option<String>,
}

impl Image {
    /// The toolbox image around `wasm` (a toolbox build): `/bin/toolbox`, a link per applet,
    /// `/tmp`; entrypoint `/bin/sh`, `PATH=/usr/local/bin:/usr/bin:/bin`, working dir `/`.
    pub fn toolbox_with(wasm: &[u8]) -> Image {
        let mut files = BTreeMap::new();
        files.insert("bin".to_owned(), Entry::Dir { mode: 0o755 });
        files.insert("tmp".to_owned(), Entry::Dir { mode: 0o1777 });
        files.insert(
            "bin/toolbox".to_owned(),
            Entry::File {
                bytes: wasm.to_vec(),
                mode: 0o755,
            },
        );
        for name in wasmpod_toolbox::applets::NAMES {
            files.insert(
                format!("bin/{name}"),
                Entry::Symlink {
                    target: "toolbox".to_owned(),
                },
            );
        }
        Image {
            files,
            entrypoint: vec!["/bin/sh".to_owned()],
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_owned()],
            working_dir: "/".to_owned(),
            ..Image::default()
        }
    }

    /// The toolbox image of the preview1 build in `examples/wasm` (run `examples/build.sh`).
    pub fn toolbox() -> Image {
        let path = crate::wasm("toolbox.p1");
        let wasm =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Image::toolbox_with(&wasm)
    }

    /// Adds (or replaces) a regular file, `path` without a leading `/`.
    pub fn file(mut self, path: &str, bytes: &[u8]) -> Image {
        self.files.insert(
            path.trim_start_matches('/').to_owned(),
            Entry::File {
                bytes: bytes.to_vec(),
                mode: 0o644,
            },
        );
        self
    }

    /// The layer: an uncompressed tar of the files, sorted, parents first, fixed metadata.
    pub fn layer_tar(&self) -> Vec<u8> {
        let mut entries = self.files.clone();
        for path in self.files.keys() {
            let mut p = Path::new(path).parent();
            while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty()) {
                entries
                    .entry(dir.to_string_lossy().into_owned())
                    .or_insert(Entry::Dir { mode: 0o755 });
                p = dir.parent();
            }
        }
        let mut tar = tar::Builder::new(Vec::new());
        for (path, entry) in &entries {
            let mut h = tar::Header::new_ustar();
            h.set_mtime(EPOCH);
            h.set_uid(0);
            h.set_gid(0);
            match entry {
                Entry::Dir { mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    tar.append_data(&mut h, format!("{path}/"), std::io::empty())
                        .expect("appending a directory");
                }
                Entry::File { bytes, mode } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(bytes.len() as u64);
                    tar.append_data(&mut h, path, bytes.as_slice())
                        .expect("appending a file");
                }
                Entry::Symlink { target } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    tar.append_link(&mut h, path, target)
                        .expect("appending a link");
                }
            }
        }
        tar.into_inner().expect("finishing the tar")
    }

    /// Writes the image as an OCI layout in `dir` (created if missing) and returns `dir`.
    pub fn write_layout(&self, dir: &Path) -> PathBuf {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("creating the layout");
        let put = |bytes: &[u8]| -> (String, usize) {
            let hex = format!("{:x}", Sha256::digest(bytes));
            std::fs::write(blobs.join(&hex), bytes).expect("writing a blob");
            (format!("sha256:{hex}"), bytes.len())
        };
        let tar = self.layer_tar();
        let diff_id = format!("sha256:{:x}", Sha256::digest(&tar));
        // flate2 writes a zero mtime and no name in the gzip header: the bytes are stable.
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        gz.write_all(&tar).expect("compressing the layer");
        let gz = gz.finish().expect("compressing the layer");
        let (layer, layer_size) = put(&gz);

        let mut config = json!({
            "created": CREATED,
            "architecture": "wasm",
            "os": "wasip1",
            "config": {
                "Env": self.env,
                "WorkingDir": self.working_dir,
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": CREATED, "created_by": "wasmpod-tests images.rs"}],
        });
        let c = &mut config["config"];
        if !self.entrypoint.is_empty() {
            c["Entrypoint"] = json!(self.entrypoint);
        }
        if !self.cmd.is_empty() {
            c["Cmd"] = json!(self.cmd);
        }
        if !self.user.is_empty() {
            c["User"] = json!(self.user);
        }
        if !self.labels.is_empty() {
            c["Labels"] = json!(self.labels);
        }
        let config = serde_json::to_vec(&config).expect("config JSON");
        let (config_digest, config_size) = put(&config);

        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer,
                "size": layer_size,
            }],
        }))
        .expect("manifest JSON");
        let (manifest_digest, manifest_size) = put(&manifest);

        let mut entry = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "wasm", "os": "wasip1"},
        });
        if let Some(name) = &self.ref_name {
            entry["annotations"] = json!({"org.opencontainers.image.ref.name": name});
        }
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [entry]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap())
            .expect("writing index.json");
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("writing oci-layout");
        dir.to_path_buf()
    }
}

/// Writes the toolbox image's OCI layout into `dir` and returns `dir`.
pub fn toolbox_layout(dir: &Path) -> PathBuf {
    Image::toolbox().write_layout(dir)
}

/// The layout directory `layout` as an OCI layout tar at `out` (what `wasmpod image import`
/// takes), with sorted entries and fixed metadata; returns `out`.
pub fn layout_tar(layout: &Path, out: &Path) -> PathBuf {
    let mut names = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(layout.join(&rel)).expect("reading the layout") {
            let e = e.expect("reading the layout");
            let rel = rel.join(e.file_name());
            if e.file_type().expect("file type").is_dir() {
                names.push((rel.clone(), true));
                stack.push(rel);
            } else {
                names.push((rel, false));
            }
        }
    }
    names.sort();
    let mut tar = tar::Builder::new(std::fs::File::create(out).expect("creating the tar"));
    for (rel, dir) in names {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(EPOCH);
        h.set_uid(0);
        h.set_gid(0);
        if dir {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, format!("{}/", rel.display()), std::io::empty())
                .expect("appending a directory");
        } else {
            let bytes = std::fs::read(layout.join(&rel)).expect("reading a layout file");
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(bytes.len() as u64);
            tar.append_data(&mut h, &rel, bytes.as_slice())
                .expect("appending a file");
        }
    }
    tar.into_inner().expect("finishing the tar");
    out.to_path_buf()
}
