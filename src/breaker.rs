//! A circuit breaker in front of Redis. A Redis that hangs (accepts
//! connections, never answers) would otherwise add the full `redis.timeout`
//! to every rate-limited request; after `failures` consecutive timeouts or
//! errors the breaker opens and decisions are local (no wait at all) for
//! `open_for`. Then one probe (a `PING` sent off the request path, so no
//! client pays for it) decides: an answer closes the breaker, silence keeps
//! it open for another `open_for`.
//!
//! Written here because neither `redis` nor Pingora has one; lock-free so
//! the closed state costs two atomic loads per decision.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a decision may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Ask Redis.
    Ask,
    /// Do not ask Redis; decide locally.
    Skip,
    /// Do not ask Redis; decide locally, and send the one probe.
    SkipAndProbe,
}

/// What the breaker did when told an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    None,
    /// It opened (or stayed open after a failed probe).
    Opened,
    /// It closed after a successful call or probe.
    Closed,
}

/// Consecutive-failure breaker with one probe at a time.
pub struct CircuitBreaker {
    failures_to_open: u32,
    open_for: Duration,
    base: Instant,
    consecutive_failures: AtomicU32,
    /// Nanoseconds since `base` until which the breaker is open; 0 = closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl CircuitBreaker {
    /// A closed breaker; `failures_to_open` of at least 1.
    pub fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            failures_to_open: failures_to_open.max(1),
            open_for,
            base: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// How long it stays open before probing.
    pub fn open_for(&self) -> Duration {
        self.open_for
    }

    /// Whether it is open (including while a probe is out).
    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// What the next decision may do.
    pub fn permit(&self) -> Permit {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Permit::Ask;
        }
        if self.now() < until {
            return Permit::Skip;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Permit::SkipAndProbe,
            Err(_) => Permit::Skip,
        }
    }

    /// Records a call's outcome (a request's decision or the probe).
    pub fn record(&self, ok: bool) -> Transition {
        if ok {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.probing.store(false, Ordering::Release);
            if self.open_until.swap(0, Ordering::AcqRel) != 0 {
                return Transition::Closed;
            }
            return Transition::None;
        }
        let failures = self
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let probe_failed = self.probing.swap(false, Ordering::AcqRel);
        if probe_failed || (failures >= self.failures_to_open && !self.is_open()) {
            let until = self
                .now()
                .saturating_add(u64::try_from(self.open_for.as_nanos()).unwrap_or(u64::MAX));
            self.open_until.store(until, Ordering::Release);
            return Transition::Opened;
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = CircuitBreaker::new(3, Duration::from_secs(60));
        assert_eq!(b.record(false), Transition::None);
        assert_eq!(b.record(false), Transition::None);
        assert_eq!(
            b.record(true),
            Transition::None,
            "a success resets the count"
        );
        assert_eq!(b.record(false), Transition::None);
        assert_eq!(b.record(false), Transition::None);
        assert_eq!(b.permit(), Permit::Ask);
        assert_eq!(b.record(false), Transition::Opened);
        assert!(b.is_open());
        assert_eq!(b.permit(), Permit::Skip);
    }

    #[test]
    fn after_the_cool_down_exactly_one_probe_goes_out() {
        let b = CircuitBreaker::new(1, Duration::ZERO);
        assert_eq!(b.record(false), Transition::Opened);
        assert_eq!(b.permit(), Permit::SkipAndProbe);
        assert_eq!(b.permit(), Permit::Skip, "one probe at a time");
        assert_eq!(
            b.record(false),
            Transition::Opened,
            "a failed probe re-opens"
        );
        assert_eq!(b.permit(), Permit::SkipAndProbe);
        assert_eq!(b.record(true), Transition::Closed);
        assert!(!b.is_open());
        assert_eq!(b.permit(), Permit::Ask);
    }

    #[test]
    fn late_failures_while_open_do_not_extend_it() {
        let b = CircuitBreaker::new(1, Duration::from_secs(60));
        assert_eq!(b.record(false), Transition::Opened);
        let until = b.open_until.load(Ordering::Relaxed);
        // Calls that were already waiting when it opened fail later.
        assert_eq!(b.record(false), Transition::None);
        assert_eq!(b.open_until.load(Ordering::Relaxed), until);
    }
}
