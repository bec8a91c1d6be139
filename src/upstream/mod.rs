//! Upstream pools: the backends a route sends to, how one is chosen
//! (weighted least-connections) and how its in-flight count is kept.
//!
//! Pingora's load-balancing crate has no least-connections selection, and
//! its `LoadBalancer::select_with` allocates a `HashSet` and clones the
//! `Backend` on every call. So selection is our own, over a fixed slice of
//! slots that carry their in-flight counter, and *beside* Pingora's
//! [`Backends`] view, which stays the source of readiness: health checks
//! registered on it (Pingora's `health_check` module) take backends out of
//! selection without this module changing.

use crate::config::model::UpstreamConfig;
use crate::metrics::Metrics;
use futures::FutureExt;
use http::HeaderValue;
use pingora::lb::discovery::Static;
use pingora::lb::{Backend, Backends};
use pingora::upstreams::peer::HttpPeer;
use prometheus::IntGauge;
use rand::Rng;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// How many requests one backend is serving now, mirrored in the
/// `tollgate_upstream_in_flight` gauge.
pub struct BackendLoad {
    in_flight: AtomicI64,
    gauge: IntGauge,
    /// `ip:port`, for logs.
    label: Box<str>,
    addr: SocketAddr,
}

/// One backend of a pool with what selection needs to know about it.
pub struct BackendSlot {
    addr: SocketAddr,
    backend: Backend,
    weight: u64,
    peer: HttpPeer,
    load: Arc<BackendLoad>,
}

impl BackendSlot {
    /// The backend's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests currently assigned to this backend.
    pub fn in_flight(&self) -> i64 {
        self.load.in_flight.load(Ordering::Relaxed)
    }

    /// Takes one in-flight slot on this backend until the lease is dropped.
    pub fn lease(&self) -> BackendLease {
        self.load.in_flight.fetch_add(1, Ordering::Relaxed);
        self.load.gauge.inc();
        BackendLease {
            load: self.load.clone(),
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
    load: Arc<BackendLoad>,
    held: bool,
}

impl BackendLease {
    /// The backend's address, for logs.
    pub fn addr(&self) -> &str {
        &self.load.label
    }

    /// The backend's socket address, so a retry can avoid it.
    pub fn socket_addr(&self) -> SocketAddr {
        self.load.addr
    }

    /// Gives the slot back now (the backend is done with this request);
    /// the lease stays readable for logs. Idempotent.
    pub fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.load.gauge.dec();
        }
    }
}

impl Drop for BackendLease {
    fn drop(&mut self) {
        self.release();
    }
}

/// A named pool of backends.
pub struct UpstreamPool {
    name: Box<str>,
    slots: Box<[BackendSlot]>,
    /// Pingora's view of the same backends: membership, enablement, health.
    view: Backends,
    host_header: Option<HeaderValue>,
}

impl UpstreamPool {
    /// Builds a pool from its validated config.
    pub fn new(config: &UpstreamConfig, metrics: &Metrics) -> Result<Self, String> {
        let mut slots = Vec::with_capacity(config.backends.len());
        let mut members = BTreeSet::new();
        for b in &config.backends {
            let backend = Backend::new_with_weight(&b.addr.to_string(), b.weight)
                .map_err(|e| format!("upstream {}: backend {}: {e}", config.name, b.addr))?;
            members.insert(backend.clone());
            let label = b.addr.to_string();
            let gauge = metrics
                .upstream_in_flight
                .with_label_values(&[config.name.as_str(), label.as_str()]);
            slots.push(BackendSlot {
                addr: b.addr,
                backend,
                weight: b.weight as u64,
                peer: make_peer(b.addr, config),
                load: Arc::new(BackendLoad {
                    in_flight: AtomicI64::new(0),
                    gauge,
                    label: label.into_boxed_str(),
                    addr: b.addr,
                }),
            });
        }
        let view = Backends::new(Static::new(members));
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
        Ok(Self {
            name: config.name.clone().into_boxed_str(),
            slots: slots.into_boxed_slice(),
            view,
            host_header: config.host_header.clone(),
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

    /// Whether a backend may receive traffic (Pingora's readiness: member,
    /// enabled, and healthy by its health check if one is set).
    pub fn is_ready(&self, slot: &BackendSlot) -> bool {
        self.view.ready(&slot.backend)
    }

    /// Weighted least-connections: the ready backend with the fewest
    /// in-flight requests per unit of weight. Ties are broken at random in
    /// proportion to weight, so idle equal backends share load evenly.
    /// `avoid` skips one backend (the one a retry just failed on) unless it
    /// is the only ready one. Does not allocate.
    pub fn select(&self, avoid: Option<SocketAddr>) -> Option<&BackendSlot> {
        let pick = |skip: Option<SocketAddr>| {
            let mut best: Option<&BackendSlot> = None;
            let mut tied_weight = 0u64;
            for slot in self.slots.iter() {
                if skip == Some(slot.addr) || !self.is_ready(slot) {
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

    /// The peer to connect to for `slot`; the caller sets per-request timeouts.
    pub fn peer(&self, slot: &BackendSlot) -> Box<HttpPeer> {
        Box::new(slot.peer.clone())
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
