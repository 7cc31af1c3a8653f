//! Kubernetes remotecommand (exec/attach): which streams a session has, the status the client
//! reads at the end, terminal resizes, and the session over SPDY. The WebSocket transport
//! (`websocket.rs`) reuses everything but the SPDY part.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::spdy;
use super::spdy_conn::{IncomingStream, StreamWriter};
use super::{Backend, Stdio, TermSize};

/// Chunks the backend may queue on stdout/stderr before it waits for the client.
pub const OUTPUT_QUEUE: usize = 32;
/// Resize events queued for the backend.
const RESIZE_QUEUE: usize = 8;
/// A resize stream that sends this much without a complete JSON object is broken.
const MAX_RESIZE_MESSAGE: usize = 4096;

/// The remotecommand protocol versions (`X-Stream-Protocol-Version` over SPDY). They differ in
/// the error stream (v4: JSON `metav1.Status`; before: plain text) and resize (v3+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1,
    V2,
    V3,
    V4,
}

/// What the SPDY upgrade accepts, best first. client-go also offers `v5.channel.k8s.io` first;
/// kubelet's server does not list it for SPDY (v5 only adds the WebSocket CLOSE signal), so the
/// client settles on v4, as it does against containerd and CRI-O.
pub const SPDY_PROTOCOLS: [(&str, Version); 4] = [
    ("v4.channel.k8s.io", Version::V4),
    ("v3.channel.k8s.io", Version::V3),
    ("v2.channel.k8s.io", Version::V2),
    ("channel.k8s.io", Version::V1),
];

/// The process a session runs.
#[derive(Debug, Clone)]
pub enum Target {
    Exec {
        container_id: String,
        cmd: Vec<String>,
    },
    Attach {
        container_id: String,
    },
}

/// One exec/attach request: what to run and which standard streams the client wants.
#[derive(Debug, Clone)]
pub struct Command {
    pub target: Target,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    /// Never with a tty (the URL is refused for that combination).
    pub stderr: bool,
}

/// How the backend ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exec exited with this code; attach ended (code 0).
    Exited(i32),
    /// The backend could not run it.
    Failed(String),
}

impl Command {
    /// Runs the backend with `stdio`; returns when the backend's future does.
    pub async fn run(&self, backend: &Arc<dyn Backend>, stdio: Stdio) -> Outcome {
        let result = match &self.target {
            Target::Exec { container_id, cmd } => {
                backend
                    .exec(container_id.clone(), cmd.clone(), self.tty, stdio)
                    .await
            }
            Target::Attach { container_id } => backend
                .attach(container_id.clone(), self.tty, stdio)
                .await
                .map(|()| 0),
        };
        match result {
            Ok(code) => Outcome::Exited(code),
            Err(message) => Outcome::Failed(message),
        }
    }

    /// The `metav1.Status` kubelet's streaming server writes for this outcome.
    pub fn status(&self, outcome: &Outcome) -> Status {
        match outcome {
            Outcome::Exited(0) => Status::success(),
            Outcome::Exited(code) => {
                // containerd's exec error text, which kubelet wraps; client-go turns the status
                // into an exit code from the cause, the message is what users read.
                let cmd = match &self.target {
                    Target::Exec { cmd, .. } => cmd.join(" "),
                    Target::Attach { .. } => String::new(),
                };
                Status {
                    metadata: Metadata {},
                    status: "Failure",
                    message: format!(
                        "command terminated with non-zero exit code: error executing command [{cmd}], exit code {code}"
                    ),
                    reason: "NonZeroExitCode",
                    details: Some(Details {
                        causes: vec![Cause {
                            reason: "ExitCode",
                            message: code.to_string(),
                        }],
                    }),
                    code: 0,
                }
            }
            Outcome::Failed(error) => {
                let error = match self.target {
                    Target::Exec { .. } => format!("error executing command in container: {error}"),
                    Target::Attach { .. } => format!("error attaching to container: {error}"),
                };
                Status {
                    metadata: Metadata {},
                    status: "Failure",
                    message: format!("Internal error occurred: {error}"),
                    reason: "InternalError",
                    details: Some(Details {
                        causes: vec![Cause {
                            reason: "",
                            message: error,
                        }],
                    }),
                    code: 500,
                }
            }
        }
    }

    /// Streams the client opens: error, plus one per requested standard stream, plus resize with
    /// a tty from v3 on.
    fn expected_streams(&self, version: Version) -> usize {
        1 + usize::from(self.stdin)
            + usize::from(self.stdout)
            + usize::from(self.stderr && !self.tty)
            + usize::from(self.tty && version >= Version::V3)
    }
}

/// `metav1.Status`, fields in Go's order so the JSON reads like kubelet's.
#[derive(Debug, Serialize)]
pub struct Status {
    metadata: Metadata,
    status: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "is_zero")]
    code: u16,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

#[derive(Debug, Serialize)]
struct Metadata {}

#[derive(Debug, Serialize)]
struct Details {
    causes: Vec<Cause>,
}

#[derive(Debug, Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'static str,
    message: String,
}

impl Status {
    fn success() -> Self {
        Status {
            metadata: Metadata {},
            status: "Success",
            message: String::new(),
            reason: "",
            details: None,
            code: 0,
        }
    }

    /// What goes on the error stream: v4 the JSON status; older versions the message text, and
    /// nothing on success.
    pub fn encode(&self, version: Version) -> Option<Vec<u8>> {
        if version >= Version::V4 {
            serde_json::to_vec(self).ok()
        } else if self.status == "Success" {
            None
        } else {
            Some(self.message.clone().into_bytes())
        }
    }
}

#[derive(Deserialize)]
struct ResizeMessage {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// Parses resize events (`{"Width":w,"Height":h}`, one JSON object after another, split anywhere)
/// from the bytes of a stream.
#[derive(Default)]
pub struct ResizeDecoder {
    pending: Vec<u8>,
}

impl ResizeDecoder {
    /// Feeds bytes; returns the complete events, or `Err` once the stream is not resize JSON
    /// (then the caller stops reading it, as kubelet does).
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<TermSize>, ()> {
        self.pending.extend_from_slice(data);
        let mut events = Vec::new();
        let mut consumed = 0;
        {
            let mut iter =
                serde_json::Deserializer::from_slice(&self.pending).into_iter::<ResizeMessage>();
            loop {
                match iter.next() {
                    Some(Ok(m)) => {
                        consumed = iter.byte_offset();
                        events.push(TermSize {
                            width: m.width,
                            height: m.height,
                        });
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(_)) => return Err(()),
                    None => {
                        consumed = self.pending.len();
                        break;
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        if self.pending.len() > MAX_RESIZE_MESSAGE {
            return Err(());
        }
        Ok(events)
    }
}

/// Forwards resize events from a byte stream to the backend. Reads the stream to its end even
/// when the backend ignores resizes or the client sends garbage: a stream left unread would
/// stall the whole connection (SPDY here has no per-stream flow control).
pub async fn pump_resize(mut rx: mpsc::Receiver<Bytes>, tx: mpsc::Sender<TermSize>) {
    let mut decoder = Some(ResizeDecoder::default());
    while let Some(chunk) = rx.recv().await {
        let Some(events) = decoder.as_mut().map(|d| d.feed(&chunk)) else {
            continue;
        };
        match events {
            Ok(events) => {
                for event in events {
                    let _ = tx.try_send(event);
                }
            }
            Err(_) => decoder = None,
        }
    }
}

/// Copies the backend's output to a SPDY stream, then half-closes it. Keeps draining when the
/// client stopped reading, so the backend never blocks on a dead stream.
async fn pump_output(mut rx: mpsc::Receiver<Bytes>, mut writer: StreamWriter) {
    let mut open = true;
    while let Some(chunk) = rx.recv().await {
        if open && writer.write(chunk).await.is_err() {
            open = false;
        }
    }
    writer.finish().await;
}

/// The streams a SPDY session was given, by role.
#[derive(Default)]
struct SpdyStreams {
    error: Option<StreamWriter>,
    stdin: Option<mpsc::Receiver<Bytes>>,
    stdout: Option<StreamWriter>,
    stderr: Option<StreamWriter>,
    resize: Option<mpsc::Receiver<Bytes>>,
    /// Our halves of stdin/resize, held so the streams stay open until the end.
    held: Vec<StreamWriter>,
}

/// Waits for the client's streams, runs the backend, drains its output and writes the status.
/// Returns when the session is over; the caller then closes the connection.
pub async fn serve_spdy(
    command: Command,
    version: Version,
    backend: Arc<dyn Backend>,
    mut incoming: mpsc::Receiver<IncomingStream>,
    creation_timeout: Duration,
) {
    let expected = command.expected_streams(version);
    let mut streams = SpdyStreams::default();
    let deadline = tokio::time::sleep(creation_timeout);
    let mut deadline = std::pin::pin!(deadline);
    let mut received = 0;
    while received < expected {
        let stream = tokio::select! {
            stream = incoming.recv() => match stream {
                Some(stream) => stream,
                None => return,
            },
            () = &mut deadline => {
                tracing::debug!("streaming: timed out waiting for the client to create streams");
                return;
            }
        };
        if accept_role(&mut streams, stream, version).await {
            received += 1;
        }
    }
    let SpdyStreams {
        error,
        stdin,
        stdout,
        stderr,
        resize,
        held: _held,
    } = streams;

    // Streams opened past the expected set are refused for as long as the session runs.
    let refuse_extras = async {
        while let Some(stream) = incoming.recv().await {
            stream.refuse(spdy::rst::REFUSED_STREAM).await;
        }
        std::future::pending::<()>().await;
    };

    let (stdout_tx, stdout_pump) = output_channel(stdout);
    let (stderr_tx, stderr_pump) = output_channel(stderr.filter(|_| !command.tty));
    let (resize_tx, resize_rx) = match (command.tty, resize) {
        (true, Some(rx)) => {
            let (tx, backend_rx) = mpsc::channel(RESIZE_QUEUE);
            (Some((rx, tx)), Some(backend_rx))
        }
        _ => (None, None),
    };
    let resize_pump = async {
        if let Some((rx, tx)) = resize_tx {
            pump_resize(rx, tx).await;
        }
        std::future::pending::<()>().await;
    };
    let stdio = Stdio {
        stdin: stdin.filter(|_| command.stdin),
        stdout: stdout_tx,
        stderr: stderr_tx,
        resize: resize_rx,
    };
    let session = async {
        let (outcome, (), ()) = tokio::join!(
            command.run(&backend, stdio),
            maybe(stdout_pump),
            maybe(stderr_pump)
        );
        outcome
    };
    let outcome = tokio::select! {
        outcome = session => outcome,
        () = refuse_extras => return,
        () = resize_pump => return,
    };
    if let Some(mut error) = error {
        if let Some(bytes) = command.status(&outcome).encode(version) {
            let _ = error.write(Bytes::from(bytes)).await;
        }
        error.finish().await;
    }
}

async fn maybe(f: Option<impl std::future::Future<Output = ()>>) {
    if let Some(f) = f {
        f.await;
    }
}

/// A bounded channel for one output stream and the pump that copies it to the client.
fn output_channel(
    writer: Option<StreamWriter>,
) -> (
    Option<mpsc::Sender<Bytes>>,
    Option<impl std::future::Future<Output = ()>>,
) {
    match writer {
        Some(writer) => {
            let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
            (Some(tx), Some(pump_output(rx, writer)))
        }
        None => (None, None),
    }
}

/// Accepts a stream for its `streamtype` if the session still lacks that role; refuses unknown,
/// duplicate and (before v3) resize streams. Returns whether it counts toward the expected set.
async fn accept_role(streams: &mut SpdyStreams, stream: IncomingStream, version: Version) -> bool {
    let role = stream
        .header("streamtype")
        .unwrap_or("")
        .to_ascii_lowercase();
    let free = match role.as_str() {
        "error" => streams.error.is_none(),
        "stdin" => streams.stdin.is_none(),
        "stdout" => streams.stdout.is_none(),
        "stderr" => streams.stderr.is_none(),
        "resize" => version >= Version::V3 && streams.resize.is_none(),
        _ => false,
    };
    if !free {
        tracing::debug!(streamtype = %role, "streaming: refusing an unexpected stream");
        stream.refuse(spdy::rst::REFUSED_STREAM).await;
        return false;
    }
    let (writer, rx) = stream.accept().await;
    match role.as_str() {
        "error" => streams.error = Some(writer),
        "stdin" => {
            streams.stdin = Some(rx);
            streams.held.push(writer);
        }
        "stdout" => streams.stdout = Some(writer),
        "stderr" => streams.stderr = Some(writer),
        _ => {
            streams.resize = Some(rx);
            streams.held.push(writer);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(cmd: &[&str]) -> Command {
        Command {
            target: Target::Exec {
                container_id: "c".into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
            },
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        }
    }

    #[test]
    fn statuses_read_like_kubelets() {
        let c = exec(&["sh", "-c", "exit 3"]);
        let ok = c.status(&Outcome::Exited(0)).encode(Version::V4).unwrap();
        assert_eq!(
            String::from_utf8(ok).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let failed = c.status(&Outcome::Exited(3)).encode(Version::V4).unwrap();
        assert_eq!(
            String::from_utf8(failed).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        let internal = c
            .status(&Outcome::Failed("no such container".into()))
            .encode(Version::V4)
            .unwrap();
        assert_eq!(
            String::from_utf8(internal).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: error executing command in container: no such container","reason":"InternalError","details":{"causes":[{"message":"error executing command in container: no such container"}]},"code":500}"#
        );
        assert_eq!(c.status(&Outcome::Exited(0)).encode(Version::V3), None);
        assert_eq!(
            c.status(&Outcome::Exited(3)).encode(Version::V2).unwrap(),
            b"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
    }

    #[test]
    fn expected_streams_follow_kubelet() {
        let mut c = exec(&["x"]);
        assert_eq!(c.expected_streams(Version::V4), 3);
        c.stdin = true;
        assert_eq!(c.expected_streams(Version::V4), 4);
        c.tty = true;
        c.stderr = false;
        assert_eq!(c.expected_streams(Version::V4), 4);
        assert_eq!(c.expected_streams(Version::V2), 3);
    }

    #[test]
    fn resize_events_split_anywhere() {
        let mut d = ResizeDecoder::default();
        let all = br#"{"Width":80,"Height":24}{"Width":100,"Height":50}"#;
        let mut got = Vec::new();
        for piece in all.chunks(7) {
            got.extend(d.feed(piece).unwrap());
        }
        assert_eq!(
            got,
            vec![
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 50
                }
            ]
        );
        assert!(ResizeDecoder::default().feed(b"not json").is_err());
        assert!(ResizeDecoder::default()
            .feed(&vec![b' '; 5000])
            .unwrap()
            .is_empty());
        let mut big = b"{\"Width\":".to_vec();
        big.extend(vec![b' '; 5000]);
        assert!(ResizeDecoder::default().feed(&big).is_err());
    }
}
