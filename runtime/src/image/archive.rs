//! Offline images: `import` of an OCI layout tar, a `docker save` tar or a bare `.wasm`, and
//! `export` to an OCI layout tar, for edge nodes that never see a registry.
//!
//! An archive is read straight from its tar stream and never extracted: each regular file goes
//! into the content store as it streams by, and links stay a table resolved among the
//! archive's own names. No name in an archive is ever opened on the host, so no chain of links
//! can make an import read a host file.

use std::collections::{BTreeMap, HashMap};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::content::ContentStore;
use super::format::{self, Descriptor, Manifest, OCI_MANIFEST, WASM_CONFIG, WASM_LAYER};
use super::reference as refs;
use super::store::{ImageRecord, ImageStore};
use super::unpack::{self, Budget, Capped, Link, UnpackLimits, Unresolved};
use crate::engine::GuestKind;
use crate::error::{Error, Result};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

impl ImageStore {
    /// Imports every image of an archive (or a bare `.wasm`, which needs `tag`). What a failed
    /// import stored, and the archive's files no image uses, are removed before it returns
    /// (or, while another pull or import runs, as soon as the last one ends).
    pub async fn import(&self, path: &Path, tag: Option<&str>) -> Result<Vec<ImageRecord>> {
        let result = {
            let _gc = self.gc_guard().await;
            self.import_guarded(path, tag).await
        };
        self.sweep_if_idle();
        result
    }

    async fn import_guarded(&self, path: &Path, tag: Option<&str>) -> Result<Vec<ImageRecord>> {
        let head = read_head(path)?;
        if head.starts_with(b"\0asm") {
            let tag =
                tag.ok_or_else(|| Error::invalid("a bare .wasm needs --tag to name the image"))?;
            return Ok(vec![self.import_wasm(path, tag).await?]);
        }
        let archive = Archive::read(self.content(), path, self.limits())
            .map_err(|e| e.context(format!("archive {}", path.display())))?;
        if archive.has("oci-layout") {
            self.import_layout(&archive, tag).await
        } else if archive.has("manifest.json") {
            self.import_docker(&archive, tag).await
        } else {
            Err(Error::invalid(format!(
                "{} is not an OCI layout, a docker save archive or a .wasm",
                path.display()
            )))
        }
    }

    async fn import_wasm(&self, path: &Path, tag: &str) -> Result<ImageRecord> {
        let wasm = self.content().put_file(path)?;
        let bytes = self.content().read(&wasm)?;
        let os = match GuestKind::detect(&bytes)? {
            GuestKind::Preview1 => "wasip1",
            GuestKind::Preview2 => "wasip2",
        };
        let config = serde_json::to_vec(&json!({
            "created": chrono::Utc::now().to_rfc3339(),
            "architecture": "wasm",
            "os": os,
            "layerDigests": [wasm],
        }))
        .expect("static JSON");
        let config_digest = self.content().put(&config)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": WASM_CONFIG,
            "config": {"mediaType": WASM_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": WASM_LAYER, "digest": wasm, "size": bytes.len()}],
        }))
        .expect("static JSON");
        let top = self.content().put(&manifest)?;
        self.register(&top, &top, names_for(Some(tag), &top)?).await
    }

    async fn import_layout(
        &self,
        archive: &Archive,
        tag: Option<&str>,
    ) -> Result<Vec<ImageRecord>> {
        archive.check_layout_names()?;
        let index = archive.read_json(self.content(), "index.json")?;
        let entries: Vec<Descriptor> = serde_json::from_value(index["manifests"].clone())
            .map_err(|e| format::json_error("index.json", &e))?;
        if entries.is_empty() {
            return Err(Error::invalid("index.json lists no images"));
        }
        if tag.is_some() && entries.len() > 1 {
            return Err(Error::invalid(
                "--tag needs an archive with exactly one image",
            ));
        }
        let mut out = Vec::new();
        for entry in &entries {
            let named = tag.map(str::to_owned).or_else(|| {
                entry
                    .annotations
                    .get(CONTAINERD_NAME)
                    .or_else(|| entry.annotations.get(REF_NAME))
                    .cloned()
            });
            // A bare tag ("1.0") names no repository: such an image is imported untagged.
            let named = named.filter(|n| n.contains('/') || n.contains(':') || tag.is_some());
            let image = self.select_image(&entry.digest)?;
            out.push(
                self.register(
                    &entry.digest,
                    &image,
                    names_for(named.as_deref(), &entry.digest)?,
                )
                .await?,
            );
        }
        Ok(out)
    }

    /// The image manifest of `top`: itself, or the wasi/wasm entry of an index.
    fn select_image(&self, top: &str) -> Result<String> {
        match self.manifest(top)? {
            Manifest::Image { .. } => Ok(top.to_owned()),
            Manifest::Index(entries) => {
                let entry = format::select_wasm_platform(&entries)?;
                if entry.digest == top {
                    return Err(Error::invalid("the image index points to itself"));
                }
                Ok(entry.digest.clone())
            }
        }
    }

    async fn import_docker(
        &self,
        archive: &Archive,
        tag: Option<&str>,
    ) -> Result<Vec<ImageRecord>> {
        let manifest = archive.read_json(self.content(), "manifest.json")?;
        let images = manifest
            .as_array()
            .ok_or_else(|| Error::invalid("manifest.json is not a list"))?;
        if tag.is_some() && images.len() != 1 {
            return Err(Error::invalid(
                "--tag needs an archive with exactly one image",
            ));
        }
        let mut out = Vec::new();
        for image in images {
            let file = |v: &serde_json::Value| -> Result<String> {
                let name = v.as_str().ok_or_else(|| {
                    Error::invalid("manifest.json names a file with a non-string")
                })?;
                archive
                    .blob(name)
                    .map(str::to_owned)
                    .map_err(|e| e.context("manifest.json"))
            };
            let config = file(&image["Config"])?;
            let config_size = self.content().size(&config).unwrap_or(0);
            let mut layers = Vec::new();
            for layer in image["Layers"].as_array().into_iter().flatten() {
                let digest = file(layer)?;
                let gzip = read_head(&self.content().path(&digest)?)?.starts_with(&[0x1f, 0x8b]);
                layers.push(json!({
                    "mediaType": if gzip { "application/vnd.docker.image.rootfs.diff.tar.gzip" } else { "application/vnd.docker.image.rootfs.diff.tar" },
                    "digest": digest,
                    "size": self.content().size(&digest).unwrap_or(0),
                }));
            }
            let oci = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
                "layers": layers,
            }))
            .expect("static JSON");
            let top = self.content().put(&oci)?;
            let tags: Vec<String> = match tag {
                Some(t) => vec![t.to_owned()],
                None => image["RepoTags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect(),
            };
            let mut names = Vec::new();
            for t in tags.iter().map(Some).chain(tags.is_empty().then_some(None)) {
                for n in names_for(t.map(String::as_str), &top)? {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
            out.push(self.register(&top, &top, names).await?);
        }
        Ok(out)
    }

    /// Writes the image as an OCI layout tar (`oci-layout`, `index.json`, `blobs/`).
    pub async fn export(&self, reference: &str, out: &Path) -> Result<()> {
        let _gc = self.gc_guard().await;
        let record = self
            .get(reference)?
            .ok_or_else(|| Error::not_found(format!("image {reference} not found")))?;
        let manifest = self.select_image(&record.manifest_digest)?;
        let manifest_size = self.content().size(&manifest).unwrap_or(0);
        let mut annotations = BTreeMap::new();
        if let Some(name) = record.repo_tags.first() {
            annotations.insert(CONTAINERD_NAME.to_owned(), name.clone());
            annotations.insert(
                REF_NAME.to_owned(),
                name.rsplit_once(':')
                    .map_or(name.as_str(), |(_, t)| t)
                    .to_owned(),
            );
        }
        let index = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": format::OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest, "size": manifest_size, "annotations": annotations}],
        }))
        .expect("static JSON");
        let tmp = out.with_extension(format!("tmp-{}", rand::random::<u32>()));
        let write = || -> std::io::Result<()> {
            let mut tar = tar::Builder::new(std::fs::File::create(&tmp)?);
            let mut add = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
                let mut h = tar::Header::new_gnu();
                h.set_size(bytes.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                tar.append_data(&mut h, name, bytes)
            };
            add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            add("index.json", &index)?;
            for digest in std::iter::once(&manifest)
                .chain([&record.config.digest])
                .chain(record.layers.iter().map(|l| &l.digest))
            {
                let bytes = self.content().read(digest).map_err(std::io::Error::other)?;
                add(&format!("blobs/sha256/{}", &digest[7..]), &bytes)?;
            }
            tar.into_inner()?.sync_all()?;
            std::fs::rename(&tmp, out)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("exporting to {}", out.display()), e)
        })
    }
}

/// The names an imported image gets: the tag (normalised) and `repo@digest`.
fn names_for(tag: Option<&str>, top: &str) -> Result<Vec<String>> {
    let Some(tag) = tag else {
        return Ok(Vec::new());
    };
    let r = refs::parse(tag)?;
    let mut names = Vec::new();
    names.extend(refs::tagged_name(&r));
    names.push(refs::digest_name(&r, top));
    Ok(names)
}

fn read_head(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(8);
    std::fs::File::open(path)
        .and_then(|f| f.take(8).read_to_end(&mut head))
        .map_err(|e| Error::io(path.display(), e))?;
    Ok(head)
}

/// An image archive as read from its tar stream (see the module's comment).
struct Archive {
    /// Regular files: path → the blob holding their content.
    files: HashMap<PathBuf, String>,
    /// Symlinks and hard links: path → what they name.
    links: HashMap<PathBuf, Link>,
}

impl Archive {
    /// Streams the archive (plain, gzip or zstd) into the content store, within `limits`.
    fn read(content: &ContentStore, path: &Path, limits: UnpackLimits) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
        let mut budget = Budget::new(limits);
        let mut entries_left = limits.max_entries;
        let mut tar = tar::Archive::new(Capped {
            inner: unpack::decompress(BufReader::new(file))?,
            budget: &mut budget,
        });
        let mut out = Archive {
            files: HashMap::new(),
            links: HashMap::new(),
        };
        for entry in tar.entries().map_err(unpack::tar_error)? {
            let mut entry = entry.map_err(unpack::tar_error)?;
            unpack::count_entry(&mut entries_left)?;
            let name = unpack::clean(&entry.path().map_err(unpack::tar_error)?)?;
            let target = entry
                .link_name()
                .map_err(unpack::tar_error)?
                .map(|t| t.into_owned());
            let link = match (entry.header().entry_type(), target) {
                (tar::EntryType::Regular | tar::EntryType::Continuous, _) => {
                    let size = entry.size();
                    let digest = content
                        .put_reader(&mut entry, size)
                        .map_err(|e| e.context(name.display()))?;
                    out.links.remove(&name);
                    out.files.insert(name, digest);
                    continue;
                }
                (tar::EntryType::Symlink, Some(target)) => Link::Symbolic(target),
                (tar::EntryType::Link, Some(target)) => Link::Hard(
                    unpack::clean(&target)
                        .map_err(|e| e.context(format!("hard link {}", name.display())))?,
                ),
                // Directories are implied by their files; nothing else names content.
                _ => continue,
            };
            out.files.remove(&name);
            out.links.insert(name, link);
        }
        Ok(out)
    }

    /// The blob of the file at `path`, links followed among the archive's own names.
    fn blob(&self, path: impl AsRef<Path>) -> Result<&str> {
        let path = path.as_ref();
        let resolved = unpack::resolve(path, |p| self.links.get(p).cloned()).map_err(|e| {
            Error::invalid(match e {
                Unresolved::Outside => format!("{} is outside the archive", path.display()),
                Unresolved::TooDeep => format!("{}: too many levels of links", path.display()),
            })
        })?;
        self.files
            .get(&resolved)
            .map(String::as_str)
            .ok_or_else(|| {
                Error::invalid(format!("{} is not a file in the archive", path.display()))
            })
    }

    fn has(&self, path: &str) -> bool {
        self.blob(path).is_ok()
    }

    /// Reads a small JSON file of the archive (index.json, manifest.json).
    fn read_json(&self, content: &ContentStore, path: &str) -> Result<serde_json::Value> {
        let digest = self.blob(path)?;
        format::check_metadata_size(path, content.size(digest).unwrap_or(0))?;
        serde_json::from_slice(&content.read(digest)?).map_err(|e| format::json_error(path, &e))
    }

    /// Each `blobs/sha256/<hex>` of a layout must hold content with that digest.
    fn check_layout_names(&self) -> Result<()> {
        let dir = Path::new("blobs/sha256");
        for name in self.files.keys().chain(self.links.keys()) {
            let (Some(parent), Some(hex)) = (name.parent(), name.file_name()) else {
                continue;
            };
            if parent != dir {
                continue;
            }
            let named = format!("sha256:{}", hex.to_string_lossy());
            let digest = self.blob(name)?;
            if digest != named {
                return Err(Error::invalid(format!(
                    "blob {named} does not match its content ({digest})"
                )));
            }
        }
        Ok(())
    }
}
