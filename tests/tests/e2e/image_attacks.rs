//! The image store against an attacker: hostile archives whose links chain out to host files,
//! oversized manifests, registries that stall or trickle, a second wasmpod process cleaning up
//! while a pull is in flight, and rejected images whose blobs must not linger. Each test states
//! what the attacker tries and checks that the host is untouched: no host file is read into
//! the store or printed, and nothing outside the state directory changes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{mpsc, Arc, Condvar, Mutex};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wasmpod_runtime::runtime::{Runtime, RuntimeOptions};
use wasmpod_tests::{output_within, text, wasmpod};

const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
const WASM_LAYER: &str = "application/wasm";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(bytes))
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A valid preview1 command with a data segment of `size` bytes.
fn module_of(size: usize) -> Vec<u8> {
    let data = "a".repeat(size);
    wat::parse_str(format!(
        "(module (memory {}) (data (i32.const 0) \"{data}\") (func (export \"_start\")))",
        size / 65536 + 1
    ))
    .unwrap()
}

/// A node: `<tmp>/node/state` is the state directory, `<tmp>/node/outside` holds the host's
/// canary file (a JSON string, so a parser that quotes what it rejects would print it).
struct Node {
    tmp: tempfile::TempDir,
    state: PathBuf,
    canary: PathBuf,
    secret: String,
}

impl Node {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("node/state");
        let outside = tmp.path().join("node/outside");
        std::fs::create_dir_all(&outside).unwrap();
        let secret = format!("CANARY-{:016x}", rand_u64());
        let canary = outside.join("canary.json");
        std::fs::write(&canary, format!("\"{secret}\"")).unwrap();
        Self {
            tmp,
            state,
            canary,
            secret,
        }
    }

    fn runtime(&self) -> Arc<Runtime> {
        Runtime::new(RuntimeOptions {
            state_dir: self.state.clone(),
            ..Default::default()
        })
        .expect("creating the runtime")
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Every path under the node directory outside the state directory, with size, mode and
    /// modification time: compared before and after an attack.
    fn outside_state(&self) -> BTreeMap<PathBuf, (u64, u32, i64)> {
        let mut out = BTreeMap::new();
        let mut dirs = vec![self.tmp.path().join("node")];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                if p == self.state {
                    continue;
                }
                let m = std::fs::symlink_metadata(&p).unwrap();
                out.insert(p.clone(), (m.len(), m.mode(), m.mtime()));
                if m.is_dir() {
                    dirs.push(p);
                }
            }
        }
        out
    }

    /// The state directory's regular files whose content holds `needle`.
    fn files_holding(&self, needle: &[u8]) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut dirs = vec![self.state.clone()];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let kind = e.file_type().unwrap();
                if kind.is_dir() {
                    dirs.push(e.path());
                } else if kind.is_file() {
                    let bytes = std::fs::read(e.path()).unwrap_or_default();
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(e.path());
                    }
                }
            }
        }
        found
    }

    fn blobs(&self) -> Vec<String> {
        names_in(&self.state.join("images/content/blobs/sha256"))
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap();
    u64::from_le_bytes(bytes)
}

/// What goes into a hostile tar.
enum Entry {
    File(String, Vec<u8>),
    Symlink(String, String),
}

/// A tar of `entries`; long names and link targets go through GNU long-name records, as the
/// attacker's chains are longer than a tar header's fields.
fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        match e {
            Entry::File(name, bytes) => {
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, name, bytes.as_slice()).unwrap();
            }
            Entry::Symlink(name, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn file(name: &str, bytes: &[u8]) -> Entry {
    Entry::File(name.into(), bytes.to_vec())
}

fn symlink(name: &str, target: &str) -> Entry {
    Entry::Symlink(name.into(), target.into())
}

/// A link target that climbs from `depth` directories down to host `/` through the in-image
/// link `x -> .` and then descends to `host_path`: lexically every prefix stays inside (each
/// `..` undoes an `x/`), but `x` is the root itself, so the `..`s walk out of it. Twenty
/// levels reach `/` from any temporary directory, in fewer than the kernel's 40 link hops.
fn chain_to(depth: usize, host_path: &Path) -> String {
    format!(
        "{}{}{}{}",
        "../".repeat(depth),
        "x/".repeat(20),
        "../".repeat(20),
        host_path.to_str().unwrap().trim_start_matches('/')
    )
}

fn oci_layout(index: &Value, mut entries: Vec<Entry>) -> Vec<u8> {
    entries.insert(0, file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#));
    entries.insert(1, file("index.json", index.to_string().as_bytes()));
    entries.insert(2, symlink("x", "."));
    tar(&entries)
}

fn index_of(manifest: &[u8]) -> Value {
    json!({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": manifest.len(),
        "annotations": {"io.containerd.image.name": "example.com/evil:1"},
    }]})
}

fn blob_entry(bytes: &[u8]) -> Entry {
    file(&format!("blobs/sha256/{}", hex(bytes)), bytes)
}

fn artifact_manifest(config: &[u8], wasm: &[u8], padding: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": WASM_CONFIG, "digest": sha256(config), "size": config.len()},
        "layers": [{"mediaType": WASM_LAYER, "digest": sha256(wasm), "size": wasm.len()}],
        "annotations": {"padding": "p".repeat(padding)},
    }))
    .unwrap()
}

/// Imports the hostile `archive`, expecting a refusal that reads, stores and prints no host
/// file, changes nothing outside the state directory and leaves nothing in the store.
async fn assert_import_refused(node: &Node, rt: &Runtime, name: &str, archive: Vec<u8>) -> String {
    let path = node.file(&format!("{name}.tar"), &archive);
    let before = node.outside_state();
    let e = match rt.images().import(&path, None).await {
        Ok(r) => panic!("{name}: the hostile archive was imported: {r:#?}"),
        Err(e) => e,
    };
    eprintln!("{name}: {:?}: {}", e.kind, e.message);
    assert!(
        !e.message.contains(&node.secret),
        "{name}: the error prints the host file: {e}"
    );
    let holding = node.files_holding(node.secret.as_bytes());
    assert!(
        holding.is_empty(),
        "{name}: the host canary was copied into the store: {holding:?}"
    );
    assert_eq!(
        node.outside_state(),
        before,
        "{name}: something outside the state directory changed"
    );
    assert!(rt.images().list().unwrap().is_empty(), "{name}: listed");
    assert!(
        names_in(&node.state.join("images/rootfs")).is_empty(),
        "{name}: a root filesystem was left"
    );
    assert!(
        node.blobs().is_empty(),
        "{name}: blobs left: {:?}",
        node.blobs()
    );
    e.message
}

/// Hostile OCI layouts and `docker save` archives whose members are chains of links, each
/// pointing inside the archive, that together lead to a host file: the canary (relative,
/// absolute, two-hop and directory chains) and /etc/shadow. The blob's name is the host file's
/// own digest, so a reader that followed the chain would accept the content as that blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_link_chains_never_read_host_files() {
    let node = Node::new();
    let rt = node.runtime();
    let canary = std::fs::read(&node.canary).unwrap();
    // The directory chain: `blobs` leads to a host directory laid out like a layout's.
    let fake_blobs = node.canary.parent().unwrap().join("fake-blobs");
    std::fs::create_dir_all(fake_blobs.join("sha256")).unwrap();
    std::fs::write(fake_blobs.join("sha256").join(hex(&canary)), &canary).unwrap();
    let mut targets = vec![(node.canary.clone(), canary)];
    targets.extend(
        std::fs::read("/etc/shadow")
            .ok()
            .map(|s| ("/etc/shadow".into(), s)),
    );
    for (i, (host, content)) in targets.iter().enumerate() {
        let named = format!("blobs/sha256/{}", hex(content));
        let manifest = artifact_manifest(content, content, 0);
        let cases = [
            ("relative", vec![symlink(&named, &chain_to(2, host))]),
            ("absolute", vec![symlink(&named, host.to_str().unwrap())]),
            (
                "two-hops",
                vec![
                    symlink("hop", &chain_to(0, host)),
                    symlink(&named, "../../hop"),
                ],
            ),
            (
                "directory",
                vec![symlink("blobs", &chain_to(0, &fake_blobs))],
            ),
        ];
        for (kind, mut links) in cases {
            links.push(blob_entry(&manifest));
            let layout = oci_layout(&index_of(&manifest), links);
            assert_import_refused(&node, &rt, &format!("layout-{kind}-{i}"), layout).await;
        }
        // docker save: manifest.json names its config and layer by path.
        let docker = tar(&[
            symlink("x", "."),
            file(
                "manifest.json",
                json!([{"Config": "config.json", "RepoTags": ["example.com/evil:2"],
                        "Layers": ["layer/layer.tar"]}])
                .to_string()
                .as_bytes(),
            ),
            symlink("config.json", &chain_to(0, host)),
            symlink("layer", &chain_to(0, host.parent().unwrap())),
        ]);
        let msg = assert_import_refused(&node, &rt, &format!("docker-{i}"), docker).await;
        assert!(msg.contains("outside the archive"), "{msg}");
    }
    // A well-formed import still works and leaves the store private: blobs 0600 under 0700.
    let wasm = node.file("ok.wasm", &module_of(16));
    rt.images().import(&wasm, Some("local/ok:1")).await.unwrap();
    for dir in [
        "images/content",
        "images/content/blobs",
        "images/content/blobs/sha256",
    ] {
        let mode = std::fs::metadata(node.state.join(dir)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "{dir} is {mode:o}");
    }
    assert!(!node.blobs().is_empty());
    for blob in node.blobs() {
        let path = node.state.join("images/content/blobs/sha256").join(&blob);
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert!(mode == 0o600 || mode == 0o640, "blob {blob} is {mode:o}");
    }
}

/// A compat image whose layer holds `x -> .` and a link climbing through it: each link is
/// inside the image on its own, together they lead to the host's canary. The image is refused
/// and no root filesystem is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_link_chain_to_the_host_is_refused() {
    let node = Node::new();
    let rt = node.runtime();
    let layer = tar(&[
        file("app.wasm", &module_of(16)),
        symlink("x", "."),
        symlink("etc-canary", &chain_to(0, &node.canary)),
        symlink("d/nested", &chain_to(1, node.canary.parent().unwrap())),
    ]);
    let config = serde_json::to_vec(&json!({
        "architecture": "wasm", "os": "wasip1",
        "config": {"Entrypoint": ["/app.wasm"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": LAYER_TAR, "digest": sha256(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let layout = oci_layout(
        &index_of(&manifest),
        vec![
            blob_entry(&manifest),
            blob_entry(&config),
            blob_entry(&layer),
        ],
    );
    let msg = assert_import_refused(&node, &rt, "layer-chain", layout).await;
    assert!(msg.contains("leads outside the image"), "{msg}");
}

/// `pull` refuses manifests over 4 MiB; an archive's 8 MiB manifest must meet the same limit,
/// and the rejected archive's blobs must be gone when the import returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_the_manifest_pull_refuses_and_keeps_no_blobs() {
    let node = Node::new();
    let rt = node.runtime();
    let wasm = module_of(16);
    let config = serde_json::to_vec(&json!({"layerDigests": [sha256(&wasm)]})).unwrap();
    let manifest = artifact_manifest(&config, &wasm, 8 << 20);
    let layout = oci_layout(
        &index_of(&manifest),
        vec![
            blob_entry(&manifest),
            blob_entry(&config),
            blob_entry(&wasm),
        ],
    );
    let msg = assert_import_refused(&node, &rt, "big-manifest", layout).await;
    assert!(msg.contains("limit"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Registries that misbehave
// ---------------------------------------------------------------------------------------------

/// Serves HTTP/1.1 on 127.0.0.1 (loopback registries are plain HTTP), one thread per
/// connection; `handle` gets each request's path and writes the whole response. Returns the
/// `host:port`.
fn serve(handle: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let handle = handle.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut request = String::new();
                    if reader.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 2 {
                        line.clear();
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
                    handle(&path, &mut conn);
                }
            });
        }
    });
    addr
}

fn respond(conn: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}

/// An image (manifest, config, layer) served at `/v2/app/...`.
struct Served {
    manifest: Vec<u8>,
    blobs: Vec<Vec<u8>>,
}

impl Served {
    fn artifact(wasm: Vec<u8>) -> Self {
        let config = serde_json::to_vec(&json!({"layerDigests": [sha256(&wasm)]})).unwrap();
        Self {
            manifest: artifact_manifest(&config, &wasm, 0),
            blobs: vec![config, wasm],
        }
    }

    /// Answers `path` if it names this image; `false` if not.
    fn answer(&self, path: &str, conn: &mut TcpStream) -> bool {
        let digest = self.manifest_digest();
        if path == "/v2/" {
            respond(conn, "200 OK", &[], b"{}");
        } else if path == "/v2/app/manifests/1" || path.ends_with(&format!("/{digest}")) {
            let headers = [
                ("Content-Type", OCI_MANIFEST),
                ("Docker-Content-Digest", digest.as_str()),
            ];
            respond(conn, "200 OK", &headers, &self.manifest);
        } else if let Some(blob) = self.blobs.iter().find(|b| path.ends_with(&sha256(b))) {
            respond(conn, "200 OK", &[], blob);
        } else {
            return false;
        }
        true
    }

    fn manifest_digest(&self) -> String {
        sha256(&self.manifest)
    }
}

/// `wasmpod image pull` against a registry that accepts and never answers, then against one
/// that trickles a header byte now and then (which no read timeout trips): both fail by the
/// timeouts given on the command line instead of hanging.
#[test]
fn stalled_and_trickling_registries_time_out() {
    let node = Node::new();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn); // accepted, never answered, never closed
        }
    });
    let trickle = serve(|_, conn| {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nX-Slow: ");
        for _ in 0..600 {
            std::thread::sleep(std::time::Duration::from_millis(200));
            if conn.write_all(b"a").is_err() {
                return;
            }
        }
    });
    for (what, addr, flags) in [
        ("silent", silent_addr.to_string(), ["--read-timeout", "1"]),
        ("trickling", trickle, ["--pull-timeout", "2"]),
    ] {
        let mut cmd = wasmpod(&node.state);
        cmd.args(["image", "pull"])
            .args(flags)
            .arg(format!("{addr}/app:1"));
        let out = output_within(&mut cmd, 120);
        let stderr = text(&out.stderr);
        eprintln!("{what}: {stderr}");
        assert!(!out.status.success(), "{what}: the pull succeeded");
        assert!(stderr.contains("timed out"), "{what}: {stderr}");
    }
}

/// A second wasmpod process (`image ls`) starts while a pull is in flight, its blob half
/// downloaded: it must leave the pull's partial blob alone, and the pull must then finish.
#[test]
fn a_second_process_spares_an_in_flight_pull() {
    let node = Node::new();
    let image = Arc::new(Served::artifact(module_of(512 << 10)));
    let wasm_digest = sha256(&image.blobs[1]);
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let (half_sent, half_sent_rx) = mpsc::channel();
    let half_sent = Mutex::new(half_sent);
    let addr = {
        let (image, gate) = (image.clone(), gate.clone());
        serve(move |path, conn| {
            if !path.ends_with(&wasm_digest) {
                if !image.answer(path, conn) {
                    respond(conn, "404 Not Found", &[], b"");
                }
                return;
            }
            let blob = &image.blobs[1];
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", blob.len());
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&blob[..blob.len() / 2]);
            let _ = conn.flush();
            let _ = half_sent.lock().unwrap().send(());
            let (open, cv) = &*gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            let _ = conn.write_all(&blob[blob.len() / 2..]);
        })
    };
    let mut pull = wasmpod(&node.state);
    pull.args(["image", "pull", &format!("{addr}/app:1")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let pull = pull.spawn().unwrap();
    let pull_pid = pull.id();
    let _kill = scopeguard(move || {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child.
        unsafe { libc::kill(pull_pid as libc::pid_t, libc::SIGKILL) };
    });
    half_sent_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the pull never reached the blob");
    let ingest = node.state.join("images/content/ingest");
    let in_flight = wait_for(|| {
        let names = names_in(&ingest);
        (!names.is_empty()).then_some(names)
    });

    let mut ls = wasmpod(&node.state);
    ls.args(["image", "ls"]);
    let out = output_within(&mut ls, 120);
    eprintln!("second process: {} {}", out.status, text(&out.stderr));
    assert_eq!(
        names_in(&ingest),
        in_flight,
        "the second process deleted the in-flight pull's partial blob"
    );

    let (open, cv) = &*gate;
    *open.lock().unwrap() = true;
    cv.notify_all();
    let out = wait_output(pull);
    assert!(
        out.status.success(),
        "the pull failed: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains(&image.manifest_digest()));
}

/// A pull whose image turns out not to be Wasm fails; the manifest, config and layer it
/// downloaded must be gone when it returns, not wait for a later `rm`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_pull_keeps_no_blobs() {
    let node = Node::new();
    let image = Served::artifact(b"\0asm but not really a module".to_vec());
    let addr = serve(move |path, conn| {
        if !image.answer(path, conn) {
            respond(conn, "404 Not Found", &[], b"");
        }
    });
    let rt = node.runtime();
    let e = rt
        .images()
        .pull(&format!("{addr}/app:1"), &Default::default(), None)
        .await
        .unwrap_err();
    eprintln!("{:?}: {}", e.kind, e.message);
    assert!(rt.images().list().unwrap().is_empty());
    assert!(node.blobs().is_empty(), "blobs left: {:?}", node.blobs());
    assert!(names_in(&node.state.join("images/content/ingest")).is_empty());
}

/// Polls `f` until it gives a value (a hang guard of two minutes, not a speed check).
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1200 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("gave up waiting");
}

fn wait_output(child: std::process::Child) -> std::process::Output {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .expect("the pull did not finish")
        .unwrap()
}

/// Runs `f` when dropped (whatever the test's outcome).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
