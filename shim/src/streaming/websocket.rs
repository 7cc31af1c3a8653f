//! The k8s channel protocols over WebSocket (k8s.io/streaming wsstream): every message starts
//! with a channel number (a byte, or an ASCII digit before base64 text in the `base64` variants).
//!
//! - exec/attach: channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; `v5.channel.k8s.io`
//!   adds `[255, channel]` to half-close a channel (what `crictl -r websocket` speaks).
//! - port-forward: per requested port i, channel 2i data and 2i+1 error, each opened with the port
//!   (2 bytes, little-endian).
//! - `SPDY/3.1+portforward.k8s.io`: the SPDY port-forward protocol as a byte stream carried in
//!   binary messages (client-go's tunnelling dialer), served by the SPDY code over a pipe.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::portforward::{self, client_to_pod};
use super::remotecommand::{self, Command, ResizeDecoder, Version};
use super::spdy_conn::{self, Activity};
use super::{header_list, spawn_upgraded, text, HttpResponse, Request, Shared, Stdio};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` half-closes a channel.
const CLOSE: u8 = 255;

/// Largest message we take from a client.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Messages queued for the socket.
const OUTGOING_QUEUE: usize = 64;
/// How long we wait for the client's close frame after ours.
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// The SPDY pipe's buffer in each direction.
const TUNNEL_BUFFER: usize = 64 * 1024;
const READ_CHUNK: usize = 32 * 1024;

const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// How a negotiated subprotocol frames messages and reports the end.
#[derive(Debug, Clone, Copy)]
struct Framing {
    base64: bool,
    /// Status JSON (v4) or text on the error channel.
    version: Version,
    /// v5's CLOSE signal.
    close_signal: bool,
}

enum Chosen {
    Channels(Framing),
    Tunnel,
}

/// Exec/attach subprotocols, in no particular order (the client's order decides).
fn remotecommand_protocol(name: &str) -> Option<Framing> {
    let (base64, version, close_signal) = match name {
        "v5.channel.k8s.io" => (false, Version::V4, true),
        "v4.channel.k8s.io" => (false, Version::V4, false),
        "v4.base64.channel.k8s.io" => (true, Version::V4, false),
        "channel.k8s.io" | "" => (false, Version::V1, false),
        "base64.channel.k8s.io" => (true, Version::V1, false),
        _ => return None,
    };
    Some(Framing {
        base64,
        version,
        close_signal,
    })
}

/// Port-forward subprotocols (kubelet's portforward/websocket.go, plus the SPDY tunnel).
fn portforward_protocol(name: &str) -> Option<Chosen> {
    let framing = |base64| Framing {
        base64,
        version: Version::V4,
        close_signal: false,
    };
    match name {
        "" | "v4.channel.k8s.io" => Some(Chosen::Channels(framing(false))),
        "v4.base64.channel.k8s.io" => Some(Chosen::Channels(framing(true))),
        TUNNEL_PROTOCOL => Some(Chosen::Tunnel),
        _ => None,
    }
}

/// Answers a WebSocket upgrade for a consumed request and starts its session.
pub(super) fn upgrade(
    shared: &Arc<Shared>,
    mut req: hyper::Request<Incoming>,
    request: Request,
) -> HttpResponse {
    let version_ok = req
        .headers()
        .get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    if !version_ok {
        let mut response = text(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only");
        response
            .headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return response;
    }
    let mut offered = header_list(&req, "sec-websocket-protocol");
    if offered.is_empty() {
        offered.push(String::new());
    }
    let is_portforward = matches!(request, Request::PortForward { .. });
    let chosen = offered.iter().find_map(|name| {
        let chosen = if is_portforward {
            portforward_protocol(name)
        } else {
            remotecommand_protocol(name).map(Chosen::Channels)
        };
        chosen.map(|c| (name.clone(), c))
    });
    let Some((name, chosen)) = chosen else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("requested protocol(s) are not supported: {offered:?}"),
        );
    };
    // Port-forward over channels needs its ports now: they are the channel layout.
    let ports = match &request {
        Request::PortForward { pod_id, ports } if matches!(chosen, Chosen::Channels(_)) => {
            match channel_ports(req.uri().query(), pod_id, ports) {
                Ok(ports) => ports,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            }
        }
        _ => Vec::new(),
    };
    spawn_upgraded(
        shared,
        &mut req,
        "WebSocket",
        move |shared, io| async move {
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_MESSAGE))
                .max_frame_size(Some(MAX_MESSAGE));
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            serve(&shared, ws, request, chosen, ports).await;
        },
    );
    let mut response = Response::new(http_body_util::Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert("sec-websocket-accept", accept);
    }
    if !name.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&name) {
            headers.insert("sec-websocket-protocol", value);
        }
    }
    response
}

/// The ports of a channel port-forward: `?port=` values (kubelet's API), else the CRI request's
/// ports; every one must be among the CRI request's ports when it named any.
fn channel_ports(query: Option<&str>, pod_id: &str, allowed: &[u16]) -> Result<Vec<u16>, String> {
    let target = portforward::Target {
        pod_id: pod_id.to_string(),
        ports: allowed.to_vec(),
    };
    let mut ports = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        if let Some(value) = pair.strip_prefix("port=") {
            ports.push(target.check_port(Some(value))?);
        }
    }
    if ports.is_empty() {
        ports = allowed.to_vec();
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

async fn serve<S>(
    shared: &Arc<Shared>,
    ws: WebSocketStream<S>,
    request: Request,
    chosen: Chosen,
    ports: Vec<u16>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let backend = shared.backend.clone();
    let idle = shared.idle_timeout;
    let shutdown = shared.shutdown.child_token();
    match (request, chosen) {
        (
            Request::PortForward {
                pod_id,
                ports: allowed,
            },
            Chosen::Tunnel,
        ) => {
            let target = portforward::Target {
                pod_id,
                ports: allowed,
            };
            let creation_timeout = shared.creation_timeout;
            let (spdy_side, bridge_side) = tokio::io::duplex(TUNNEL_BUFFER);
            let spdy = spdy_conn::serve(spdy_side, idle, shutdown, |incoming| {
                portforward::serve_spdy(target, backend, incoming, creation_timeout)
            });
            tokio::join!(spdy, bridge(ws, bridge_side));
        }
        (Request::PortForward { pod_id, .. }, Chosen::Channels(framing)) => {
            let session = Session::new(ws, framing, idle);
            session.portforward(&backend, pod_id, ports, shutdown).await;
        }
        (request, Chosen::Channels(framing)) => {
            let Some(command) = request.into_command() else {
                return;
            };
            let session = Session::new(ws, framing, idle);
            session.remotecommand(&backend, command, shutdown).await;
        }
        (_, Chosen::Tunnel) => {}
    }
}

/// Carries a byte stream in binary messages both ways until both directions end.
pub(super) async fn bridge<S>(ws: WebSocketStream<S>, pipe: tokio::io::DuplexStream)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let (mut pipe_read, mut pipe_write) = tokio::io::split(pipe);
    let inbound = async {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Binary(data) if pipe_write.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = pipe_write.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match pipe_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(message).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(close_message()).await;
        let _ = sink.close().await;
    };
    tokio::join!(inbound, outbound);
}

fn close_message() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

fn encode(framing: Framing, channel: u8, data: &[u8]) -> Message {
    if framing.base64 {
        let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        text.push(char::from(b'0' + channel));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
        Message::Text(text.into())
    } else {
        let mut bytes = Vec::with_capacity(1 + data.len());
        bytes.push(channel);
        bytes.extend_from_slice(data);
        Message::Binary(bytes.into())
    }
}

/// A data message's channel and payload; `None` for control messages and malformed data.
fn decode(framing: Framing, message: Message) -> Option<(u8, Bytes)> {
    match message {
        Message::Binary(data) if !framing.base64 && !data.is_empty() => {
            Some((data[0], data.slice(1..)))
        }
        Message::Text(text) if framing.base64 => {
            let text = text.as_str();
            let channel = text.as_bytes().first()?.checked_sub(b'0')?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&text[1..])
                .ok()?;
            Some((channel, Bytes::from(data)))
        }
        _ => None,
    }
}

/// One channel-protocol WebSocket session.
struct Session<S> {
    ws: WebSocketStream<S>,
    framing: Framing,
    idle: Duration,
    activity: Activity,
}

/// Why the reading side stopped.
enum InputEnd {
    /// The client closed or went away.
    Gone,
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn new(ws: WebSocketStream<S>, framing: Framing, idle: Duration) -> Self {
        Self {
            ws,
            framing,
            idle,
            activity: Activity::new(),
        }
    }

    /// Exec/attach: ready signal, backend, output drained, status, close.
    async fn remotecommand(
        self,
        backend: &Arc<dyn super::Backend>,
        command: Command,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let Session {
            ws,
            framing,
            idle,
            activity,
        } = self;
        let (mut sink, mut stream) = ws.split();
        // The empty message on the first channel we write tells the client we are ready.
        let ready = if command.stdout {
            STDOUT
        } else if command.stderr {
            STDERR
        } else {
            ERROR
        };
        if sink.send(encode(framing, ready, &[])).await.is_err() {
            return;
        }
        let (stdin_tx, stdin_rx) = if command.stdin {
            let (tx, rx) = mpsc::channel(remotecommand::OUTPUT_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let (stdout_tx, stdout_rx) = optional_channel(command.stdout);
        let (stderr_tx, stderr_rx) = optional_channel(command.stderr && !command.tty);
        let (resize_tx, resize_rx) = if command.tty {
            let (tx, rx) = mpsc::channel(8);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let stdio = Stdio {
            stdin: stdin_rx,
            stdout: stdout_tx,
            stderr: stderr_tx,
            resize: resize_rx,
        };
        let input = read_input(&mut stream, framing, stdin_tx, resize_tx, &activity);
        let output = async {
            write_output(&mut sink, framing, stdout_rx, stderr_rx, &activity).await;
        };
        let session = async { tokio::join!(command.run(backend, stdio), output).0 };
        let outcome = tokio::select! {
            outcome = session => outcome,
            InputEnd::Gone = input => return,
            () = activity.idle(idle) => return,
            () = shutdown.cancelled() => return,
        };
        if let Some(bytes) = command.status(&outcome).encode(framing.version) {
            let _ = sink.send(encode(framing, ERROR, &bytes)).await;
        }
        let _ = sink.send(close_message()).await;
        let _ = sink.flush().await;
        // Wait for the client's close so it reads everything before the socket goes.
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }

    /// Port-forward over channels: one forwarded connection per requested port.
    async fn portforward(
        self,
        backend: &Arc<dyn super::Backend>,
        pod_id: String,
        ports: Vec<u16>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let Session {
            ws,
            framing,
            idle,
            activity,
        } = self;
        let (mut sink, mut stream) = ws.split();
        let target = portforward::Target {
            pod_id,
            ports: ports.clone(),
        };
        let (out_tx, mut out_rx) = mpsc::channel::<Message>(OUTGOING_QUEUE);
        let mut to_pods = Vec::new();
        let mut forwards = Vec::new();
        for (i, port) in ports.iter().copied().enumerate() {
            let (data_channel, error_channel) = ((2 * i) as u8, (2 * i + 1) as u8);
            for channel in [data_channel, error_channel] {
                let opening = encode(framing, channel, &port.to_le_bytes());
                if sink.send(opening).await.is_err() {
                    return;
                }
            }
            let (tx, rx) = mpsc::channel::<Bytes>(remotecommand::OUTPUT_QUEUE);
            to_pods.push(tx);
            let out = out_tx.clone();
            let target = &target;
            let activity = &activity;
            forwards.push(async move {
                match backend.dial(target.pod_id.clone(), port).await {
                    Err(e) => {
                        let message = target.forward_error(port, &e);
                        let _ = out
                            .send(encode(framing, error_channel, message.as_bytes()))
                            .await;
                    }
                    Ok(tcp) => {
                        let (mut pod_read, pod_write) = tcp.into_split();
                        let downstream = async {
                            let mut buf = vec![0u8; READ_CHUNK];
                            loop {
                                match pod_read.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        activity.touch();
                                        let m = encode(framing, data_channel, &buf[..n]);
                                        if out.send(m).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                        };
                        tokio::join!(client_to_pod(rx, pod_write), downstream);
                    }
                }
            });
        }
        drop(out_tx);
        // Messages from the client, by channel, to the ports' connections.
        let input = async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
                let Some((channel, data)) = decode(framing, message) else {
                    continue;
                };
                activity.touch();
                if channel % 2 != 0 || data.is_empty() {
                    continue;
                }
                if let Some(tx) = to_pods.get(usize::from(channel / 2)) {
                    let _ = tx.send(data).await;
                }
            }
        };
        let output = async {
            while let Some(message) = out_rx.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await;
        };
        let forwards = async {
            futures::future::join_all(forwards).await;
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = input => {}
            () = output => {}
            () = forwards => {}
            () = activity.idle(idle) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

fn optional_channel(wanted: bool) -> (Option<mpsc::Sender<Bytes>>, Option<mpsc::Receiver<Bytes>>) {
    if wanted {
        let (tx, rx) = mpsc::channel(remotecommand::OUTPUT_QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    }
}

/// Routes the client's messages to stdin and resize until the client leaves.
async fn read_input<St>(
    stream: &mut St,
    framing: Framing,
    mut stdin: Option<mpsc::Sender<Bytes>>,
    mut resize: Option<mpsc::Sender<super::TermSize>>,
    activity: &Activity,
) -> InputEnd
where
    St: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut decoder = ResizeDecoder::default();
    while let Some(Ok(message)) = stream.next().await {
        if matches!(message, Message::Close(_)) {
            break;
        }
        let Some((channel, data)) = decode(framing, message) else {
            continue;
        };
        activity.touch();
        match channel {
            STDIN => {
                if let Some(tx) = &stdin {
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        stdin = None;
                    }
                }
            }
            RESIZE => {
                let Some(tx) = &resize else { continue };
                match decoder.feed(&data) {
                    Ok(events) => {
                        for event in events {
                            if tx.send(event).await.is_err() {
                                resize = None;
                                break;
                            }
                        }
                    }
                    Err(()) => resize = None,
                }
            }
            CLOSE if framing.close_signal && data.first() == Some(&STDIN) => stdin = None,
            _ => {}
        }
    }
    InputEnd::Gone
}

/// Sends the backend's stdout and stderr as they come, until it dropped both senders.
async fn write_output<Si>(
    sink: &mut Si,
    framing: Framing,
    mut stdout: Option<mpsc::Receiver<Bytes>>,
    mut stderr: Option<mpsc::Receiver<Bytes>>,
    activity: &Activity,
) where
    Si: futures::Sink<Message> + Unpin,
{
    let mut open = true;
    while stdout.is_some() || stderr.is_some() {
        let (channel, chunk) = tokio::select! {
            chunk = recv_or_pending(&mut stdout) => (STDOUT, chunk),
            chunk = recv_or_pending(&mut stderr) => (STDERR, chunk),
        };
        let Some(chunk) = chunk else {
            // No close signal back: client-go reads only its own direction's (stdin) and
            // logs any other as an unknown stream; the session's end closes the rest.
            if channel == STDOUT {
                stdout = None;
            } else {
                stderr = None;
            }
            continue;
        };
        activity.touch();
        if open && sink.send(encode(framing, channel, &chunk)).await.is_err() {
            // Keep draining so the backend never blocks on a client that is gone.
            open = false;
        }
    }
}

async fn recv_or_pending(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
