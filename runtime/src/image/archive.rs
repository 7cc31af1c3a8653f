//! Offline images: `import` of an OCI layout tar, a `docker save` tar or a bare `.wasm`, and
//! `export` to an OCI layout tar, for edge nodes that never see a registry.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use super::format::{self, Descriptor, Manifest, OCI_MANIFEST, WASM_CONFIG, WASM_LAYER};
use super::reference as refs;
use super::store::{ImageRecord, ImageStore};
use super::unpack;
use crate::engine::GuestKind;
use crate::error::{Error, Result};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

impl ImageStore {
    /// Imports every image of an archive (or a bare `.wasm`, which needs `tag`).
    pub async fn import(&self, path: &Path, tag: Option<&str>) -> Result<Vec<ImageRecord>> {
        let _gc = self.gc_guard().await;
        let head = read_head(path)?;
        if head.starts_with(b"\0asm") {
            let tag =
                tag.ok_or_else(|| Error::invalid("a bare .wasm needs --tag to name the image"))?;
            return Ok(vec![self.import_wasm(path, tag).await?]);
        }
        let tmp = self
            .work_dir()
            .join(format!(".import-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(tmp.display(), e))?;
        let result = async {
            unpack::unpack(&tmp, &[path.to_path_buf()], Default::default())
                .map_err(|e| e.context(format!("archive {}", path.display())))?;
            if tmp.join("oci-layout").is_file() {
                self.import_layout(&tmp, tag).await
            } else if tmp.join("manifest.json").is_file() {
                self.import_docker(&tmp, tag).await
            } else {
                Err(Error::invalid(format!(
                    "{} is not an OCI layout, a docker save archive or a .wasm",
                    path.display()
                )))
            }
        }
        .await;
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    async fn import_wasm(&self, path: &Path, tag: &str) -> Result<ImageRecord> {
        let wasm = self.content().put_file(path, None)?;
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

    async fn import_layout(&self, dir: &Path, tag: Option<&str>) -> Result<Vec<ImageRecord>> {
        let blobs = dir.join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs)
            .map_err(|e| Error::io("layout blobs/sha256", e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            self.content()
                .put_file(&entry.path(), Some(&format!("sha256:{name}")))?;
        }
        let index: serde_json::Value = read_json(&dir.join("index.json"))?;
        let entries: Vec<Descriptor> = serde_json::from_value(index["manifests"].clone())
            .map_err(|e| Error::invalid(format!("index.json: {e}")))?;
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
        match Manifest::parse(&self.content().read(top)?)? {
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

    async fn import_docker(&self, dir: &Path, tag: Option<&str>) -> Result<Vec<ImageRecord>> {
        let manifest: serde_json::Value = read_json(&dir.join("manifest.json"))?;
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
            let file = |v: &serde_json::Value| -> Result<std::path::PathBuf> {
                let rel = v.as_str().ok_or_else(|| {
                    Error::invalid("manifest.json names a file with a non-string")
                })?;
                let rel = Path::new(rel);
                if rel.is_absolute()
                    || rel
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(Error::invalid(format!(
                        "manifest.json names {} outside the archive",
                        rel.display()
                    )));
                }
                Ok(dir.join(rel))
            };
            let config_path = file(&image["Config"])?;
            let config = self.content().put_file(&config_path, None)?;
            let config_size = self.content().size(&config).unwrap_or(0);
            let mut layers = Vec::new();
            for layer in image["Layers"].as_array().into_iter().flatten() {
                let digest = self.content().put_file(&file(layer)?, None)?;
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

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    if bytes.len() as u64 > format::MAX_METADATA_SIZE {
        return Err(Error::invalid(format!("{} is too large", path.display())));
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
}
