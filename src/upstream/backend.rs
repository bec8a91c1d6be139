//! Per-backend state that outlives config generations: the in-flight count
//! for least-connections and the passive-health failure window.

use crate::config::model::PassiveHealth;
use prometheus::IntGauge;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a request to a backend failed, as counted in
/// `tollgate_upstream_failures_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Could not connect (refused, unreachable, TLS handshake).
    Connect,
    /// Connect or response timeout.
    Timeout,
    /// The connection was closed or reset mid-request.
    Closed,
    /// A 5xx response (counted only with `fail_on_5xx`).
    Status5xx,
    /// A reused pooled connection failed before any response byte: the
    /// backend had closed it while idle. Retried on a fresh connection;
    /// not the backend's fault.
    StaleConnection,
    /// A timeout that fired early because the route's total deadline was
    /// nearer than the timeout: the client's budget ran out, the backend
    /// was not slow by its own timeouts.
    Deadline,
}

impl FailureKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Closed => "closed",
            FailureKind::Status5xx => "status_5xx",
            FailureKind::StaleConnection => "stale_connection",
            FailureKind::Deadline => "deadline",
        }
    }

    /// Whether this kind of failure is evidence against the backend
    /// (passive health counts it toward `max_fails`).
    pub fn counts_toward_max_fails(self) -> bool {
        !matches!(self, FailureKind::StaleConnection | FailureKind::Deadline)
    }
}

#[derive(Debug, Default)]
struct FailWindow {
    started_ms: u64,
    fails: u32,
}

/// One backend's live state, shared by every config generation that has it.
pub struct BackendState {
    in_flight: AtomicI64,
    gauge: IntGauge,
    label: Box<str>,
    addr: SocketAddr,
    /// Reference point for the millisecond clocks below.
    epoch: Instant,
    /// Out of rotation until this many ms after `epoch`; 0 means in rotation.
    down_until_ms: AtomicU64,
    /// Only touched when a request fails, never on the success path.
    window: Mutex<FailWindow>,
}

impl BackendState {
    /// Fresh state for a backend; `gauge` is its `tollgate_upstream_in_flight` child.
    pub fn new(addr: SocketAddr, gauge: IntGauge) -> Self {
        Self {
            in_flight: AtomicI64::new(0),
            gauge,
            label: addr.to_string().into_boxed_str(),
            addr,
            epoch: Instant::now(),
            down_until_ms: AtomicU64::new(0),
            window: Mutex::new(FailWindow::default()),
        }
    }

    /// `ip:port`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests currently assigned to this backend.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 can mean "not down".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether passive health has taken this backend out of rotation.
    pub fn passively_down(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// Counts a failure under `policy`; true when this failure took the
    /// backend out of rotation (nginx's `max_fails` within `fail_timeout`).
    pub fn record_failure(&self, policy: &PassiveHealth) -> bool {
        if policy.max_fails == 0 {
            return false;
        }
        let now = self.now_ms();
        let window_ms = policy.fail_timeout.as_millis() as u64;
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if w.fails == 0 || now.saturating_sub(w.started_ms) > window_ms {
            w.started_ms = now;
            w.fails = 0;
        }
        w.fails += 1;
        if w.fails >= policy.max_fails {
            w.fails = 0;
            self.down_until_ms.store(now + window_ms, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Time left out of rotation, for `/health`.
    pub fn down_for(&self) -> Option<Duration> {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until != 0 && now < until).then(|| Duration::from_millis(until - now))
    }

    /// Takes one in-flight slot until the lease is released or dropped.
    pub fn lease(self: &Arc<Self>) -> BackendLease {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.gauge.inc();
        BackendLease {
            state: self.clone(),
            held: true,
        }
    }
}

/// One request's claim on a backend. The slot is given back by
/// [`BackendLease::release`] as soon as the backend has sent its whole
/// response, or at the latest on drop — when the request ends however it
/// ends, or when a retry moves to another backend — so no code path can
/// leak a count.
pub struct BackendLease {
    state: Arc<BackendState>,
    held: bool,
}

impl BackendLease {
    /// The backend's address, for logs.
    pub fn addr(&self) -> &str {
        self.state.label()
    }

    /// The backend's socket address, so a retry can avoid it.
    pub fn socket_addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// The backend's shared state (to record a failure).
    pub fn backend(&self) -> &BackendState {
        &self.state
    }

    /// Gives the slot back now (the backend is done with this request);
    /// the lease stays readable for logs. Idempotent.
    pub fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.state.gauge.dec();
        }
    }
}

impl Drop for BackendLease {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> BackendState {
        BackendState::new(
            SocketAddr::from(([127, 0, 0, 1], 1)),
            IntGauge::new("g", "g").expect("gauge"),
        )
    }

    #[test]
    fn max_fails_within_the_window_take_a_backend_out() {
        let b = state();
        let policy = PassiveHealth {
            max_fails: 3,
            fail_timeout: Duration::from_secs(30),
            fail_on_5xx: false,
        };
        assert!(!b.record_failure(&policy));
        assert!(!b.record_failure(&policy));
        assert!(!b.passively_down());
        assert!(b.record_failure(&policy));
        assert!(b.passively_down());
        assert!(b.down_for().is_some_and(|d| d <= Duration::from_secs(30)));
    }

    #[test]
    fn zero_max_fails_disables_passive_health() {
        let b = state();
        let policy = PassiveHealth {
            max_fails: 0,
            fail_timeout: Duration::from_secs(30),
            fail_on_5xx: false,
        };
        for _ in 0..10 {
            assert!(!b.record_failure(&policy));
        }
        assert!(!b.passively_down());
    }

    #[test]
    fn the_backend_returns_after_fail_timeout() {
        let b = state();
        let policy = PassiveHealth {
            max_fails: 1,
            fail_timeout: Duration::from_millis(1),
            fail_on_5xx: false,
        };
        assert!(b.record_failure(&policy));
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.passively_down() {
            assert!(Instant::now() < deadline, "still down");
            std::thread::yield_now(); // poll until the 1 ms window passes
        }
    }
}
