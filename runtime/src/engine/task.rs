//! The handle of a running guest (a container's or an exec's): wait for its exit, kill it,
//! feed and close its stdin. Front ends hold this, never a wasmtime type.

use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::exit::Exit;

pub struct Task {
    kill: Mutex<Option<oneshot::Sender<Exit>>>,
    exit: watch::Receiver<Option<Exit>>,
    stdin: Mutex<Option<mpsc::Sender<Bytes>>>,
}

/// The task's side of a [`Task`]: how it learns of a kill and tells its exit.
pub(super) struct TaskEnds {
    pub kill: oneshot::Receiver<Exit>,
    pub exit: watch::Sender<Option<Exit>>,
    pub stdin: Option<mpsc::Receiver<Bytes>>,
}

impl Task {
    pub(super) fn new(stdin: bool) -> (Self, TaskEnds) {
        let (kill_tx, kill) = oneshot::channel();
        let (exit, exit_rx) = watch::channel(None);
        let (stdin_tx, stdin) = match stdin {
            true => {
                let (tx, rx) = mpsc::channel(crate::stdio::STDIN_CHUNKS);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let task = Self {
            kill: Mutex::new(Some(kill_tx)),
            exit: exit_rx,
            stdin: Mutex::new(stdin_tx),
        };
        (task, TaskEnds { kill, exit, stdin })
    }

    /// A task that ended before it ran (a command that cannot run).
    pub fn exited(exit: Exit) -> Self {
        let (task, ends) = Self::new(false);
        ends.exit.send_replace(Some(exit));
        task
    }

    /// How the guest ended, once it has.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Waits for the guest to end.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.clone();
        let exit = match rx.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone(),
            // The task always publishes its exit before dropping the sender.
            Err(_) => unreachable!("a guest task ended without an exit"),
        };
        exit.unwrap_or_else(|| unreachable!("waited for an exit"))
    }

    /// Ends the guest at its next yield, reporting `exit` (a no-op once it is ending).
    pub fn kill(&self, exit: Exit) {
        let kill = self.kill.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(kill) = kill {
            let _ = kill.send(exit);
        }
    }

    /// Gives the guest more stdin, waiting while it has not read what it was given.
    pub async fn write_stdin(&self, bytes: Bytes) -> Result<()> {
        let tx = self.stdin.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let closed = || Error::precondition("the guest's stdin is closed");
        tx.ok_or_else(closed)?
            .send(bytes)
            .await
            .map_err(|_| closed())
    }

    /// Ends the guest's stdin: once it has read what is buffered, it reads EOF.
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Copies `input` to the guest's stdin until either ends; closes stdin after `input`'s
    /// end when `close_at_end` (an exec's stdin, `stdinOnce`).
    pub async fn feed_stdin(&self, mut input: mpsc::Receiver<Bytes>, close_at_end: bool) {
        while let Some(bytes) = input.recv().await {
            if self.write_stdin(bytes).await.is_err() {
                return;
            }
        }
        if close_at_end {
            self.close_stdin();
        }
    }
}
