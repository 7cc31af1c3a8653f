//! The life of a task or exec as containerd sees it: created, running, stopped with a status,
//! and the wait for that.

use std::time::SystemTime;

use tokio::sync::watch;

/// Where a task is in its life, as containerd sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Phase {
    Created,
    Running,
    Stopped { code: u32, at: SystemTime },
}

/// A sandbox, a container or an exec: what State and Wait report.
pub(super) struct Process {
    pub(super) phase: watch::Sender<Phase>,
    pub(super) stdin: String,
    pub(super) stdout: String,
    pub(super) stderr: String,
    pub(super) terminal: bool,
}

impl Process {
    pub(super) fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Self {
        Self {
            phase: watch::Sender::new(Phase::Created),
            stdin: stdin.to_owned(),
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
            terminal,
        }
    }

    pub(super) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Records the exit once; false if it was already recorded.
    pub(super) fn stopped(&self, code: u32, at: SystemTime) -> bool {
        self.phase.send_if_modified(|p| match p {
            Phase::Stopped { .. } => false,
            _ => {
                *p = Phase::Stopped { code, at };
                true
            }
        })
    }

    pub(super) async fn wait(&self) -> (u32, SystemTime) {
        let mut rx = self.phase.subscribe();
        loop {
            if let Phase::Stopped { code, at } = *rx.borrow_and_update() {
                return (code, at);
            }
            if rx.changed().await.is_err() {
                return (255, SystemTime::now());
            }
        }
    }
}
