//! The image store: blobs in a content-addressed store, image records and names in an
//! embedded database (redb), unpacked root filesystems of compat images, and the AOT artifact
//! of every image's Wasm, compiled when the image arrives rather than when a container starts.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_client::Reference;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::content::ContentStore;
use super::format::{self, Descriptor, Manifest, RunConfig, WasmFormat};
use super::reference::{self as refs, check_digest};
use super::registry::{self, Credentials, RegistryConfig};
use super::scratch::{self, Scratch};
use super::unpack::{self, UnpackLimits};
use super::{Image, ImageFuture, ImageSource, LocalFiles};
use crate::engine::{Engine, GuestKind, Wasm};
use crate::error::{Error, ErrorKind, Result};

/// Image id (config digest) → JSON [`ImageRecord`].
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// Name (`registry/repo:tag` or `registry/repo@digest`) → image id.
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("names");

/// When a pod's image is pulled (`imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

/// What the store knows of one image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// The config digest, as containerd and CRI-O name images.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub manifest_digest: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub format: WasmFormat,
    /// The Wasm the containers run (a blob in the store).
    pub wasm_digest: String,
    pub run: RunConfig,
    /// Bytes of every blob the image is made of.
    pub size: u64,
}

/// Told about each blob of a pull as it downloads.
pub trait PullProgress: Send + Sync {
    fn start(&self, digest: &str, media_type: &str, size: u64);
    fn advance(&self, digest: &str, done: u64);
    fn finish(&self, digest: &str);
}

pub struct ImageStore {
    root: PathBuf,
    content: ContentStore,
    db: Database,
    engine: Arc<Engine>,
    registries: RegistryConfig,
    limits: UnpackLimits,
    local: LocalFiles,
    /// One pull per reference at a time; a second waits and finds the blobs there.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Pulls and imports hold it shared, removal exclusively, so garbage collection never
    /// deletes a blob a pull has just fetched but not yet recorded.
    gc: tokio::sync::RwLock<()>,
}

impl ImageStore {
    /// Opens the store (one process at a time: the database is locked), removes what
    /// interrupted pulls and imports left, and collects garbage: none of it needs free space.
    pub fn open(
        root: &Path,
        engine: Arc<Engine>,
        registries: RegistryConfig,
        limits: UnpackLimits,
    ) -> Result<Self> {
        scratch::private_dir(root)?;
        // The database first: a second process fails here, before touching any file.
        let db_path = root.join("images.redb");
        let db = Database::create(&db_path)
            .map_err(|e| Error::internal(format!("{}: {e}", db_path.display())))?;
        create_tables(&db)?;
        scratch::private_dir(&root.join("rootfs"))?;
        let content = ContentStore::open(&root.join("content"))?;
        let store = Self {
            root: root.to_path_buf(),
            content,
            db,
            engine,
            registries,
            limits,
            local: LocalFiles::default(),
            pulls: Mutex::default(),
            gc: tokio::sync::RwLock::new(()),
        };
        store.sweep_if_idle();
        Ok(store)
    }

    /// Every image, newest name first within each.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(IMAGES).map_err(db_error)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_error)? {
            let (_, value) = row.map_err(db_error)?;
            match serde_json::from_slice::<ImageRecord>(value.value()) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!("skipping a corrupt image record: {e}"),
            }
        }
        Ok(out)
    }

    /// Finds an image by name (normalised), `name@digest`, id, or unique id prefix.
    pub fn get(&self, reference: &str) -> Result<Option<ImageRecord>> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let names = txn.open_table(NAMES).map_err(db_error)?;
        let images = txn.open_table(IMAGES).map_err(db_error)?;
        let load = |id: &str| -> Result<Option<ImageRecord>> {
            match images.get(id).map_err(db_error)? {
                Some(v) => serde_json::from_slice(v.value())
                    .map(Some)
                    .map_err(|e| Error::internal(format!("image record {id} is corrupt: {e}"))),
                None => Ok(None),
            }
        };
        let id_like = reference.strip_prefix("sha256:").unwrap_or(reference);
        if !id_like.is_empty()
            && id_like.len() <= 64
            && id_like.bytes().all(|b| b.is_ascii_hexdigit())
        {
            let mut hits = Vec::new();
            for row in images.iter().map_err(db_error)? {
                let (k, _) = row.map_err(db_error)?;
                if k.value()[7..].starts_with(id_like) {
                    hits.push(k.value().to_owned());
                }
            }
            match hits.len() {
                1 => return load(&hits[0]),
                0 => {}
                _ => {
                    return Err(Error::invalid(format!(
                        "image id prefix {reference} is ambiguous"
                    )))
                }
            }
        }
        let Ok(r) = refs::parse(reference) else {
            return Ok(None);
        };
        let name = match r.digest() {
            Some(d) => refs::digest_name(&r, d),
            None => refs::tagged_name(&r).unwrap_or_default(),
        };
        match names.get(name.as_str()).map_err(db_error)? {
            Some(id) => load(id.value()),
            None => Ok(None),
        }
    }

    /// Pulls `reference` from its registry (mirrors first), verifying every blob, unpacking
    /// compat images and compiling the Wasm ahead of time. The whole download must finish
    /// within the registry config's pull timeout. What a failed pull stored is removed before
    /// it returns (or, while another pull or import runs, as soon as the last one ends).
    pub async fn pull(
        &self,
        reference: &str,
        credentials: &Credentials,
        progress: Option<&dyn PullProgress>,
    ) -> Result<ImageRecord> {
        let result = {
            let _gc = self.gc.read().await;
            self.pull_guarded(reference, credentials, progress).await
        };
        self.sweep_if_idle();
        result
    }

    async fn pull_guarded(
        &self,
        reference: &str,
        credentials: &Credentials,
        progress: Option<&dyn PullProgress>,
    ) -> Result<ImageRecord> {
        let r = refs::parse(reference)?;
        let lock = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
            pulls.entry(r.whole()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        let auth = credentials.to_auth()?;
        let limit = self.registries.timeouts.pull;
        let deadline = tokio::time::Instant::now() + limit;
        let mut last_error = None;
        for candidate in registry::candidates(&self.registries, &r) {
            let fetched =
                tokio::time::timeout_at(deadline, self.fetch(&r, &candidate, &auth, progress))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::unavailable(format!(
                    "pulling {}: timed out after {limit:?} (the registry config's pull timeout)",
                    r.whole()
                )))
                    });
            match fetched {
                Ok((top, image_digest)) => {
                    let mut names = Vec::new();
                    names.extend(refs::tagged_name(&r));
                    names.push(refs::digest_name(&r, &top));
                    return self.register(&top, &image_digest, names).await;
                }
                Err(e) => {
                    tracing::info!(
                        "pull of {} from {} failed: {e}",
                        r.whole(),
                        candidate.resolve_registry()
                    );
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::internal("no registry to pull from")))
    }

    /// Downloads the manifest(s) and blobs of `name` from `source` into the content store;
    /// returns the digests of the top manifest and of the image manifest.
    async fn fetch(
        &self,
        name: &Reference,
        source: &Reference,
        auth: &oci_client::secrets::RegistryAuth,
        progress: Option<&dyn PullProgress>,
    ) -> Result<(String, String)> {
        let hosts = vec![
            source.resolve_registry().to_owned(),
            name.registry().to_owned(),
        ];
        let client = registry::client(&self.registries, &hosts);
        let what = format!("pulling {}", name.whole());
        let (bytes, _) = client
            .pull_manifest_raw(source, auth, format::ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| registry::registry_error(&what, e))?;
        let top = self.store_manifest(&bytes, name.digest())?;
        let image_digest = match Manifest::parse(&bytes)? {
            Manifest::Index(entries) => {
                let entry = format::select_wasm_platform(&entries)?;
                if entry.digest == top {
                    return Err(Error::invalid("the image index points to itself"));
                }
                check_digest(&entry.digest)?;
                let child_ref = source.clone_with_digest(entry.digest.clone());
                let (child, _) = client
                    .pull_manifest_raw(&child_ref, auth, format::ACCEPTED_MANIFESTS)
                    .await
                    .map_err(|e| registry::registry_error(&what, e))?;
                self.store_manifest(&child, Some(&entry.digest))?
            }
            Manifest::Image { .. } => top.clone(),
        };
        let (config, layers) = self.image_manifest(&image_digest)?;
        format::check_metadata_size("image config", config.size)?;
        for blob in std::iter::once(&config).chain(&layers) {
            check_digest(&blob.digest)?;
            if let Some(p) = progress {
                p.start(&blob.digest, &blob.media_type, blob.size);
            }
            if !self.content.contains(&blob.digest) {
                let stream = client
                    .pull_blob_stream(source, blob.digest.as_str())
                    .await
                    .map_err(|e| {
                        registry::registry_error(&format!("{what}: blob {}", blob.digest), e)
                    })?;
                let advance = |done| {
                    if let Some(p) = progress {
                        p.advance(&blob.digest, done)
                    }
                };
                self.content
                    .ingest(&blob.digest, blob.size, stream.stream, &advance)
                    .await?;
            }
            if let Some(p) = progress {
                p.finish(&blob.digest);
            }
        }
        Ok((top, image_digest))
    }

    /// Stores a manifest's bytes, checking them against the digest they were asked by.
    fn store_manifest(&self, bytes: &[u8], expected: Option<&str>) -> Result<String> {
        format::check_metadata_size("manifest", bytes.len() as u64)?;
        let digest = crate::engine::sha256_digest(bytes);
        if let Some(expected) = expected.filter(|e| **e != digest) {
            return Err(Error::invalid(format!(
                "manifest content does not match its digest {expected} (got {digest})"
            )));
        }
        self.content.put(bytes)
    }

    /// A stored manifest, its size checked before it is read.
    pub(crate) fn manifest(&self, digest: &str) -> Result<Manifest> {
        format::check_metadata_size("manifest", self.content.size(digest).unwrap_or(0))?;
        Manifest::parse(&self.content.read(digest)?)
    }

    fn image_manifest(&self, digest: &str) -> Result<(Descriptor, Vec<Descriptor>)> {
        match self.manifest(digest)? {
            Manifest::Image { config, layers } => Ok((config, layers)),
            Manifest::Index(_) => Err(Error::invalid("an image index points to another index")),
        }
    }

    /// Records an image whose blobs are all in the content store: finds its Wasm (unpacking
    /// compat layers), compiles it, then names it. Nothing is listed unless all of this worked.
    pub(crate) async fn register(
        &self,
        top: &str,
        manifest: &str,
        names: Vec<String>,
    ) -> Result<ImageRecord> {
        let (config, layers) = self.image_manifest(manifest)?;
        for d in std::iter::once(&config).chain(&layers) {
            check_digest(&d.digest)?;
            match self.content.size(&d.digest) {
                Some(size) if size == d.size => {}
                Some(size) => {
                    return Err(Error::invalid(format!(
                        "blob {} has {size} bytes, its descriptor says {}",
                        d.digest, d.size
                    )))
                }
                None => return Err(Error::invalid(format!("blob {} is missing", d.digest))),
            }
        }
        format::check_metadata_size("image config", config.size)?;
        let config_bytes = self.content.read(&config.digest)?;
        let run = RunConfig::parse(&config_bytes)?;
        let (format, wasm_layer) = format::classify(&config, &layers)?;
        // The id is the config digest, as containerd and CRI-O have it, when the config pins
        // the layers (diff_ids, layerDigests); some Wasm tools push a bare `{}` config shared
        // by unrelated images, and those are named by their manifest instead.
        let id = if format::config_pins_layers(&config_bytes) {
            config.digest.clone()
        } else {
            manifest.to_owned()
        };
        let mut run = run;
        let wasm_digest = match wasm_layer {
            Some(i) => {
                if run.entrypoint.is_empty() {
                    run.entrypoint = vec!["app.wasm".into()];
                }
                layers[i].digest.clone()
            }
            None => self.unpack_compat(&id, &layers, &run).await?,
        };
        let wasm = Wasm::File {
            path: self.content.path(&wasm_digest)?,
            digest: wasm_digest.clone(),
        };
        self.engine
            .load(wasm)
            .await
            .map_err(|e| e.context(format!("the image's Wasm ({wasm_digest})")))?;
        let size = std::iter::once(&config)
            .chain(&layers)
            .map(|d| d.size)
            .sum::<u64>()
            + self.content.size(top).unwrap_or(0);
        let record = ImageRecord {
            id,
            repo_tags: names.iter().filter(|n| !n.contains('@')).cloned().collect(),
            repo_digests: names.iter().filter(|n| n.contains('@')).cloned().collect(),
            manifest_digest: top.to_owned(),
            config,
            layers,
            format,
            wasm_digest,
            run,
            size,
        };
        self.save(record)
    }

    /// Unpacks a compat image's layers (once per image) and stores the `.wasm` its entrypoint
    /// names as a blob; returns that blob's digest.
    async fn unpack_compat(
        &self,
        id: &str,
        layers: &[Descriptor],
        run: &RunConfig,
    ) -> Result<String> {
        let rootfs = self.rootfs(id)?;
        let paths = layers
            .iter()
            .map(|l| self.content.path(&l.digest))
            .collect::<Result<Vec<_>>>()?;
        let limits = self.limits;
        let entry = run.entrypoint.first().cloned().ok_or_else(|| {
            Error::invalid(
                "image has no Wasm in it: its entrypoint is empty (set ENTRYPOINT to the .wasm)",
            )
        })?;
        let work_dir = run.working_dir.clone().unwrap_or_else(|| "/".into());
        let work = self.work_dir();
        let wasm = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            if rootfs.exists() {
                return read_wasm(&rootfs, &work_dir, &entry);
            }
            // Unpacked and checked aside (locked scratch, deleted on failure); only an image
            // whose Wasm is there is published.
            let tmp = Scratch::dir(&work, "unpack")?;
            unpack::unpack(tmp.path(), &paths, limits)?;
            let wasm = read_wasm(tmp.path(), &work_dir, &entry)?;
            // A concurrent import of the same image may have won the race: then its copy stays.
            let _ = tmp.publish(&rootfs);
            Ok(wasm)
        })
        .await
        .map_err(|e| Error::internal(format!("unpacking: {e}")))??;
        self.content.put(&wasm)
    }

    fn rootfs(&self, id: &str) -> Result<PathBuf> {
        Ok(self.root.join("rootfs").join(check_digest(id)?))
    }

    /// Writes the record and points its names at it (moving names from older images).
    fn save(&self, mut record: ImageRecord) -> Result<ImageRecord> {
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut images = txn.open_table(IMAGES).map_err(db_error)?;
            let mut names = txn.open_table(NAMES).map_err(db_error)?;
            if let Some(old) = images.get(record.id.as_str()).map_err(db_error)? {
                if let Ok(old) = serde_json::from_slice::<ImageRecord>(old.value()) {
                    merge(&mut record.repo_tags, old.repo_tags);
                    merge(&mut record.repo_digests, old.repo_digests);
                }
            }
            for name in record.repo_tags.iter().chain(&record.repo_digests) {
                let previous = names
                    .insert(name.as_str(), record.id.as_str())
                    .map_err(db_error)?
                    .map(|v| v.value().to_owned());
                if let Some(prev) = previous.filter(|p| *p != record.id) {
                    let updated = match images.get(prev.as_str()).map_err(db_error)? {
                        Some(v) => serde_json::from_slice::<ImageRecord>(v.value()).ok(),
                        None => None,
                    };
                    if let Some(mut other) = updated {
                        other.repo_tags.retain(|t| t != name);
                        let json = serde_json::to_vec(&other)
                            .map_err(|e| Error::internal(e.to_string()))?;
                        images
                            .insert(prev.as_str(), json.as_slice())
                            .map_err(db_error)?;
                    }
                }
            }
            let json = serde_json::to_vec(&record).map_err(|e| Error::internal(e.to_string()))?;
            images
                .insert(record.id.as_str(), json.as_slice())
                .map_err(db_error)?;
        }
        txn.commit().map_err(db_error)?;
        Ok(record)
    }

    /// Removes a name; the image goes (with the blobs and root filesystem nobody else uses)
    /// once it has no names left, or at once when it is named by its id. Those files are
    /// deleted before the database is written, so that `rm` frees space on a full disk.
    pub async fn remove(&self, reference: &str) -> Result<()> {
        let _gc = self.gc.write().await;
        let record = self
            .get(reference)?
            .ok_or_else(|| Error::not_found(format!("image {reference} not found")))?;
        let by_id = reference.trim_start_matches("sha256:").len() < 65
            && record
                .id
                .trim_start_matches("sha256:")
                .starts_with(reference.trim_start_matches("sha256:"));
        let name = refs::parse(reference).ok().and_then(|r| match r.digest() {
            Some(d) => Some(refs::digest_name(&r, d)),
            None => refs::tagged_name(&r),
        });
        let mut remaining = record.clone();
        if !by_id {
            if let Some(name) = &name {
                remaining.repo_tags.retain(|t| t != name);
                remaining.repo_digests.retain(|t| t != name);
            }
        }
        let gone = by_id || remaining.repo_tags.is_empty();
        if gone {
            self.collect_garbage(Some(&record.id))?;
        }
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut images = txn.open_table(IMAGES).map_err(db_error)?;
            let mut names = txn.open_table(NAMES).map_err(db_error)?;
            if let Some(name) = name.as_ref().filter(|_| !by_id) {
                names.remove(name.as_str()).map_err(db_error)?;
            }
            if gone {
                for n in record.repo_tags.iter().chain(&record.repo_digests) {
                    names.remove(n.as_str()).map_err(db_error)?;
                }
                images.remove(record.id.as_str()).map_err(db_error)?;
            } else {
                let json =
                    serde_json::to_vec(&remaining).map_err(|e| Error::internal(e.to_string()))?;
                images
                    .insert(record.id.as_str(), json.as_slice())
                    .map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)
    }

    /// Collects garbage unless a pull or import is running; the last one to end does it.
    pub(crate) fn sweep_if_idle(&self) {
        if let Ok(_idle) = self.gc.try_write() {
            if let Err(e) = self.collect_garbage(None) {
                tracing::warn!("image garbage collection: {e}");
            }
        }
    }

    /// Deletes what no image record (`except` aside: an image being removed) refers to: blobs
    /// and root filesystems, but not scratch a live process holds. It only reads the database and
    /// deletes files, so it works on a full disk. The caller must exclude pulls and imports
    /// (the gc lock held exclusively, or the store just opened).
    fn collect_garbage(&self, except: Option<&str>) -> Result<()> {
        self.content.remove_stale();
        let Some((blobs, images)) = self.referenced(except)? else {
            tracing::warn!("a corrupt image record: garbage collection skipped");
            return Ok(());
        };
        for blob in self.content.list() {
            if !blobs.contains(&blob) {
                self.content.remove(&blob)?;
                // Compiled code of a Wasm blob goes with it (a no-op for other blobs).
                self.engine.forget(&blob);
            }
        }
        scratch::remove_stale(&self.work_dir(), |name| images.contains(name));
        Ok(())
    }

    /// The blobs and the image ids (hex, as root filesystems are named) that the records
    /// other than `except` use; `None` when a record cannot be read, since then nothing is
    /// known to be unused.
    fn referenced(
        &self,
        except: Option<&str>,
    ) -> Result<Option<(HashSet<String>, HashSet<String>)>> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(IMAGES).map_err(db_error)?;
        let mut blobs = HashSet::new();
        let mut images = HashSet::new();
        for row in table.iter().map_err(db_error)? {
            let (id, value) = row.map_err(db_error)?;
            if Some(id.value()) == except {
                continue;
            }
            let Ok(r) = serde_json::from_slice::<ImageRecord>(value.value()) else {
                return Ok(None);
            };
            if let Ok(Manifest::Index(entries)) = self.manifest(&r.manifest_digest) {
                blobs.extend(entries.into_iter().map(|e| e.digest));
            }
            images.insert(r.id.trim_start_matches("sha256:").to_owned());
            blobs.insert(r.manifest_digest);
            blobs.insert(r.config.digest);
            blobs.insert(r.wasm_digest);
            blobs.extend(r.layers.into_iter().map(|l| l.digest));
        }
        Ok(Some((blobs, images)))
    }

    /// Whether the image's Wasm has its AOT artifact on disk.
    pub fn has_artifact(&self, record: &ImageRecord) -> bool {
        self.engine.has_artifact(&record.wasm_digest)
    }

    /// The manifest's and config's raw JSON, for `inspect`.
    pub fn raw_json(&self, record: &ImageRecord) -> Result<(serde_json::Value, serde_json::Value)> {
        let parse = |d: &str| -> Result<serde_json::Value> {
            serde_json::from_slice(&self.content.read(d)?)
                .map_err(|e| Error::internal(e.to_string()))
        };
        Ok((
            parse(&record.manifest_digest)?,
            parse(&record.config.digest)?,
        ))
    }

    /// The store's directory and what it takes on disk (for ImageFsInfo).
    pub fn disk_usage(&self) -> (&Path, crate::volume::DiskUsage) {
        (&self.root, crate::volume::disk_usage(&self.root))
    }

    pub(crate) fn content(&self) -> &ContentStore {
        &self.content
    }

    pub(crate) async fn gc_guard(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gc.read().await
    }

    /// Where root filesystems (and their scratch) live.
    fn work_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    pub(crate) fn limits(&self) -> UnpackLimits {
        self.limits
    }

    /// Makes an image available by `policy`: pulls it, or checks it is there.
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
        credentials: &Credentials,
    ) -> Result<ImageRecord> {
        let present = self.get(reference)?;
        match (policy, present) {
            (PullPolicy::Always, _) | (PullPolicy::IfNotPresent, None) => {
                self.pull(reference, credentials, None).await
            }
            (_, Some(record)) => Ok(record),
            (PullPolicy::Never, None) => Err(Error::not_found(format!(
                "image {reference} is not present and imagePullPolicy is Never"
            ))),
        }
    }
}

impl ImageSource for ImageStore {
    fn resolve<'a>(&'a self, reference: &'a str) -> ImageFuture<'a> {
        Box::pin(async move {
            if reference.starts_with("file://") || reference.starts_with('/') {
                return self.local.resolve(reference).await;
            }
            let record = self.get(reference)?.ok_or_else(|| {
                Error::not_found(format!(
                    "image {reference} is not in the image store; pull or import it first"
                ))
            })?;
            Ok(Image {
                reference: record.id.clone(),
                wasm: Wasm::File {
                    path: self.content.path(&record.wasm_digest)?,
                    digest: record.wasm_digest.clone(),
                },
                entrypoint: record.run.entrypoint.clone(),
                env: record.run.env.clone(),
                working_dir: record.run.working_dir.clone(),
                rootfs: (record.format == WasmFormat::Compat)
                    .then(|| self.rootfs(&record.id))
                    .transpose()?,
            })
        })
    }
}

/// Reads the entrypoint's file inside the root filesystem (never following a link out) and
/// checks it is Wasm.
fn read_wasm(rootfs: &Path, work_dir: &str, entry: &str) -> Result<Vec<u8>> {
    let wasm = read_in_rootfs(rootfs, work_dir, entry)?;
    GuestKind::detect(&wasm).map_err(|e| {
        Error::invalid(format!(
            "image has no Wasm in it: its entrypoint {entry} is not Wasm ({e})"
        ))
    })?;
    Ok(wasm)
}

/// Reads the entrypoint's file inside the root filesystem, never following a link out.
fn read_in_rootfs(rootfs: &Path, work_dir: &str, entry: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let root = cap_std::fs::Dir::open_ambient_dir(rootfs, cap_std::ambient_authority())
        .map_err(|e| Error::io(rootfs.display(), e))?;
    let full = if entry.starts_with('/') {
        entry.to_owned()
    } else {
        format!("{work_dir}/{entry}")
    };
    let rel = full.trim_start_matches('/');
    let mut file = root.open(rel).map_err(|e| {
        Error::invalid(format!(
            "image has no Wasm in it: its entrypoint {entry} cannot be opened ({e})"
        ))
    })?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(entry, e))?;
    Ok(bytes)
}

fn merge(into: &mut Vec<String>, from: Vec<String>) {
    for n in from {
        if !into.contains(&n) {
            into.push(n);
        }
    }
}

/// Creates the tables when missing; an existing database is only read, so a store on a full
/// disk still opens.
fn create_tables(db: &Database) -> Result<()> {
    let txn = db.begin_read().map_err(db_error)?;
    if txn.open_table(IMAGES).is_ok() && txn.open_table(NAMES).is_ok() {
        return Ok(());
    }
    drop(txn);
    let txn = db.begin_write().map_err(db_error)?;
    txn.open_table(IMAGES).map_err(db_error)?;
    txn.open_table(NAMES).map_err(db_error)?;
    txn.commit().map_err(db_error)
}

fn db_error(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Internal, format!("image database: {e}"))
}
