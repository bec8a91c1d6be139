//! Upstream pools: the backends a route sends to, how one is chosen
//! (weighted least-connections), and whether a backend may take traffic
//! (active health checks and passive failure counting).
//!
//! Pingora's load-balancing crate has no least-connections selection, and
//! its `LoadBalancer::select_with` allocates a `HashSet` and clones the
//! `Backend` on every call. So selection is our own, over a fixed slice of
//! slots that carry their in-flight counter, and *beside* Pingora's
//! [`Backends`] view, which stays the source of active health: Pingora's
//! health checks flip readiness there (see [`health`]).

pub mod attempt;
pub mod backend;
pub mod deadline;
pub mod health;
pub mod memory;
pub mod replay;

pub use backend::{BackendLease, BackendState, FailureKind};
pub use memory::UpstreamMemory;

use crate::config::model::{PassiveHealth, UpstreamConfig};
use crate::metrics::Metrics;
use futures::FutureExt;
use health::PoolHealth;
use http::HeaderValue;
use pingora::lb::discovery::Static;
use pingora::lb::{Backend, Backends};
use pingora::upstreams::peer::HttpPeer;
use prometheus::{Histogram, IntCounter};
use rand::Rng;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

/// One backend of a pool with what selection needs to know about it.
pub struct BackendSlot {
    backend: Backend,
    weight: u64,
    peer: HttpPeer,
    state: Arc<BackendState>,
}

impl BackendSlot {
    /// The backend's address.
    pub fn addr(&self) -> SocketAddr {
        self.state.addr()
    }

    /// Requests currently assigned to this backend.
    pub fn in_flight(&self) -> i64 {
        self.state.in_flight()
    }

    /// The shared live state (in-flight count, passive health).
    pub fn state(&self) -> &BackendState {
        &self.state
    }

    /// Takes one in-flight slot on this backend until the lease is released.
    pub fn lease(&self) -> BackendLease {
        self.state.lease()
    }
}

/// A named pool of backends.
pub struct UpstreamPool {
    name: Box<str>,
    slots: Box<[BackendSlot]>,
    /// Pingora's view of the same backends: membership, enablement, health.
    view: Backends,
    active_health: Option<Arc<PoolHealth>>,
    host_header: Option<HeaderValue>,
    passive: PassiveHealth,
    retries: usize,
    retry_on_5xx: bool,
    retries_total: IntCounter,
    panic_total: IntCounter,
    duration: Histogram,
}

impl UpstreamPool {
    /// Builds a pool from its validated config, reusing the backend and
    /// health state `memory` holds from earlier generations.
    pub fn new(
        config: &UpstreamConfig,
        metrics: &Metrics,
        memory: &UpstreamMemory,
    ) -> Result<Self, String> {
        let mut slots = Vec::with_capacity(config.backends.len());
        let mut members = BTreeSet::new();
        for b in &config.backends {
            let backend = Backend::new_with_weight(&b.addr.to_string(), b.weight)
                .map_err(|e| format!("upstream {}: backend {}: {e}", config.name, b.addr))?;
            members.insert(backend.clone());
            slots.push(BackendSlot {
                backend,
                weight: b.weight as u64,
                peer: make_peer(b.addr, config),
                state: memory.backend(&config.name, b.addr, metrics),
            });
        }
        let active_health = memory.health(config)?;
        let discovery = Static::new(members);
        let view = match &active_health {
            Some(h) => Backends::new_with_health_registry(discovery, h.registry.clone()),
            None => Backends::new(discovery),
        };
        // Static discovery never waits, so the first update completes at once.
        match view.update(|_| {}).now_or_never() {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(format!(
                    "upstream {}: backend discovery failed: {e}",
                    config.name
                ))
            }
            None => {
                return Err(format!(
                    "upstream {}: static discovery did not complete",
                    config.name
                ))
            }
        }
        let name = config.name.as_str();
        Ok(Self {
            name: name.into(),
            slots: slots.into_boxed_slice(),
            view,
            active_health,
            host_header: config.host_header.clone(),
            passive: config.passive,
            retries: config.retries,
            retry_on_5xx: config.retry_on_5xx,
            retries_total: metrics.upstream_retries.with_label_values(&[name]),
            panic_total: metrics.upstream_panic.with_label_values(&[name]),
            duration: metrics.upstream_duration.with_label_values(&[name]),
        })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `Host` header to send, when configured.
    pub fn host_header(&self) -> Option<&HeaderValue> {
        self.host_header.as_ref()
    }

    /// All backends, in config order.
    pub fn slots(&self) -> &[BackendSlot] {
        &self.slots
    }

    /// The pool's active health checks, if configured.
    pub fn active_health(&self) -> Option<&Arc<PoolHealth>> {
        self.active_health.as_ref()
    }

    /// Passive health policy.
    pub fn passive(&self) -> &PassiveHealth {
        &self.passive
    }

    /// How many extra attempts a request may make on other backends.
    pub fn retries(&self) -> usize {
        self.retries
    }

    /// Whether idempotent requests answered 502/503/504 are retried.
    pub fn retries_on_5xx(&self) -> bool {
        self.retry_on_5xx
    }

    /// `tollgate_upstream_retries_total{upstream}` of this pool.
    pub fn retries_counter(&self) -> &IntCounter {
        &self.retries_total
    }

    /// `tollgate_upstream_request_duration_seconds{upstream}` of this pool.
    pub fn duration_histogram(&self) -> &Histogram {
        &self.duration
    }

    /// Whether a backend passes its active check (Pingora readiness: member,
    /// enabled, healthy).
    pub fn actively_healthy(&self, slot: &BackendSlot) -> bool {
        // Without a health check nothing can flip readiness (tollgate never
        // disables backends by hand), and asking Pingora's view costs a
        // SipHash of the backend per candidate per request.
        self.active_health.is_none() || self.view.ready(&slot.backend)
    }

    /// Whether a backend may receive traffic: actively healthy and not taken
    /// out by passive health.
    pub fn is_ready(&self, slot: &BackendSlot) -> bool {
        self.actively_healthy(slot) && !slot.state.passively_down()
    }

    /// Panic mode: passive health has every backend that passes its active
    /// check out of rotation. Requests then go to all of those instead of
    /// failing (Envoy's panic threshold, nginx's "try them anyway"), so one
    /// misbehaving endpoint cannot turn into an outage. Backends that fail
    /// their *active* check stay out: that is evidence, not a guess.
    pub fn in_panic(&self) -> bool {
        !self.slots.iter().any(|s| self.is_ready(s))
            && self.slots.iter().any(|s| self.actively_healthy(s))
    }

    /// Whether a backend other than `except` may take traffic (a retry has
    /// somewhere to go); in panic mode, any other actively healthy one.
    pub fn has_other_ready(&self, except: SocketAddr) -> bool {
        let others = || self.slots.iter().filter(|s| s.addr() != except);
        others().any(|s| self.is_ready(s))
            || (self.in_panic() && others().any(|s| self.actively_healthy(s)))
    }

    /// Weighted least-connections: the ready backend with the fewest
    /// in-flight requests per unit of weight. Ties are broken at random in
    /// proportion to weight, so idle equal backends share load evenly.
    /// `avoid` skips one backend (the one a retry just failed on) unless it
    /// is the only candidate. When no backend is ready, panic mode picks
    /// among the actively healthy ones and counts it. Does not allocate.
    pub fn select(&self, avoid: Option<SocketAddr>) -> Option<&BackendSlot> {
        let ready = |s: &BackendSlot| self.is_ready(s);
        if let Some(slot) = self.pick(avoid, ready) {
            return Some(slot);
        }
        let panic = self.pick(avoid, |s| self.actively_healthy(s))?;
        self.panic_total.inc();
        Some(panic)
    }

    /// The least-loaded candidate, avoiding `avoid` if another one exists.
    fn pick(
        &self,
        avoid: Option<SocketAddr>,
        candidate: impl Fn(&BackendSlot) -> bool,
    ) -> Option<&BackendSlot> {
        let pick = |skip: Option<SocketAddr>| {
            let mut best: Option<&BackendSlot> = None;
            let mut tied_weight = 0u64;
            for slot in self.slots.iter() {
                if skip == Some(slot.addr()) || !candidate(slot) {
                    continue;
                }
                let Some(current) = best else {
                    best = Some(slot);
                    tied_weight = slot.weight;
                    continue;
                };
                // Compare in_flight/weight without division.
                let lhs = slot.in_flight().max(0) as u64 * current.weight;
                let rhs = current.in_flight().max(0) as u64 * slot.weight;
                if lhs < rhs {
                    best = Some(slot);
                    tied_weight = slot.weight;
                } else if lhs == rhs {
                    tied_weight += slot.weight;
                    if rand::thread_rng().gen_range(0..tied_weight) < slot.weight {
                        best = Some(slot);
                    }
                }
            }
            best
        };
        match avoid {
            Some(addr) => pick(Some(addr)).or_else(|| pick(None)),
            None => pick(None),
        }
    }

    /// The slot of a backend, by address (a retry on the same backend).
    pub fn slot(&self, addr: SocketAddr) -> Option<&BackendSlot> {
        self.slots.iter().find(|s| s.addr() == addr)
    }

    /// The peer to connect to for `slot`; the caller sets per-request timeouts.
    pub fn peer(&self, slot: &BackendSlot) -> Box<HttpPeer> {
        Box::new(slot.peer.clone())
    }

    /// Counts a failed request against `backend` for passive health and
    /// metrics; logs when it takes the backend out of rotation. The only
    /// backend of a pool is never taken out by passive health (nginx ignores
    /// `max_fails` for a single server): there is nowhere else to send its
    /// traffic, so ejecting it would turn failures of some requests into
    /// failures of all of them.
    pub fn record_failure(&self, backend: &BackendState, kind: FailureKind, metrics: &Metrics) {
        metrics
            .upstream_failures
            .with_label_values(&[&*self.name, backend.label(), kind.as_str()])
            .inc();
        if !kind.counts_toward_max_fails() || self.slots.len() < 2 {
            return;
        }
        if backend.record_failure(&self.passive) {
            log::warn!(
                "upstream {} backend {}: {} failures within {:?}, out of rotation for {:?}",
                self.name,
                backend.label(),
                self.passive.max_fails,
                self.passive.fail_timeout,
                self.passive.fail_timeout
            );
        }
    }
}

fn make_peer(addr: SocketAddr, config: &UpstreamConfig) -> HttpPeer {
    match &config.tls {
        Some(tls) => {
            let mut peer = HttpPeer::new(addr, true, tls.sni.clone());
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
            peer
        }
        None => HttpPeer::new(addr, false, String::new()),
    }
}

#[cfg(test)]
mod tests;
