//! One request's attempts at its upstream pool: which backend it holds
//! (a least-connections lease), how many backends it has tried, the
//! timeouts each attempt got, and what a failure means for passive health
//! and for a retry.
//!
//! The rules, in one place:
//! - every attempt's connect and read timeouts are cut to what is left of
//!   the route's total deadline, and it is remembered when they were, so a
//!   timeout that fired early because the total ran out reads as the
//!   route's `request_timeout`, not as the backend's `upstream_timeout`;
//! - a failure counts against the backend (passive health, metrics), except
//!   a stale pooled connection and a deadline-shortened timeout, which are
//!   not the backend's fault (counted in metrics, never toward `max_fails`);
//! - whether a request may be sent again at all is decided in one place,
//!   `replay`: a connect failure or a failed write allows any method, a
//!   failure after the request was written only an idempotent one (a
//!   non-idempotent request must not reach a backend twice), and never
//!   once its body is no longer buffered or the answer has started;
//! - a reused pooled connection that fails before any response byte (the
//!   backend closed it while idle; Pingora marks such errors retryable on
//!   reused connections only) is replayed, when `replay` allows, once on a
//!   *fresh* connection to the same backend; this replay does not use up
//!   the pool's `retries`, and the failure is not the backend's;
//! - a retry on another backend needs retries left, time left, and another
//!   ready backend; failures after connecting that allow one are a reset,
//!   a close, or a read timeout (nginx's default `proxy_next_upstream
//!   error timeout`);
//! - a 502/503/504 answer to an idempotent request is retried on another
//!   backend when the pool says `retry_on_5xx`, and only when the retry
//!   can be made — otherwise the client gets the backend's answer as is;
//! - `tollgate_upstream_retries_total` counts attempts that were made after
//!   a failed one, not retries that were only considered.

use super::deadline::DeadlineTimer;
use super::replay::{Reached, Replay};
use super::{BackendLease, FailureKind, UpstreamPool};
use crate::config::model::RouteTimeouts;
use crate::errors::{self, FailureContext};
use crate::metrics::Metrics;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result, RetryType};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long the fresh connection of a stale-connection replay may idle in
/// the pool: it is pooled under a key of its own that no later request
/// asks for, so it should not linger.
const FRESH_CONNECTION_IDLE: Duration = Duration::from_secs(1);

/// When the current upstream attempt reached each step, for the slow-request
/// log and `tollgate_upstream_request_duration_seconds`.
#[derive(Debug, Default, Clone, Copy)]
pub struct UpstreamTiming {
    /// A backend was chosen.
    pub chosen_at: Option<Instant>,
    /// The connection was established (or reused).
    pub connected_at: Option<Instant>,
    /// The response header arrived.
    pub first_byte_at: Option<Instant>,
    /// The attempt's duration was recorded.
    pub observed: bool,
}

/// Which of an attempt's timeouts were shortened to the remaining total time.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeadlineBound {
    /// The connect timeout.
    pub connect: bool,
    /// The read/write timeout.
    pub read: bool,
}

/// A request's attempts at its route's pool.
#[derive(Default)]
pub struct Attempts {
    lease: Option<BackendLease>,
    count: usize,
    timing: UpstreamTiming,
    bound_by_total: DeadlineBound,
    /// The backend to replay on over a fresh connection, after a stale
    /// pooled one failed.
    fresh_replay: Option<SocketAddr>,
    /// A stale-connection replay was made (at most one per request).
    replayed_stale: bool,
    /// The route's total deadline on the current attempt's connection.
    deadline: Option<DeadlineTimer>,
}

impl Attempts {
    /// Starts an attempt: the least-connections choice in `pool` (avoiding
    /// the backend the previous attempt failed on), with its timeouts cut
    /// to what is left of the total that started at `started`.
    pub fn start(
        &mut self,
        pool: &UpstreamPool,
        timeouts: &RouteTimeouts,
        started: Instant,
    ) -> Result<Box<HttpPeer>> {
        let remaining = timeouts.total.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(Error::explain(
                errors::REQUEST_TIMEOUT,
                "total timeout ran out before connecting",
            ));
        }
        let fresh = self.fresh_replay.take().and_then(|addr| pool.slot(addr));
        let replaying_fresh = fresh.is_some();
        let avoid = self.lease.as_ref().map(BackendLease::socket_addr);
        let slot = fresh.or_else(|| pool.select(avoid)).ok_or_else(|| {
            Error::explain(
                errors::NO_HEALTHY_UPSTREAM,
                format!("upstream {}: no backend may take traffic", pool.name()),
            )
        })?;
        self.lease = Some(slot.lease());
        self.deadline = None;
        if self.count > 0 {
            pool.retries_counter().inc();
        }
        self.count += 1;
        self.timing = UpstreamTiming {
            chosen_at: Some(Instant::now()),
            ..UpstreamTiming::default()
        };
        let connect = timeouts.connect.min(remaining);
        let read = timeouts.read.min(remaining);
        self.bound_by_total = DeadlineBound {
            connect: remaining < timeouts.connect,
            read: remaining < timeouts.read,
        };
        let mut peer = pool.peer(&slot);
        if replaying_fresh {
            // A pool key of its own: Pingora cannot hand out another idle
            // (and maybe equally stale) connection to the same backend.
            peer.group_key = rand::random();
            peer.options.idle_timeout = Some(FRESH_CONNECTION_IDLE);
        }
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        peer.options.read_timeout = Some(read);
        peer.options.write_timeout = Some(read);
        Ok(peer)
    }

    /// The connection `fd` is up (new or reused): the route's total
    /// deadline, which started at `started`, is armed on it (`deadline`).
    /// A connection `shared` by several requests (HTTP/2) gets no timer.
    pub fn connected(
        &mut self,
        fd: std::os::fd::RawFd,
        started: Instant,
        total: Duration,
        shared: bool,
    ) {
        self.timing.connected_at = Some(Instant::now());
        self.deadline = match shared {
            true => None,
            false => DeadlineTimer::arm(fd, started + total),
        };
    }

    /// The connection is done with (its response complete, or the attempt
    /// failed): the deadline must not touch it once Pingora may pool it.
    pub fn disarm(&mut self) {
        self.deadline = None;
    }

    /// Whether the total deadline cut the current attempt's connection.
    fn deadline_cut(&self) -> bool {
        self.deadline.as_ref().is_some_and(DeadlineTimer::fired)
    }

    /// The response header arrived: note the time, and count a 5xx against
    /// the backend when the pool asks for it.
    /// A response without a body (`body_expected` false) is complete with
    /// its header, so the deadline lets go of the connection here: Pingora
    /// pools it without another body-filter call.
    pub fn response_header(
        &mut self,
        pool: &UpstreamPool,
        status: u16,
        body_expected: bool,
        metrics: &Metrics,
    ) {
        self.timing.first_byte_at = Some(Instant::now());
        if !body_expected {
            self.disarm();
        }
        if (500..600).contains(&status) && pool.passive().fail_on_5xx {
            if let Some(lease) = &self.lease {
                pool.record_failure(lease.backend(), FailureKind::Status5xx, metrics);
            }
        }
    }

    /// Whether a 502/503/504 answer just received should be replaced by a
    /// retry on another backend: the pool retries those, the request can
    /// be sent again, and a retry is possible (retries, time, a backend).
    pub fn should_retry_status(
        &self,
        pool: &UpstreamPool,
        timeouts: &RouteTimeouts,
        started: Instant,
        status: u16,
        replay: Replay,
    ) -> bool {
        pool.retries_on_5xx()
            && matches!(status, 502..=504)
            && replay.allows(Reached::MaybeProcessed)
            && self.retry_possible(pool, timeouts, started)
    }

    /// A connect failure: counted against the backend, and retried on
    /// another one when allowed (nothing was sent, so for any method).
    pub fn connect_failed(
        &mut self,
        pool: &UpstreamPool,
        timeouts: &RouteTimeouts,
        started: Instant,
        mut e: Box<Error>,
        metrics: &Metrics,
    ) -> Box<Error> {
        let kind = match e.etype() {
            ErrorType::ConnectTimedout if self.bound_by_total.connect => FailureKind::Deadline,
            ErrorType::ConnectTimedout => FailureKind::Timeout,
            _ => FailureKind::Connect,
        };
        let retry = self.note_failure(pool, timeouts, started, kind, metrics);
        e.set_retry(retry);
        e
    }

    /// A failure after connecting: counted against the backend when it is
    /// the upstream's; retried only as the module docs say.
    pub fn proxy_failed(
        &mut self,
        pool: &UpstreamPool,
        timeouts: &RouteTimeouts,
        started: Instant,
        mut e: Box<Error>,
        replay: Replay,
        metrics: &Metrics,
    ) -> Box<Error> {
        if *e.etype() == errors::RETRY_STATUS {
            // Decided (and counted) when the answer arrived.
            e.set_retry(true);
            return e;
        }
        let cut = self.deadline_cut();
        self.disarm();
        if cut {
            // Our timer shut the connection: the route's total ran out.
            e.etype = errors::REQUEST_TIMEOUT;
            if let Some(lease) = &self.lease {
                pool.record_failure(lease.backend(), FailureKind::Deadline, metrics);
            }
            e.set_retry(false);
            return e;
        }
        if *e.esource() != ErrorSource::Upstream {
            e.set_retry(false);
            return e;
        }
        let reached = Reached::after_connect(e.etype());
        let stale = replay.upstream_reused && e.retry == RetryType::ReusedOnly;
        if stale && !self.replayed_stale {
            return self.replay_on_fresh_connection(pool, timeouts, started, e, replay, metrics);
        }
        let etype = e.etype();
        let kind = if *etype == errors::REQUEST_TIMEOUT {
            FailureKind::Deadline
        } else if matches!(etype, ErrorType::ReadTimedout | ErrorType::WriteTimedout) {
            if self.bound_by_total.read {
                FailureKind::Deadline
            } else {
                FailureKind::Timeout
            }
        } else {
            FailureKind::Closed
        };
        let may_replay =
            matches!(kind, FailureKind::Closed | FailureKind::Timeout) && replay.allows(reached);
        let retry = self.note_failure(pool, timeouts, started, kind, metrics) && may_replay;
        e.set_retry(retry);
        e
    }

    /// A reused pooled connection failed before any response byte: counted
    /// (not toward `max_fails`) and replayed once on a fresh connection to
    /// the same backend when `replay` allows it — for a non-idempotent
    /// request only if the request was not written whole.
    fn replay_on_fresh_connection(
        &mut self,
        pool: &UpstreamPool,
        timeouts: &RouteTimeouts,
        started: Instant,
        mut e: Box<Error>,
        replay: Replay,
        metrics: &Metrics,
    ) -> Box<Error> {
        let Some(lease) = &self.lease else {
            e.set_retry(false);
            return e;
        };
        pool.record_failure(lease.backend(), FailureKind::StaleConnection, metrics);
        let retry =
            replay.allows(Reached::after_connect(e.etype())) && started.elapsed() < timeouts.total;
        if retry {
            self.fresh_replay = Some(lease.socket_addr());
            self.replayed_stale = true;
        }
        e.set_retry(retry);
        e
    }

    /// Records a failed attempt on the current backend and says whether a
    /// retry is allowed: retries left, time left, another ready backend.
    fn note_failure(
        &self,
        pool: &UpstreamPool,
        timeouts: &RouteTimeouts,
        started: Instant,
        kind: FailureKind,
        metrics: &Metrics,
    ) -> bool {
        let Some(lease) = &self.lease else {
            return false;
        };
        pool.record_failure(lease.backend(), kind, metrics);
        self.retry_possible(pool, timeouts, started)
    }

    /// Retries left, time left, and another ready backend.
    fn retry_possible(
        &self,
        pool: &UpstreamPool,
        timeouts: &RouteTimeouts,
        started: Instant,
    ) -> bool {
        let Some(lease) = &self.lease else {
            return false;
        };
        // The stale-connection replay does not use up the pool's retries.
        let retries_used = self
            .count
            .saturating_sub(1 + usize::from(self.replayed_stale));
        retries_used < pool.retries()
            && started.elapsed() < timeouts.total
            && pool.has_other_ready(lease.socket_addr())
    }

    /// The backend sent its whole response: give its least-connections slot
    /// back now, and record the attempt's duration.
    pub fn response_finished(&mut self, pool: &UpstreamPool) {
        self.disarm();
        if let Some(lease) = self.lease.as_mut() {
            lease.release();
        }
        self.observe_duration(pool);
    }

    /// At the end of the request: record the duration of an attempt that
    /// got a response header but never finished its body.
    pub fn request_finished(&mut self, pool: &UpstreamPool) {
        if self.timing.first_byte_at.is_some() {
            self.observe_duration(pool);
        }
    }

    /// `tollgate_upstream_request_duration_seconds`, once per attempt.
    fn observe_duration(&mut self, pool: &UpstreamPool) {
        if self.timing.observed {
            return;
        }
        if let Some(chosen) = self.timing.chosen_at {
            pool.duration_histogram()
                .observe(chosen.elapsed().as_secs_f64());
            self.timing.observed = true;
        }
    }

    /// What the error mapping needs to know about this request's attempts.
    pub fn failure_context<'a>(
        &self,
        pool: Option<&'a UpstreamPool>,
        timeouts: Option<RouteTimeouts>,
    ) -> FailureContext<'a> {
        FailureContext {
            upstream: pool.map(UpstreamPool::name),
            timeouts,
            connect_bound_by_total: self.bound_by_total.connect,
            read_bound_by_total: self.bound_by_total.read,
        }
    }

    /// The backend of the current (or last) attempt, `ip:port`.
    pub fn backend(&self) -> Option<&str> {
        self.lease.as_ref().map(BackendLease::addr)
    }

    /// Backends tried so far (1 + retries).
    pub fn count(&self) -> usize {
        self.count
    }

    /// Timings of the current attempt.
    pub fn timing(&self) -> &UpstreamTiming {
        &self.timing
    }
}

impl Attempts {
    /// The deadline check for a body chunk when no timer holds it (the
    /// descriptor could not be duplicated): a chunk that arrives after the
    /// route's total ends the response. With the timer, nothing to do.
    pub fn check_deadline(&self, started: Instant, total: Duration) -> Result<()> {
        if self.deadline.is_none() && started.elapsed() > total {
            return Err(Error::explain(
                errors::REQUEST_TIMEOUT,
                "total timeout ran out while streaming the response",
            ));
        }
        Ok(())
    }
}
