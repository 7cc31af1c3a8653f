//! How long the phases of a pod start take inside the runtime (state write, log directory,
//! network attach, code load, …), reported as `trace` events of target [`TARGET`] with two
//! fields, `phase` (a static name) and `seconds`.
//!
//! Events rather than spans: a phase may end in another task than the one it began in (a
//! guest's first log line), and an event costs no span bookkeeping on the hot path. Nothing
//! here knows who listens: `wasmpod serve` turns the events into a Prometheus histogram
//! (`wasmpod_phase_duration_seconds`); with no subscriber interested, a phase costs two clock
//! reads.

use std::time::Instant;

/// The `tracing` target of phase events.
pub const TARGET: &str = "wasmpod::phase";

/// A phase being timed: reports its duration when dropped, unless cancelled.
#[must_use = "a phase is timed until the timer is dropped"]
pub struct Timer {
    /// `None` once cancelled.
    phase: Option<&'static str>,
    started: Instant,
}

impl Timer {
    pub fn start(phase: &'static str) -> Self {
        Self {
            phase: Some(phase),
            started: Instant::now(),
        }
    }

    /// Drops the timer without reporting: the phase did not happen (a guest that never wrote).
    pub fn cancel(mut self) {
        self.phase = None;
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(phase) = self.phase {
            // One call site for every phase: its interest is cached once.
            tracing::trace!(
                target: TARGET,
                phase,
                seconds = self.started.elapsed().as_secs_f64()
            );
        }
    }
}
