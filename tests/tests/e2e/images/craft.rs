//! Hand-made image content: blobs with their digests, image configs and manifests, indexes,
//! tar layers (including entries no honest tool writes: absolute paths, `..`, links leading
//! out, device nodes), compression bombs, and OCI layout tars.

use std::io::{Read, Write};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";
pub const RUNWASI_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
pub const LEGACY_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 (with padding), as docker's `config.json` `auth` field holds it.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `len` pseudo-random bytes (xorshift; incompressible, reproducible from `seed`).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A blob and the media type a descriptor gives it.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Self {
            media_type: media_type.to_owned(),
            bytes,
        }
    }

    pub fn digest(&self) -> String {
        sha256(&self.bytes)
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest(), "size": self.size()})
    }
}

/// An image: its config, its layers and its manifest's bytes (which a test may doctor).
#[derive(Debug, Clone)]
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Vec<u8>,
}

impl Image {
    /// An OCI image manifest over `config` and `layers`.
    pub fn new(config: Blob, layers: Vec<Blob>) -> Self {
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        if config.media_type == WASM_CONFIG {
            manifest["artifactType"] = json!(WASM_CONFIG);
        }
        Self {
            manifest: serde_json::to_vec(&manifest).unwrap(),
            config,
            layers,
        }
    }

    /// The same image with its manifest JSON edited by `edit`.
    pub fn edit_manifest(mut self, edit: impl FnOnce(&mut Value)) -> Self {
        let mut v: Value = serde_json::from_slice(&self.manifest).unwrap();
        edit(&mut v);
        self.manifest = serde_json::to_vec(&v).unwrap();
        self
    }

    pub fn manifest_digest(&self) -> String {
        sha256(&self.manifest)
    }

    /// The manifest's descriptor, as an index entry for `os`/`arch`.
    pub fn index_entry(&self, os: &str, arch: &str) -> Value {
        json!({
            "mediaType": OCI_MANIFEST,
            "digest": self.manifest_digest(),
            "size": self.manifest.len(),
            "platform": {"os": os, "architecture": arch},
        })
    }

    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(&self.layers)
    }
}

/// An OCI image index over `entries` (descriptors).
pub fn index(entries: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    }))
    .unwrap()
}

/// An ordinary OCI image config for wasi/wasm, with this entrypoint and these layer diff ids.
pub fn image_config(entrypoint: &[&str], diff_ids: &[String]) -> Blob {
    image_config_with(entrypoint, diff_ids, "")
}

/// An ordinary image config; `label` makes otherwise equal configs differ.
pub fn image_config_with(entrypoint: &[&str], diff_ids: &[String], label: &str) -> Blob {
    Blob::new(
        OCI_CONFIG,
        serde_json::to_vec(&json!({
            "created": "2025-01-01T00:00:00Z",
            "architecture": "wasm",
            "os": "wasi",
            "config": {
                "Entrypoint": entrypoint,
                "Env": ["GREETING=from the image config"],
                "Labels": {"test": label},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap(),
    )
}

/// The config of a CNCF Wasm artifact whose one layer is `wasm`.
pub fn wasm_artifact_config(wasm: &Blob) -> Blob {
    Blob::new(
        WASM_CONFIG,
        serde_json::to_vec(&json!({
            "created": "2025-01-01T00:00:00Z",
            "architecture": "wasm",
            "os": "wasip1",
            "layerDigests": [wasm.digest()],
        }))
        .unwrap(),
    )
}

/// A `.wasm` file of `examples/wasm` as a blob of `media_type`.
pub fn wasm_blob(name: &str, media_type: &str) -> Blob {
    Blob::new(
        media_type,
        std::fs::read(wasmpod_tests::wasm(name)).expect("reading the guest"),
    )
}

/// A runwasi-style image: ordinary config, one Wasm layer of `media_type`.
pub fn wasm_layer_image(guest: &str, media_type: &str) -> Image {
    let wasm = wasm_blob(guest, media_type);
    Image::new(image_config(&[], &[wasm.digest()]), vec![wasm])
}

/// A CNCF Wasm artifact of `guest`.
pub fn wasm_artifact(guest: &str) -> Image {
    let wasm = wasm_blob(guest, WASM_LAYER);
    Image::new(wasm_artifact_config(&wasm), vec![wasm])
}

/// A layer compressor (`plain`, `gzip`, `zstd`).
pub type Compress = fn(&[u8]) -> Vec<u8>;

/// A compat image: one tar layer (compressed by `compress`) holding `/app.wasm`.
pub fn compat_image(guest: &str, media_type: &str, compress: Compress) -> Image {
    let wasm = std::fs::read(wasmpod_tests::wasm(guest)).unwrap();
    let layer = tar(&[
        Entry::dir("etc"),
        Entry::file("etc/motd", b"from a tar layer\n"),
        Entry::file_mode("app.wasm", &wasm, 0o755),
    ]);
    Image::new(
        image_config(&["/app.wasm"], &[sha256(&layer)]),
        vec![Blob::new(media_type, compress(&layer))],
    )
}

/// One tar entry, written verbatim (no path checks), so hostile layers can be made.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub kind: tar::EntryType,
    pub data: Vec<u8>,
    pub link: String,
    pub mode: u32,
}

impl Entry {
    pub fn file(path: &str, data: &[u8]) -> Self {
        Self::file_mode(path, data, 0o644)
    }
    pub fn file_mode(path: &str, data: &[u8], mode: u32) -> Self {
        Self {
            path: path.into(),
            kind: tar::EntryType::Regular,
            data: data.to_vec(),
            link: String::new(),
            mode,
        }
    }
    pub fn dir(path: &str) -> Self {
        Self {
            path: path.into(),
            kind: tar::EntryType::Directory,
            data: Vec::new(),
            link: String::new(),
            mode: 0o755,
        }
    }
    pub fn symlink(path: &str, target: &str) -> Self {
        Self {
            path: path.into(),
            kind: tar::EntryType::Symlink,
            data: Vec::new(),
            link: target.into(),
            mode: 0o777,
        }
    }
    pub fn hard_link(path: &str, target: &str) -> Self {
        Self {
            path: path.into(),
            kind: tar::EntryType::Link,
            data: Vec::new(),
            link: target.into(),
            mode: 0o644,
        }
    }
    pub fn char_device(path: &str) -> Self {
        Self {
            path: path.into(),
            kind: tar::EntryType::Char,
            data: Vec::new(),
            link: String::new(),
            mode: 0o666,
        }
    }
}

impl Entry {
    /// A GNU long-name record: the next entry's real path is `path`.
    pub fn gnu_long_name(path: &str) -> Self {
        let mut data = path.as_bytes().to_vec();
        data.push(0);
        Self {
            path: "././@LongLink".into(),
            kind: tar::EntryType::GNULongName,
            data,
            link: String::new(),
            mode: 0o644,
        }
    }

    /// A PAX extended header: the next entry's real path is `path`.
    pub fn pax_path(path: &str) -> Self {
        let body = format!(" path={path}\n");
        // The record's length counts its own digits.
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        Self {
            path: "PaxHeaders/innocent".into(),
            kind: tar::EntryType::XHeader,
            data: format!("{len}{body}").into_bytes(),
            link: String::new(),
            mode: 0o644,
        }
    }
}

/// A ustar header for `e`, its name and link name copied in byte for byte.
fn raw_header(e: &Entry, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    {
        let u = h.as_ustar_mut().expect("a ustar header");
        let name = e.path.as_bytes();
        assert!(name.len() <= 100, "keep crafted names short: {}", e.path);
        u.name[..name.len()].copy_from_slice(name);
        let link = e.link.as_bytes();
        assert!(
            link.len() <= 100,
            "keep crafted link names short: {}",
            e.link
        );
        u.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(e.kind);
    h.set_size(size);
    h.set_mode(e.mode);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    if e.kind == tar::EntryType::Char {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    h
}

/// An uncompressed tar of `entries`.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        b.append(&raw_header(e, e.data.len() as u64), e.data.as_slice())
            .unwrap();
    }
    b.into_inner().unwrap()
}

pub fn plain(bytes: &[u8]) -> Vec<u8> {
    bytes.to_vec()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

/// A tar holding one file of `size` zero bytes, streamed into `out` (never all in memory).
fn zero_tar_into<W: Write>(out: W, size: u64) -> W {
    let mut b = tar::Builder::new(out);
    let e = Entry::file("zeros", b"");
    b.append(&raw_header(&e, size), std::io::repeat(0).take(size))
        .unwrap();
    b.into_inner().unwrap()
}

/// A gzip layer that expands to a tar of `size` zero bytes.
pub fn gzip_bomb(size: u64) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    zero_tar_into(enc, size).finish().unwrap()
}

/// A zstd layer that expands to a tar of `size` zero bytes.
pub fn zstd_bomb(size: u64) -> Vec<u8> {
    let enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
    zero_tar_into(enc, size).finish().unwrap()
}

/// An OCI image layout as a tar: `oci-layout`, `index.json` and `blobs/sha256/<name>`.
pub fn oci_layout_tar(index_json: &Value, blobs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut files = vec![
        Entry::file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        Entry::file("index.json", &serde_json::to_vec(index_json).unwrap()),
        Entry::dir("blobs"),
        Entry::dir("blobs/sha256"),
    ];
    for (name, bytes) in blobs {
        files.push(Entry::file(&format!("blobs/sha256/{name}"), bytes));
    }
    tar(&files)
}

/// The layout tar of one image, named `name` (the `org.opencontainers.image.ref.name`).
pub fn image_layout_tar(image: &Image, name: &str) -> Vec<u8> {
    let mut entry = image.index_entry("wasi", "wasm");
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": name});
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]});
    let mut blobs = vec![(
        image.manifest_digest()[7..].to_owned(),
        image.manifest.clone(),
    )];
    for b in image.blobs() {
        blobs.push((b.digest()[7..].to_owned(), b.bytes.clone()));
    }
    oci_layout_tar(&index, &blobs)
}
