//! The server driven over loopback TCP by clients written here: the SPDY codec acting as a
//! client (headers as client-go sends them), raw HTTP for the bad requests, tokio-tungstenite for
//! WebSocket. Timeouts only keep a broken test from hanging; nothing asserts on time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::spdy::{self, Frame, FrameDecoder, FrameEncoder, Headers};
use super::*;

/// Long enough for a loaded CI machine; only a hung test ever waits this long.
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The backend behind the sessions.

/// Exec commands: `echo [code]` copies stdin to stdout, writes `err\n` to stderr, exits with
/// `code`; `tty` answers the first resize with `WxH`; `fail` cannot run; `hang` runs until
/// dropped. Attach writes `attached`. Dial reaches an echo server, except port 1 (refused).
struct TestBackend {
    echo: SocketAddr,
    /// Exec/attach futures alive now (a dropped client must drop them).
    running: Arc<AtomicUsize>,
}

struct Running(Arc<AtomicUsize>);

impl Running {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend for TestBackend {
    fn exec(
        &self,
        _container_id: String,
        cmd: Vec<String>,
        tty: bool,
        mut stdio: Stdio,
    ) -> BoxFuture<Result<i32, String>> {
        let running = Running::new(&self.running);
        Box::pin(async move {
            let _running = running;
            match cmd.first().map(String::as_str) {
                Some("echo") => {
                    let stdout = stdio.stdout.take();
                    if let Some(mut stdin) = stdio.stdin.take() {
                        while let Some(chunk) = stdin.recv().await {
                            if let Some(out) = &stdout {
                                let _ = out.send(chunk).await;
                            }
                        }
                    }
                    if let Some(err) = &stdio.stderr {
                        let _ = err.send(Bytes::from_static(b"err\n")).await;
                    }
                    Ok(cmd.get(1).and_then(|c| c.parse().ok()).unwrap_or(0))
                }
                Some("tty") => {
                    assert!(tty && stdio.stderr.is_none());
                    let size = stdio.resize.as_mut().unwrap().recv().await.unwrap();
                    let text = format!("{}x{}", size.width, size.height);
                    let _ = stdio.stdout.as_ref().unwrap().send(text.into()).await;
                    Ok(0)
                }
                Some("fail") => Err("no such container".into()),
                Some("hang") => std::future::pending().await,
                other => panic!("unknown test command {other:?}"),
            }
        })
    }

    fn attach(
        &self,
        _container_id: String,
        _tty: bool,
        stdio: Stdio,
    ) -> BoxFuture<Result<(), String>> {
        let running = Running::new(&self.running);
        Box::pin(async move {
            let _running = running;
            let _ = stdio.stdout.unwrap().send("attached".into()).await;
            Ok(())
        })
    }

    fn dial(&self, _pod_id: String, port: u16) -> BoxFuture<Result<TcpStream, String>> {
        let echo = self.echo;
        Box::pin(async move {
            if port == 1 {
                return Err("connection refused".into());
            }
            TcpStream::connect(echo).await.map_err(|e| e.to_string())
        })
    }
}

/// Echoes every connection until its client half-closes, then closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

struct Harness {
    server: Arc<StreamingServer>,
    running: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

async fn harness_with(mut config: StreamingConfig) -> Harness {
    let running = Arc::new(AtomicUsize::new(0));
    let backend = TestBackend {
        echo: echo_server().await,
        running: running.clone(),
    };
    let shutdown = CancellationToken::new();
    if config.creation_timeout == StreamingConfig::default().creation_timeout {
        config.creation_timeout = 5;
    }
    let server = StreamingServer::start(&config, Arc::new(backend), shutdown.clone())
        .await
        .unwrap();
    Harness {
        server,
        running,
        shutdown,
    }
}

async fn harness() -> Harness {
    harness_with(StreamingConfig::default()).await
}

impl Harness {
    /// Waits (boundedly) for every connection, session and backend future to end.
    async fn settled(&self) {
        for _ in 0..3000 {
            if self.server.live() == 0 && self.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "still running: {} connections/sessions, {} backend futures",
            self.server.live(),
            self.running.load(Ordering::SeqCst)
        );
    }

    fn exec(&self, cmd: &[&str], tty: bool, stdin: bool) -> String {
        self.server
            .url(Request::Exec {
                container_id: "c1".into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty,
                stdin,
                stdout: true,
                stderr: !tty,
            })
            .unwrap()
    }

    fn portforward(&self, ports: &[u16]) -> String {
        self.server
            .url(Request::PortForward {
                pod_id: "p1".into(),
                ports: ports.to_vec(),
            })
            .unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 upgrade, then SPDY as client-go speaks it.

struct Upgrade {
    status: u16,
    headers: Vec<(String, String)>,
    stream: TcpStream,
    /// Bytes read past the response head.
    rest: BytesMut,
}

impl Upgrade {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn path_of(url: &str) -> &str {
    let after_scheme = url.split_once("://").unwrap().1;
    &after_scheme[after_scheme.find('/').unwrap()..]
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> (u16, Vec<(String, String)>, BytesMut) {
    let mut buf = BytesMut::new();
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        assert!(buf.len() < 64 * 1024, "response head too long");
        let n = tokio::time::timeout(PATIENCE, stream.read_buf(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed before the response head");
    };
    let head = String::from_utf8(buf.split_to(end + 4).to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, headers, buf)
}

async fn upgrade_with(server: &StreamingServer, url: &str, extra: &[(&str, &str)]) -> Upgrade {
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n",
        path_of(url),
        server.local_addr()
    );
    for (name, value) in extra {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let (status, headers, rest) = read_head(&mut stream).await;
    Upgrade {
        status,
        headers,
        stream,
        rest,
    }
}

/// What client-go's SPDY executor sends.
const CLIENT_GO_PROTOCOLS: &str =
    "v5.channel.k8s.io, v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io";

async fn upgrade_spdy(server: &StreamingServer, url: &str, protocols: &str) -> Upgrade {
    upgrade_with(
        server,
        url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", protocols),
        ],
    )
    .await
}

struct SpdyClient<S> {
    io: S,
    buf: BytesMut,
    encoder: FrameEncoder,
    decoder: FrameDecoder,
    next_id: u32,
}

/// Everything a client saw until the server closed the connection.
#[derive(Default, Debug)]
struct Transcript {
    data: HashMap<u32, Vec<u8>>,
    fin: Vec<u32>,
    replies: Vec<u32>,
    resets: Vec<(u32, u32)>,
    goaway: Option<u32>,
    pings: Vec<u32>,
}

impl Transcript {
    fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.data.get(&id).map(Vec::as_slice).unwrap_or(&[])).into_owned()
    }

    fn record(&mut self, frame: Frame) {
        match frame {
            Frame::SynReply { stream_id, .. } => self.replies.push(stream_id),
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                self.data
                    .entry(stream_id)
                    .or_default()
                    .extend_from_slice(&data);
                if fin {
                    self.fin.push(stream_id);
                }
            }
            Frame::RstStream { stream_id, status } => self.resets.push((stream_id, status)),
            Frame::GoAway { status, .. } => self.goaway = Some(status),
            Frame::Ping(id) => self.pings.push(id),
            other => panic!("unexpected frame from the server: {other:?}"),
        }
    }
}

impl SpdyClient<TcpStream> {
    fn new(upgrade: Upgrade) -> Self {
        assert_eq!(upgrade.status, 101, "{:?}", upgrade.headers);
        SpdyClient::over(upgrade.stream, upgrade.rest)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SpdyClient<S> {
    fn over(io: S, buf: BytesMut) -> Self {
        Self {
            io,
            buf,
            encoder: FrameEncoder::default(),
            decoder: FrameDecoder::default(),
            next_id: 1,
        }
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.encoder.encode(&frame, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        // The server may already have closed on earlier garbage.
        let _ = self.io.write_all(bytes).await;
    }

    /// Opens a stream with these headers, as client-go's CreateStream does.
    async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let headers: Headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        self.send(Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers,
        })
        .await;
        id
    }

    async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream_id: id,
            fin,
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }

    /// The next frame, or None once the server closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(frame);
            }
            let n = tokio::time::timeout(PATIENCE, self.io.read_buf(&mut self.buf))
                .await
                .expect("the server neither sent nor closed")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until `done` says so (or the connection closed); returns what it saw.
    async fn until(&mut self, t: &mut Transcript, done: impl Fn(&Transcript) -> bool) {
        while !done(t) {
            match self.next().await {
                Some(frame) => t.record(frame),
                None => return,
            }
        }
    }

    /// Reads everything until the server closes.
    async fn read_to_close(mut self) -> Transcript {
        let mut t = Transcript::default();
        while let Some(frame) = self.next().await {
            t.record(frame);
        }
        t
    }
}

const SUCCESS: &str = r#"{"metadata":{},"status":"Success"}"#;

// ---------------------------------------------------------------------------------------------
// remotecommand over SPDY.

#[tokio::test]
async fn exec_copies_stdin_to_stdout_and_reports_success() {
    let h = harness().await;
    let url = h.exec(&["echo"], false, true);
    assert!(url.starts_with(&format!("http://{}/exec/", h.server.local_addr())));
    let up = upgrade_spdy(&h.server, &url, CLIENT_GO_PROTOCOLS).await;
    assert_eq!(
        up.header("x-stream-protocol-version"),
        ["v4.channel.k8s.io"]
    );
    assert_eq!(up.header("upgrade"), ["SPDY/3.1"]);
    let mut c = SpdyClient::new(up);
    let error = c.open(&[("streamType", "error")]).await;
    let stdin = c.open(&[("streamType", "stdin")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    let stderr = c.open(&[("streamType", "stderr")]).await;
    c.data(stdin, b"hello ", false).await;
    c.data(stdin, b"world", true).await;
    let t = c.read_to_close().await;
    assert_eq!(t.replies, [error, stdin, stdout, stderr]);
    assert_eq!(t.text(stdout), "hello world");
    assert_eq!(t.text(stderr), "err\n");
    assert_eq!(t.text(error), SUCCESS);
    for id in [error, stdout, stderr] {
        assert!(t.fin.contains(&id), "stream {id} not finished: {t:?}");
    }
    assert_eq!(t.goaway, Some(spdy::goaway::OK));
    h.settled().await;
}

#[tokio::test]
async fn exec_nonzero_exit_is_a_failure_status() {
    let h = harness().await;
    let url = h.exec(&["echo", "3"], false, false);
    let mut c = SpdyClient::new(upgrade_spdy(&h.server, &url, CLIENT_GO_PROTOCOLS).await);
    let error = c.open(&[("streamtype", "error")]).await;
    c.open(&[("streamtype", "stdout")]).await;
    let stderr = c.open(&[("streamtype", "stderr")]).await;
    let t = c.read_to_close().await;
    assert_eq!(t.text(stderr), "err\n");
    let status: serde_json::Value = serde_json::from_str(&t.text(error)).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    assert_eq!(
        status["message"],
        "command terminated with non-zero exit code: error executing command [echo 3], exit code 3"
    );
    h.settled().await;
}

#[tokio::test]
async fn older_protocols_get_the_error_as_text() {
    let h = harness().await;
    let url = h.exec(&["fail"], false, false);
    let up = upgrade_spdy(&h.server, &url, "v2.channel.k8s.io").await;
    assert_eq!(
        up.header("x-stream-protocol-version"),
        ["v2.channel.k8s.io"]
    );
    let mut c = SpdyClient::new(up);
    let error = c.open(&[("streamtype", "error")]).await;
    c.open(&[("streamtype", "stdout")]).await;
    c.open(&[("streamtype", "stderr")]).await;
    let t = c.read_to_close().await;
    assert_eq!(
        t.text(error),
        "Internal error occurred: error executing command in container: no such container"
    );
    h.settled().await;
}

#[tokio::test]
async fn tty_session_has_no_stderr_and_takes_resizes() {
    let h = harness().await;
    let url = h.exec(&["tty"], true, true);
    let mut c = SpdyClient::new(upgrade_spdy(&h.server, &url, CLIENT_GO_PROTOCOLS).await);
    let error = c.open(&[("streamtype", "error")]).await;
    let stdin = c.open(&[("streamtype", "stdin")]).await;
    let stdout = c.open(&[("streamtype", "stdout")]).await;
    let resize = c.open(&[("streamtype", "resize")]).await;
    c.data(resize, br#"{"Width":80,"#, false).await;
    c.data(resize, br#""Height":24}"#, false).await;
    let t = c.read_to_close().await;
    assert_eq!(t.replies, [error, stdin, stdout, resize]);
    assert_eq!(t.text(stdout), "80x24");
    assert_eq!(t.text(error), SUCCESS);
    h.settled().await;
}

#[tokio::test]
async fn attach_reports_success() {
    let h = harness().await;
    let url = h
        .server
        .url(Request::Attach {
            container_id: "c1".into(),
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        })
        .unwrap();
    assert!(url.contains("/attach/"));
    let mut c = SpdyClient::new(upgrade_spdy(&h.server, &url, CLIENT_GO_PROTOCOLS).await);
    let error = c.open(&[("streamtype", "error")]).await;
    let stdout = c.open(&[("streamtype", "stdout")]).await;
    let t = c.read_to_close().await;
    assert_eq!(t.text(stdout), "attached");
    assert_eq!(t.text(error), SUCCESS);
    h.settled().await;
}

#[tokio::test]
async fn extra_and_unknown_streams_are_refused() {
    let h = harness().await;
    let url = h.exec(&["hang"], false, true);
    let mut c = SpdyClient::new(upgrade_spdy(&h.server, &url, CLIENT_GO_PROTOCOLS).await);
    let bogus = c.open(&[("streamtype", "bogus")]).await;
    c.open(&[("streamtype", "error")]).await;
    let dup = c.open(&[("streamtype", "error")]).await;
    c.open(&[("streamtype", "stdin")]).await;
    c.open(&[("streamtype", "stdout")]).await;
    c.open(&[("streamtype", "stderr")]).await;
    let extra = c.open(&[("streamtype", "stdin")]).await;
    let mut t = Transcript::default();
    c.until(&mut t, |t| t.resets.len() == 3).await;
    let refused = spdy::rst::REFUSED_STREAM;
    assert_eq!(
        t.resets,
        [(bogus, refused), (dup, refused), (extra, refused)]
    );
    // A PING is answered with the same id while the session runs.
    c.send(Frame::Ping(7)).await;
    c.until(&mut t, |t| !t.pings.is_empty()).await;
    assert_eq!(t.pings, [7]);
    // The client going away ends the backend's exec.
    drop(c);
    h.settled().await;
}

#[tokio::test]
async fn a_client_that_opens_no_streams_is_closed() {
    let h = harness_with(StreamingConfig {
        creation_timeout: 1,
        ..Default::default()
    })
    .await;
    let url = h.exec(&["echo"], false, true);
    let mut c = SpdyClient::new(upgrade_spdy(&h.server, &url, CLIENT_GO_PROTOCOLS).await);
    c.open(&[("streamtype", "error")]).await;
    let t = c.read_to_close().await;
    assert_eq!(t.goaway, Some(spdy::goaway::OK));
    assert_eq!(h.running.load(Ordering::SeqCst), 0);
    h.settled().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let h = harness_with(StreamingConfig {
        idle_timeout: 1,
        ..Default::default()
    })
    .await;
    let url = h.portforward(&[]);
    let up = upgrade_spdy(&h.server, &url, "portforward.k8s.io").await;
    let t = SpdyClient::new(up).read_to_close().await;
    assert_eq!(t.goaway, Some(spdy::goaway::OK));
    h.settled().await;
}

// ---------------------------------------------------------------------------------------------
// Bad requests and bad peers.

#[tokio::test]
async fn unknown_and_reused_tokens_are_not_found() {
    let h = harness().await;
    let url = h.exec(&["echo"], false, true);
    let bogus = url.rsplit_once('/').unwrap().0.to_string() + "/not-a-token";
    assert_eq!(
        upgrade_spdy(&h.server, &bogus, CLIENT_GO_PROTOCOLS)
            .await
            .status,
        404
    );
    let first = upgrade_spdy(&h.server, &url, CLIENT_GO_PROTOCOLS).await;
    assert_eq!(first.status, 101);
    drop(first);
    assert_eq!(
        upgrade_spdy(&h.server, &url, CLIENT_GO_PROTOCOLS)
            .await
            .status,
        404
    );
    // A token is for one kind of request.
    let url = h.exec(&["echo"], false, true).replace("/exec/", "/attach/");
    assert_eq!(
        upgrade_spdy(&h.server, &url, CLIENT_GO_PROTOCOLS)
            .await
            .status,
        400
    );
    h.settled().await;
}

#[tokio::test]
async fn protocol_negotiation_failures() {
    let h = harness().await;
    let url = h.exec(&["echo"], false, true);
    let up = upgrade_spdy(&h.server, &url, "v9.channel.k8s.io").await;
    assert_eq!(up.status, 403);
    assert_eq!(
        up.header("x-accepted-stream-protocol-versions"),
        [
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io"
        ]
    );
    let url = h.exec(&["echo"], false, true);
    let up = upgrade_with(
        &h.server,
        &url,
        &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")],
    )
    .await;
    assert_eq!(up.status, 400);
    let url = h.portforward(&[]);
    let up = upgrade_spdy(&h.server, &url, CLIENT_GO_PROTOCOLS).await;
    assert_eq!(up.status, 403);
    assert_eq!(
        up.header("x-accepted-stream-protocol-versions"),
        ["portforward.k8s.io"]
    );
    drop(up);
    h.settled().await;
}

#[tokio::test]
async fn url_validation_and_wildcard_hosts() {
    let h = harness_with(StreamingConfig {
        address: "0.0.0.0:0".parse().unwrap(),
        ..Default::default()
    })
    .await;
    let port = h.server.local_addr().port();
    let url = h.portforward(&[80]);
    assert!(url.starts_with(&format!("http://127.0.0.1:{port}/portforward/")));
    let exec = |tty, stdin, stdout, stderr| Request::Exec {
        container_id: "c".into(),
        cmd: vec!["x".into()],
        tty,
        stdin,
        stdout,
        stderr,
    };
    assert!(h.server.url(exec(true, true, true, true)).is_err());
    assert!(h.server.url(exec(false, false, false, false)).is_err());
    let config: StreamingConfig =
        toml::from_str("address = \"127.0.0.1:10010\"\nidle_timeout = 60").unwrap();
    assert_eq!(config.address.port(), 10010);
    assert_eq!(config.creation_timeout, 30);
    assert!(toml::from_str::<StreamingConfig>("bogus = 1").is_err());
}

/// Sends `bytes` right after a good upgrade and expects the server to hang up.
async fn expect_hangup_after(bytes: impl FnOnce(&mut FrameEncoder) -> Vec<u8>) -> Transcript {
    let h = harness().await;
    let url = h.exec(&["echo"], false, true);
    let mut c = SpdyClient::new(upgrade_spdy(&h.server, &url, CLIENT_GO_PROTOCOLS).await);
    let raw = bytes(&mut c.encoder);
    c.send_raw(&raw).await;
    let t = c.read_to_close().await;
    h.settled().await;
    t
}

fn syn_stream_with_block(block: &[u8]) -> Vec<u8> {
    let mut payload = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    payload.extend_from_slice(block);
    let mut out = BytesMut::new();
    spdy::raw_control(&mut out, 1, 0, &payload);
    out.to_vec()
}

#[tokio::test]
async fn garbage_after_the_upgrade_closes_the_connection() {
    let t = expect_hangup_after(|_| vec![0xff; 64]).await;
    assert_eq!(t.goaway, Some(spdy::goaway::PROTOCOL_ERROR));
}

#[tokio::test]
async fn a_header_block_that_does_not_inflate_closes_the_connection() {
    let t = expect_hangup_after(|_| syn_stream_with_block(&[0x78, 0xbb, 1, 2, 3, 4, 5, 6])).await;
    assert_eq!(t.goaway, Some(spdy::goaway::PROTOCOL_ERROR));
}

#[tokio::test]
async fn a_decompression_bomb_closes_the_connection() {
    let t = expect_hangup_after(|encoder| {
        let mut raw = 1u32.to_be_bytes().to_vec();
        raw.extend_from_slice(&10u32.to_be_bytes());
        raw.extend_from_slice(b"streamtype");
        raw.extend_from_slice(&(8u32 << 20).to_be_bytes());
        raw.extend(std::iter::repeat_n(b'x', 8 << 20));
        syn_stream_with_block(&encoder.compress(&raw).unwrap())
    })
    .await;
    assert_eq!(t.goaway, Some(spdy::goaway::PROTOCOL_ERROR));
}

#[tokio::test]
async fn an_oversized_control_frame_closes_the_connection() {
    let t = expect_hangup_after(|_| {
        let mut out = BytesMut::new();
        spdy::raw_control(&mut out, 1, 0, &vec![0; spdy::MAX_CONTROL_FRAME + 1]);
        out.to_vec()
    })
    .await;
    assert_eq!(t.goaway, Some(spdy::goaway::PROTOCOL_ERROR));
}

#[tokio::test]
async fn a_stream_id_going_backwards_closes_the_connection() {
    let h = harness().await;
    let url = h.exec(&["hang"], false, true);
    let mut c = SpdyClient::new(upgrade_spdy(&h.server, &url, CLIENT_GO_PROTOCOLS).await);
    c.open(&[("streamtype", "error")]).await;
    c.next_id = 1;
    c.open(&[("streamtype", "stdin")]).await;
    let t = c.read_to_close().await;
    assert_eq!(t.goaway, Some(spdy::goaway::PROTOCOL_ERROR));
    h.settled().await;
}

// ---------------------------------------------------------------------------------------------
// Port-forward over SPDY.

/// Opens a pair as client-go does: error stream (then half-closed), data stream.
async fn open_pair<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut SpdyClient<S>,
    port: &str,
    request: &str,
) -> (u32, u32) {
    let headers = [
        ("streamtype", "error"),
        ("port", port),
        ("requestid", request),
    ];
    let error = c.open(&headers).await;
    c.data(error, b"", true).await;
    let headers = [
        ("streamtype", "data"),
        ("port", port),
        ("requestid", request),
    ];
    let data = c.open(&headers).await;
    (error, data)
}

async fn portforward_pairs<S: AsyncRead + AsyncWrite + Unpin>(mut c: SpdyClient<S>) {
    let (error1, data1) = open_pair(&mut c, "80", "0").await;
    let (error2, data2) = open_pair(&mut c, "80", "1").await;
    let (refused_error, _) = open_pair(&mut c, "1", "2").await;
    let (other_error, _) = open_pair(&mut c, "81", "3").await;
    c.data(data2, b"second", false).await;
    c.data(data1, b"first", false).await;
    c.data(data1, b" half", true).await;
    c.data(data2, b" pair", true).await;
    let mut t = Transcript::default();
    let closed = [error1, data1, error2, data2, refused_error, other_error];
    c.until(&mut t, |t| closed.iter().all(|id| t.fin.contains(id)))
        .await;
    assert_eq!(t.text(data1), "first half");
    assert_eq!(t.text(data2), "second pair");
    assert_eq!(t.text(error1), "");
    assert_eq!(
        t.text(refused_error),
        "error forwarding port 1 to pod p1, uid : connection refused"
    );
    assert!(
        t.text(other_error)
            .contains("port 81 is not one of the ports"),
        "{}",
        t.text(other_error)
    );
}

#[tokio::test]
async fn portforward_two_concurrent_pairs_and_errors() {
    let h = harness().await;
    let url = h.portforward(&[80, 1]);
    let up = upgrade_spdy(&h.server, &url, "portforward.k8s.io").await;
    assert_eq!(
        up.header("x-stream-protocol-version"),
        ["portforward.k8s.io"]
    );
    portforward_pairs(SpdyClient::new(up)).await;
    h.settled().await;
}

#[tokio::test]
async fn portforward_half_stream_times_out() {
    let h = harness_with(StreamingConfig {
        creation_timeout: 1,
        ..Default::default()
    })
    .await;
    let url = h.portforward(&[]);
    let mut c = SpdyClient::new(upgrade_spdy(&h.server, &url, "portforward.k8s.io").await);
    let error = c
        .open(&[("streamtype", "error"), ("port", "80"), ("requestid", "9")])
        .await;
    let mut t = Transcript::default();
    c.until(&mut t, |t| t.fin.contains(&error)).await;
    assert!(t.text(error).contains("timed out"), "{}", t.text(error));
    drop(c);
    h.settled().await;
}

// ---------------------------------------------------------------------------------------------
// WebSocket.

type ClientWs = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(server: &StreamingServer, url: &str, protocol: &str) -> (ClientWs, String) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (ws, chosen)
}

/// Messages until the server closes.
async fn ws_drain(ws: &mut ClientWs) -> Vec<Message> {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return got,
            Some(Ok(m)) => got.push(m),
        }
    }
}

#[tokio::test]
async fn websocket_v5_exec() {
    let h = harness().await;
    let url = h.exec(&["echo", "2"], false, true);
    let (mut ws, chosen) = ws_connect(&h.server, &url, "v5.channel.k8s.io").await;
    assert_eq!(chosen, "v5.channel.k8s.io");
    ws.send(Message::Binary(Bytes::from_static(b"\x00hi")))
        .await
        .unwrap();
    ws.send(Message::Binary(Bytes::from_static(&[255, 0])))
        .await
        .unwrap();
    let got = ws_drain(&mut ws).await;
    let mut channels: HashMap<u8, Vec<u8>> = HashMap::new();
    for m in &got {
        let Message::Binary(b) = m else {
            panic!("{m:?}")
        };
        channels.entry(b[0]).or_default().extend_from_slice(&b[1..]);
    }
    assert!(
        matches!(&got[0], Message::Binary(b) if b[..] == [1]),
        "ready signal first"
    );
    assert_eq!(channels[&1], b"hi");
    assert_eq!(channels[&2], b"err\n");
    let status: serde_json::Value = serde_json::from_slice(&channels[&3]).unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "2");
    h.settled().await;
}

#[tokio::test]
async fn websocket_base64_attach() {
    let h = harness().await;
    let url = h
        .server
        .url(Request::Attach {
            container_id: "c1".into(),
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        })
        .unwrap();
    let (mut ws, chosen) = ws_connect(
        &h.server,
        &url,
        "v4.base64.channel.k8s.io, base64.channel.k8s.io",
    )
    .await;
    assert_eq!(chosen, "v4.base64.channel.k8s.io");
    let got: Vec<String> = ws_drain(&mut ws)
        .await
        .into_iter()
        .map(|m| m.into_text().unwrap().to_string())
        .collect();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(
        got,
        [
            "1".to_string(),
            format!("1{}", b64("attached")),
            format!("3{}", b64(SUCCESS))
        ]
    );
    h.settled().await;
}

#[tokio::test]
async fn websocket_portforward_channels() {
    let h = harness().await;
    let url = h.portforward(&[]) + "?port=80&port=1";
    let (mut ws, chosen) = ws_connect(&h.server, &url, "v4.channel.k8s.io").await;
    assert_eq!(chosen, "v4.channel.k8s.io");
    let mut got: HashMap<u8, Vec<Vec<u8>>> = HashMap::new();
    let mut seen = 0;
    ws.send(Message::Binary(Bytes::from_static(b"\x00ping")))
        .await
        .unwrap();
    // 4 port announcements, the echo, the refused port's error.
    while seen < 6 {
        let m = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap();
        let Some(Ok(Message::Binary(b))) = m else {
            panic!("{m:?}")
        };
        got.entry(b[0]).or_default().push(b[1..].to_vec());
        seen += 1;
    }
    assert_eq!(got[&0], [vec![80, 0], b"ping".to_vec()]);
    assert_eq!(got[&1], [vec![80, 0]]);
    assert_eq!(got[&2], [vec![1, 0]]);
    assert_eq!(got[&3][0], [1, 0]);
    assert!(String::from_utf8_lossy(&got[&3][1]).contains("connection refused"));
    drop(ws);
    h.settled().await;
}

#[tokio::test]
async fn websocket_spdy_tunnel_portforward() {
    let h = harness().await;
    let url = h.portforward(&[80, 1]);
    let (ws, chosen) = ws_connect(&h.server, &url, "SPDY/3.1+portforward.k8s.io").await;
    assert_eq!(chosen, "SPDY/3.1+portforward.k8s.io");
    // The client side of client-go's tunnelling connection: SPDY bytes in binary messages.
    let (client_side, bridge_side) = tokio::io::duplex(64 * 1024);
    let bridge = tokio::spawn(websocket::bridge(ws, bridge_side));
    portforward_pairs(SpdyClient::over(client_side, BytesMut::new())).await;
    h.settled().await;
    bridge.await.unwrap();
}

#[tokio::test]
async fn websocket_unsupported_protocol_is_refused() {
    let h = harness().await;
    let url = h.exec(&["echo"], false, true);
    let up = upgrade_with(
        &h.server,
        &url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "v9.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(up.status, 400);
    drop(up);
    h.settled().await;
}

// ---------------------------------------------------------------------------------------------
// TLS and shutdown.

#[tokio::test]
async fn https_exec() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/streaming/testdata");
    let h = harness_with(StreamingConfig {
        tls_cert: Some(dir.join("cert.pem")),
        tls_key: Some(dir.join("key.pem")),
        ..Default::default()
    })
    .await;
    let url = h.exec(&["echo", "0"], false, false);
    assert!(url.starts_with("https://127.0.0.1:"));

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(h.server.local_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {CLIENT_GO_PROTOCOLS}\r\n\r\n",
        path_of(&url)
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let (status, _, rest) = read_head(&mut tls).await;
    assert_eq!(status, 101);
    let mut c = SpdyClient::over(tls, rest);
    let error = c.open(&[("streamtype", "error")]).await;
    c.open(&[("streamtype", "stdout")]).await;
    c.open(&[("streamtype", "stderr")]).await;
    let t = c.read_to_close().await;
    assert_eq!(t.text(error), SUCCESS);
    h.settled().await;
}

#[tokio::test]
async fn shutdown_ends_running_sessions() {
    let h = harness().await;
    let url = h.exec(&["hang"], false, true);
    let mut c = SpdyClient::new(upgrade_spdy(&h.server, &url, CLIENT_GO_PROTOCOLS).await);
    for role in ["error", "stdin", "stdout", "stderr"] {
        c.open(&[("streamtype", role)]).await;
    }
    let mut t = Transcript::default();
    c.until(&mut t, |t| t.replies.len() == 4).await;
    assert_eq!(h.running.load(Ordering::SeqCst), 1);
    h.shutdown.cancel();
    c.until(&mut t, |_| false).await;
    assert_eq!(t.goaway, Some(spdy::goaway::OK));
    h.settled().await;
    assert!(TcpStream::connect(h.server.local_addr()).await.is_err() || h.server.live() == 0);
}
