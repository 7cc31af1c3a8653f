//! The server side of one SPDY/3.1 connection: a reader that turns the client's frames into
//! streams and channels, a writer that owns the outbound zlib context, and the orchestration
//! that ends both (and the protocol handler on top) when the connection ends.
//!
//! Everything runs inside the one future [`serve`] returns: dropping it drops every stream, so
//! nothing outlives the connection. There is no flow control (spdystream has none); back-pressure
//! comes from bounded channels: a stream whose consumer is slow stalls the reader, which stalls
//! the client's TCP sends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::spdy::{self, Frame, FrameDecoder, FrameEncoder, Headers, SpdyError};

/// Frames queued for the writer. Bounded: a client that does not read stalls whoever writes.
const OUTGOING_QUEUE: usize = 64;
/// Chunks buffered per inbound stream before the reader waits for the consumer.
const INBOUND_QUEUE: usize = 32;
/// New streams waiting for the protocol handler to accept or refuse them.
const INCOMING_QUEUE: usize = 16;
/// Open streams per connection; more are refused (port-forward opens two per TCP connection).
pub const MAX_STREAMS: usize = 1024;
/// How long a closing connection keeps reading (and discarding) so the client sees our last
/// frames instead of a reset from unread data.
const LINGER: Duration = Duration::from_secs(5);
/// How long an erroring connection waits for its GOAWAY to be written.
const GOAWAY_FLUSH: Duration = Duration::from_secs(2);

pub enum Outgoing {
    Frame(Frame),
    /// Flush, shut down the write side and stop.
    Close,
}

/// State a stream shares between the reader and whoever holds the stream.
struct StreamShared {
    /// Cancelled when the client resets the stream or the connection goes away.
    reset: CancellationToken,
}

/// A stream the client opened; the handler must [`accept`](Self::accept) it (SYN_REPLY) or
/// [`refuse`](Self::refuse) it (RST_STREAM). Dropping it refuses nothing: the stream just sees no
/// reply, so handlers always do one or the other.
pub struct IncomingStream {
    pub id: u32,
    pub headers: Headers,
    data: mpsc::Receiver<Bytes>,
    shared: Arc<StreamShared>,
    out: mpsc::Sender<Outgoing>,
}

impl IncomingStream {
    pub fn header(&self, name: &str) -> Option<&str> {
        spdy::header(&self.headers, name)
    }

    /// Replies to the stream; returns our writing half and the client's data (which ends at the
    /// client's FIN, its RST, or the end of the connection).
    pub async fn accept(self) -> (StreamWriter, mpsc::Receiver<Bytes>) {
        let writer = StreamWriter {
            id: self.id,
            out: self.out,
            shared: self.shared,
            finished: false,
        };
        writer
            .send(Frame::SynReply {
                stream_id: self.id,
                flags: 0,
                headers: Vec::new(),
            })
            .await;
        (writer, self.data)
    }

    pub async fn refuse(self, status: u32) {
        let _ = self
            .out
            .send(Outgoing::Frame(Frame::RstStream {
                stream_id: self.id,
                status,
            }))
            .await;
    }
}

/// Our half of an accepted stream.
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Outgoing>,
    shared: Arc<StreamShared>,
    finished: bool,
}

/// The stream or the connection is gone; nothing more can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream closed")]
pub struct StreamClosed;

impl StreamWriter {
    async fn send(&self, frame: Frame) -> bool {
        !self.shared.reset.is_cancelled() && self.out.send(Outgoing::Frame(frame)).await.is_ok()
    }

    /// Sends `data` in frames of at most [`spdy::DATA_CHUNK`] bytes.
    pub async fn write(&self, mut data: Bytes) -> Result<(), StreamClosed> {
        if self.finished {
            return Err(StreamClosed);
        }
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(spdy::DATA_CHUNK));
            let frame = Frame::Data {
                stream_id: self.id,
                fin: false,
                data: chunk,
            };
            if !self.send(frame).await {
                return Err(StreamClosed);
            }
        }
        Ok(())
    }

    /// Half-closes our side (DATA with FIN). Idempotent.
    pub async fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.send(Frame::Data {
            stream_id: self.id,
            fin: true,
            data: Bytes::new(),
        })
        .await;
    }

    /// Cancelled when the client resets this stream or the connection ends.
    pub fn reset_token(&self) -> CancellationToken {
        self.shared.reset.clone()
    }
}

/// Time of the last frame that carried something (data or a new stream), for the idle timeout.
#[derive(Clone)]
pub struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    /// Resolves once nothing has happened for `idle`.
    pub async fn idle(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

enum ReadEnd {
    /// The client closed or the socket failed: nobody to tell anything.
    Gone,
    /// The client broke the protocol: tell it with GOAWAY, then close.
    Protocol(SpdyError),
}

/// Runs one SPDY connection with `handler` on top until the handler is done (then closes
/// gracefully: GOAWAY, write side shut down, linger), the client goes away, the client breaks the
/// protocol, nothing moves for `idle_timeout`, or `shutdown` fires.
pub async fn serve<IO, F, Fut>(
    io: IO,
    idle_timeout: Duration,
    shutdown: CancellationToken,
    handler: F,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    F: FnOnce(mpsc::Receiver<IncomingStream>) -> Fut,
    Fut: Future<Output = ()>,
{
    let (rd, wr) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel(OUTGOING_QUEUE);
    let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
    let activity = Activity::new();
    let last_stream = Arc::new(AtomicU32::new(0));
    let mut reader = std::pin::pin!(read_loop(
        rd,
        out_tx.clone(),
        incoming_tx,
        activity.clone(),
        last_stream.clone()
    ));
    let mut writer = std::pin::pin!(write_loop(wr, out_rx, activity.clone()));
    let handler = handler(incoming_rx);
    let mut handler = std::pin::pin!(handler);

    let goaway = |status| {
        Outgoing::Frame(Frame::GoAway {
            last_good_stream_id: last_stream.load(Ordering::Relaxed),
            status,
        })
    };
    // Phase 1: the protocol runs.
    let graceful = tokio::select! {
        end = &mut reader => {
            if let ReadEnd::Protocol(e) = end {
                tracing::debug!(error = %e, "streaming: closing a SPDY connection that broke the protocol");
                let _ = out_tx.try_send(goaway(spdy::goaway::PROTOCOL_ERROR));
                let _ = out_tx.try_send(Outgoing::Close);
                let _ = tokio::time::timeout(GOAWAY_FLUSH, &mut writer).await;
            }
            return;
        }
        result = &mut writer => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "streaming: SPDY write failed");
            }
            return;
        }
        () = &mut handler => true,
        () = activity.idle(idle_timeout) => {
            tracing::debug!("streaming: closing an idle SPDY connection");
            false
        }
        () = shutdown.cancelled() => false,
    };
    if !graceful {
        let _ = out_tx.try_send(goaway(spdy::goaway::OK));
        let _ = out_tx.try_send(Outgoing::Close);
        let _ = tokio::time::timeout(GOAWAY_FLUSH, &mut writer).await;
        return;
    }
    // Phase 2: the handler queued its last frames; write them out while the client may still be
    // reading them, as long as the writer makes progress.
    let _ = out_tx.send(goaway(spdy::goaway::OK)).await;
    let _ = out_tx.send(Outgoing::Close).await;
    drop(out_tx);
    tokio::select! {
        _ = &mut writer => {}
        _ = &mut reader => return,
        () = activity.idle(idle_timeout) => return,
        () = shutdown.cancelled() => return,
    }
    // Phase 3: our side is shut; read until the client closes so it gets everything.
    tokio::select! {
        _ = &mut reader => {}
        () = tokio::time::sleep(LINGER) => {}
        () = shutdown.cancelled() => {}
    }
}

async fn write_loop<W: AsyncWrite>(
    wr: W,
    mut rx: mpsc::Receiver<Outgoing>,
    activity: Activity,
) -> std::io::Result<()> {
    let mut wr = std::pin::pin!(wr);
    let mut encoder = FrameEncoder::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut close = false;
        let mut next = Some(first);
        // Batch what is queued into one write.
        while let Some(cmd) = next.take() {
            match cmd {
                Outgoing::Close => {
                    close = true;
                    break;
                }
                Outgoing::Frame(frame) => {
                    if matches!(frame, Frame::Data { .. }) {
                        activity.touch();
                    }
                    encoder
                        .encode(&frame, &mut buf)
                        .map_err(std::io::Error::other)?;
                }
            }
            if buf.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            wr.write_all(&buf).await?;
            buf.clear();
            wr.flush().await?;
        }
        if close {
            return wr.shutdown().await;
        }
    }
    Ok(())
}

/// What the reader keeps per stream.
struct Inbound {
    /// None once the client half-closed.
    tx: Option<mpsc::Sender<Bytes>>,
    shared: Weak<StreamShared>,
    reset: CancellationToken,
}

impl Inbound {
    /// A stream is open while the client may still send or someone still holds it.
    fn open(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| !tx.is_closed()) || self.shared.strong_count() > 0
    }
}

async fn read_loop<R: AsyncRead>(
    rd: R,
    out: mpsc::Sender<Outgoing>,
    incoming: mpsc::Sender<IncomingStream>,
    activity: Activity,
    last_stream: Arc<AtomicU32>,
) -> ReadEnd {
    let mut rd = std::pin::pin!(rd);
    let mut decoder = FrameDecoder::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut streams: HashMap<u32, Inbound> = HashMap::new();
    let end = loop {
        let frame = match decoder.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                if buf.capacity() - buf.len() < 16 * 1024 {
                    buf.reserve(64 * 1024);
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break ReadEnd::Gone,
                    Ok(_) => continue,
                }
            }
            Err(e) => break ReadEnd::Protocol(e),
        };
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                let last = last_stream.load(Ordering::Relaxed);
                if stream_id % 2 == 0 || stream_id <= last {
                    break ReadEnd::Protocol(SpdyError::Protocol(format!(
                        "client stream id {stream_id} after {last}"
                    )));
                }
                last_stream.store(stream_id, Ordering::Relaxed);
                activity.touch();
                if streams.len() >= MAX_STREAMS {
                    streams.retain(|_, s| s.open());
                }
                if streams.len() >= MAX_STREAMS {
                    let rst = Frame::RstStream {
                        stream_id,
                        status: spdy::rst::REFUSED_STREAM,
                    };
                    if out.send(Outgoing::Frame(rst)).await.is_err() {
                        break ReadEnd::Gone;
                    }
                    continue;
                }
                let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
                let reset = CancellationToken::new();
                let shared = Arc::new(StreamShared {
                    reset: reset.clone(),
                });
                streams.insert(
                    stream_id,
                    Inbound {
                        tx: (flags & spdy::FLAG_FIN == 0).then_some(tx),
                        shared: Arc::downgrade(&shared),
                        reset,
                    },
                );
                let stream = IncomingStream {
                    id: stream_id,
                    headers,
                    data: rx,
                    shared,
                    out: out.clone(),
                };
                // A handler that stopped listening for streams refuses them by not being there.
                if let Err(mpsc::error::SendError(stream)) = incoming.send(stream).await {
                    stream.refuse(spdy::rst::REFUSED_STREAM).await;
                }
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                let Some(entry) = streams.get_mut(&stream_id) else {
                    // Data racing our RST, or for a stream we never had: dropped.
                    continue;
                };
                if !data.is_empty() {
                    activity.touch();
                    if let Some(tx) = &entry.tx {
                        if tx.send(data).await.is_err() {
                            // Nobody reads this stream any more.
                            entry.tx = None;
                        }
                    }
                }
                if fin {
                    entry.tx = None;
                }
                if !entry.open() {
                    streams.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some(entry) = streams.remove(&stream_id) {
                    entry.reset.cancel();
                }
            }
            Frame::Ping(id) => {
                // Odd ids are the client's own pings; even ones would answer ours (we send none).
                if id % 2 == 1 && out.send(Outgoing::Frame(Frame::Ping(id))).await.is_err() {
                    break ReadEnd::Gone;
                }
            }
            Frame::GoAway { .. } => {
                // The client opens no more streams; the ones open carry on.
            }
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings
            | Frame::WindowUpdate { .. }
            | Frame::Unknown(_) => {}
        }
    };
    for (_, entry) in streams.drain() {
        entry.reset.cancel();
    }
    end
}
