//! A task's [`Output`]s and stdin channel as WASI streams.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

use crate::stdio::Output;

/// What a guest may write in one go.
const WRITE_BUDGET: usize = 64 * 1024;

/// One output stream of a guest. Writes never block a thread: a guest outrunning its reader
/// (the console of `wasmpod run`, an exec's client) waits for it asynchronously.
#[derive(Clone)]
pub(crate) struct GuestOutput(pub Output);

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = self.0.room(buf.len());
        if n == 0 {
            // Rare (this path serves only wasip3-style writers): try again shortly.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match self.0.write(&buf[..n]) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.write(&bytes).map_err(|_| StreamError::Closed)
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(self.0.room(WRITE_BUDGET))
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {
        self.0.ready().await;
    }
}

/// A guest's stdin: chunks written through its task's handle, EOF once the handle closes it.
/// Every WASI handle to stdin shares the one channel and its leftover bytes.
#[derive(Clone)]
pub(crate) struct GuestInput(Arc<Mutex<InputState>>);

struct InputState {
    rx: mpsc::Receiver<Bytes>,
    /// Received but not yet read by the guest.
    pending: Bytes,
    eof: bool,
}

impl GuestInput {
    pub(crate) fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self(Arc::new(Mutex::new(InputState {
            rx,
            pending: Bytes::new(),
            eof: false,
        })))
    }
}

impl InputState {
    /// Takes up to `size` bytes that are here now; `None` at EOF.
    fn take(&mut self, size: usize) -> Option<Bytes> {
        if self.pending.is_empty() && !self.eof {
            match self.rx.try_recv() {
                Ok(b) => self.pending = b,
                Err(mpsc::error::TryRecvError::Empty) => return Some(Bytes::new()),
                Err(mpsc::error::TryRecvError::Disconnected) => self.eof = true,
            }
        }
        if self.pending.is_empty() && self.eof {
            return None;
        }
        let n = size.min(self.pending.len());
        Some(self.pending.split_to(n))
    }
}

impl IsTerminal for GuestInput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for GuestInput {
    fn async_stream(&self) -> Box<dyn AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(self.clone())
    }
}

impl InputStream for GuestInput {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        // The guest's store runs one call at a time: the lock is free unless a `ready` of a
        // dropped poll still holds it, and then there is nothing to read yet either.
        let Ok(mut state) = self.0.try_lock() else {
            return Ok(Bytes::new());
        };
        state.take(size).ok_or(StreamError::Closed)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestInput {
    async fn ready(&mut self) {
        let mut state = self.0.lock().await;
        if state.pending.is_empty() && !state.eof {
            match state.rx.recv().await {
                Some(b) => state.pending = b,
                None => state.eof = true,
            }
        }
    }
}

impl AsyncRead for GuestInput {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Ok(mut state) = self.0.try_lock() else {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        if state.pending.is_empty() && !state.eof {
            match state.rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => state.pending = b,
                Poll::Ready(None) => state.eof = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        if let Some(b) = state.take(buf.remaining()) {
            buf.put_slice(&b);
        }
        Poll::Ready(Ok(()))
    }
}
