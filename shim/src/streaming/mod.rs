//! The CRI streaming server: kubelet and crictl call Exec/Attach/PortForward over the CRI, get a
//! URL from [`StreamingServer::url`], and connect to it over HTTP/1.1, upgrading to SPDY/3.1 (what
//! client-go, crictl and every kubelet/API-server translator speak) or to a WebSocket (older
//! clients passed through untranslated, and `crictl -r websocket`).
//!
//! The protocols stay in here; behind a session the [`Backend`] sees only channels.
//!
//! - `tokens.rs`: single-use URL tokens.
//! - `spdy.rs`: SPDY/3.1 frames and header compression; `spdy_conn.rs`: one SPDY connection.
//! - `remotecommand.rs`: exec/attach streams and statuses; `portforward.rs`: port-forward pairs.
//! - `websocket.rs`: the k8s channel protocols over WebSocket, and SPDY tunnelled in WebSocket.

#[cfg(test)]
mod fuzz;
mod portforward;
mod remotecommand;
mod spdy;
mod spdy_conn;
mod tokens;
mod websocket;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use remotecommand::{Command, Target};
use tokens::TokenCache;

/// Where and how the streaming server listens (the `[streaming]` table of the daemon's config).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Default 127.0.0.1:0 (a random port on loopback: kubelet on the same node proxies to it).
    pub address: SocketAddr,
    /// Serve https with this certificate chain (PEM); needs `tls_key` too.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Seconds a connection may carry nothing before it is closed (kubelet: 4 h).
    pub idle_timeout: u64,
    /// Seconds the client has to open its streams (kubelet: 30).
    pub creation_timeout: u64,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            tls_cert: None,
            tls_key: None,
            idle_timeout: 4 * 60 * 60,
            creation_timeout: 30,
        }
    }
}

/// A streaming request the CRI accepted; the client's connection to its URL carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    Attach {
        container_id: String,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    PortForward {
        pod_id: String,
        ports: Vec<u16>,
    },
}

impl Request {
    fn path(&self) -> &'static str {
        match self {
            Request::Exec { .. } => "exec",
            Request::Attach { .. } => "attach",
            Request::PortForward { .. } => "portforward",
        }
    }

    /// kubelet's checks on Exec/Attach requests (validateExecRequest/validateAttachRequest).
    fn validate(&self) -> Result<(), String> {
        let (tty, stdin, stdout, stderr) = match self {
            Request::Exec {
                tty,
                stdin,
                stdout,
                stderr,
                ..
            }
            | Request::Attach {
                tty,
                stdin,
                stdout,
                stderr,
                ..
            } => (*tty, *stdin, *stdout, *stderr),
            Request::PortForward { .. } => return Ok(()),
        };
        if tty && stderr {
            return Err("tty and stderr cannot both be true".into());
        }
        if !stdin && !stdout && !stderr {
            return Err("one of stdin, stdout, or stderr must be set".into());
        }
        Ok(())
    }

    fn into_command(self) -> Option<Command> {
        match self {
            Request::Exec {
                container_id,
                cmd,
                tty,
                stdin,
                stdout,
                stderr,
            } => Some(Command {
                target: Target::Exec { container_id, cmd },
                tty,
                stdin,
                stdout,
                stderr,
            }),
            Request::Attach {
                container_id,
                tty,
                stdin,
                stdout,
                stderr,
            } => Some(Command {
                target: Target::Attach { container_id },
                tty,
                stdin,
                stdout,
                stderr,
            }),
            Request::PortForward { .. } => None,
        }
    }
}

/// A terminal size the client reports (tty sessions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    pub width: u16,
    pub height: u16,
}

/// One remotecommand session's streams, as plain channels (the backend never sees SPDY).
pub struct Stdio {
    /// The client's stdin; `recv()` gives `None` at EOF (the client half-closed) or disconnect.
    pub stdin: Option<tokio::sync::mpsc::Receiver<Bytes>>,
    /// Guest output. Bounded: a slow client back-pressures the guest.
    pub stdout: Option<tokio::sync::mpsc::Sender<Bytes>>,
    /// `None` with a tty (the backend merges stderr into stdout).
    pub stderr: Option<tokio::sync::mpsc::Sender<Bytes>>,
    pub resize: Option<tokio::sync::mpsc::Receiver<TermSize>>,
}

pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What runs behind a session. Dropping a returned future means the client went away: the backend
/// must then end the exec/attach. A session ends once the future is done and the backend dropped
/// its stdout/stderr senders (everything sent before is delivered first).
pub trait Backend: Send + Sync + 'static {
    /// Ok(exit code); Err(message) = could not run.
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        stdio: Stdio,
    ) -> BoxFuture<Result<i32, String>>;
    fn attach(
        &self,
        container_id: String,
        tty: bool,
        stdio: Stdio,
    ) -> BoxFuture<Result<(), String>>;
    fn dial(&self, pod_id: String, port: u16) -> BoxFuture<Result<tokio::net::TcpStream, String>>;
}

/// Runs `session` on the client's connection once hyper hands it over (after the 101
/// response), as a task of the server that counts as live until it ends.
fn spawn_upgraded<F, Fut>(
    shared: &Arc<Shared>,
    req: &mut hyper::Request<Incoming>,
    what: &'static str,
    session: F,
) where
    F: FnOnce(Arc<Shared>, TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let on_upgrade = hyper::upgrade::on(req);
    let live = LiveGuard::new(&shared.live);
    let session_shared = shared.clone();
    shared.tasks.spawn(async move {
        let _live = live;
        match on_upgrade.await {
            Ok(upgraded) => session(session_shared, TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(error = %e, "streaming: {what} upgrade failed"),
        }
    });
}

/// What every connection of the server shares.
struct Shared {
    backend: Arc<dyn Backend>,
    tokens: TokenCache<Request>,
    idle_timeout: Duration,
    creation_timeout: Duration,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// HTTP connections and upgraded sessions alive now (tests watch it return to zero).
    live: Arc<AtomicUsize>,
}

/// Counts one live task for as long as it is held.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self(live.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct StreamingServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    https: bool,
}

type HttpResponse = Response<Full<Bytes>>;

impl StreamingServer {
    /// Binds and serves until `shutdown` is cancelled.
    pub async fn start(
        config: &StreamingConfig,
        backend: Arc<dyn Backend>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        if config.idle_timeout == 0 || config.creation_timeout == 0 {
            bail!("streaming idle_timeout and creation_timeout must be positive");
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            (None, None) => None,
            _ => bail!("streaming tls_cert and tls_key go together"),
        };
        let listener = TcpListener::bind(config.address)
            .await
            .with_context(|| format!("binding the streaming server to {}", config.address))?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            backend,
            tokens: TokenCache::new(tokens::TOKEN_TTL),
            idle_timeout: Duration::from_secs(config.idle_timeout),
            creation_timeout: Duration::from_secs(config.creation_timeout),
            shutdown,
            tasks: TaskTracker::new(),
            live: Arc::new(AtomicUsize::new(0)),
        });
        tokio::spawn(accept_loop(listener, tls, shared.clone()));
        tracing::info!(address = %local_addr, https = config.tls_cert.is_some(), "streaming server listening");
        Ok(Arc::new(Self {
            shared,
            local_addr,
            https: config.tls_cert.is_some(),
        }))
    }

    /// Files `request` under a fresh single-use token (60 s, at most 1000 pending) and returns
    /// its absolute URL, e.g. `http://127.0.0.1:PORT/exec/TOKEN` (kubelet's proxy dials it
    /// itself, so never a relative one).
    pub fn url(&self, request: Request) -> Result<String, String> {
        request.validate()?;
        let path = request.path();
        let token = self.shared.tokens.insert(request)?;
        let scheme = if self.https { "https" } else { "http" };
        Ok(format!("{scheme}://{}/{path}/{token}", self.url_host()))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound address, with a wildcard IP replaced by loopback (a client cannot dial 0.0.0.0).
    fn url_host(&self) -> SocketAddr {
        let mut addr = self.local_addr;
        match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
            IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
            _ => {}
        }
        addr
    }

    /// HTTP connections and upgraded sessions still running.
    #[cfg(test)]
    fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the streaming TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the streaming TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the streaming TLS certificate and key do not fit")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "streaming server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared2 = shared.clone();
        let tls = tls.clone();
        let live = LiveGuard::new(&shared.live);
        shared.tasks.spawn(async move {
            let _live = live;
            match tls {
                None => serve_http(tcp, shared2).await,
                Some(tls) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_http(stream, shared2).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "streaming: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "streaming: TLS handshake timed out"),
                    }
                }
            }
        });
    }
    shared.tasks.close();
}

/// One HTTP/1.1 connection: a single request that upgrades (or an error answer).
async fn serve_http<IO>(io: IO, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = shared.shutdown.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "streaming: HTTP connection failed");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Comma-separated values of every instance of a header, trimmed, empties dropped.
fn header_list(req: &hyper::Request<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn handle(shared: &Arc<Shared>, mut req: hyper::Request<Incoming>) -> HttpResponse {
    if req.method() != Method::GET && req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let mut parts = req.uri().path().trim_start_matches('/').split('/');
    let (Some(kind), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    let Some(request) = shared.tokens.consume(token) else {
        return text(StatusCode::NOT_FOUND, "unknown or expired streaming token");
    };
    if request.path() != kind {
        return text(
            StatusCode::BAD_REQUEST,
            format!("the token is for {}, not {kind}", request.path()),
        );
    }
    let upgrade = header_list(&req, UPGRADE.as_str());
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
        return websocket::upgrade(shared, req, request);
    }
    if !upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
        return text(
            StatusCode::BAD_REQUEST,
            "this endpoint needs an upgrade to SPDY/3.1 or websocket",
        );
    }
    let client_protocols = header_list(&req, "x-stream-protocol-version");
    if client_protocols.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: X-Stream-Protocol-Version is required",
        );
    }
    let supported: Vec<&str> = match request {
        Request::PortForward { .. } => vec![portforward::PROTOCOL],
        _ => remotecommand::SPDY_PROTOCOLS
            .iter()
            .map(|(name, _)| *name)
            .collect(),
    };
    // The first protocol the client lists that we support (k8s httpstream negotiateProtocol).
    let Some(chosen) = client_protocols
        .iter()
        .find(|p| supported.contains(&p.as_str()))
        .cloned()
    else {
        let mut response = text(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {client_protocols:?}, server accepts {supported:?}"
            ),
        );
        for protocol in &supported {
            response.headers_mut().append(
                "x-accepted-stream-protocol-versions",
                HeaderValue::from_static(protocol),
            );
        }
        return response;
    };
    let chosen_value = HeaderValue::from_str(&chosen).ok();
    spawn_upgraded(shared, &mut req, "SPDY", move |shared, io| async move {
        serve_spdy_session(&shared, io, request, &chosen).await;
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Some(value) = chosen_value {
        headers.insert("x-stream-protocol-version", value);
    }
    response
}

/// Runs the protocol a SPDY connection was upgraded for.
async fn serve_spdy_session<IO>(shared: &Arc<Shared>, io: IO, request: Request, protocol: &str)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let backend = shared.backend.clone();
    let creation_timeout = shared.creation_timeout;
    let shutdown = shared.shutdown.child_token();
    match request {
        Request::PortForward { pod_id, ports } => {
            let target = portforward::Target { pod_id, ports };
            spdy_conn::serve(io, shared.idle_timeout, shutdown, |incoming| {
                portforward::serve_spdy(target, backend, incoming, creation_timeout)
            })
            .await;
        }
        request => {
            let Some(command) = request.into_command() else {
                return;
            };
            let Some(version) = remotecommand::SPDY_PROTOCOLS
                .iter()
                .find(|(name, _)| *name == protocol)
                .map(|(_, v)| *v)
            else {
                return;
            };
            spdy_conn::serve(io, shared.idle_timeout, shutdown, |incoming| {
                remotecommand::serve_spdy(command, version, backend, incoming, creation_timeout)
            })
            .await;
        }
    }
}
