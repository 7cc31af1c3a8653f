//! A task's stdio through the FIFOs containerd made (its CRI plugin reads them and writes the
//! CRI log itself). Each output FIFO is fed from a bounded channel, so a slow reader makes the
//! guest wait rather than lose output; stdin is read from its FIFO until containerd closes it.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wasmpod_runtime::stdio::{Output, PIPE_CHUNKS};

/// How long a task's exit waits for its output to reach containerd's FIFOs: containerd stops
/// reading once it hears of the exit, so output still in flight then would be lost; a reader
/// that stopped reading must not hold the exit up for ever.
const DRAIN: Duration = Duration::from_secs(5);

/// The pumps of a task's output streams, waited for before its exit is told.
#[derive(Default)]
pub struct Pumps(Vec<JoinHandle<()>>);

impl Pumps {
    /// Waits (at most [`DRAIN`]) until every stream has been written out and closed, which
    /// happens once the guest that wrote it has ended.
    pub async fn drained(self) {
        let all = futures::future::join_all(self.0);
        if tokio::time::timeout(DRAIN, all).await.is_err() {
            tracing::warn!("a task's output did not drain within {DRAIN:?}");
        }
    }
}

/// An output stream to the FIFO at `path` (none when containerd gave no path), its pump
/// added to `pumps`. Opened read-write, so it opens whether or not containerd's reader is
/// there yet.
pub fn output(path: &str, pumps: &mut Pumps) -> std::io::Result<Output> {
    if path.is_empty() {
        return Ok(Output::Null);
    }
    let mut fifo = open(path)?.open_sender(Path::new(path))?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(PIPE_CHUNKS);
    pumps.0.push(tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if fifo.write_all(&chunk).await.is_err() {
                break;
            }
        }
    }));
    Ok(Output::Pipe(tx))
}

/// Chunks read from the stdin FIFO at `path`, until the returned task is aborted (containerd's
/// CloseIO): the FIFO is held open read-write, so it never reports an end of its own.
pub fn input(path: &str) -> std::io::Result<(mpsc::Receiver<Bytes>, JoinHandle<()>)> {
    let mut fifo = open(path)?.open_receiver(Path::new(path))?;
    let (tx, rx) = mpsc::channel::<Bytes>(PIPE_CHUNKS);
    let pump = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match fifo.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok((rx, pump))
}

fn open(path: &str) -> std::io::Result<pipe::OpenOptions> {
    if !path.starts_with('/') {
        return Err(std::io::Error::other(format!(
            "stdio {path:?}: wasmpod takes FIFO paths only (not binary:// or file:// loggers)"
        )));
    }
    let mut o = pipe::OpenOptions::new();
    o.read_write(true);
    Ok(o)
}
