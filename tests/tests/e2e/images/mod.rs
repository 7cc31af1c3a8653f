//! The OCI image store end to end: pulls from real `docker-registry` processes (open, behind
//! basic auth, as mirrors), the four Wasm packagings (compat images built by buildah, runwasi
//! layers, CNCF artifacts, legacy layers) and multi-platform indexes, import and export of OCI
//! layouts and `docker save` archives made by skopeo, the content store's sharing and garbage
//! collection, AOT compilation on arrival, the `wasmpod image` and `wasmpod run` commands, and
//! hostile input of every kind, each of which must fail clearly with nothing half-stored and
//! nothing written outside the state directory.

mod craft;
mod registry;
mod tools;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use oci_client::secrets::RegistryAuth;
use serde_json::{json, Value};
use wasmpod_runtime::error::{Error, ErrorKind};
use wasmpod_runtime::image::{
    Credentials, ImageRecord, ImageStore, RegistryConfig, UnpackLimits, WasmFormat,
};
use wasmpod_runtime::runtime::{Runtime, RuntimeOptions};
use wasmpod_runtime::spec::ContainerConfig;
use wasmpod_tests::{pod, run_container, text, within, Ran};

use craft::*;
use registry::{free_port, FreezingProxy, Pusher, Registry};
use tools::{guest_bytes, skopeo_copy, Buildah};

const HELLO: &str = "Hello from wasmpod!";
const USER: &str = "wasmpod";
const PASSWORD: &str = "s3cret-pw";
/// The errnos (WASI numbering) a write to a read-only directory may fail with:
/// EPERM, EACCES, EROFS.
const READ_ONLY_ERRNOS: [&str; 3] = ["errno=63 ", "errno=2 ", "errno=69 "];

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A node: a temporary directory with the runtime's state directory in it (`<tmp>/node/state`,
/// so that a `..` escaping the state directory lands in `<tmp>/node`, which is watched), and
/// a runtime over it.
struct Node {
    tmp: tempfile::TempDir,
    state: PathBuf,
    options: RuntimeOptions,
    /// Opened on first use: CLI tests leave the state directory to the `wasmpod` processes
    /// (the image database admits one process at a time).
    rt: OnceLock<Arc<Runtime>>,
}

impl Node {
    fn new() -> Self {
        Self::with(RegistryConfig::default(), UnpackLimits::default())
    }

    fn with(registries: RegistryConfig, limits: UnpackLimits) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("node/state");
        let options = RuntimeOptions {
            state_dir: state.clone(),
            registries,
            unpack_limits: limits,
            ..Default::default()
        };
        Self {
            tmp,
            state,
            options,
            rt: OnceLock::new(),
        }
    }

    fn rt(&self) -> &Arc<Runtime> {
        self.rt
            .get_or_init(|| Runtime::new(self.options.clone()).expect("creating the runtime"))
    }

    fn store(&self) -> &Arc<ImageStore> {
        self.rt().images()
    }

    fn dir(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    async fn pull(&self, reference: &str) -> ImageRecord {
        self.pull_as(reference, &Credentials::default())
            .await
            .unwrap_or_else(|e| panic!("pulling {reference}: {e} ({:?})", e.kind))
    }

    async fn pull_as(&self, reference: &str, creds: &Credentials) -> Result<ImageRecord, Error> {
        within(
            120,
            &format!("the pull of {reference}"),
            self.store().pull(reference, creds, None),
        )
        .await
    }

    async fn pull_err(&self, reference: &str) -> Error {
        match self.pull_as(reference, &Credentials::default()).await {
            Ok(r) => panic!("pulling {reference} should fail, got {r:#?}"),
            Err(e) => e,
        }
    }

    async fn import(&self, file: &Path, tag: Option<&str>) -> Result<Vec<ImageRecord>, Error> {
        within(120, "the import", self.store().import(file, tag)).await
    }

    async fn run(&self, reference: &str, args: &[&str]) -> Ran {
        let config = ContainerConfig {
            name: "app".into(),
            image: reference.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        run_container(self.rt(), pod("images"), config)
            .await
            .unwrap_or_else(|e| panic!("running {reference}: {e}"))
    }

    /// Runs `reference` (a hello guest) and checks its greeting.
    async fn run_hello(&self, reference: &str) -> Ran {
        let ran = self.run(reference, &["from", "an", "image"]).await;
        assert_eq!(
            ran.exit.code, 0,
            "{reference}: {:?} {:?}",
            ran.exit, ran.log
        );
        let out = ran.stdout();
        assert!(out.contains(HELLO), "{reference}: stdout {out:?}");
        assert!(out.contains("args: from an image"), "{reference}: {out:?}");
        ran
    }

    /// The blobs of the content store (file names under `content/blobs/sha256`).
    fn blobs(&self) -> BTreeSet<String> {
        names_in(&self.state.join("images/content/blobs/sha256"))
            .into_iter()
            .map(|n| format!("sha256:{n}"))
            .collect()
    }

    /// The image names of the store.
    fn listed(&self) -> Vec<ImageRecord> {
        self.store().list().expect("listing images")
    }

    /// After a failed pull or import: the store lists nothing, no partial blob is in
    /// `content/ingest`, and no unpacked or half-unpacked root filesystem is left.
    fn assert_nothing_half_stored(&self, what: &str) {
        let listed = self.listed();
        assert!(listed.is_empty(), "{what}: the store lists {listed:#?}");
        let ingest = names_in(&self.state.join("images/content/ingest"));
        assert!(
            ingest.is_empty(),
            "{what}: partial blobs left in content/ingest: {ingest:?}"
        );
        let rootfs = names_in(&self.state.join("images/rootfs"));
        assert!(
            rootfs.is_empty(),
            "{what}: root filesystems left under images/rootfs for images the store does not \
             list: {rootfs:?}"
        );
    }

    /// Every path under the node directory outside the state directory, with its size and
    /// link count: compared before and after a hostile image to show nothing was written.
    fn outside_state(&self) -> BTreeMap<PathBuf, (u64, u64)> {
        let mut out = BTreeMap::new();
        walk(&self.tmp.path().join("node"), &self.state, &mut out);
        out
    }
}

fn walk(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, (u64, u64)>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p == skip {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).unwrap();
        out.insert(p.clone(), (m.len(), m.nlink()));
        if m.is_dir() {
            walk(&p, skip, out);
        }
    }
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The image's Wasm was compiled when it arrived: the store says so and the artifact is a
/// file under `<state>/aot`.
fn assert_aot(node: &Node, record: &ImageRecord) {
    assert!(
        node.store().has_artifact(record),
        "no AOT artifact for {}",
        record.wasm_digest
    );
    let artifacts: Vec<String> = names_in(&node.state.join("aot"))
        .into_iter()
        .filter(|n| n.starts_with(&record.wasm_digest) && n.ends_with(".cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1, "AOT artifacts: {artifacts:?}");
}

fn assert_error(e: &Error, kind: Option<ErrorKind>, needles: &[&str], what: &str) {
    eprintln!("{what}: {:?}: {}", e.kind, e.message);
    if let Some(kind) = kind {
        assert_eq!(e.kind, kind, "{what}: wrong kind for {e}");
    }
    for n in needles {
        assert!(
            e.message.contains(n),
            "{what}: the error does not say {n:?}: {e}"
        );
    }
}

fn mirrors(from: &str, to: &str) -> RegistryConfig {
    RegistryConfig {
        mirrors: HashMap::from([(from.to_owned(), vec![to.to_owned()])]),
        ..Default::default()
    }
}

fn basic_auth() -> RegistryAuth {
    RegistryAuth::Basic(USER.into(), PASSWORD.into())
}

/// `wasmpod --state-dir <state>` with an empty docker config (not the machine's).
fn cli(node: &Node) -> Command {
    let mut cmd = wasmpod_tests::wasmpod(&node.state);
    cmd.env("DOCKER_CONFIG", node.dir("docker-config-empty"));
    cmd.stdin(Stdio::null());
    cmd
}

fn output(mut cmd: Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn ok(cmd: Command) -> String {
    let desc = format!("{cmd:?}");
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A child process killed (by its pid) if the test ends before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn cli_list(node: &Node) -> Vec<Value> {
    let mut cmd = cli(node);
    cmd.args(["image", "ls", "-o", "json"]);
    serde_json::from_str::<Value>(&ok(cmd))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn tags_of(images: &[Value]) -> Vec<String> {
    images
        .iter()
        .flat_map(|i| i["repo_tags"].as_array().unwrap().clone())
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The four Wasm packagings, pulled from a real registry and run
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_image_built_by_buildah_runs() {
    let reg = Registry::start();
    let reference = reg.reference("compat/hello:1");
    Buildah::new().compat_image(
        "hello.p1",
        "hello.wasm",
        &[],
        &format!("docker://{reference}"),
    );
    let node = Node::new();
    let record = node.pull(&reference).await;
    assert_eq!(record.format, WasmFormat::Compat);
    assert_eq!(record.run.entrypoint, ["/hello.wasm"]);
    assert_eq!(record.layers.len(), 1);
    assert_eq!(record.layers[0].media_type, LAYER_GZIP);
    // The Wasm the containers run is the file the entrypoint names, stored as its own blob.
    assert_eq!(record.wasm_digest, sha256(&guest_bytes("hello.p1")));
    assert_aot(&node, &record);
    let ran = node.run_hello(&reference).await;
    assert!(ran.stdout().contains("cwd: /"), "{}", ran.stdout());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_image_files_are_the_guests_read_only_root() {
    let reg = Registry::start();
    let reference = reg.reference("compat/fsprobe:1");
    Buildah::new().compat_image(
        "fsprobe.p1",
        "fsprobe.wasm",
        &[("notes.txt", b"shipped in the image\n")],
        &format!("docker://{reference}"),
    );
    let node = Node::new();
    let record = node.pull(&reference).await;
    assert_eq!(record.format, WasmFormat::Compat);

    let ls = node.run(&reference, &["ls", "/"]).await;
    assert_eq!(ls.exit.code, 0, "{:?}", ls.log);
    let names: Vec<String> = ls.stdout().lines().map(str::to_owned).collect();
    assert!(
        names.contains(&"fsprobe.wasm".to_owned()) && names.contains(&"data".to_owned()),
        "ls / shows {names:?}"
    );
    let read = node.run(&reference, &["read", "/data/notes.txt"]).await;
    assert_eq!(read.exit.code, 0, "{:?}", read.log);
    assert_eq!(read.stdout(), "shipped in the image\n");

    for args in [
        &["write", "/x", "nope"][..],
        &["write", "/data/notes.txt", "changed"],
        &["mkdir", "/newdir"],
        &["rm", "/fsprobe.wasm"],
    ] {
        let ran = node.run(&reference, args).await;
        assert_eq!(ran.exit.code, 1, "{args:?}: {:?}", ran.log);
        let err = ran.stderr();
        assert!(
            READ_ONLY_ERRNOS.iter().any(|e| err.contains(e)),
            "{args:?}: expected EPERM/EACCES/EROFS, got {err}"
        );
    }
    // The image's files are untouched for the next container.
    let again = node.run(&reference, &["read", "/data/notes.txt"]).await;
    assert_eq!(again.stdout(), "shipped in the image\n");
    let ls = node.run(&reference, &["ls", "/"]).await;
    assert!(!ls.stdout().lines().any(|l| l == "x" || l == "newdir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_zstd_layer_pushed_by_buildah_and_skopeo_runs() {
    let reg = Registry::start();
    let node = Node::new();
    let b = Buildah::new();
    let image = b.build(
        "hello-zstd:1",
        "FROM scratch\nCOPY hello.wasm /hello.wasm\nENTRYPOINT [\"/hello.wasm\"]\n",
        &[("hello.wasm", guest_bytes("hello.p1"))],
    );
    // buildah writes a zstd layer into an OCI layout; skopeo pushes it unchanged.
    let layout = format!("oci:{}:zstd", node.dir("layout").display());
    b.push(&image, &layout, &["--compression-format", "zstd"]);
    let reference = reg.reference("compat/hello:zstd");
    skopeo_copy(&layout, &format!("docker://{reference}"));
    let record = node.pull(&reference).await;
    assert_eq!(record.format, WasmFormat::Compat);
    assert_eq!(record.layers[0].media_type, LAYER_ZSTD);
    assert_aot(&node, &record);
    node.run_hello(&reference).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_plain_gzip_and_zstd_tar_layers_run() {
    let reg = Registry::start();
    let pusher = Pusher::new();
    let cases: [(&str, &str, Compress); 3] = [
        ("plain", LAYER_TAR, plain),
        ("gzip", LAYER_GZIP, gzip),
        ("zstd", LAYER_ZSTD, zstd),
    ];
    let node = Node::new();
    for (tag, media_type, compress) in cases {
        let image = compat_image("hello.p2", media_type, compress);
        let reference = reg.reference(&format!("compat/crafted:{tag}"));
        pusher.image(&reference, &image).await;
        let record = node.pull(&reference).await;
        assert_eq!(record.format, WasmFormat::Compat, "{tag}");
        assert_eq!(record.layers[0].media_type, media_type);
        assert_eq!(record.manifest_digest, image.manifest_digest());
        assert_aot(&node, &record);
        let ran = node.run_hello(&reference).await;
        // The image config's environment reaches the guest.
        assert!(
            ran.stdout().contains("GREETING=from the image config"),
            "{tag}: {}",
            ran.stdout()
        );
    }
    // Three layers differing only in compression: three images, one config, one Wasm.
    let listed = node.listed();
    assert_eq!(listed.len(), 1, "the same config is the same image id");
    assert_eq!(listed[0].repo_tags.len(), 3, "{:?}", listed[0].repo_tags);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runwasi_wasm_layers_run() {
    let reg = Registry::start();
    let pusher = Pusher::new();
    let node = Node::new();
    for (tag, guest, media_type) in [
        ("component", "hello.p2", RUNWASI_LAYER),
        ("module", "hello.p1", WASM_LAYER),
    ] {
        let image = wasm_layer_image(guest, media_type);
        let reference = reg.reference(&format!("runwasi/hello:{tag}"));
        pusher.image(&reference, &image).await;
        let record = node.pull(&reference).await;
        assert_eq!(record.format, WasmFormat::RunwasiLayer, "{tag}");
        assert_eq!(record.wasm_digest, image.layers[0].digest());
        assert_eq!(record.id, image.config.digest());
        assert_aot(&node, &record);
        node.run_hello(&reference).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cncf_wasm_artifact_runs() {
    let reg = Registry::start();
    let image = wasm_artifact("hello.p2");
    let reference = reg.reference("artifact/hello:1");
    Pusher::new().image(&reference, &image).await;
    let node = Node::new();
    let record = node.pull(&reference).await;
    assert_eq!(record.format, WasmFormat::CncfArtifact);
    assert_eq!(record.config.media_type, WASM_CONFIG);
    assert_eq!(record.wasm_digest, image.layers[0].digest());
    assert_aot(&node, &record);
    node.run_hello(&reference).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_wasm_content_layer_runs() {
    let reg = Registry::start();
    let image = wasm_layer_image("hello.p1", LEGACY_LAYER);
    let reference = reg.reference("legacy/hello:1");
    Pusher::new().image(&reference, &image).await;
    let node = Node::new();
    let record = node.pull(&reference).await;
    assert_eq!(record.format, WasmFormat::LegacyContent);
    assert_aot(&node, &record);
    node.run_hello(&reference).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_pulls_its_wasi_wasm_entry() {
    let reg = Registry::start();
    // The linux/amd64 entry is an image no wasm runtime could run (its entrypoint is text);
    // picking it would fail the pull.
    let linux = Image::new(
        image_config(&["/etc/motd"], &[]),
        vec![Blob::new(
            LAYER_GZIP,
            gzip(&tar(&[Entry::file("etc/motd", b"linux\n")])),
        )],
    );
    let wasi = wasm_artifact("hello.p1");
    let reference = reg.reference("multi/hello:1");
    let entries = vec![
        linux.index_entry("linux", "amd64"),
        wasi.index_entry("wasip1", "wasm"),
    ];
    let index_bytes = index(entries.clone());
    Pusher::new()
        .index(&reference, &[&linux, &wasi], entries)
        .await;
    let node = Node::new();
    let record = node.pull(&reference).await;
    assert_eq!(record.format, WasmFormat::CncfArtifact);
    assert_eq!(record.id, wasi.config.digest());
    // The image is named by the index's digest, as the registry names it.
    assert_eq!(record.manifest_digest, sha256(&index_bytes));
    assert_eq!(
        record.repo_digests,
        [format!("{}/multi/hello@{}", reg.addr, sha256(&index_bytes))]
    );
    // The linux entry's blobs were never fetched.
    assert!(!node.blobs().contains(&linux.layers[0].digest()));
    assert_eq!(
        reg.blob_downloads("multi/hello", &linux.layers[0].digest()),
        0
    );
    node.run_hello(&reference).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_without_wasi_entry_fails_listing_its_platforms() {
    let reg = Registry::start();
    let amd64 = wasm_layer_image("hello.p1", WASM_LAYER);
    let arm64 = wasm_artifact("hello.p1");
    let reference = reg.reference("multi/linux-only:1");
    Pusher::new()
        .index(
            &reference,
            &[&amd64, &arm64],
            vec![
                amd64.index_entry("linux", "amd64"),
                arm64.index_entry("linux", "arm64"),
            ],
        )
        .await;
    let node = Node::new();
    let e = node.pull_err(&reference).await;
    assert_error(
        &e,
        None,
        &["no wasi/wasm entry", "linux/amd64", "linux/arm64"],
        "index without wasi",
    );
    node.assert_nothing_half_stored("index without wasi");
}

// ---------------------------------------------------------------------------------------------
// 2. References
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_hub_short_names_are_normalised() {
    // docker.io itself is out of reach: a mirror for it serves `library/wasmhello`.
    let mirror = Registry::start();
    let image = wasm_artifact("hello.p1");
    Pusher::new()
        .image(&mirror.reference("library/wasmhello:1"), &image)
        .await;
    let node = Node::with(mirrors("docker.io", &mirror.addr), UnpackLimits::default());
    let record = node.pull("wasmhello:1").await;
    assert_eq!(record.repo_tags, ["docker.io/library/wasmhello:1"]);
    assert_eq!(
        record.repo_digests,
        [format!(
            "docker.io/library/wasmhello@{}",
            image.manifest_digest()
        )]
    );
    assert_eq!(record.id, image.config.digest());
    for name in [
        "wasmhello:1",
        "library/wasmhello:1",
        "docker.io/library/wasmhello:1",
        "index.docker.io/library/wasmhello:1",
        &format!("docker.io/library/wasmhello@{}", image.manifest_digest()),
        &format!("wasmhello@{}", image.manifest_digest()),
        &record.id,
        &record.id["sha256:".len().."sha256:".len() + 12],
    ] {
        let found = node.store().get(name).unwrap();
        assert_eq!(found.as_ref().map(|r| &r.id), Some(&record.id), "{name}");
    }
    assert_eq!(node.store().get("wasmhello:2").unwrap(), None);
    assert_eq!(node.store().get("other/wasmhello:1").unwrap(), None);
    node.run_hello("wasmhello:1").await;
    node.run_hello("docker.io/library/wasmhello:1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_and_by_digest() {
    let reg = Registry::start();
    let image = wasm_layer_image("hello.p1", WASM_LAYER);
    let by_tag = reg.reference("refs/hello:v1");
    Pusher::new().image(&by_tag, &image).await;
    let by_digest = format!("{}/refs/hello@{}", reg.addr, image.manifest_digest());

    // By digest, into a fresh store: named only by its digest.
    let node = Node::new();
    let record = node.pull(&by_digest).await;
    assert_eq!(record.id, image.config.digest());
    assert_eq!(record.manifest_digest, image.manifest_digest());
    assert!(record.repo_tags.is_empty(), "{:?}", record.repo_tags);
    assert_eq!(record.repo_digests, [by_digest.as_str()]);
    node.run_hello(&by_digest).await;

    // By tag: the same image gains the tag.
    let record = node.pull(&by_tag).await;
    assert_eq!(record.id, image.config.digest());
    assert_eq!(record.repo_tags, [by_tag.as_str()]);
    assert_eq!(record.repo_digests, [by_digest.as_str()]);
    assert_eq!(node.listed().len(), 1);
    node.run_hello(&by_tag).await;

    // A digest the registry does not have.
    let missing = format!("{}/refs/hello@{}", reg.addr, sha256(b"no such manifest"));
    let e = node.pull_err(&missing).await;
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}

// ---------------------------------------------------------------------------------------------
// 3. Registry credentials
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_registry_needs_credentials() {
    let reg = Registry::with_auth(USER, PASSWORD);
    let image = wasm_artifact("hello.p1");
    let reference = reg.reference("private/hello:1");
    Pusher::with_auth(basic_auth())
        .image(&reference, &image)
        .await;

    let node = Node::new();
    let e = node.pull_err(&reference).await;
    assert_error(&e, Some(ErrorKind::Unauthenticated), &[], "no credentials");
    node.assert_nothing_half_stored("no credentials");

    let wrong = Credentials {
        username: USER.into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let e = node.pull_as(&reference, &wrong).await.unwrap_err();
    assert_error(&e, Some(ErrorKind::Unauthenticated), &[], "wrong password");
    node.assert_nothing_half_stored("wrong password");

    let plain = Credentials {
        username: USER.into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    let record = node.pull_as(&reference, &plain).await.unwrap();
    assert_eq!(record.format, WasmFormat::CncfArtifact);
    node.run_hello(&reference).await;

    let other = Node::new();
    let encoded = Credentials {
        auth: base64(format!("{USER}:{PASSWORD}").as_bytes()),
        ..Default::default()
    };
    other.pull_as(&reference, &encoded).await.unwrap();
    other.run_hello(&reference).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_pull_reads_credentials_from_docker_config() {
    let reg = Registry::with_auth(USER, PASSWORD);
    let image = wasm_artifact("hello.p1");
    let reference = reg.reference("private/cli:1");
    Pusher::with_auth(basic_auth())
        .image(&reference, &image)
        .await;
    let node = Node::new();

    // No credentials: a clear failure, nothing listed.
    let mut cmd = cli(&node);
    cmd.args(["image", "pull", &reference]);
    let out = output(cmd);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("credentials"), "{err}");
    assert!(cli_list(&node).is_empty());

    // A docker config.json with the registry's auth.
    let config_dir = node.dir("docker-config");
    std::fs::write(
        config_dir.join("config.json"),
        json!({"auths": {reg.addr.clone(): {"auth": base64(format!("{USER}:{PASSWORD}").as_bytes())}}})
            .to_string(),
    )
    .unwrap();
    let mut cmd = cli(&node);
    cmd.env("DOCKER_CONFIG", &config_dir)
        .args(["image", "pull", &reference]);
    let stdout = ok(cmd);
    assert_eq!(
        stdout.trim(),
        format!("{}/private/cli@{}", reg.addr, image.manifest_digest())
    );
    assert_eq!(tags_of(&cli_list(&node)), [reference]);
}

// ---------------------------------------------------------------------------------------------
// 4. Mirrors
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_serves_when_origin_is_unreachable() {
    let mirror = Registry::start();
    let origin = format!("127.0.0.1:{}", free_port());
    let image = wasm_artifact("hello.p1");
    Pusher::new()
        .image(&mirror.reference("team/app:1"), &image)
        .await;
    let node = Node::with(mirrors(&origin, &mirror.addr), UnpackLimits::default());
    let reference = format!("{origin}/team/app:1");
    let record = node.pull(&reference).await;
    // Named as asked, not after the mirror.
    assert_eq!(record.repo_tags, [reference.as_str()]);
    assert_eq!(
        record.repo_digests,
        [format!("{origin}/team/app@{}", image.manifest_digest())]
    );
    node.run_hello(&reference).await;

    // Without the mirror the origin is unreachable.
    let plain = Node::new();
    let e = plain.pull_err(&reference).await;
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_without_the_image_falls_back_to_origin() {
    let mirror = Registry::start();
    let origin = Registry::start();
    let image = wasm_artifact("hello.p1");
    let reference = origin.reference("team/app:2");
    Pusher::new().image(&reference, &image).await;
    let node = Node::with(mirrors(&origin.addr, &mirror.addr), UnpackLimits::default());
    let record = node.pull(&reference).await;
    assert_eq!(record.repo_tags, [reference.as_str()]);
    // The mirror was asked first.
    assert!(
        mirror.log_text().contains("/v2/team/app/manifests/2"),
        "the mirror was not tried:\n{}",
        mirror.log_text()
    );
    node.run_hello(&reference).await;
}

// ---------------------------------------------------------------------------------------------
// 5. The content store
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_store_each_blob_once() {
    let reg = Registry::start();
    let image = compat_image("hello.p1", LAYER_GZIP, gzip);
    let reference = reg.reference("shared/hello:1");
    Pusher::new().image(&reference, &image).await;
    let node = Node::new();
    let pulls: Vec<_> = (0..2)
        .map(|_| {
            let rt = node.rt().clone();
            let reference = reference.clone();
            tokio::spawn(async move {
                rt.images()
                    .pull(&reference, &Credentials::default(), None)
                    .await
            })
        })
        .collect();
    let mut records = Vec::new();
    for p in pulls {
        records.push(
            within(120, "a concurrent pull", p)
                .await
                .unwrap()
                .expect("concurrent pull"),
        );
    }
    assert_eq!(records[0], records[1]);
    let wasm = sha256(&guest_bytes("hello.p1"));
    let expected: BTreeSet<String> = [
        image.manifest_digest(),
        image.config.digest(),
        image.layers[0].digest(),
        wasm,
    ]
    .into_iter()
    .collect();
    assert_eq!(node.blobs(), expected);
    // Each blob crossed the network once: the second pull found it stored.
    for b in image.blobs() {
        assert_eq!(
            reg.blob_downloads("shared/hello", &b.digest()),
            1,
            "blob {} ({})",
            b.digest(),
            b.media_type
        );
    }
    assert!(names_in(&node.state.join("images/content/ingest")).is_empty());
    assert_eq!(node.listed().len(), 1);
    node.run_hello(&reference).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_layer_is_stored_once_and_outlives_the_other_image() {
    let reg = Registry::start();
    let wasm = guest_bytes("hello.p1");
    let shared = Blob::new(
        LAYER_GZIP,
        gzip(&tar(&[Entry::file_mode("app.wasm", &wasm, 0o755)])),
    );
    let own = |name: &str| {
        Blob::new(
            LAYER_GZIP,
            gzip(&tar(&[Entry::file(
                &format!("{name}.txt"),
                name.as_bytes(),
            )])),
        )
    };
    let a = Image::new(
        image_config_with(&["/app.wasm"], &[], "a"),
        vec![shared.clone(), own("a")],
    );
    let b = Image::new(
        image_config_with(&["/app.wasm"], &[], "b"),
        vec![shared.clone(), own("b")],
    );
    let (ra, rb) = (reg.reference("layers/a:1"), reg.reference("layers/b:1"));
    let pusher = Pusher::new();
    pusher.image(&ra, &a).await;
    pusher.image(&rb, &b).await;

    let node = Node::new();
    let rec_a = node.pull(&ra).await;
    let rec_b = node.pull(&rb).await;
    assert_ne!(rec_a.id, rec_b.id);
    assert_eq!(rec_a.wasm_digest, rec_b.wasm_digest);
    let only_a: BTreeSet<String> = [a.manifest_digest(), a.config.digest(), a.layers[1].digest()]
        .into_iter()
        .collect();
    let b_uses: BTreeSet<String> = [
        b.manifest_digest(),
        b.config.digest(),
        shared.digest(),
        b.layers[1].digest(),
        sha256(&wasm),
    ]
    .into_iter()
    .collect();
    let all: BTreeSet<String> = only_a.union(&b_uses).cloned().collect();
    assert_eq!(
        node.blobs(),
        all,
        "the shared layer and Wasm are stored once"
    );
    assert_eq!(all.len(), 8);
    let rootfs = node.state.join("images/rootfs");
    assert_eq!(
        names_in(&rootfs),
        [&rec_a.id[7..], &rec_b.id[7..]]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );

    within(30, "removing image a", node.store().remove(&ra))
        .await
        .unwrap();
    assert_eq!(node.store().get(&ra).unwrap(), None);
    assert_eq!(node.blobs(), b_uses, "only a's blobs were freed");
    assert_eq!(
        names_in(&rootfs),
        [rec_b.id[7..].to_owned()].into_iter().collect()
    );
    node.run_hello(&rb).await;

    within(30, "removing image b", node.store().remove(&rb))
        .await
        .unwrap();
    assert!(node.blobs().is_empty(), "{:?}", node.blobs());
    assert!(names_in(&rootfs).is_empty());
    let e = within(30, "removing it again", node.store().remove(&rb))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
}

// ---------------------------------------------------------------------------------------------
// 6 & 7. Offline images, AOT on arrival
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_oci_archive_made_by_skopeo() {
    let mut reg = Registry::start();
    let source = reg.reference("offline/hello:1");
    Buildah::new().compat_image("hello.p1", "hello.wasm", &[], &format!("docker://{source}"));
    let node = Node::new();
    let archive = node.dir("archives").join("hello-oci.tar");
    skopeo_copy(
        &format!("docker://{source}"),
        &format!(
            "oci-archive:{}:example.com/offline/hello:1",
            archive.display()
        ),
    );
    reg.stop(); // offline from here on
    let records = node.import(&archive, None).await.unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.format, WasmFormat::Compat);
    assert_eq!(record.repo_tags, ["example.com/offline/hello:1"]);
    assert_aot(&node, record);
    node.run_hello("example.com/offline/hello:1").await;
    assert!(names_in(&node.state.join("images/rootfs"))
        .iter()
        .all(|n| !n.starts_with('.')));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_docker_archive_made_by_skopeo() {
    let mut reg = Registry::start();
    let source = reg.reference("offline/docker:1");
    Buildah::new().compat_image("hello.p2", "hello.wasm", &[], &format!("docker://{source}"));
    let node = Node::new();
    let archive = node.dir("archives").join("hello-docker.tar");
    skopeo_copy(
        &format!("docker://{source}"),
        &format!(
            "docker-archive:{}:example.com/offline/docker:2",
            archive.display()
        ),
    );
    reg.stop();
    let records = node.import(&archive, None).await.unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.format, WasmFormat::Compat);
    assert_eq!(record.repo_tags, ["example.com/offline/docker:2"]);
    assert_aot(&node, record);
    node.run_hello("example.com/offline/docker:2").await;

    // --tag renames on import.
    let other = Node::new();
    let records = other.import(&archive, Some("renamed:7")).await.unwrap();
    assert_eq!(records[0].repo_tags, ["docker.io/library/renamed:7"]);
    other.run_hello("renamed:7").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_bare_wasm_needs_a_tag() {
    let node = Node::new();
    let wasm = wasmpod_tests::wasm("hello.p2");
    let e = node.import(&wasm, None).await.unwrap_err();
    assert_error(&e, None, &["--tag"], "bare .wasm without a tag");
    node.assert_nothing_half_stored("bare .wasm without a tag");

    let records = node
        .import(&wasm, Some("example.com/bare/hello:1"))
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.repo_tags, ["example.com/bare/hello:1"]);
    assert_eq!(record.wasm_digest, sha256(&guest_bytes("hello.p2")));
    assert_aot(&node, record);
    node.run_hello("example.com/bare/hello:1").await;

    // Files that are not images.
    let junk = node.dir("junk");
    let cases: [(&str, Vec<u8>, &[&str]); 3] = [
        ("text", b"just some text\n".to_vec(), &[]),
        (
            "tar-of-nothing",
            tar(&[Entry::file("readme.txt", b"not an image\n")]),
            &["is not an OCI layout, a docker save archive or a .wasm"],
        ),
        (
            "broken-wasm",
            b"\0asm\x01\0\0\0 and then garbage".to_vec(),
            &[],
        ),
    ];
    for (name, bytes, needles) in cases {
        let file = junk.join(name);
        std::fs::write(&file, bytes).unwrap();
        let e = node.import(&file, Some("junk:1")).await.unwrap_err();
        assert_error(&e, Some(ErrorKind::InvalidArgument), needles, name);
        assert_eq!(node.listed().len(), 1, "{name}");
        assert_eq!(node.store().get("junk:1").unwrap(), None, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_layouts_of_each_wasm_format() {
    let node = Node::new();
    let layouts = node.dir("layouts");
    for (name, image, format) in [
        (
            "example.com/formats/component:1",
            wasm_layer_image("hello.p2", RUNWASI_LAYER),
            WasmFormat::RunwasiLayer,
        ),
        (
            "example.com/formats/artifact:1",
            wasm_artifact("hello.p1"),
            WasmFormat::CncfArtifact,
        ),
        (
            "example.com/formats/legacy:1",
            wasm_layer_image("hello.p1", LEGACY_LAYER),
            WasmFormat::LegacyContent,
        ),
        (
            "example.com/formats/compat:1",
            compat_image("hello.p1", LAYER_TAR, plain),
            WasmFormat::Compat,
        ),
    ] {
        let file = layouts.join(format!("{}.tar", image.manifest_digest()));
        std::fs::write(&file, image_layout_tar(&image, name)).unwrap();
        let records = node.import(&file, None).await.unwrap();
        assert_eq!(records.len(), 1, "{name}");
        assert_eq!(records[0].format, format, "{name}");
        assert_eq!(records[0].repo_tags, [name], "{name}");
        assert_eq!(records[0].manifest_digest, image.manifest_digest());
        assert_aot(&node, &records[0]);
        node.run_hello(name).await;
    }
    assert_eq!(node.listed().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_into_a_fresh_node_runs() {
    let reg = Registry::start();
    let pusher = Pusher::new();
    let compat = compat_image("hello.p1", LAYER_ZSTD, zstd);
    let artifact = wasm_artifact("hello.p2");
    let (rc, ra) = (
        reg.reference("export/compat:1"),
        reg.reference("export/artifact:1"),
    );
    pusher.image(&rc, &compat).await;
    pusher.image(&ra, &artifact).await;
    let node = Node::new();
    let out = node.dir("exports");
    for (reference, image) in [(&rc, &compat), (&ra, &artifact)] {
        let original = node.pull(reference).await;
        let file = out.join(format!("{}.tar", image.config.digest()[7..19].to_owned()));
        within(60, "the export", node.store().export(reference, &file))
            .await
            .unwrap();

        let fresh = Node::new();
        let records = fresh.import(&file, None).await.unwrap();
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record.id, original.id);
        assert_eq!(record.format, original.format);
        assert_eq!(record.manifest_digest, image.manifest_digest());
        assert_eq!(record.repo_tags, [reference.as_str()]);
        assert_aot(&fresh, record);
        fresh.run_hello(reference).await;

        // Other tools read the export: skopeo pushes it back, and that pulls and runs.
        let again = format!("{}-roundtrip", reference);
        skopeo_copy(
            &format!("oci-archive:{}", file.display()),
            &format!("docker://{again}"),
        );
        let third = Node::new();
        let record = third.pull(&again).await;
        assert_eq!(record.id, original.id);
        third.run_hello(&again).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Bad input: a clear error, nothing half-stored
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_registry_is_unavailable() {
    let node = Node::new();
    let reference = format!("127.0.0.1:{}/nobody/home:1", free_port());
    let e = node.pull_err(&reference).await;
    assert_error(
        &e,
        Some(ErrorKind::Unavailable),
        &["reachable"],
        "closed port",
    );
    node.assert_nothing_half_stored("closed port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tag_and_repository_are_not_found() {
    let reg = Registry::start();
    Pusher::new()
        .image(&reg.reference("known/app:1"), &wasm_artifact("hello.p1"))
        .await;
    let node = Node::new();
    for missing in ["known/app:2", "unknown/app:1"] {
        let e = node.pull_err(&reg.reference(missing)).await;
        assert_error(&e, Some(ErrorKind::NotFound), &[], missing);
        node.assert_nothing_half_stored(missing);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_in_the_registry_is_refused() {
    let reg = Registry::start();
    let image = wasm_layer_image("hello.p1", WASM_LAYER);
    let reference = reg.reference("corrupt/hello:1");
    Pusher::new().image(&reference, &image).await;
    // Flip bytes of the stored layer, keeping its length.
    let layer = &image.layers[0];
    let data = reg.blob_data(&layer.digest());
    let mut bytes = std::fs::read(&data).unwrap();
    assert_eq!(bytes, layer.bytes);
    for i in (1000..bytes.len()).step_by(997) {
        bytes[i] ^= 0x5a;
    }
    std::fs::write(&data, &bytes).unwrap();

    let node = Node::new();
    let e = node.pull_err(&reference).await;
    assert_error(&e, None, &[&layer.digest()[7..]], "corrupt blob");
    assert!(
        e.message.contains("digest") || e.message.contains("match"),
        "corrupt blob: {e}"
    );
    node.assert_nothing_half_stored("corrupt blob");
    assert!(!node.blobs().contains(&layer.digest()));
    assert!(!node.blobs().contains(&sha256(&bytes)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_sizes_that_lie_are_refused() {
    let reg = Registry::start();
    let pusher = Pusher::new();
    let node = Node::new();
    for (tag, delta, needle) in [
        ("smaller", -100i64, "larger than its declared size"),
        ("larger", 100, "descriptor says"),
    ] {
        let image = wasm_layer_image("hello.p1", WASM_LAYER).edit_manifest(|m| {
            let size = m["layers"][0]["size"].as_i64().unwrap();
            m["layers"][0]["size"] = json!(size + delta);
        });
        let reference = reg.reference(&format!("sizes/hello:{tag}"));
        pusher.image(&reference, &image).await;
        let e = node.pull_err(&reference).await;
        assert_error(&e, None, &[needle], tag);
        node.assert_nothing_half_stored(tag);
        assert!(!node.blobs().contains(&image.layers[0].digest()), "{tag}");
    }
}

/// Pushes a one-layer compat image (entrypoint `/app.wasm`) as `<repo>:1`; returns its reference.
async fn push_one_layer_image(reg: &Registry, repo: &str, layer: Blob) -> String {
    // Each hostile image has its own config (its diff id), so no two share an image id.
    let image = Image::new(image_config(&["/app.wasm"], &[layer.digest()]), vec![layer]);
    let reference = reg.reference(&format!("{repo}:1"));
    Pusher::new().image(&reference, &image).await;
    reference
}

/// Pulls `reference`, checking that nothing was written outside the state directory whether
/// the pull succeeds or fails.
async fn pull_confined(node: &Node, reference: &str) -> Result<ImageRecord, Error> {
    let before = node.outside_state();
    let result = node.pull_as(reference, &Credentials::default()).await;
    assert_eq!(
        node.outside_state(),
        before,
        "{reference}: something was written outside the state directory ({result:?})"
    );
    result
}

/// Pushes a one-layer compat image (entrypoint `/app.wasm`) and expects its pull to fail.
async fn pull_hostile_layer(
    node: &Node,
    reg: &Registry,
    repo: &str,
    layer: Blob,
    needles: &[&str],
) -> Error {
    let reference = push_one_layer_image(reg, repo, layer).await;
    let e = match pull_confined(node, &reference).await {
        Ok(r) => panic!("pulling {reference} should fail, got {r:#?}"),
        Err(e) => e,
    };
    assert_error(&e, None, needles, repo);
    node.assert_nothing_half_stored(repo);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_zstd_bombs_are_stopped() {
    let reg = Registry::start();
    let limits = UnpackLimits {
        max_bytes: 8 << 20,
        ..Default::default()
    };
    let node = Node::with(RegistryConfig::default(), limits);
    for (repo, layer) in [
        ("bomb/gzip", Blob::new(LAYER_GZIP, gzip_bomb(64 << 20))),
        ("bomb/zstd", Blob::new(LAYER_ZSTD, zstd_bomb(64 << 20))),
    ] {
        assert!(layer.size() < 1 << 20, "{repo} is {} bytes", layer.size());
        pull_hostile_layer(&node, &reg, repo, layer, &["bomb"]).await;
    }
    // Under the limit, the same kind of layer is fine.
    let small = Blob::new(
        LAYER_GZIP,
        gzip(&tar(&[
            Entry::file("zeros", &vec![0; 4 << 20]),
            Entry::file_mode("app.wasm", &guest_bytes("hello.p1"), 0o755),
        ])),
    );
    let image = Image::new(image_config(&["/app.wasm"], &[]), vec![small]);
    let reference = reg.reference("bomb/small:1");
    Pusher::new().image(&reference, &image).await;
    node.pull(&reference).await;
    node.run_hello(&reference).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_over_4_mib_is_refused() {
    let reg = Registry::start();
    let wasm = wasm_blob("hello.p1", WASM_LAYER);
    let config = Blob::new(
        OCI_CONFIG,
        serde_json::to_vec(&json!({
            "architecture": "wasm",
            "os": "wasi",
            "config": {"Labels": {"padding": "x".repeat(4 << 20)}},
        }))
        .unwrap(),
    );
    assert!(config.size() > 4 << 20);
    let image = Image::new(config, vec![wasm]);
    let reference = reg.reference("big/config:1");
    Pusher::new().image(&reference, &image).await;
    let node = Node::new();
    let e = node.pull_err(&reference).await;
    assert_error(
        &e,
        Some(ErrorKind::InvalidArgument),
        &["config", "limit"],
        "big config",
    );
    node.assert_nothing_half_stored("big config");
    assert_eq!(
        reg.blob_downloads("big/config", &image.config.digest()),
        0,
        "the oversized config was downloaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_index_is_refused() {
    let reg = Registry::start();
    let pusher = Pusher::new();
    let image = wasm_artifact("hello.p1");
    let repo = format!("{}/nested/app", reg.addr);
    pusher
        .image(&format!("{repo}@{}", image.manifest_digest()), &image)
        .await;
    let inner = index(vec![image.index_entry("wasip1", "wasm")]);
    pusher
        .manifest(&format!("{repo}@{}", sha256(&inner)), &inner, OCI_INDEX)
        .await;
    let outer = index(vec![json!({
        "mediaType": OCI_INDEX,
        "digest": sha256(&inner),
        "size": inner.len(),
        "platform": {"os": "wasip1", "architecture": "wasm"},
    })]);
    pusher
        .manifest(&format!("{repo}:1"), &outer, OCI_INDEX)
        .await;
    let node = Node::new();
    let e = node.pull_err(&format!("{repo}:1")).await;
    assert_error(
        &e,
        Some(ErrorKind::InvalidArgument),
        &["index"],
        "nested index",
    );
    node.assert_nothing_half_stored("nested index");
    // The inner index's image was never fetched.
    assert!(!node.blobs().contains(&image.layers[0].digest()));
}

/// Imports an OCI layout tar written to `<node>/layouts/<name>.tar` and expects a failure.
async fn import_hostile_layout(node: &Node, name: &str, tar_bytes: Vec<u8>, needles: &[&str]) {
    let file = node.dir("layouts").join(format!("{name}.tar"));
    std::fs::write(&file, tar_bytes).unwrap();
    let before = node.outside_state();
    let e = node.import(&file, None).await.unwrap_err();
    assert_error(&e, None, needles, name);
    node.assert_nothing_half_stored(name);
    assert_eq!(
        node.outside_state(),
        before,
        "{name}: something was written outside the state directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_that_is_both_index_and_image_is_refused() {
    // docker-registry refuses such a manifest (MANIFEST_INVALID), so it comes in a layout.
    let node = Node::new();
    let image = wasm_artifact("hello.p1");
    let both = image.clone().edit_manifest(|m| {
        m["manifests"] = json!([image.index_entry("wasip1", "wasm")]);
    });
    let mut blobs = vec![
        (
            both.manifest_digest()[7..].to_owned(),
            both.manifest.clone(),
        ),
        (
            image.manifest_digest()[7..].to_owned(),
            image.manifest.clone(),
        ),
    ];
    for b in image.blobs() {
        blobs.push((b.digest()[7..].to_owned(), b.bytes.clone()));
    }
    let mut entry = both.index_entry("wasip1", "wasm");
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": "example.com/both:1"});
    let layout = oci_layout_tar(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}),
        &blobs,
    );
    import_hostile_layout(
        &node,
        "both",
        layout,
        &["both an index and an image manifest"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_that_are_paths_are_refused() {
    let node = Node::new();
    let image = wasm_artifact("hello.p1");
    let blobs = |image: &Image| {
        let mut v = vec![(
            image.manifest_digest()[7..].to_owned(),
            image.manifest.clone(),
        )];
        for b in image.blobs() {
            v.push((b.digest()[7..].to_owned(), b.bytes.clone()));
        }
        v
    };
    // The index names the manifest `sha256:../x`.
    let mut entry = image.index_entry("wasip1", "wasm");
    entry["digest"] = json!("sha256:../../../../x");
    let layout = oci_layout_tar(
        &json!({"schemaVersion": 2, "manifests": [entry]}),
        &blobs(&image),
    );
    import_hostile_layout(
        &node,
        "index-digest",
        layout,
        &["not a valid sha256 digest"],
    )
    .await;

    // The manifest names its layer `sha256:../x`.
    let bad = image.clone().edit_manifest(|m| {
        m["layers"][0]["digest"] = json!("sha256:../../../node/x");
    });
    let mut entry = bad.index_entry("wasip1", "wasm");
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": "example.com/bad:1"});
    let layout = oci_layout_tar(
        &json!({"schemaVersion": 2, "manifests": [entry]}),
        &blobs(&bad),
    );
    import_hostile_layout(&node, "layer-digest", layout, &["sha256:../../../node/x"]).await;

    // A blob whose file name is not its digest.
    let mut wrong = blobs(&image);
    wrong.push(("0".repeat(64), b"not the blob you are looking for".to_vec()));
    let mut entry = image.index_entry("wasip1", "wasm");
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": "example.com/wrong:1"});
    let layout = oci_layout_tar(&json!({"schemaVersion": 2, "manifests": [entry]}), &wrong);
    import_hostile_layout(&node, "blob-name", layout, &["does not match"]).await;

    // The archive itself tries to climb out.
    let layout = tar(&[
        Entry::file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        Entry::file("../../escaped-blob", b"x"),
    ]);
    import_hostile_layout(&node, "archive-dotdot", layout, &["'..'"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archive_naming_files_outside_is_refused() {
    let node = Node::new();
    let esc = Escape::new(&node);
    let config = image_config(&["/app.wasm"], &[]);
    for (name, config_path) in [
        ("dotdot", format!("{}/sentinel", esc.up)),
        (
            "absolute",
            esc.outside.join("sentinel").display().to_string(),
        ),
    ] {
        let manifest = json!([{
            "Config": config_path,
            "RepoTags": ["example.com/docker/evil:1"],
            "Layers": [],
        }]);
        let archive = tar(&[
            Entry::file("manifest.json", manifest.to_string().as_bytes()),
            Entry::file("config.json", &config.bytes),
        ]);
        import_hostile_layout(
            &node,
            &format!("docker-{name}"),
            archive,
            &["outside the archive"],
        )
        .await;
    }
}

/// Paths leading from an unpacked layer to `<node>/outside` (absolute and by `..`).
struct Escape {
    outside: PathBuf,
    up: String,
}

impl Escape {
    fn new(node: &Node) -> Self {
        let outside = node.dir("node/outside");
        std::fs::write(outside.join("sentinel"), "host file\n").unwrap();
        // Far more `..` than the unpack directory is deep: any escape reaches `/`, then
        // descends to `outside`.
        let up = "../".repeat(16) + outside.to_str().unwrap().trim_start_matches('/');
        assert!(up.len() < 90, "{up} is too long for a tar name field");
        Self { outside, up }
    }
}

/// A tar layer: `/app.wasm` (so only the hostile entries can fail it), then `entries`.
fn hostile_layer(entries: Vec<Entry>) -> Blob {
    let mut all = vec![Entry::file_mode(
        "app.wasm",
        &guest_bytes("hello.p1"),
        0o755,
    )];
    all.extend(entries);
    Blob::new(LAYER_TAR, tar(&all))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_with_absolute_path_is_refused() {
    let reg = Registry::start();
    let node = Node::new();
    let esc = Escape::new(&node);
    let abs = format!("{}/pwned", esc.outside.display());
    let layer = hostile_layer(vec![Entry::file(&abs, b"escaped")]);
    pull_hostile_layer(&node, &reg, "hostile/absolute", layer, &["absolute path"]).await;
    // The same path smuggled in a GNU long-name record and in a PAX header.
    let layer = hostile_layer(vec![
        Entry::gnu_long_name(&abs),
        Entry::file("innocent", b"escaped"),
    ]);
    pull_hostile_layer(
        &node,
        &reg,
        "hostile/absolute-gnu",
        layer,
        &["absolute path"],
    )
    .await;
    let layer = hostile_layer(vec![
        Entry::pax_path(&abs),
        Entry::file("innocent", b"escaped"),
    ]);
    pull_hostile_layer(
        &node,
        &reg,
        "hostile/absolute-pax",
        layer,
        &["absolute path"],
    )
    .await;
    assert!(!esc.outside.join("pwned").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_with_dotdot_path_is_refused() {
    let reg = Registry::start();
    let node = Node::new();
    let esc = Escape::new(&node);
    let far = format!("{}/pwned", esc.up);
    let cases = [
        ("far", vec![Entry::file(&far, b"escaped")]),
        ("near", vec![Entry::file("../../../pwned-near", b"escaped")]),
        (
            "inner",
            vec![
                Entry::dir("a"),
                Entry::file("a/../../pwned-inner", b"escaped"),
            ],
        ),
        ("dir", vec![Entry::dir("../../pwned-dir")]),
        (
            "gnu",
            vec![Entry::gnu_long_name(&far), Entry::file("innocent", b"x")],
        ),
        (
            "pax",
            vec![Entry::pax_path(&far), Entry::file("innocent", b"x")],
        ),
    ];
    for (name, entries) in cases {
        let layer = Blob::new(LAYER_GZIP, gzip(&hostile_layer(entries).bytes));
        pull_hostile_layer(
            &node,
            &reg,
            &format!("hostile/dotdot-{name}"),
            layer,
            &["'..'"],
        )
        .await;
    }
    assert!(!esc.outside.join("pwned").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_with_symlink_leading_out_is_refused() {
    let reg = Registry::start();
    let node = Node::new();
    let esc = Escape::new(&node);
    let cases = [
        (
            "etc",
            vec![Entry::dir("etc"), Entry::symlink("etc/evil", "../../etc")],
        ),
        (
            "far",
            vec![
                Entry::symlink("out", &esc.up),
                Entry::file("out/pwned", b"escaped"),
            ],
        ),
        ("root-parent", vec![Entry::symlink("up", "..")]),
    ];
    for (name, entries) in cases {
        pull_hostile_layer(
            &node,
            &reg,
            &format!("hostile/symlink-{name}"),
            hostile_layer(entries),
            &["leads outside the image"],
        )
        .await;
    }
    assert!(!esc.outside.join("pwned").exists());
}

/// Each link is harmless on its own (`d/l -> ..` is the root; `d/l/l2 -> ..` *looks* one level
/// down), but followed together they leave the root: whatever the unpacker decides, nothing may
/// land outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_with_symlink_chain_stays_inside() {
    let reg = Registry::start();
    let node = Node::new();
    let esc = Escape::new(&node);
    let rel_outside = esc.up.trim_start_matches("../");
    let layer = hostile_layer(vec![
        Entry::dir("d"),
        Entry::symlink("d/l", ".."),
        Entry::symlink("d/l/l2", ".."),
        Entry::file(&format!("d/l/l2/{rel_outside}/pwned"), b"escaped"),
        Entry::file("d/l/l2/pwned-chain", b"escaped"),
    ]);
    let reference = push_one_layer_image(&reg, "hostile/chain", layer).await;
    let result = pull_confined(&node, &reference).await;
    assert!(!esc.outside.join("pwned").exists());
    match result {
        Err(e) => {
            eprintln!("symlink chain: {:?}: {}", e.kind, e.message);
            node.assert_nothing_half_stored("symlink chain");
        }
        Ok(record) => {
            // Accepted: the guest still sees only the image's files.
            let rootfs = node.state.join("images/rootfs").join(&record.id[7..]);
            assert!(!rootfs.parent().unwrap().join("pwned-chain").exists());
            let ran = node.run(&reference, &[]).await;
            assert_eq!(ran.exit.code, 0, "{:?}", ran.log);
        }
    }
}

/// The same chain without writes through it: `d/l -> ..` makes `d/l/l2` the root's `l2`, so
/// `l2 -> ..` points above the image's root, which the unpacker promises never to allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_with_symlink_chain_leading_out_is_refused() {
    let reg = Registry::start();
    let node = Node::new();
    let layer = Blob::new(
        LAYER_TAR,
        tar(&[
            Entry::file_mode("app.wasm", &guest_bytes("fsprobe.p1"), 0o755),
            Entry::dir("d"),
            Entry::symlink("d/l", ".."),
            Entry::symlink("d/l/l2", ".."),
        ]),
    );
    let reference = push_one_layer_image(&reg, "hostile/chain-links", layer).await;
    let result = pull_confined(&node, &reference).await;
    match result {
        Err(e) => {
            assert_error(
                &e,
                None,
                &["leads outside the image"],
                "symlink chain links",
            );
            node.assert_nothing_half_stored("symlink chain links");
        }
        Ok(record) => {
            let rootfs = node.state.join("images/rootfs").join(&record.id[7..]);
            let link = std::fs::read_link(rootfs.join("l2"));
            // How far the guest gets through it (the preopen should still confine it).
            let ls = node.run(&reference, &["ls", "/l2"]).await;
            panic!(
                "the image was accepted with a symlink leading out of its root: {}/l2 -> \
                 {link:?}; guest `ls /l2`: exit {} stdout {:?} stderr {:?}",
                rootfs.display(),
                ls.exit.code,
                ls.stdout(),
                ls.stderr()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_with_absolute_symlink_is_refused() {
    let reg = Registry::start();
    let node = Node::new();
    let esc = Escape::new(&node);
    let layer = hostile_layer(vec![
        Entry::symlink("abs", esc.outside.to_str().unwrap()),
        Entry::file("abs/pwned", b"escaped"),
    ]);
    pull_hostile_layer(
        &node,
        &reg,
        "hostile/abs-symlink",
        layer,
        &["leads outside the image"],
    )
    .await;
    let layer = hostile_layer(vec![Entry::symlink("etc-passwd", "/etc/passwd")]);
    pull_hostile_layer(
        &node,
        &reg,
        "hostile/abs-symlink-etc",
        layer,
        &["leads outside the image"],
    )
    .await;
    assert!(!esc.outside.join("pwned").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_with_hard_link_out_is_refused() {
    let reg = Registry::start();
    let node = Node::new();
    let esc = Escape::new(&node);
    let sentinel = esc.outside.join("sentinel");
    let cases = [
        ("near", Entry::hard_link("near", "../outside"), "'..'"),
        (
            "far",
            Entry::hard_link("far", &format!("{}/sentinel", esc.up)),
            "'..'",
        ),
        (
            "absolute",
            Entry::hard_link("abs", sentinel.to_str().unwrap()),
            "absolute path",
        ),
    ];
    for (name, entry, needle) in cases {
        pull_hostile_layer(
            &node,
            &reg,
            &format!("hostile/hardlink-{name}"),
            hostile_layer(vec![entry]),
            &["hard link", needle],
        )
        .await;
    }
    let meta = std::fs::metadata(&sentinel).unwrap();
    assert_eq!(meta.nlink(), 1, "the host file gained a hard link");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_with_device_node_is_refused() {
    let reg = Registry::start();
    let node = Node::new();
    let layer = hostile_layer(vec![Entry::dir("dev"), Entry::char_device("dev/mem")]);
    pull_hostile_layer(
        &node,
        &reg,
        "hostile/device",
        layer,
        &["device node", "dev/mem"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteout_flood_is_stopped() {
    let reg = Registry::start();
    let limits = UnpackLimits {
        max_entries: 1000,
        ..Default::default()
    };
    let node = Node::with(RegistryConfig::default(), limits);
    let mut entries = vec![Entry::file_mode(
        "app.wasm",
        &guest_bytes("hello.p1"),
        0o755,
    )];
    for i in 0..1500 {
        entries.push(Entry::file(&format!(".wh.gone-{i}"), b""));
    }
    let layer = Blob::new(LAYER_GZIP, gzip(&tar(&entries)));
    pull_hostile_layer(
        &node,
        &reg,
        "hostile/whiteouts",
        layer,
        &["too many entries"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_without_wasm_are_refused() {
    let reg = Registry::start();
    let pusher = Pusher::new();
    let text_layer = || {
        Blob::new(
            LAYER_GZIP,
            gzip(&tar(&[
                Entry::dir("etc"),
                Entry::file("etc/motd", b"no wasm here, just text\n"),
            ])),
        )
    };
    let cases = [
        (
            "text-entrypoint",
            Image::new(image_config(&["/etc/motd"], &[]), vec![text_layer()]),
            &["no Wasm", "/etc/motd"][..],
        ),
        (
            "empty-entrypoint",
            Image::new(image_config(&[], &[]), vec![text_layer()]),
            &["no Wasm", "entrypoint is empty"],
        ),
        (
            "missing-entrypoint",
            Image::new(image_config(&["/app.wasm"], &[]), vec![text_layer()]),
            &["no Wasm", "/app.wasm"],
        ),
        (
            "no-layers",
            Image::new(image_config(&["/app.wasm"], &[]), vec![]),
            &["no Wasm"],
        ),
        (
            "artifact-without-wasm-layer",
            Image::new(
                wasm_artifact_config(&text_layer()),
                vec![Blob::new("text/plain", b"hello".to_vec())],
            ),
            &["application/wasm"],
        ),
        (
            "wasm-layer-that-is-not-wasm",
            Image::new(
                image_config(&[], &[]),
                vec![Blob::new(WASM_LAYER, b"#!/bin/sh\necho hi\n".to_vec())],
            ),
            &[],
        ),
    ];
    let mut leftovers = BTreeMap::new();
    for (tag, image, needles) in cases {
        let node = Node::new();
        let reference = reg.reference(&format!("nowasm/app:{tag}"));
        pusher.image(&reference, &image).await;
        let e = node.pull_err(&reference).await;
        assert_error(&e, Some(ErrorKind::InvalidArgument), needles, tag);
        assert!(node.listed().is_empty(), "{tag}");
        let ingest = names_in(&node.state.join("images/content/ingest"));
        assert!(ingest.is_empty(), "{tag}: {ingest:?}");
        let rootfs = names_in(&node.state.join("images/rootfs"));
        if !rootfs.is_empty() {
            leftovers.insert(tag, rootfs);
        }
    }
    // Checked last so that every case's error is checked first.
    assert!(
        leftovers.is_empty(),
        "unpacked root filesystems left behind by refused images (never listed, never \
         collected): {leftovers:?}"
    );
}

/// Two images with the same config but different Wasm, as tools that push a fixed config
/// (`{}`, like wasm-to-oci) make them: each tag must keep running its own program.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_sharing_a_config_keep_their_own_wasm() {
    let reg = Registry::start();
    let pusher = Pusher::new();
    let config = Blob::new("application/vnd.wasm.config.v1+json", b"{}".to_vec());
    let hello = Image::new(config.clone(), vec![wasm_blob("hello.p1", LEGACY_LAYER)]);
    let exit = Image::new(config, vec![wasm_blob("exit-code.p1", LEGACY_LAYER)]);
    let (rh, re) = (
        reg.reference("legacy/hello:1"),
        reg.reference("legacy/exit:1"),
    );
    pusher.image(&rh, &hello).await;
    pusher.image(&re, &exit).await;
    let node = Node::new();
    let first = node.pull(&rh).await;
    assert_eq!(first.wasm_digest, hello.layers[0].digest());
    node.run_hello(&rh).await;
    let second = node.pull(&re).await;
    assert_eq!(second.wasm_digest, exit.layers[0].digest());

    let found = node
        .store()
        .get(&rh)
        .unwrap()
        .expect("hello is still there");
    assert_eq!(
        (found.manifest_digest.as_str(), found.wasm_digest.as_str()),
        (
            hello.manifest_digest().as_str(),
            hello.layers[0].digest().as_str()
        ),
        "{rh} now names the other image"
    );
    node.run_hello(&rh).await;
    let ran = node.run(&re, &["7"]).await;
    assert_eq!(ran.exit.code, 7, "{:?}", ran.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_killed_mid_blob_leaves_nothing_and_a_retry_succeeds() {
    let reg = Registry::start();
    // A compat image whose layer holds 20 MiB of random bytes besides the Wasm.
    let big = random_bytes(20 << 20, 0x5eed);
    let layer = Blob::new(
        LAYER_TAR,
        tar(&[
            Entry::file_mode("app.wasm", &guest_bytes("hello.p1"), 0o755),
            Entry::file("data/random.bin", &big),
        ]),
    );
    let image = Image::new(image_config(&["/app.wasm"], &[]), vec![layer]);
    Pusher::new()
        .image(&reg.reference("killed/app:1"), &image)
        .await;
    // Through a proxy that freezes the download after 4 MiB of the layer: the pull is then
    // certainly mid-blob when it is killed.
    let proxy = FreezingProxy::start(&reg.addr, 4 << 20);
    let reference = format!("{}/killed/app:1", proxy.addr);
    let node = Node::new();
    let logs = node.dir("logs");
    let mut cmd = cli(&node);
    cmd.args(["image", "pull", &reference])
        .stdout(std::fs::File::create(logs.join("pull.out")).unwrap())
        .stderr(std::fs::File::create(logs.join("pull.err")).unwrap());
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    assert!(
        proxy.wait_frozen(60),
        "the pull never reached the middle of the layer; stderr: {}",
        std::fs::read_to_string(logs.join("pull.err")).unwrap_or_default()
    );
    // The partial blob is being written to content/ingest.
    let ingest = node.state.join("images/content/ingest");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let partial = std::fs::read_dir(&ingest)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.metadata().is_ok_and(|m| m.len() > 0));
        if partial {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no partial blob appeared in {}",
            ingest.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.0.kill().unwrap(); // SIGKILL, to this pid only
    let status = child.0.wait().unwrap();
    assert!(!status.success());

    // The killed pull is not an image; opening the store clears its partial blob.
    assert!(
        tags_of(&cli_list(&node)).is_empty(),
        "{:?}",
        cli_list(&node)
    );
    assert!(
        names_in(&ingest).is_empty(),
        "partial blobs survived: {:?}",
        names_in(&ingest)
    );
    assert!(!node.blobs().contains(&image.layers[0].digest()));

    // The retry (the proxy now lets everything through) completes.
    let mut cmd = cli(&node);
    cmd.args(["image", "pull", &reference]);
    let stdout = ok(cmd);
    assert!(stdout.contains(&image.manifest_digest()), "{stdout}");
    assert_eq!(tags_of(&cli_list(&node)), [reference.as_str()]);
    let mut cmd = cli(&node);
    cmd.args(["image", "inspect", &reference]);
    let inspect: Value = serde_json::from_str(&ok(cmd)).unwrap();
    assert_eq!(inspect["aot"], "compiled");
    assert!(node.blobs().contains(&image.layers[0].digest()));
    drop(proxy);
}

// ---------------------------------------------------------------------------------------------
// The CLI and pods
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_image_commands_round_trip() {
    let reg = Registry::start();
    let image = compat_image("hello.p1", LAYER_GZIP, gzip);
    Pusher::new()
        .image(&reg.reference("cli/hello:1"), &image)
        .await;
    // Pulled under an unreachable origin's name, through --registry-mirror.
    let origin = format!("127.0.0.1:{}", free_port());
    let reference = format!("{origin}/cli/hello:1");
    let node = Node::new();
    let mut cmd = cli(&node);
    cmd.arg("--registry-mirror")
        .arg(format!("{origin}={}", reg.addr))
        .args(["image", "pull", &reference]);
    let stdout = ok(cmd);
    assert_eq!(
        stdout.trim(),
        format!("{origin}/cli/hello@{}", image.manifest_digest())
    );

    let mut cmd = cli(&node);
    cmd.args(["image", "ls"]);
    let table = ok(cmd);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("REFERENCE"), "{table}");
    assert!(lines[1].starts_with(&reference), "{table}");
    assert!(lines[1].contains(&image.config.digest()[7..19]), "{table}");
    assert!(lines[1].contains("compat"), "{table}");

    let mut cmd = cli(&node);
    cmd.args(["image", "inspect", &reference]);
    let inspect: Value = serde_json::from_str(&ok(cmd)).unwrap();
    assert_eq!(inspect["aot"], "compiled");
    assert_eq!(inspect["image"]["id"], image.config.digest());
    assert_eq!(inspect["manifest"]["layers"][0]["mediaType"], LAYER_GZIP);
    assert_eq!(inspect["config"]["config"]["Entrypoint"][0], "/app.wasm");

    let file = node.dir("out").join("hello.tar");
    let mut cmd = cli(&node);
    cmd.args(["image", "export", &reference]).arg(&file);
    ok(cmd);
    let mut cmd = cli(&node);
    cmd.args(["image", "rm", &reference]);
    assert_eq!(ok(cmd).trim(), format!("removed {reference}"));
    assert!(cli_list(&node).is_empty());
    assert!(node.blobs().is_empty(), "{:?}", node.blobs());

    let mut cmd = cli(&node);
    cmd.args(["image", "import"]).arg(&file);
    let stdout = ok(cmd);
    assert_eq!(
        stdout.trim(),
        format!("{} {reference}", image.config.digest())
    );
    assert_eq!(tags_of(&cli_list(&node)), [reference.as_str()]);

    // A bare .wasm without --tag.
    let mut cmd = cli(&node);
    cmd.args(["image", "import"])
        .arg(wasmpod_tests::wasm("hello.p1"));
    let out = output(cmd);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--tag"), "{}", text(&out.stderr));

    // Removing by id removes the image whatever its names.
    let mut cmd = cli(&node);
    cmd.args(["image", "rm", &image.config.digest()[7..19]]);
    ok(cmd);
    assert!(cli_list(&node).is_empty());
    let mut cmd = cli(&node);
    cmd.args(["image", "inspect", &reference]);
    let out = output(cmd);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
}

fn pod_yaml(image: &str, policy: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: oci-hello\nspec:\n  restartPolicy: Never\n  containers:\n    - name: hello\n      image: {image}\n      imagePullPolicy: {policy}\n      args: [\"from\", \"a\", \"pod\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_with_oci_image_pulls_once_if_not_present() {
    let mut reg = Registry::start();
    let image = wasm_artifact("hello.p1");
    let reference = reg.reference("pods/hello:1");
    Pusher::new().image(&reference, &image).await;
    let node = Node::new();
    let manifest = node.dir("pod").join("pod.yaml");
    std::fs::write(&manifest, pod_yaml(&reference, "IfNotPresent")).unwrap();

    let run = |node: &Node| {
        let mut cmd = cli(node);
        cmd.args(["run", "--no-summary"]).arg(&manifest);
        let out = output(cmd);
        assert!(
            out.status.success(),
            "wasmpod run failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        assert!(stdout.contains(&format!("hello | {HELLO}")), "{stdout}");
        assert!(stdout.contains("args: from a pod"), "{stdout}");
    };
    run(&node);
    assert_eq!(tags_of(&cli_list(&node)), [reference.as_str()]);
    let manifest_gets = |reg: &Registry| {
        reg.log_text()
            .matches("\"GET /v2/pods/hello/manifests/1 HTTP/1.1\" 200")
            .count()
    };
    assert_eq!(manifest_gets(&reg), 1);
    // The second run finds the image: it runs with the registry gone.
    reg.stop();
    run(&node);
    assert_eq!(cli_list(&node).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_with_never_policy_and_missing_image_fails_clearly() {
    let reg = Registry::start();
    let image = wasm_artifact("hello.p1");
    let reference = reg.reference("pods/never:1");
    Pusher::new().image(&reference, &image).await;
    let node = Node::new();
    let manifest = node.dir("pod").join("pod.yaml");
    std::fs::write(&manifest, pod_yaml(&reference, "Never")).unwrap();
    let mut cmd = cli(&node);
    cmd.args(["run", "--no-summary"]).arg(&manifest);
    let out = output(cmd);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("imagePullPolicy is Never") && err.contains(&reference),
        "{err}"
    );
    assert!(
        !reg.log_text().contains("\"GET /v2/pods/never/manifests"),
        "Never pulled anyway"
    );
    assert!(cli_list(&node).is_empty());
}
