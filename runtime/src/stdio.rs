//! Where a guest's standard streams go, chosen per task: the container's CRI log (which its
//! attachers watch too), a channel a front end drains (an exec's stream, ExecSync's capture,
//! containerd's FIFOs), or nowhere. No wasmtime types here: the engine adapts these to WASI.

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::log::{ContainerLog, Stream};

/// One output stream of a guest.
#[derive(Clone)]
pub enum Output {
    /// A stream of the container's log; attachers receive its bytes as they are written.
    Log(ContainerLog, Stream),
    /// Chunks for a front end to drain. A full channel makes the guest wait (asynchronously);
    /// a dropped receiver makes its writes fail as writes to a closed pipe do.
    Pipe(mpsc::Sender<Bytes>),
    /// Discarded.
    Null,
}

/// The three standard streams of a task.
pub struct Stdio {
    /// The guest reads stdin from the task's [`Task::write_stdin`](crate::engine::Task);
    /// without it, stdin is empty.
    pub stdin: bool,
    pub stdout: Output,
    pub stderr: Output,
}

impl Stdio {
    /// Both streams on the same output, as a terminal shows them (WASI has no terminal: `tty`
    /// means merged output).
    pub fn merged(stdin: bool, out: Output) -> Self {
        Self {
            stdin,
            stdout: out.clone(),
            stderr: out,
        }
    }
}

/// Chunks a front end's pipe holds before the guest waits for it.
pub const PIPE_CHUNKS: usize = 16;

/// Why a write did not land.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Closed;

impl Output {
    /// How many of `want` bytes the guest may write now without waiting.
    pub(crate) fn room(&self, want: usize) -> usize {
        match self {
            Output::Log(log, _) => log.live_room(want),
            // A closed pipe takes the write, which then fails.
            Output::Pipe(tx) if tx.capacity() == 0 && !tx.is_closed() => 0,
            Output::Pipe(_) | Output::Null => want,
        }
    }

    /// Waits until [`Output::room`] is not zero.
    pub(crate) async fn ready(&self) {
        match self {
            Output::Log(log, _) => log.wait_for_live_room().await,
            Output::Pipe(tx) => drop(tx.reserve().await),
            Output::Null => {}
        }
    }

    /// Writes after [`Output::room`] said there is room: the guest's store is the only writer
    /// of its outputs and runs one call at a time, so the room is still there.
    pub(crate) fn write(&self, bytes: &[u8]) -> Result<(), Closed> {
        match self {
            Output::Log(log, stream) => {
                log.write(*stream, bytes);
                Ok(())
            }
            Output::Pipe(tx) => match tx.try_send(Bytes::copy_from_slice(bytes)) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
                // Not expected (see above); the guest's bytes must not vanish silently.
                Err(mpsc::error::TrySendError::Full(b)) => {
                    let tx = tx.clone();
                    tokio::spawn(async move { tx.send(b).await });
                    Ok(())
                }
            },
            Output::Null => Ok(()),
        }
    }

    /// A line on behalf of the runtime (a trap, where a handler is served), never held back
    /// by a full reader: it is dropped instead.
    pub(crate) fn runtime_line(&self, text: &str) {
        match self {
            Output::Log(log, stream) => log.runtime_line(*stream, text),
            Output::Pipe(tx) => {
                let _ = tx.try_send(Bytes::from(format!("{text}\n")));
            }
            Output::Null => {}
        }
    }

    /// Records what is left of an unterminated line once the guest has exited.
    pub(crate) fn finish(&self) {
        if let Output::Log(log, _) = self {
            log.finish();
        }
    }
}

/// What a guest's stdin channel holds before a writer waits.
pub(crate) const STDIN_CHUNKS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_pipe_has_no_room_until_drained_and_a_closed_one_fails() {
        let (tx, mut rx) = mpsc::channel(1);
        let out = Output::Pipe(tx);
        assert_eq!(out.room(10), 10);
        out.write(b"a").unwrap();
        assert_eq!(out.room(10), 0);
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"a"));
        out.ready().await;
        assert_eq!(out.room(10), 10);
        drop(rx);
        assert_eq!(out.room(10), 10);
        assert_eq!(out.write(b"b"), Err(Closed));
    }
}
