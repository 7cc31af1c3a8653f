//! Fuzz targets (bolero) for image import: the archive and layer unpacker, and the OCI
//! manifest and index parser, all reached through `ImageStore::import` (the only public way
//! in, and the one an attacker with an archive has). Every target checks the same contract:
//! the import answers Ok or a typed error of bounded size, nothing beside the store (a canary
//! directory holding a secret) is created or changed, and the secret never shows up in an
//! error or a stored blob.
//!
//! Corpora: `__fuzz__/<target>/corpus` beside this file. Random inputs per target are bounded
//! (`BOLERO_RANDOM_ITERATIONS` overrides); `scripts/fuzz` runs them coverage-guided.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bolero::{check, TypeGenerator};
use serde_json::json;
use wasmpod_runtime::engine::{sha256_digest, Engine};
use wasmpod_runtime::error::Error;
use wasmpod_runtime::image::{ImageRecord, ImageStore, RegistryConfig, UnpackLimits};

/// Random inputs per target in a plain `cargo test` run (each is a whole import).
const ITERATIONS: usize = 1_500;

/// `(module (func (export "_start")))`: the smallest WASI command, the Wasm of every image
/// the targets build.
const WASM: &[u8] = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x03\x02\x01\0\x07\x0a\x01\x06_start\0\0\x0a\x04\x01\x02\0\x0b";

/// A store in a temp dir beside a canary directory, shared by the targets of this binary.
struct Env {
    _tmp: tempfile::TempDir,
    top: PathBuf,
    store: ImageStore,
    rt: tokio::runtime::Runtime,
    secret: String,
    before: BTreeMap<PathBuf, Vec<u8>>,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().canonicalize().unwrap();
        let secret = format!("wasmpod-fuzz-canary-{:032x}", rand_u128());
        std::fs::create_dir_all(top.join("canary/etc")).unwrap();
        std::fs::write(top.join("canary/etc/shadow"), &secret).unwrap();
        std::fs::create_dir_all(top.join("in")).unwrap();
        let engine: Arc<Engine> = Engine::new(None).unwrap();
        let limits = UnpackLimits {
            max_bytes: 1 << 20,
            max_entries: 1_000,
        };
        let store = ImageStore::open(
            &top.join("store"),
            engine,
            RegistryConfig::default(),
            limits,
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let before = snapshot_outside(&top);
        Env {
            _tmp: tmp,
            top,
            store,
            rt,
            secret,
            before,
        }
    })
}

fn rand_u128() -> u128 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.as_nanos() ^ ((std::process::id() as u128) << 64)
}

fn snapshot_outside(top: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::snapshot_except(top, &["store", "in"])
}

/// Imports `archive` and checks the contract; `input_len` scales the allowed message size.
fn import_and_check(archive: &[u8], input_len: usize) -> Result<Vec<ImageRecord>, Error> {
    let env = env();
    // One file per thread: the targets of this binary run side by side.
    let path = env
        .top
        .join(format!("in/{:?}.tar", std::thread::current().id()));
    std::fs::write(&path, archive).unwrap();
    let result = env.rt.block_on(env.store.import(&path, None));
    if let Err(e) = &result {
        // Paths and values from the input may be quoted, once; nothing grows beyond that.
        assert!(
            e.message.len() <= 2048 + 2 * input_len,
            "error of {} bytes for {input_len} bytes of input: {}...",
            e.message.len(),
            &e.message[..512.min(e.message.len())]
        );
        assert!(
            !e.message.contains(&env.secret),
            "the canary's secret is in an error"
        );
    }
    assert!(
        snapshot_outside(&env.top) == env.before,
        "the import changed something outside the store"
    );
    assert_no_secret_in(&env.top.join("store"), &env.secret);
    result
}

/// No regular file of the store holds the canary's secret (blobs are whole files, so a
/// stolen file has the secret's exact size).
fn assert_no_secret_in(dir: &Path, secret: &str) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file()
                && entry
                    .metadata()
                    .is_ok_and(|m| m.len() == secret.len() as u64)
            {
                let content = std::fs::read(entry.path()).unwrap_or_default();
                assert!(
                    content != secret.as_bytes(),
                    "{} holds the canary's secret",
                    entry.path().display()
                );
            }
        }
    }
}

/// A tar entry written byte by byte, so that names the tar crate would refuse (`..`,
/// absolute) reach the unpacker as an attacker would send them.
struct RawEntry {
    name: String,
    kind: tar::EntryType,
    link: String,
    data: Vec<u8>,
}

fn file(name: &str, data: &[u8]) -> RawEntry {
    RawEntry {
        name: name.into(),
        kind: tar::EntryType::Regular,
        link: String::new(),
        data: data.to_vec(),
    }
}

fn tar_of(entries: &[RawEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_old();
        let old = h.as_old_mut();
        let name = e.name.as_bytes();
        old.name[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        let link = e.link.as_bytes();
        old.linkname[..link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
        h.set_entry_type(e.kind);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        b.append(&h, e.data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// The blobs of a valid compat image (its layer holds `/app.wasm`).
struct Base {
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
}

fn manifest_of(config: &[u8], layer: &[u8], layer_type: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_digest(config), "size": config.len()},
        "layers": [{"mediaType": layer_type, "digest": sha256_digest(layer), "size": layer.len()}],
    }))
    .unwrap()
}

fn base(layer: Vec<u8>) -> Base {
    let config = serde_json::to_vec(&json!({
        "architecture": "wasm", "os": "wasip1",
        "config": {"Entrypoint": ["/app.wasm"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]},
    }))
    .unwrap();
    let manifest = manifest_of(&config, &layer, "application/vnd.oci.image.layer.v1.tar");
    Base {
        config,
        layer,
        manifest,
    }
}

fn index_of(manifest: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": sha256_digest(manifest), "size": manifest.len(),
                       "annotations": {"io.containerd.image.name": "docker.io/fuzz/image:1"}}],
    }))
    .unwrap()
}

/// An OCI layout archive holding `blobs` (by digest) and `index`, then `extra` entries.
fn layout(index: &[u8], blobs: &[&[u8]], extra: Vec<RawEntry>) -> Vec<u8> {
    let mut entries = vec![
        file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        file("index.json", index),
    ];
    for blob in blobs {
        let name = format!("blobs/sha256/{}", hex(&sha256_digest(blob)));
        entries.push(file(&name, blob));
    }
    entries.extend(extra);
    tar_of(&entries)
}

fn wasm_layer() -> Vec<u8> {
    tar_of(&[file("app.wasm", WASM)])
}

#[test]
fn archive_bytes() {
    check!()
        .with_iterations(ITERATIONS)
        .for_each(|bytes: &[u8]| {
            let _ = import_and_check(bytes, bytes.len());
        });
}

/// Puts the digests and sizes of `blobs` where `input` has `@NAME@` and `@NAME_SIZE@`, so
/// that corpus files stay valid JSON naming real blobs whatever the blobs' exact bytes.
fn fill_in(input: &[u8], blobs: &[(&str, &[u8])]) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(input) else {
        return input.to_vec();
    };
    let mut text = text.to_owned();
    for (name, blob) in blobs {
        text = text
            .replace(&format!("@{name}_SIZE@"), &blob.len().to_string())
            .replace(&format!("@{name}@"), &sha256_digest(blob));
    }
    text.into_bytes()
}

/// The fuzz input is the image manifest an index points to, beside a valid image's blobs
/// (`@CONFIG@`, `@LAYER@`, `@WASM@`).
#[test]
fn manifest_bytes() {
    let b = base(wasm_layer());
    check!()
        .with_iterations(ITERATIONS)
        .for_each(|input: &[u8]| {
            let manifest = fill_in(
                input,
                &[("CONFIG", &b.config), ("LAYER", &b.layer), ("WASM", WASM)],
            );
            let archive = layout(
                &index_of(&manifest),
                &[&manifest, &b.config, &b.layer, WASM],
                Vec::new(),
            );
            let _ = import_and_check(&archive, input.len());
        });
}

/// The fuzz input is `index.json`, beside a valid image's blobs and an index of it
/// (`@MANIFEST@`, `@INDEX@`).
#[test]
fn index_bytes() {
    let b = base(wasm_layer());
    let nested = index_of(&b.manifest);
    check!()
        .with_iterations(ITERATIONS)
        .for_each(|input: &[u8]| {
            let index = fill_in(input, &[("MANIFEST", &b.manifest), ("INDEX", &nested)]);
            let archive = layout(
                &index,
                &[&b.manifest, &nested, &b.config, &b.layer, WASM],
                Vec::new(),
            );
            let _ = import_and_check(&archive, input.len());
        });
}

/// Path components of hostile entries.
#[derive(Debug, Clone, Copy, TypeGenerator)]
enum Name {
    A,
    B,
    Link1,
    Link2,
    Blobs,
    Sha256,
    IndexJson,
    AppWasm,
    Etc,
    Shadow,
    Canary,
    Dot,
    DotDot,
    Empty,
    Whiteout,
    Opaque,
}

impl Name {
    fn as_str(self) -> &'static str {
        match self {
            Name::A => "a",
            Name::B => "b",
            Name::Link1 => "l1",
            Name::Link2 => "l2",
            Name::Blobs => "blobs",
            Name::Sha256 => "sha256",
            Name::IndexJson => "index.json",
            Name::AppWasm => "app.wasm",
            Name::Etc => "etc",
            Name::Shadow => "shadow",
            Name::Canary => "canary",
            Name::Dot => ".",
            Name::DotDot => "..",
            Name::Empty => "",
            Name::Whiteout => ".wh.a",
            Name::Opaque => ".wh..wh..opq",
        }
    }
}

fn path_of(parts: &[Name]) -> String {
    let parts: Vec<&str> = parts.iter().take(5).map(|p| p.as_str()).collect();
    parts.join("/")
}

#[derive(Debug, Clone, TypeGenerator)]
enum Target {
    /// A relative target made of names.
    Relative(Vec<Name>),
    /// `../` repeated, then names: chains that climb out of the unpack directory.
    Up(u8, Vec<Name>),
    /// The canary directory's absolute path.
    Canary,
}

#[derive(Debug, Clone, TypeGenerator)]
enum Kind {
    File(bool),
    Dir,
    Symlink(Target),
    HardLink(Target),
    Fifo,
    Device,
}

#[derive(Debug, Clone, TypeGenerator)]
struct Hostile {
    absolute: bool,
    path: Vec<Name>,
    kind: Kind,
}

fn target_of(t: &Target, canary: &Path) -> String {
    match t {
        Target::Relative(parts) => path_of(parts),
        Target::Up(n, parts) => format!("{}{}", "../".repeat(*n as usize % 12), path_of(parts)),
        Target::Canary => canary.display().to_string(),
    }
}

fn raw_entries(hostile: &[Hostile], canary: &Path) -> Vec<RawEntry> {
    hostile
        .iter()
        .take(8)
        .map(|h| {
            let path = path_of(&h.path);
            let name = if h.absolute {
                format!("{}/{path}", canary.display())
            } else {
                path
            };
            let (kind, link, data) = match &h.kind {
                Kind::File(wasm) => (
                    tar::EntryType::Regular,
                    String::new(),
                    if *wasm {
                        WASM.to_vec()
                    } else {
                        b"planted".to_vec()
                    },
                ),
                Kind::Dir => (tar::EntryType::Directory, String::new(), Vec::new()),
                Kind::Symlink(t) => (tar::EntryType::Symlink, target_of(t, canary), Vec::new()),
                Kind::HardLink(t) => (tar::EntryType::Link, target_of(t, canary), Vec::new()),
                Kind::Fifo => (tar::EntryType::Fifo, String::new(), Vec::new()),
                Kind::Device => (tar::EntryType::Char, String::new(), Vec::new()),
            };
            RawEntry {
                name,
                kind,
                link,
                data,
            }
        })
        .collect()
}

/// Hostile entries (links out, chains of links, `..`, absolute names, devices, whiteouts)
/// in the archive itself (before or after its real files) and in the image's layer.
#[test]
fn hostile_entries() {
    let canary = env().top.join("canary");
    check!()
        .with_type::<(bool, Vec<Hostile>, Vec<Hostile>)>()
        .with_iterations(ITERATIONS)
        .for_each(|(first, in_archive, in_layer)| {
            let mut layer_entries = raw_entries(in_layer, &canary);
            layer_entries.push(file("app.wasm", WASM));
            let b = base(tar_of(&layer_entries));
            let extra = raw_entries(in_archive, &canary);
            let archive = if *first {
                // Both halves are whole tar streams: drop the first one's end-of-archive
                // blocks so that its entries run on into the real files.
                let mut archive = tar_of(&extra);
                archive.truncate(archive.len().saturating_sub(1024));
                archive.extend(layout(
                    &index_of(&b.manifest),
                    &[&b.manifest, &b.config, &b.layer],
                    Vec::new(),
                ));
                archive
            } else {
                layout(
                    &index_of(&b.manifest),
                    &[&b.manifest, &b.config, &b.layer],
                    extra,
                )
            };
            let input = archive.len();
            let _ = import_and_check(&archive, input);
        });
}

/// The contract holds for a valid image too, and the image is listed afterwards.
#[test]
fn valid_image_imports() {
    let b = base(wasm_layer());
    let archive = layout(
        &index_of(&b.manifest),
        &[&b.manifest, &b.config, &b.layer],
        Vec::new(),
    );
    let records = import_and_check(&archive, archive.len()).expect("a valid image imports");
    // The store is shared with the other targets, which may have named the image too.
    assert!(records[0]
        .repo_tags
        .contains(&"docker.io/fuzz/image:1".to_owned()));
}
