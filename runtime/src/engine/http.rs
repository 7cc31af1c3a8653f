//! Serving `wasi:http/incoming-handler` components, as `wasmtime serve` does, but inside a pod:
//! the runtime listens on the container's port at the pod's IP and gives every request a fresh
//! instance (instantiation from a pre-linked component costs microseconds), so requests run
//! concurrently and a trap fails one request, not the server. Outgoing requests of the guest go
//! through the pod's network: `localhost` is the pod, and the egress policy applies.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime::component::{Component, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme as IncomingScheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use super::cache::AotCache;
use super::sockets::{PodSockets, SocketsView};
use super::{
    compat_key, invalid_wasm, link_error, new_store, wasi_builder, GuestSpec, HasLimiter,
    MemoryLimiter, Metered,
};
use crate::error::{Error, Result};
use crate::exit::{Exit, ExitReason};
use crate::network::PodNetwork;

/// Host state of one request's instance.
pub(super) struct HttpHost {
    ctx: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: PodHttpHooks,
    limiter: MemoryLimiter,
    sockets: PodSockets,
}

impl WasiView for HttpHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpHost {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl HasLimiter for HttpHost {
    fn limiter(&mut self) -> &mut dyn wasmtime::ResourceLimiter {
        &mut self.limiter
    }
}

impl HttpHost {
    pub(super) fn sockets(&mut self) -> SocketsView<'_> {
        SocketsView {
            inner: wasmtime_wasi::sockets::WasiSocketsCtxView {
                ctx: self.ctx.sockets(),
                table: &mut self.table,
            },
            pod: &mut self.sockets,
        }
    }
}

/// Handlers get an engine of their own with the pooling allocator: an instance per request
/// then reuses a slot instead of mapping fresh memory (what `wasmtime serve` does too). Its
/// compiled code has its own AOT cache entries. Its linker holds everything a handler may
/// import: all of WASI (with the pod's sockets) and wasi:http.
pub(super) struct HttpEngine {
    pub(super) engine: wasmtime::Engine,
    linker: wasmtime::component::Linker<HttpHost>,
    aot: Option<AotCache>,
}

impl HttpEngine {
    pub(super) fn new(base: &wasmtime::Config, cache_dir: Option<&Path>) -> Result<Self> {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        // Instances at once across all handlers of the node (a component holds several core
        // instances and tables); beyond it a request fails with 500.
        pool.total_component_instances(1000)
            .total_core_instances(5000)
            .total_tables(5000)
            .total_memories(1000);
        let mut pooled = base.clone();
        pooled.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&pooled)
            .or_else(|e| {
                tracing::warn!(
                    "no pooling allocator for wasi:http ({e:#}); instances are mapped per request"
                );
                wasmtime::Engine::new(base)
            })
            .map_err(|e| Error::internal(format!("wasmtime engine for wasi:http: {e:#}")))?;
        let mut linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| super::sockets::add_to_linker(&mut linker, HttpHost::sockets))
            .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
            .map_err(|e| Error::internal(format!("linking wasi:http: {e:#}")))?;
        let aot = cache_dir
            .map(|dir| AotCache::open(dir, format!("http-{}", compat_key(&engine))))
            .transpose()?;
        Ok(Self {
            engine,
            linker,
            aot,
        })
    }

    /// Drops the handler's AOT artifact of `digest`.
    pub(super) fn forget(&self, digest: &str) {
        if let Some(aot) = &self.aot {
            aot.remove(digest);
        }
    }

    /// The handler compiled earlier, from the AOT cache.
    pub(super) fn cached(&self, digest: &str) -> Option<ProxyPre<HttpHost>> {
        let aot = self.aot.as_ref()?;
        let component = aot
            .load(digest)?
            .component(&self.engine)
            .inspect_err(|e| aot.reject_digest(digest, &format!("refused by wasmtime: {e:#}")))
            .ok()?;
        self.prepare(&component).ok()
    }

    /// Compiles a handler for this engine and keeps the artifact.
    pub(super) fn compile(&self, digest: &str, bytes: &[u8]) -> Result<ProxyPre<HttpHost>> {
        let component = Component::new(&self.engine, bytes).map_err(invalid_wasm)?;
        if let (Some(aot), Ok(artifact)) = (&self.aot, component.serialize()) {
            if let Err(e) = aot.store(digest, &artifact) {
                tracing::warn!("could not cache compiled wasi:http code: {e}");
            }
        }
        self.prepare(&component)
    }

    fn prepare(&self, component: &Component) -> Result<ProxyPre<HttpHost>> {
        let pre = self.linker.instantiate_pre(component).map_err(link_error)?;
        ProxyPre::new(pre)
            .map_err(|e| Error::invalid(format!("not a wasi:http proxy component: {e:#}")))
    }
}

/// Whether a component is a wasi:http handler (it exports `wasi:http/incoming-handler@0.2.x`).
pub(super) fn is_handler(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> bool {
    component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name.starts_with("wasi:http/incoming-handler@0.2"))
}

/// Serves the handler until the container is killed (this future dropped), cannot listen, or
/// is asked to drain: then it stops accepting, lets open connections finish their requests
/// (idle ones are closed) and exits 0.
pub(super) async fn serve(
    engine: wasmtime::Engine,
    pre: ProxyPre<HttpHost>,
    spec: GuestSpec,
) -> Exit {
    let Some(net) = spec.network.clone() else {
        return failed("a wasi:http handler needs the pod network".into());
    };
    let addr = net.at(spec.http_port);
    let listener = match net
        .listen_tcp(spec.http_port)
        .and_then(TcpListener::from_std)
    {
        Ok(l) => l,
        Err(e) => return failed(format!("serving wasi:http on {addr}: {e}")),
    };
    spec.stdio
        .stderr
        .runtime_line(&format!("wasmpod: serving wasi:http on http://{addr}/"));
    let drain = spec.drain.clone();
    // Connections and in-flight guests end with the server.
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let server = Arc::new(Server {
        engine,
        pre,
        spec,
        tls: crate::tls::outgoing(),
    });
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = drain.cancelled() => break,
        };
        let (stream, _) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("wasi:http accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let stop = stop.clone();
        let drain = drain.clone();
        connections.spawn(stop.clone().run_until_cancelled_owned(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                let stop = stop.clone();
                async move { server.handle(req, stop).await }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let done = tokio::select! {
                done = conn.as_mut() => done,
                () = drain.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = done {
                tracing::debug!("wasi:http connection: {e}");
            }
        }));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Exit::code(0)
}

fn failed(message: String) -> Exit {
    Exit {
        code: 1,
        reason: ExitReason::Error,
        message,
    }
}

struct Server {
    engine: wasmtime::Engine,
    pre: ProxyPre<HttpHost>,
    spec: GuestSpec,
    tls: Arc<rustls::ClientConfig>,
}

impl Server {
    /// Runs one request in a fresh instance; a guest error becomes a 500.
    async fn handle(
        self: Arc<Self>,
        req: hyper::Request<Incoming>,
        stop: CancellationToken,
    ) -> Result<hyper::Response<HyperOutgoingBody>, wasmtime::Error> {
        let ctx = wasi_builder(&self.spec, None).map(|mut b| b.build());
        let ctx = ctx.map_err(|e| wasmtime::Error::msg(e.message))?;
        let mut store = new_store(
            &self.engine,
            HttpHost {
                ctx,
                table: super::capped_table(&self.spec.files),
                http: WasiHttpCtx::new(),
                hooks: PodHttpHooks {
                    net: self.spec.network.clone(),
                    tls: self.tls.clone(),
                },
                limiter: MemoryLimiter::new(self.spec.account.clone()),
                sockets: PodSockets::new(self.spec.network.clone()),
            },
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(IncomingScheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(tx)?;
        let this = self.clone();
        // The guest may go on writing the body after it has set the response: it runs on its
        // own task, ended with the server.
        let guest = tokio::spawn(stop.run_until_cancelled_owned(async move {
            let run = async {
                let proxy = this.pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            Metered::new(run, &this.spec.account).await
        }));
        match rx.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(wasmtime::Error::msg(format!(
                "the handler failed: {code:?}"
            ))),
            Err(_) => {
                let why = match guest.await {
                    Ok(Some(Err(e))) => format!("{e:#}"),
                    Ok(Some(Ok(()))) => "the handler returned without setting a response".into(),
                    Ok(None) => "stopped".into(),
                    Err(e) => e.to_string(),
                };
                self.spec
                    .stdio
                    .stderr
                    .runtime_line(&format!("wasmpod: request failed: {why}"));
                Err(wasmtime::Error::msg(why))
            }
        }
    }
}

/// Sends a guest's outgoing requests through its pod's network.
struct PodHttpHooks {
    net: Option<Arc<PodNetwork>>,
    /// What `https://` trusts (the process's CA bundles and the system's roots).
    tls: Arc<rustls::ClientConfig>,
}

/// The I/O side of an outgoing request, as wasmtime-wasi-http's hook shapes it.
type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type Sent = Result<(http::Response<WasiBody>, IoFuture), HttpError>;

impl WasiHttpHooks for PodHttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let net = self.net.clone();
        let tls = self.tls.clone();
        Box::new(async move {
            let net = net.ok_or(HttpError::DestinationIpProhibited)?;
            let sent = send(&net, tls, request, options.unwrap_or_default()).await;
            drop(fut);
            sent
        })
    }
}

/// How long a request waits for each step when it sets no timeout (wasmtime-wasi-http's).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Sends the request to the routed, policy-checked address of its host (so `localhost` is the
/// pod), over TLS for `https://`, where the certificate must match the URL's host.
async fn send(
    net: &PodNetwork,
    tls: Arc<rustls::ClientConfig>,
    mut request: http::Request<WasiBody>,
    options: RequestOptions,
) -> Sent {
    let uri = request.uri().clone();
    let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
    let https = uri.scheme() == Some(&Scheme::HTTPS);
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let dest = route(net, host, port).await?;

    let connect = async {
        let tcp = TcpStream::connect(dest).await.map_err(HttpError::Connect)?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(Either::Left(tcp));
        }
        let name =
            ServerName::try_from(host.to_owned()).map_err(|_| HttpError::HttpRequestUriInvalid)?;
        TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map(Either::Right)
            .map_err(|e| tls_error(authority, e))
    };
    let connect_timeout = options.connect_timeout.unwrap_or(DEFAULT_TIMEOUT);
    let stream = tokio::time::timeout(connect_timeout, connect)
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;

    // On the wire the request names only its path: the host is in its `host` header.
    *request.uri_mut() = uri
        .path_and_query()
        .cloned()
        .map_or_else(|| http::Uri::from_static("/"), http::Uri::from);
    let first_byte = options.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT);
    let response = tokio::time::timeout(first_byte, sender.send_request(request));
    let mut response = std::pin::pin!(response);
    // The connection does its I/O while the response is awaited, then while the guest reads
    // the body (the hook's I/O future).
    let mut conn = Box::pin(conn);
    let (response, conn) = tokio::select! {
        biased;
        response = &mut response => (response, Some(conn)),
        closed = &mut conn => {
            closed?;
            (response.await, None)
        }
    };
    let response = response.map_err(|_| HttpError::ConnectionReadTimeout)??;
    let idle = options.between_bytes_timeout.unwrap_or(DEFAULT_TIMEOUT);
    let response = response.map(|body| {
        IdleTimeout {
            body,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
        .boxed_unsync()
    });
    let io = async move {
        if let Some(conn) = conn {
            conn.await?;
        }
        Ok(())
    };
    Ok((response, Box::new(io) as IoFuture))
}

/// The address `host:port` is reached at from the pod, once every address the host resolves
/// to passed the pod's egress policy.
async fn route(net: &PodNetwork, host: &str, port: u16) -> Result<SocketAddr, HttpError> {
    let ips = net.lookup(host).await.map_err(|_| HttpError::DnsError {
        rcode: None,
        info_code: None,
    })?;
    let mut routed = None;
    for ip in ips {
        let addr = SocketAddr::new(ip, port);
        match net.route(addr) {
            Ok(r) => {
                routed.get_or_insert(r.dest);
            }
            Err(e) => {
                tracing::debug!("outgoing HTTP to {addr}: {e}");
                return Err(HttpError::DestinationIpProhibited);
            }
        }
    }
    routed.ok_or(HttpError::DestinationNotFound)
}

/// The wasi:http error of a failed TLS handshake: a certificate not trusted or not for the
/// host, an alert from the server, any other TLS failure, or the connection lost.
fn tls_error(authority: &Authority, e: std::io::Error) -> HttpError {
    tracing::warn!("outgoing HTTPS to {authority}: {e}");
    match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_)) => HttpError::TlsCertificateError,
        Some(rustls::Error::AlertReceived(alert)) => HttpError::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        Some(_) => HttpError::TlsProtocolError,
        None => HttpError::ConnectionTerminated,
    }
}

/// A response body that fails when the upstream sends nothing for `idle` (the request's
/// between-bytes timeout).
struct IdleTimeout {
    body: Incoming,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(end) => Poll::Ready(end.map(|r| r.map_err(HttpError::from))),
            Poll::Pending => this
                .deadline
                .as_mut()
                .poll(cx)
                .map(|()| Some(Err(HttpError::ConnectionReadTimeout))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
