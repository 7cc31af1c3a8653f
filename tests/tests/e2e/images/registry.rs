//! Real registries for the tests: a `docker-registry` process per test (optionally behind
//! htpasswd basic auth), a pusher built on oci-client, and a TCP proxy that can freeze a
//! download half way so a pull can be killed mid-blob.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::craft::{Blob, Image, OCI_INDEX, OCI_MANIFEST};

/// A loopback port nothing listens on (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

/// A running `docker-registry serve`, killed (by its pid) when dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`: the registry host of image references.
    pub addr: String,
    /// The registry's storage root (`<root>/docker/registry/v2/...`).
    pub root: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// An open registry (anyone may push and pull).
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// A registry that wants HTTP basic auth as `user`/`password` for everything.
    pub fn with_auth(user: &str, password: &str) -> Self {
        Self::spawn(Some((user, password)))
    }

    fn spawn(auth: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("storage");
        let log = dir.path().join("registry.log");
        let mut auth_yaml = String::new();
        if let Some((user, password)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("running htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: wasmpod-test\n    path: {}\n",
                file.display()
            );
        }
        // The port is free when picked; another process may take it before the registry
        // binds it, so a registry that exits at once is retried on a new port.
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
                    root.display()
                ),
            )
            .unwrap();
            let logfile = std::fs::File::create(&log).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(logfile.try_clone().unwrap())
                .stderr(logfile)
                .spawn()
                .expect("starting docker-registry");
            if wait_ready(&mut child, &addr, &log) {
                return Registry {
                    child,
                    addr,
                    root,
                    log,
                    _dir: dir,
                };
            }
        }
        panic!(
            "docker-registry did not come up; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `<addr>/<repo>` with `tag` or `@digest` appended by the caller.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.addr)
    }

    /// The file the registry serves a blob from.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times the blob was served (`GET /v2/<repo>/blobs/<digest>` answered 200), from
    /// the registry's access log.
    pub fn blob_downloads(&self, repo: &str, digest: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/{digest} HTTP/1.1\" 200");
        self.log_text().matches(&needle).count()
    }

    /// Kills the registry now (the port then refuses connections).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `GET /v2/` until the registry answers (200 or 401); false if it exited.
fn wait_ready(child: &mut Child, addr: &str, log: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Some(200 | 401) = http_status(addr, "/v2/") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "docker-registry on {addr} did not answer GET /v2/ within 10s; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's pid only.
        self.stop();
    }
}

/// The status code of `GET path` on `addr`, or `None` when nothing answers.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Pushes crafted blobs and manifests with oci-client, as any OCI tool would.
pub struct Pusher {
    client: Client,
    auth: RegistryAuth,
}

impl Pusher {
    pub fn new() -> Self {
        Self::with_auth(RegistryAuth::Anonymous)
    }

    pub fn with_auth(auth: RegistryAuth) -> Self {
        wasmpod_runtime::tls::install_provider();
        Self {
            client: Client::new(ClientConfig {
                protocol: ClientProtocol::Http,
                ..Default::default()
            }),
            auth,
        }
    }

    async fn login(&self, r: &Reference) {
        self.client
            .auth(r, &self.auth, RegistryOperation::Push)
            .await
            .unwrap_or_else(|e| panic!("authenticating to push {r}: {e}"));
    }

    /// Pushes one blob into the repository of `reference`.
    pub async fn blob(&self, reference: &str, blob: &Blob) {
        let r: Reference = reference.parse().unwrap();
        self.login(&r).await;
        self.client
            .push_blob(&r, blob.bytes.clone(), &blob.digest())
            .await
            .unwrap_or_else(|e| panic!("pushing blob {} to {reference}: {e}", blob.digest()));
    }

    /// Pushes manifest bytes as `reference` (a tag or `@digest`).
    pub async fn manifest(&self, reference: &str, bytes: &[u8], media_type: &str) {
        let r: Reference = reference.parse().unwrap();
        self.login(&r).await;
        self.client
            .push_manifest_raw(&r, bytes.to_vec(), media_type.parse().unwrap())
            .await
            .unwrap_or_else(|e| panic!("pushing manifest {reference}: {e}"));
    }

    /// Pushes an image's blobs and its manifest as `reference`.
    pub async fn image(&self, reference: &str, image: &Image) {
        for b in image.blobs() {
            self.blob(reference, b).await;
        }
        self.manifest(reference, &image.manifest, OCI_MANIFEST)
            .await;
    }

    /// Pushes each image by digest, then an index of `entries` as `reference`.
    pub async fn index(&self, reference: &str, images: &[&Image], entries: Vec<serde_json::Value>) {
        let repo = repo_of(reference);
        for image in images {
            self.image(&format!("{repo}@{}", image.manifest_digest()), image)
                .await;
        }
        self.manifest(reference, &super::craft::index(entries), OCI_INDEX)
            .await;
    }
}

/// `host/repo` of `host/repo:tag`.
pub fn repo_of(reference: &str) -> String {
    let (host, rest) = reference.split_once('/').unwrap();
    let repo = rest
        .split_once('@')
        .map(|(r, _)| r)
        .unwrap_or(rest)
        .rsplit_once(':')
        .map_or(rest, |(r, _)| r);
    format!("{host}/{repo}")
}

/// A TCP proxy in front of a registry. The first connection that carries more than
/// `freeze_after` response bytes stops forwarding there (the client sees a download that
/// hangs half way) until the proxy is dropped; every other connection passes through.
pub struct FreezingProxy {
    pub addr: String,
    frozen: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl FreezingProxy {
    pub fn start(upstream: &str, freeze_after: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (frozen_tx, frozen_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let armed = Arc::new(AtomicBool::new(true));
        let upstream = upstream.to_owned();
        let (stop2, streams2) = (stop.clone(), streams.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                {
                    let mut all = streams2.lock().unwrap();
                    all.push(client.try_clone().unwrap());
                    all.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(c2, s2, None));
                let freeze = Freeze {
                    after: freeze_after,
                    armed: armed.clone(),
                    frozen: frozen_tx.clone(),
                    seen: 0,
                };
                std::thread::spawn(move || pump(server, client, Some(freeze)));
            }
        });
        Self {
            addr,
            frozen: Arc::new(Mutex::new(Some(frozen_rx))),
            stop,
            streams,
        }
    }

    /// Waits (at most `secs`) until a download froze; false if none did.
    pub fn wait_frozen(&self, secs: u64) -> bool {
        let rx = self
            .frozen
            .lock()
            .unwrap()
            .take()
            .expect("wait_frozen once");
        rx.recv_timeout(Duration::from_secs(secs)).is_ok()
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(&self.addr);
    }
}

struct Freeze {
    after: u64,
    armed: Arc<AtomicBool>,
    frozen: mpsc::Sender<()>,
    /// Response bytes forwarded on this connection so far.
    seen: u64,
}

fn pump(mut from: TcpStream, mut to: TcpStream, mut freeze: Option<Freeze>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(f) = &mut freeze {
            f.seen += n as u64;
            if f.seen > f.after && f.armed.swap(false, Ordering::SeqCst) {
                let _ = to.write_all(&buf[..n]);
                let _ = f.frozen.send(());
                // The connection stays open (the proxy keeps clones of both ends) and
                // nothing more is forwarded on it until the proxy is dropped.
                return;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
