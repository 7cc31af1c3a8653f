//! Memory accounting: what a container's guests hold (linear memory, tables) against the
//! container's limit and its pod's. Every growth takes one path, [`Account::charge`], which
//! charges the container and the pod together or neither.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use wasmtime::ResourceLimiter;

use super::Account;
use crate::error::{Error, Result};

/// What a table element costs the host: a pointer.
const TABLE_ELEMENT: u64 = std::mem::size_of::<usize>() as u64;

/// Elements any one table may have, limit or none: a guest cannot take the host's memory.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Which limit refused a growth, and its figure in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Container(u64),
    Pod(u64),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Container(l) => write!(f, "the container's memory limit ({l} bytes) reached"),
            Refusal::Pod(l) => write!(
                f,
                "the pod's memory limit ({l} bytes, its containers together) reached"
            ),
        }
    }
}

/// A pod's memory: what its containers' guests hold together, against the pod's limit.
#[derive(Debug, Default)]
pub struct PodMemory {
    inner: Mutex<PodInner>,
}

#[derive(Debug, Default, Clone, Copy)]
struct PodInner {
    used: u64,
    /// The limit kubelet set for the pod (`LinuxPodSandboxConfig.resources`, or since by
    /// UpdatePodSandboxResources), moved by as much as its containers' limits were moved by
    /// updates (as kubelet resizes a pod).
    set: Option<u64>,
    /// Added to the sum of the containers' limits when kubelet set no pod limit.
    overhead: u64,
    /// The sum of the containers' limits, how many containers there are, how many unlimited.
    sum: u64,
    members: usize,
    unlimited: usize,
}

impl PodInner {
    /// kubelet's limit, else the sum of the containers' limits (and the overhead) when every
    /// container has one.
    fn limit(&self) -> Option<u64> {
        self.set.or_else(|| {
            (self.members > 0 && self.unlimited == 0)
                .then(|| self.sum.saturating_add(self.overhead))
        })
    }

    /// Counts (`join`) or stops counting a container's limit in the sum.
    fn count(&mut self, limit: Option<u64>, join: bool) {
        match (limit, join) {
            (Some(l), true) => self.sum = self.sum.saturating_add(l),
            (Some(l), false) => self.sum = self.sum.saturating_sub(l),
            (None, true) => self.unlimited += 1,
            (None, false) => self.unlimited = self.unlimited.saturating_sub(1),
        }
        match join {
            true => self.members += 1,
            false => self.members = self.members.saturating_sub(1),
        }
    }

    /// Takes the figures of `after` (what the pod holds stays), unless the limit they give
    /// would be below what the pod holds now: then that is refused, as runc refuses a limit
    /// below use, and nothing changes.
    fn adopt(&mut self, after: PodInner) -> Result<()> {
        if let Some(limit) = after.limit().filter(|l| *l < self.used) {
            return Err(Error::precondition(format!(
                "the pod's memory limit would become {limit} bytes, below the {} bytes its \
                 containers use now",
                self.used
            )));
        }
        *self = PodInner {
            used: self.used,
            ..after
        };
        Ok(())
    }
}

impl PodMemory {
    /// A pod's account: `limit` is kubelet's figure for the pod, `overhead` its overhead.
    pub fn new(limit: Option<u64>, overhead: u64) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(PodInner {
                set: limit,
                overhead,
                ..PodInner::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PodInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes the pod's guests hold together.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// The limit in force for the pod's containers together.
    pub fn limit(&self) -> Option<u64> {
        self.lock().limit()
    }

    /// The pod's own limit (kubelet's, as updates moved it), not the sum of its containers'.
    pub fn pod_limit(&self) -> Option<u64> {
        self.lock().set
    }

    /// Added to the sum of the containers' limits when the pod has no limit of its own.
    pub fn overhead(&self) -> u64 {
        self.lock().overhead
    }

    /// Sets the pod's own limit and its overhead (CRI UpdatePodSandboxResources). A limit in
    /// force below what the pod holds now is refused (FailedPrecondition) and nothing changes.
    pub fn set_pod_limit(&self, limit: Option<u64>, overhead: u64) -> Result<()> {
        let mut pod = self.lock();
        let after = PodInner {
            set: limit,
            overhead,
            ..*pod
        };
        pod.adopt(after)
    }

    pub(super) fn join(&self, limit: Option<u64>) {
        self.lock().count(limit, true);
    }

    pub(super) fn leave(&self, limit: Option<u64>) {
        self.lock().count(limit, false);
    }

    fn charge(&self, bytes: u64) -> std::result::Result<(), Refusal> {
        let mut pod = self.lock();
        match pod.limit() {
            Some(limit) if pod.used.saturating_add(bytes) > limit => Err(Refusal::Pod(limit)),
            _ => {
                pod.used += bytes;
                Ok(())
            }
        }
    }

    fn release(&self, bytes: u64) {
        let mut pod = self.lock();
        pod.used = pod.used.saturating_sub(bytes);
    }

    /// A container's limit changes from `old` to `new`: a kubelet limit moves by as much; a
    /// pod limit that would fall below what the pod holds is refused and nothing changes.
    pub(super) fn change(&self, old: Option<u64>, new: Option<u64>) -> Result<()> {
        let mut pod = self.lock();
        let mut after = *pod;
        if let (Some(set), Some(old), Some(new)) = (pod.set, old, new) {
            after.set = Some(set.saturating_add(new).saturating_sub(old));
        }
        after.count(old, false);
        after.count(new, true);
        pod.adopt(after)
    }
}

impl Account {
    /// Takes `bytes` more for the container and its pod, or neither if a limit refuses.
    /// A refusal counts in the container's `failcnt`, whichever limit refused.
    pub(super) fn charge(&self, bytes: u64) -> std::result::Result<(), Refusal> {
        let limit = self.memory_limit.lock().unwrap_or_else(|e| e.into_inner());
        let refused = match *limit {
            Some(limit) if self.memory_bytes().saturating_add(bytes) > limit => {
                Err(Refusal::Container(limit))
            }
            _ => self.pod.charge(bytes),
        };
        if refused.is_err() {
            self.failcnt.fetch_add(1, Ordering::Relaxed);
            return refused;
        }
        let held = self.memory_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak_bytes.fetch_max(held, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back `bytes` a charge took.
    pub(super) fn release(&self, bytes: u64) {
        let _ = self
            .memory_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(bytes))
            });
        self.pod.release(bytes);
    }
}

/// Counts a store's linear memory and tables against its container's account (and so its
/// pod's) and remembers a refusal, so that the trap that usually follows is reported as
/// `OOMKilled`.
pub(super) struct MemoryLimiter {
    pub(super) hit: Option<Refusal>,
    account: Arc<Account>,
    /// Bytes this store holds; a container may have several stores (one per HTTP request).
    held: u64,
    /// Of those, its tables'.
    tables: u64,
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.account.release(self.held);
        self.account
            .table_bytes
            .fetch_sub(self.tables, Ordering::Relaxed);
    }
}

impl MemoryLimiter {
    pub(super) fn new(account: Arc<Account>) -> Self {
        Self {
            hit: None,
            account,
            held: 0,
            tables: 0,
        }
    }

    fn grow(&mut self, bytes: u64) -> bool {
        match self.account.charge(bytes) {
            Ok(()) => {
                self.held += bytes;
                true
            }
            Err(refusal) => {
                self.hit = Some(refusal);
                false
            }
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(desired.saturating_sub(current) as u64))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        let bytes = desired.saturating_sub(current) as u64 * TABLE_ELEMENT;
        let grown = self.grow(bytes);
        if grown {
            self.tables += bytes;
            self.account.table_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(grown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubelet_limit_follows_container_updates_and_refuses_going_below_use() {
        let pod = PodMemory::new(Some(100), 0);
        pod.join(Some(60));
        pod.join(Some(60));
        pod.charge(90).unwrap();
        assert_eq!(pod.charge(20), Err(Refusal::Pod(100)));
        // A container raised by 20: the pod too.
        pod.change(Some(60), Some(80)).unwrap();
        assert_eq!(pod.limit(), Some(120));
        // Lowered by 40 would leave 80 for 90 in use: refused, nothing changes.
        assert!(pod.change(Some(80), Some(40)).is_err());
        assert_eq!(pod.limit(), Some(120));
        pod.release(90);
        assert_eq!(pod.used(), 0);
    }

    #[test]
    fn without_kubelet_the_limit_is_the_sum_when_every_container_has_one() {
        let pod = PodMemory::new(None, 10);
        assert_eq!(pod.limit(), None);
        pod.join(Some(50));
        assert_eq!(pod.limit(), Some(60));
        pod.join(None);
        assert_eq!(pod.limit(), None);
        pod.change(None, Some(30)).unwrap();
        assert_eq!(pod.limit(), Some(90));
        pod.leave(Some(50));
        assert_eq!(pod.limit(), Some(40));
    }

    #[test]
    fn the_pod_limit_is_raised_and_lowered_but_not_below_use() {
        let pod = PodMemory::new(Some(100), 10);
        pod.join(Some(60));
        pod.charge(70).unwrap();
        // Raised: more may be charged.
        pod.set_pod_limit(Some(200), 20).unwrap();
        assert_eq!(
            (pod.limit(), pod.pod_limit(), pod.overhead()),
            (Some(200), Some(200), 20)
        );
        pod.charge(100).unwrap();
        // Lowered to what the pod holds: taken; the next byte is refused.
        pod.set_pod_limit(Some(170), 20).unwrap();
        assert_eq!(pod.charge(1), Err(Refusal::Pod(170)));
        // Below what it holds: refused with the same error as a container update's, and
        // nothing changes (neither the limit nor the overhead).
        let e = pod.set_pod_limit(Some(169), 5).unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::FailedPrecondition, "{e}");
        assert!(e.message.contains("below the 170 bytes"), "{e}");
        assert_eq!(
            (pod.pod_limit(), pod.overhead(), pod.used()),
            (Some(170), 20, 170)
        );
        // Removed: the sum of the containers' limits and the overhead is in force, and it too
        // may not be below use.
        assert!(pod.set_pod_limit(None, 20).is_err());
        pod.release(100);
        pod.set_pod_limit(None, 20).unwrap();
        assert_eq!((pod.limit(), pod.pod_limit()), (Some(80), None));
        // A container update still moves a pod limit set again.
        pod.set_pod_limit(Some(90), 20).unwrap();
        pod.change(Some(60), Some(70)).unwrap();
        assert_eq!(pod.limit(), Some(100));
    }
}
