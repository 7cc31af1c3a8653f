//! How a container run ended.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The exit code wasmpod reports for a guest it killed (128 + SIGKILL, as for a process).
pub const KILLED_CODE: i32 = 137;
/// The exit code of a WASI command stopped by the runtime: it cannot catch the SIGTERM a stop
/// means, so it ends as a process without a handler would (128 + SIGTERM).
pub const TERMINATED_CODE: i32 = 143;
/// The exit code of a guest that trapped (128 + SIGABRT, as `wasmtime run` reports it).
pub const TRAP_CODE: i32 = 134;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// Exit code 0.
    Completed,
    /// A non-zero exit code or a trap.
    Error,
    /// Stopped by the runtime after its grace period.
    Killed,
    /// Trapped after its memory limit refused to grow memory.
    OomKilled,
    /// Killed because the pod exceeded a volume's size limit.
    Evicted,
}

impl ExitReason {
    /// The reason string Kubernetes shows.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::Killed => "Killed",
            ExitReason::OomKilled => "OOMKilled",
            ExitReason::Evicted => "Evicted",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub code: i32,
    pub reason: ExitReason,
    /// A person-readable detail (the trap message, why it was killed), possibly empty.
    pub message: String,
}

impl Exit {
    /// The exit of a guest that ended by itself with `code`.
    pub fn code(code: i32) -> Self {
        let reason = if code == 0 {
            ExitReason::Completed
        } else {
            ExitReason::Error
        };
        Self {
            code,
            reason,
            message: String::new(),
        }
    }
    pub fn killed(reason: ExitReason, message: impl Into<String>) -> Self {
        Self {
            code: KILLED_CODE,
            reason,
            message: message.into(),
        }
    }
    /// The exit of a WASI command ended by a stop, reported as containerd reports a process
    /// that SIGTERM killed.
    pub fn terminated() -> Self {
        Self {
            code: TERMINATED_CODE,
            reason: ExitReason::Error,
            message: "terminated by a stop (a WASI command cannot catch SIGTERM)".into(),
        }
    }
    /// The exit of a guest stopped at its memory limit: 137 as for a process the kernel's
    /// OOM killer ends with SIGKILL, which is what kubelet and critest expect with `OOMKilled`.
    pub fn oom_killed(message: impl Into<String>) -> Self {
        Self::killed(ExitReason::OomKilled, message)
    }
    pub fn success(&self) -> bool {
        self.code == 0
    }
}
