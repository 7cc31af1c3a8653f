//! CPU limits and shares without cgroups, enforced where guests run: every poll of a guest's
//! task is timed on the worker thread's CPU clock and charged to its container; a container
//! over its limit, or ahead of its share under contention, is not polled again until it is
//! due, which a tokio timer says (no thread of its own).
//!
//! - **Limit** (`cpu_quota`/`cpu_period`, CFS bandwidth): a token bucket per container, filled
//!   at quota/period of a core and holding at most one quota. A poll runs until the next epoch
//!   tick at most, so a container overshoots by up to a tick; the bucket goes into debt and
//!   the next poll waits until it is repaid, which keeps the long-run rate exact.
//! - **Shares** (`cpu_shares`, CFS weight): a container's virtual runtime grows by its CPU time
//!   × 1024 / shares. Only while more guests are CPU-bound than there are worker threads, the
//!   most advanced of them (as many as there are guests too many) sleep for half a slice when
//!   they are more than a slice ahead of the least advanced. Guests that just woke from I/O
//!   are never held back, and without contention nobody is (a guest cannot use more than one
//!   worker).
//!
//! This is done around the task's poll rather than in the epoch callback (wasmtime's
//! `UpdateDeadline::YieldCustom` could sleep there too) so that host calls and wasi:http
//! request handling are charged as well, and a held guest's kill still lands at once.
//!
//! Why epochs and a CPU clock rather than fuel: fuel counts instructions, not time (a host
//! call or a cache miss costs no more fuel than an add), so a "0.2 CPU" limit in fuel would
//! need calibrating per machine and per program, and it slows all code down. Measured on this
//! machine (see `fuel_vs_epoch_cost` below, README "CPU"): the epoch checks cost a few percent
//! of guest speed, fuel several times that; thread CPU time costs about a microsecond per poll.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Sleep};

use super::EPOCH_TICK;
use crate::error::{Error, Result};

/// cgroup v1's default `cpu.cfs_period_us`.
pub const DEFAULT_PERIOD_US: u64 = 100_000;
/// The kernel's bounds on `cpu.cfs_period_us` (1 ms to 1 s), which runc applies too.
pub const PERIOD_US: std::ops::RangeInclusive<u64> = 1_000..=1_000_000;
/// The kernel's bounds on `cpu.cfs_quota_us`: at least 1 ms, at most its `max_cfs_runtime`.
pub const QUOTA_US: std::ops::RangeInclusive<u64> = 1_000..=(1 << 44) - 1;
/// One CPU's weight (cgroup v1 `cpu.shares`), what a container that asks nothing gets.
pub const DEFAULT_SHARES: u64 = 1024;
/// The kernel's bounds on `cpu.shares`.
pub const SHARES: std::ops::RangeInclusive<u64> = 2..=262_144;

/// How far (in CPU time at 1024 shares) a guest may run ahead of its share before it yields
/// its worker, and how long it then sleeps.
const SLICE: Duration = EPOCH_TICK;

/// A container's CPU limits, in the units of the CRI and of cgroup v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuLimits {
    /// At most `quota_us` µs of CPU time every `period_us`; `None` is no limit.
    pub quota_us: Option<u64>,
    pub period_us: u64,
    /// Weight under contention: 1024 is one CPU's request.
    pub shares: u64,
}

impl Default for CpuLimits {
    fn default() -> Self {
        Self {
            quota_us: None,
            period_us: DEFAULT_PERIOD_US,
            shares: DEFAULT_SHARES,
        }
    }
}

impl CpuLimits {
    /// Refuses what the kernel would refuse (see the bounds above).
    pub fn check(&self) -> Result<()> {
        if !PERIOD_US.contains(&self.period_us) {
            return Err(Error::invalid(format!(
                "cpu period {} µs is outside 1000..=1000000 µs (1 ms to 1 s)",
                self.period_us
            )));
        }
        if let Some(q) = self.quota_us.filter(|q| !QUOTA_US.contains(q)) {
            return Err(Error::invalid(format!(
                "cpu quota {q} µs is outside {}..={} µs (-1 or 0 mean no limit)",
                QUOTA_US.start(),
                QUOTA_US.end()
            )));
        }
        if !SHARES.contains(&self.shares) {
            return Err(Error::invalid(format!(
                "cpu shares {} are outside {}..={} (0 means the default, 1024)",
                self.shares,
                SHARES.start(),
                SHARES.end()
            )));
        }
        Ok(())
    }

    /// The limit in cores (quota / period), if any.
    pub fn cores(&self) -> Option<f64> {
        self.quota_us.map(|q| q as f64 / self.period_us as f64)
    }
}

/// The CPU side of one container's account: what it used, its limits and its standing.
pub(super) struct CpuAccount {
    inner: Arc<Inner>,
    sched: Arc<Scheduler>,
}

struct Inner {
    id: u64,
    used_nanos: AtomicU64,
    /// Of `used_nanos`, the kernel's part, and the page faults taken during the polls.
    system_nanos: AtomicU64,
    minor_faults: AtomicU64,
    major_faults: AtomicU64,
    /// CPU time × 1024 / shares, in nanoseconds.
    vruntime: AtomicU64,
    /// Copies of `state.limits`' shares and whether it has a quota: a container without a
    /// quota is charged without taking the lock.
    shares: AtomicU64,
    limited: AtomicBool,
    state: Mutex<State>,
}

struct State {
    limits: CpuLimits,
    /// Nanoseconds of CPU the bandwidth bucket holds; negative is debt.
    tokens: i64,
    filled_at: Instant,
    periods: Periods,
}

/// cgroup `cpu.stat`'s bandwidth figures for a container with a quota: enforcement periods
/// (`period_us` long, counted from when the quota was set) in which its guests ran or were
/// held, those in which they were held for the limit, and how long they were held.
#[derive(Debug, Clone, Copy)]
struct Periods {
    origin: Instant,
    /// The first period index not counted yet, as active and as throttled.
    next: u64,
    next_throttled: u64,
    total: u64,
    throttled: u64,
    throttled_time: Duration,
}

impl Periods {
    fn new(origin: Instant) -> Self {
        Self {
            origin,
            next: 0,
            next_throttled: 0,
            total: 0,
            throttled: 0,
            throttled_time: Duration::ZERO,
        }
    }

    fn index(&self, at: Instant, period_us: u64) -> u64 {
        (at.saturating_duration_since(self.origin).as_micros() / u128::from(period_us)) as u64
    }

    /// Counts the periods `from..=to` touch (each once), as throttled too when `throttled`.
    fn mark(&mut self, from: Instant, to: Instant, period_us: u64, throttled: bool) {
        let (first, last) = (self.index(from, period_us), self.index(to, period_us));
        self.total += (last + 1).saturating_sub(first.max(self.next));
        self.next = self.next.max(last + 1);
        if throttled {
            self.throttled += (last + 1).saturating_sub(first.max(self.next_throttled));
            self.next_throttled = self.next_throttled.max(last + 1);
            self.throttled_time += to.saturating_duration_since(from);
        }
    }
}

/// What a container's guests have used of the CPU, with the figures of cgroup `cpu.stat` and
/// `memory.stat` that come from the same polls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuUsage {
    pub used: Duration,
    /// Of `used`, time in the kernel (host calls' system calls, page faults), as the thread's
    /// rusage split it.
    pub system: Duration,
    pub minor_faults: u64,
    pub major_faults: u64,
    /// Bandwidth periods while it had a quota (see [`Periods`]); zero without one.
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled: Duration,
}

impl State {
    /// Adds what the quota earned since the last fill, up to one quota.
    fn fill(&mut self, now: Instant) {
        let Some(quota) = self.limits.quota_us else {
            return;
        };
        let elapsed = now.saturating_duration_since(self.filled_at).as_nanos();
        let earned = elapsed * u128::from(quota) / u128::from(self.limits.period_us);
        let cap = i128::from(quota) * 1000;
        self.tokens = (i128::from(self.tokens) + earned as i128).min(cap) as i64;
        self.filled_at = now;
    }

    /// How long until the bucket is out of debt; `None` when the guest may run now.
    fn debt_wait(&self) -> Option<Duration> {
        let quota = self.limits.quota_us?;
        (self.tokens <= 0).then(|| {
            let owed = (1 - i128::from(self.tokens)) as u128;
            Duration::from_nanos(
                (owed * u128::from(self.limits.period_us) / u128::from(quota)) as u64,
            )
        })
    }
}

impl CpuAccount {
    pub(super) fn new(limits: CpuLimits, sched: Arc<Scheduler>) -> Self {
        let inner = Inner {
            id: sched.next_id.fetch_add(1, Ordering::Relaxed),
            used_nanos: AtomicU64::new(0),
            system_nanos: AtomicU64::new(0),
            minor_faults: AtomicU64::new(0),
            major_faults: AtomicU64::new(0),
            vruntime: AtomicU64::new(0),
            shares: AtomicU64::new(limits.shares),
            limited: AtomicBool::new(limits.quota_us.is_some()),
            state: Mutex::new(State {
                limits,
                tokens: full_bucket(&limits),
                filled_at: Instant::now(),
                periods: Periods::new(Instant::now()),
            }),
        };
        Self {
            inner: Arc::new(inner),
            sched,
        }
    }

    /// CPU time the container's guests have used.
    pub(super) fn used(&self) -> Duration {
        Duration::from_nanos(self.inner.used_nanos.load(Ordering::Relaxed))
    }

    /// CPU time with its split, faults and throttling.
    pub(super) fn usage(&self) -> CpuUsage {
        let periods = self.inner.lock().periods;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CpuUsage {
            used: self.used(),
            system: Duration::from_nanos(load(&self.inner.system_nanos)),
            minor_faults: load(&self.inner.minor_faults),
            major_faults: load(&self.inner.major_faults),
            periods: periods.total,
            throttled_periods: periods.throttled,
            throttled: periods.throttled_time,
        }
    }

    pub(super) fn limits(&self) -> CpuLimits {
        self.inner.lock().limits
    }

    /// New limits, applied from the next poll on; debt is kept, credit capped at the new quota.
    pub(super) fn set_limits(&self, limits: CpuLimits) {
        let mut state = self.inner.lock();
        state.fill(Instant::now());
        state.tokens = match state.limits.quota_us {
            None => full_bucket(&limits),
            Some(_) => state.tokens.min(full_bucket(&limits)),
        };
        if state.limits.period_us != limits.period_us
            || state.limits.quota_us.is_none() != limits.quota_us.is_none()
        {
            // Periods of another length (or a quota anew): counted from now on.
            let counted = state.periods;
            state.periods = Periods {
                total: counted.total,
                throttled: counted.throttled,
                throttled_time: counted.throttled_time,
                ..Periods::new(Instant::now())
            };
        }
        state.limits = limits;
        self.inner.shares.store(limits.shares, Ordering::Relaxed);
        self.inner
            .limited
            .store(limits.quota_us.is_some(), Ordering::Relaxed);
    }

    fn charge(&self, spent: &Spent, polled_at: Instant) {
        let nanos = spent.cpu.as_nanos() as u64;
        self.inner.used_nanos.fetch_add(nanos, Ordering::Relaxed);
        let add = |a: &AtomicU64, v: u64| {
            if v > 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&self.inner.system_nanos, spent.system.as_nanos() as u64);
        add(&self.inner.minor_faults, spent.minor_faults);
        add(&self.inner.major_faults, spent.major_faults);
        let shares = self.inner.shares.load(Ordering::Relaxed).max(1);
        let weighted = u128::from(nanos) * u128::from(DEFAULT_SHARES) / u128::from(shares);
        self.inner
            .vruntime
            .fetch_add(weighted as u64, Ordering::Relaxed);
        if self.inner.limited.load(Ordering::Relaxed) {
            let mut state = self.inner.lock();
            if state.limits.quota_us.is_some() {
                state.tokens = state.tokens.saturating_sub(nanos as i64);
                let period = state.limits.period_us;
                state.periods.mark(polled_at, Instant::now(), period, false);
            }
        }
    }

    /// A hold for the limit lasted from `since` to now.
    fn throttled(&self, since: Instant) {
        let mut state = self.inner.lock();
        if state.limits.quota_us.is_some() {
            let period = state.limits.period_us;
            state.periods.mark(since, Instant::now(), period, true);
        }
    }

    /// How long a task must wait before its next poll, and why.
    fn hold(&self, spinning: bool) -> Option<(Duration, Held)> {
        let wait = self.inner.limited.load(Ordering::Relaxed).then(|| {
            let mut state = self.inner.lock();
            state.fill(Instant::now());
            state.debt_wait()
        });
        if let Some(wait) = wait.flatten() {
            return Some((wait, Held::OverLimit));
        }
        // Only a task that was CPU-bound last time is held back for its share.
        if !spinning {
            return None;
        }
        let (least, cutoff) = self.sched.standing()?;
        let mine = self.inner.vruntime.load(Ordering::Relaxed);
        let slice = SLICE.as_nanos() as u64;
        (mine >= cutoff && mine > least.saturating_add(slice))
            .then_some((SLICE / 2, Held::AheadOfShare))
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn full_bucket(limits: &CpuLimits) -> i64 {
    limits
        .quota_us
        .map_or(0, |q| (q as i64).saturating_mul(1000))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Its bucket is in debt: not runnable until refilled.
    OverLimit,
    /// Ahead of its share under contention: still wants the CPU.
    AheadOfShare,
}

/// The engine's view of which containers are CPU-bound right now, for shares.
#[derive(Default)]
pub(super) struct Scheduler {
    next_id: AtomicU64,
    /// Containers with CPU-bound tasks: their account and how many such tasks.
    spinning: Mutex<HashMap<u64, (Arc<Inner>, u32)>>,
}

impl Scheduler {
    fn spinning(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Arc<Inner>, u32)>> {
        self.spinning.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A task of `account` became CPU-bound (or stopped being so).
    fn set_spinning(&self, account: &Arc<Inner>, on: bool) {
        let mut spinning = self.spinning();
        if on {
            if let Some((_, tasks)) = spinning.get_mut(&account.id) {
                *tasks += 1;
                return;
            }
            // Back from idling: it starts level with the least advanced, not with credit.
            if let Some(least) = spinning
                .values()
                .map(|(a, _)| a.vruntime.load(Ordering::Relaxed))
                .min()
            {
                account.vruntime.fetch_max(least, Ordering::Relaxed);
            }
            spinning.insert(account.id, (account.clone(), 1));
        } else if let Some((_, tasks)) = spinning.get_mut(&account.id) {
            *tasks -= 1;
            if *tasks == 0 {
                spinning.remove(&account.id);
            }
        }
    }

    /// Under contention (more CPU-bound tasks than workers), the least virtual runtime, and
    /// that of the (tasks - workers)-th most advanced task: a guest at or past it that is a
    /// slice ahead of the least gives way. Only the surplus waits, so the workers stay busy.
    fn standing(&self) -> Option<(u64, u64)> {
        let workers = workers();
        let spinning = self.spinning();
        let tasks: usize = spinning.values().map(|(_, n)| *n as usize).sum();
        if tasks <= workers {
            return None;
        }
        let mut standing: Vec<(u64, u32)> = spinning
            .values()
            .map(|(a, n)| (a.vruntime.load(Ordering::Relaxed), *n))
            .collect();
        drop(spinning);
        standing.sort_unstable_by(|a, b| b.cmp(a));
        let least = standing.last()?.0;
        let mut surplus = 0;
        let cutoff = standing.into_iter().find_map(|(vruntime, n)| {
            surplus += n as usize;
            (surplus >= tasks - workers).then_some(vruntime)
        })?;
        Some((least, cutoff))
    }
}

/// The worker threads guests share: tokio's, but no more than the machine's cores.
fn workers() -> usize {
    // Read once: std reads the cgroup's CPU quota from files each time.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tokio::runtime::Handle::try_current()
        .map_or(cores, |h| h.metrics().num_workers())
        .clamp(1, cores)
}

thread_local! {
    /// Set by the epoch callback: the poll running on this thread yielded because its time
    /// was up, so the guest is CPU-bound rather than waiting for I/O.
    static EPOCH_YIELD: Cell<bool> = const { Cell::new(false) };
}

/// Called by every store's epoch callback when it yields.
pub(super) fn note_epoch_yield() {
    EPOCH_YIELD.with(|y| y.set(true));
}

/// What this thread has used so far: its CPU clock (exact, what limits are charged by) and
/// its rusage (the kernel's share of that time, sampled at ticks as for any process, and the
/// page faults, counted exactly).
struct ThreadSample {
    cpu: Duration,
    system: Duration,
    minor_faults: u64,
    major_faults: u64,
}

/// What one poll cost: the difference of two samples.
struct Spent {
    cpu: Duration,
    system: Duration,
    minor_faults: u64,
    major_faults: u64,
}

impl ThreadSample {
    fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write; this clock exists on every Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        // SAFETY: an all-zero rusage is valid, and RUSAGE_THREAD fills it for this thread.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
        Self {
            cpu: Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
            system: Duration::new(ru.ru_stime.tv_sec as u64, ru.ru_stime.tv_usec as u32 * 1000),
            minor_faults: ru.ru_minflt as u64,
            major_faults: ru.ru_majflt as u64,
        }
    }

    fn since(&self, before: &Self) -> Spent {
        let cpu = self.cpu.saturating_sub(before.cpu);
        Spent {
            cpu,
            // The tick-sampled split can lag the exact clock: never more than the poll took.
            system: self.system.saturating_sub(before.system).min(cpu),
            minor_faults: self.minor_faults.saturating_sub(before.minor_faults),
            major_faults: self.major_faults.saturating_sub(before.major_faults),
        }
    }
}

/// A guest's future, charged to its container for the CPU time its polls take, and held
/// back while its container is over its limit or ahead of its share.
pub(super) struct Metered<'a, F> {
    inner: Pin<Box<F>>,
    cpu: &'a CpuAccount,
    /// Whether the last poll ended in an epoch yield (counted by the scheduler).
    spinning: bool,
    /// The timer of a hold while one lasts, why, and since when.
    held: Option<(Pin<Box<Sleep>>, Held, Instant)>,
}

impl<'a, F: Future> Metered<'a, F> {
    pub(super) fn new(inner: F, account: &'a super::Account) -> Self {
        Self {
            inner: Box::pin(inner),
            cpu: &account.cpu,
            spinning: false,
            held: None,
        }
    }

    fn set_spinning(&mut self, on: bool) {
        if self.spinning != on {
            self.spinning = on;
            self.cpu.sched.set_spinning(&self.cpu.inner, on);
        }
    }
}

impl<F: Future> Future for Metered<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        loop {
            if let Some((timer, why, since)) = &mut this.held {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if *why == Held::OverLimit {
                    this.cpu.throttled(*since);
                }
                this.held = None;
            }
            let Some((wait, why)) = this.cpu.hold(this.spinning) else {
                break;
            };
            if why == Held::OverLimit {
                this.set_spinning(false);
            }
            let timer = Box::pin(tokio::time::sleep(wait));
            this.held = Some((timer, why, Instant::now()));
        }
        EPOCH_YIELD.with(|y| y.set(false));
        let polled_at = Instant::now();
        let before = ThreadSample::now();
        let out = this.inner.as_mut().poll(cx);
        this.cpu
            .charge(&ThreadSample::now().since(&before), polled_at);
        let yielded = EPOCH_YIELD.with(|y| y.replace(false));
        this.set_spinning(out.is_pending() && yielded);
        out
    }
}

impl<F> Drop for Metered<'_, F> {
    fn drop(&mut self) {
        if self.spinning {
            self.cpu.sched.set_spinning(&self.cpu.inner, false);
        }
        // Killed while held for its limit: that time was throttled too.
        if let Some((_, Held::OverLimit, since)) = self.held {
            self.cpu.throttled(since);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_the_kernels() {
        assert!(CpuLimits::default().check().is_ok());
        let with = |quota_us, period_us, shares| CpuLimits {
            quota_us,
            period_us,
            shares,
        };
        for bad in [
            with(Some(999), 100_000, 1024),
            with(Some(1 << 44), 100_000, 1024),
            with(None, 999, 1024),
            with(None, 1_000_001, 1024),
            with(None, 100_000, 1),
            with(None, 100_000, 262_145),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert!(with(Some(1000), 1000, 2).check().is_ok());
        assert_eq!(with(Some(20_000), 100_000, 2).cores(), Some(0.2));
    }

    #[test]
    fn the_bucket_fills_at_the_quota_rate_up_to_one_quota() {
        let limits = CpuLimits {
            quota_us: Some(20_000),
            ..CpuLimits::default()
        };
        let t0 = Instant::now();
        let mut s = State {
            limits,
            tokens: -10_000_000,
            filled_at: t0,
            periods: Periods::new(t0),
        };
        // 10 ms of debt at 0.2 CPU is repaid in 50 ms.
        assert_eq!(s.debt_wait(), Some(Duration::from_nanos(50_000_005)));
        s.fill(t0 + Duration::from_millis(100));
        assert_eq!(s.tokens, 10_000_000);
        s.fill(t0 + Duration::from_secs(10));
        assert_eq!(s.tokens, 20_000_000, "capped at one quota");
        assert_eq!(s.debt_wait(), None);
    }

    #[test]
    fn periods_are_counted_once_and_throttling_within_them() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Periods::new(t0);
        // Ran in period 0 twice, then held from period 0 into period 2.
        p.mark(t0, t0 + ms(10), 100_000, false);
        p.mark(t0 + ms(20), t0 + ms(30), 100_000, false);
        p.mark(t0 + ms(30), t0 + ms(250), 100_000, true);
        assert_eq!((p.total, p.throttled), (3, 3));
        assert_eq!(p.throttled_time, ms(220));
        // Ran again in period 2, then in period 5 after idling: idle periods do not count.
        p.mark(t0 + ms(260), t0 + ms(270), 100_000, false);
        p.mark(t0 + ms(510), t0 + ms(520), 100_000, false);
        assert_eq!((p.total, p.throttled), (4, 3));
    }

    /// Prints what epoch checks and fuel cost a CPU-bound guest, and what a poll's clock
    /// reads cost. Figures only, no assertion: `cargo test -p wasmpod-runtime --lib
    /// fuel_vs_epoch_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn fuel_vs_epoch_cost() {
        // "calls": a call, a load and a store per iteration (epoch checks at each function
        // entry and loop head); "hash": FNV-1a over memory bytes, no calls.
        let wat = r#"(module
          (memory 1)
          (func $step (param i32) (result i32)
            (i32.store (i32.and (local.get 0) (i32.const 0xfffc))
              (i32.add (i32.load (i32.and (local.get 0) (i32.const 0xfffc))) (local.get 0)))
            (i32.xor (i32.mul (local.get 0) (i32.const 1103515245)) (i32.const 12345)))
          (func (export "calls") (param i32) (result i32) (local i32)
            (loop $l
              (local.set 1 (call $step (local.get 1)))
              (br_if $l (local.tee 0 (i32.sub (local.get 0) (i32.const 1)))))
            (local.get 1))
          (func (export "hash") (param i32) (result i32) (local i32)
            (local.set 1 (i32.const 2166136261))
            (loop $l
              (local.set 1 (i32.mul (i32.xor (local.get 1)
                  (i32.load8_u (i32.and (local.get 0) (i32.const 0xffff))))
                (i32.const 16777619)))
              (br_if $l (local.tee 0 (i32.sub (local.get 0) (i32.const 1)))))
            (local.get 1)))"#;
        let prepare = |setup: &dyn Fn(&mut wasmtime::Config), fuel: bool| {
            let mut config = wasmtime::Config::new();
            setup(&mut config);
            let engine = wasmtime::Engine::new(&config).unwrap();
            let module = wasmtime::Module::new(&engine, wat).unwrap();
            let mut store = wasmtime::Store::new(&engine, ());
            store.set_epoch_deadline(u64::MAX / 2);
            if fuel {
                store.set_fuel(u64::MAX / 2).unwrap();
            }
            let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            let mut f = |name| {
                instance
                    .get_typed_func::<i32, i32>(&mut store, name)
                    .unwrap()
            };
            let (calls, hash) = (f("calls"), f("hash"));
            (store, [calls, hash])
        };
        let mut kinds = [
            prepare(&|_| {}, false),
            prepare(
                &|c| {
                    c.epoch_interruption(true);
                },
                false,
            ),
            prepare(
                &|c| {
                    c.consume_fuel(true);
                },
                true,
            ),
        ];
        // Interleaved rounds, the best of each: the machine is shared and noisy.
        for (w, workload) in ["calls", "hash"].iter().enumerate() {
            let mut best = [Duration::MAX; 3];
            for _ in 0..9 {
                for (i, (store, f)) in kinds.iter_mut().enumerate() {
                    let t = std::time::Instant::now();
                    f[w].call(&mut *store, 20_000_000).unwrap();
                    best[i] = best[i].min(t.elapsed());
                }
            }
            let [plain, epoch, fuel] = best;
            let pct = |d: Duration| (d.as_secs_f64() / plain.as_secs_f64() - 1.0) * 100.0;
            println!(
                "{workload}, 2e7 iterations: plain {plain:?}, epoch {epoch:?} (+{:.1}%), \
                 fuel {fuel:?} (+{:.1}%)",
                pct(epoch),
                pct(fuel)
            );
        }
        let n = 1_000_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(std::time::Instant::now());
        }
        let wall = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(ThreadSample::now());
        }
        let thread = t.elapsed() / n;
        println!("a clock read: monotonic {wall:?}, thread CPU time and rusage {thread:?}");

        // What metering adds to one poll: a future that wakes itself 1e6 times, bare and
        // metered (no quota; a quota never reached).
        struct Countdown(u32);
        impl Future for Countdown {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                if self.0 == 0 {
                    return Poll::Ready(());
                }
                self.0 -= 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
        let polls = 1_000_000;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sched = Arc::new(Scheduler::default());
        let time = |account: Option<&super::super::Account>| {
            let t = std::time::Instant::now();
            match account {
                None => rt.block_on(Countdown(polls)),
                Some(a) => rt.block_on(Metered::new(Countdown(polls), a)),
            }
            t.elapsed() / polls
        };
        let account = |cpu| {
            super::super::Account::new(None, CpuAccount::new(cpu, sched.clone()), Arc::default())
        };
        let bare = time(None);
        let metered = time(Some(&account(CpuLimits::default())));
        let quota = time(Some(&account(CpuLimits {
            quota_us: Some(100_000_000),
            period_us: 1_000_000,
            ..CpuLimits::default()
        })));
        println!("a poll: bare {bare:?}, metered {metered:?}, metered with a quota {quota:?}");
    }
}
