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
mod grpc_health;
pub mod health;
mod membership;
pub mod memory;
pub mod refresh;
pub mod replay;

pub use backend::{BackendLease, BackendState, FailureKind};
pub use membership::{BackendOrigin, Members};
pub use memory::UpstreamMemory;

use crate::certificates::upstream::PeerTls;
use crate::config::model::{PassiveHealth, UpstreamConfig, UpstreamProtocol};
use crate::discovery::DnsName;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use futures::FutureExt;
use health::{ActiveHealth, HealthProbe, PoolHealth};
use http::HeaderValue;
use membership::MembershipSource;
use pingora::lb::{Backend, Backends};
use pingora::upstreams::peer::HttpPeer;
use prometheus::{Histogram, IntCounter, IntGauge, IntGaugeVec};
use rand::Rng;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One backend of a pool with what selection needs to know about it.
pub struct BackendSlot {
    backend: Backend,
    weight: u64,
    /// RFC 2782 priority (SRV); 0 otherwise. Lower is preferred.
    priority: u16,
    peer: HttpPeer,
    state: Arc<BackendState>,
    origin: BackendOrigin,
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

    /// Its selection weight (config weight × SRV weight factor).
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// Its SRV priority (0 unless it came from an SRV record).
    pub fn priority(&self) -> u16 {
        self.priority
    }

    /// Where it came from: the config file, or a DNS name.
    pub fn origin(&self) -> &BackendOrigin {
        &self.origin
    }
}

/// A named pool of backends. Its members change while it runs when some
/// backends are DNS names: [`UpstreamPool::sync`] rebuilds them from the
/// names' last good answers, and a request works on the members it loaded.
pub struct UpstreamPool {
    name: Box<str>,
    config: UpstreamConfig,
    /// The DNS names among the backends, with their configured weight.
    names: Vec<(Arc<DnsName>, u64)>,
    members: ArcSwap<Members>,
    /// The names' answer versions `members` was built from; also makes
    /// rebuilds one at a time (Pingora's view must not update concurrently).
    built_from: Mutex<Option<Vec<u64>>>,
    membership: Arc<MembershipSource>,
    /// Pingora's view of the same backends: membership, enablement, health.
    view: Backends,
    /// The client certificate and CAs towards the backends, read when
    /// this generation was built.
    peer_tls: PeerTls,
    /// Active health: the pool's state (shared across generations) and
    /// the check this generation built, installed when it goes live.
    active_health: Option<ActiveHealth>,
    in_flight_gauges: IntGaugeVec,
    backends_gauge: IntGauge,
    retries_total: IntCounter,
    panic_total: IntCounter,
    duration: Histogram,
}

impl UpstreamPool {
    /// Builds a pool from its validated config, reusing the backend,
    /// health and DNS state `memory` holds from earlier generations (so a
    /// reload starts from a name's last good addresses, not from nothing).
    pub fn new(
        config: &UpstreamConfig,
        metrics: &Metrics,
        memory: &UpstreamMemory,
    ) -> Result<Self, String> {
        let active_health = memory.health(config)?;
        let peer_tls = PeerTls::load(config.tls.as_ref())
            .map_err(|e| format!("upstream {}: tls: {e}", config.name))?;
        let membership = Arc::new(MembershipSource::default());
        let discovery = Box::new(membership::SharedMembership(membership.clone()));
        let view = match &active_health {
            Some((h, _)) => Backends::new_with_health_registry(discovery, h.registry.clone()),
            None => Backends::new(discovery),
        };
        let names = config
            .names
            .iter()
            .map(|n| (memory.dns_target(&config.name, &n.query), n.weight as u64))
            .collect();
        let name = config.name.as_str();
        let pool = Self {
            name: name.into(),
            config: config.clone(),
            names,
            members: ArcSwap::from_pointee(Members::default()),
            peer_tls,
            built_from: Mutex::new(None),
            membership,
            view,
            active_health,
            in_flight_gauges: metrics.upstream_in_flight.clone(),
            backends_gauge: metrics.upstream_backends.with_label_values(&[name]),
            retries_total: metrics.upstream_retries.with_label_values(&[name]),
            panic_total: metrics.upstream_panic.with_label_values(&[name]),
            duration: metrics.upstream_duration.with_label_values(&[name]),
        };
        pool.rebuild(memory)?;
        Ok(pool)
    }

    /// Rebuilds the members if a DNS name's answer changed since the last
    /// build: addresses that stay keep their slot (and so their count and
    /// health), new ones join healthy unless an active check says otherwise,
    /// removed ones get no new requests and finish what they have. True
    /// when the members changed.
    pub fn sync(&self, memory: &UpstreamMemory) -> bool {
        match self.rebuild(memory) {
            Ok(changed) => changed,
            Err(e) => {
                log::error!("{e}");
                false
            }
        }
    }

    fn name_versions(&self) -> Vec<u64> {
        self.names
            .iter()
            .map(|(t, _)| t.resolved().version)
            .collect()
    }

    fn rebuild(&self, memory: &UpstreamMemory) -> Result<bool, String> {
        let mut built_from = self.built_from.lock().unwrap_or_else(|p| p.into_inner());
        if built_from.as_ref() == Some(&self.name_versions()) {
            return Ok(false);
        }
        let current = self.members.load_full();
        let mut slots: Vec<Arc<BackendSlot>> = Vec::new();
        let mut resolved_versions = Vec::with_capacity(self.names.len());
        let mut add = |addr: SocketAddr, weight: u64, priority: u16, origin: BackendOrigin| {
            if slots.iter().any(|s| s.addr() == addr) {
                return Ok(()); // one slot per address, first listing wins
            }
            if let Some(kept) = current
                .slots()
                .iter()
                .find(|s| s.addr() == addr && s.weight == weight && s.priority == priority)
            {
                slots.push(kept.clone());
                return Ok(());
            }
            let backend = Backend::new_with_weight(&addr.to_string(), weight as usize)
                .map_err(|e| format!("upstream {}: backend {addr}: {e}", self.name))?;
            slots.push(Arc::new(BackendSlot {
                backend,
                weight,
                priority,
                peer: make_peer(addr, &self.config, &self.peer_tls),
                state: memory.backend(&self.name, addr, &self.in_flight_gauges),
                origin,
            }));
            Ok::<(), String>(())
        };
        for b in &self.config.backends {
            add(b.addr, b.weight as u64, 0, BackendOrigin::Config)?;
        }
        for (target, weight) in &self.names {
            let resolved = target.resolved();
            resolved_versions.push(resolved.version);
            for m in &resolved.members {
                let origin = BackendOrigin::Dns {
                    name: target.query().to_string().into(),
                    target: m.target.clone(),
                    since: m.since,
                };
                add(m.addr, weight * m.weight_factor, m.priority, origin)?;
            }
        }
        let changed = built_from.is_none()
            || slots.len() != current.slots().len()
            || slots
                .iter()
                .zip(current.slots())
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        let set: BTreeSet<Backend> = slots.iter().map(|s| s.backend.clone()).collect();
        self.membership.set(set);
        // Our membership source never waits, so the update completes at once.
        match self.view.update(|_| {}).now_or_never() {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("upstream {}: backend membership: {e}", self.name)),
            None => {
                return Err(format!(
                    "upstream {}: membership update did not complete",
                    self.name
                ))
            }
        }
        self.backends_gauge.set(slots.len() as i64);
        self.members.store(Arc::new(Members::new(slots)));
        // The versions the slots were built from: a change that lands
        // later makes the next sync build again.
        *built_from = Some(resolved_versions);
        Ok(changed)
    }

    /// The current members (a snapshot: later DNS changes do not alter it).
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// The DNS names feeding this pool.
    pub fn dns_targets(&self) -> impl Iterator<Item = &Arc<DnsName>> {
        self.names.iter().map(|(t, _)| t)
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `Host` header to send, when configured.
    pub fn host_header(&self) -> Option<&HeaderValue> {
        self.config.host_header.as_ref()
    }

    /// What the pool's backends speak (access line, metrics, deadlines).
    pub fn protocol(&self) -> UpstreamProtocol {
        self.config.protocol
    }

    /// The pool's active health checks, if configured.
    pub fn active_health(&self) -> Option<&Arc<PoolHealth>> {
        self.active_health.as_ref().map(|(h, _)| h)
    }

    /// The active health state and the check this generation built for it.
    pub fn active_health_with_probe(&self) -> Option<(&Arc<PoolHealth>, &Arc<HealthProbe>)> {
        self.active_health.as_ref().map(|(h, p)| (h, p))
    }

    /// Passive health policy.
    pub fn passive(&self) -> &PassiveHealth {
        &self.config.passive
    }

    /// How many extra attempts a request may make on other backends.
    pub fn retries(&self) -> usize {
        self.config.retries
    }

    /// Whether idempotent requests answered 502/503/504 are retried.
    pub fn retries_on_5xx(&self) -> bool {
        self.config.retry_on_5xx
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
        let members = self.members.load();
        !members.slots().iter().any(|s| self.is_ready(s))
            && members.slots().iter().any(|s| self.actively_healthy(s))
    }

    /// Whether a backend other than `except` may take traffic (a retry has
    /// somewhere to go); in panic mode, any other actively healthy one.
    pub fn has_other_ready(&self, except: SocketAddr) -> bool {
        let members = self.members.load();
        let others = || members.slots().iter().filter(|s| s.addr() != except);
        others().any(|s| self.is_ready(s))
            || (self.in_panic() && others().any(|s| self.actively_healthy(s)))
    }

    /// Weighted least-connections: the ready backend with the fewest
    /// in-flight requests per unit of weight. Ties are broken at random in
    /// proportion to weight, so idle equal backends share load evenly.
    /// With SRV priorities, only the lowest priority that has a candidate
    /// is considered (RFC 2782). `avoid` skips one backend (the one a retry
    /// just failed on) unless it is the only candidate. When no backend is
    /// ready, panic mode picks among the actively healthy ones and counts
    /// it. Does not allocate.
    pub fn select(&self, avoid: Option<SocketAddr>) -> Option<Arc<BackendSlot>> {
        let members = self.members.load();
        let ready = |s: &BackendSlot| self.is_ready(s);
        if let Some(slot) = pick(&members, avoid, ready) {
            return Some(slot.clone());
        }
        let panic = pick(&members, avoid, |s| self.actively_healthy(s))?;
        self.panic_total.inc();
        Some(panic.clone())
    }

    /// The slot of a backend, by address (a retry on the same backend), if
    /// it is still a member.
    pub fn slot(&self, addr: SocketAddr) -> Option<Arc<BackendSlot>> {
        self.members
            .load()
            .slots()
            .iter()
            .find(|s| s.addr() == addr)
            .cloned()
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
        if !kind.counts_toward_max_fails() || self.members.load().slots().len() < 2 {
            return;
        }
        let passive = &self.config.passive;
        if backend.record_failure(passive) {
            log::warn!(
                "upstream {} backend {}: {} failures within {:?}, out of rotation for {:?}",
                self.name,
                backend.label(),
                passive.max_fails,
                passive.fail_timeout,
                passive.fail_timeout
            );
        }
    }
}

/// The least-loaded candidate of `members`, avoiding `avoid` if another
/// candidate exists; with priorities, within the lowest priority that has
/// a candidate.
fn pick(
    members: &Members,
    avoid: Option<SocketAddr>,
    candidate: impl Fn(&BackendSlot) -> bool,
) -> Option<&Arc<BackendSlot>> {
    let pick_among = |skip: Option<SocketAddr>| {
        let eligible = |slot: &BackendSlot| skip != Some(slot.addr()) && candidate(slot);
        let priority = if members.prioritized() {
            let lowest = members
                .slots()
                .iter()
                .filter(|s| eligible(s))
                .map(|s| s.priority)
                .min()?;
            Some(lowest)
        } else {
            None
        };
        let mut best: Option<&Arc<BackendSlot>> = None;
        let mut tied_weight = 0u64;
        for slot in members.slots() {
            if priority.is_some_and(|p| slot.priority != p) || !eligible(slot) {
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
        Some(addr) => pick_among(Some(addr)).or_else(|| pick_among(None)),
        None => pick_among(None),
    }
}

fn make_peer(addr: SocketAddr, config: &UpstreamConfig, peer_tls: &PeerTls) -> HttpPeer {
    let mut peer = match &config.tls {
        Some(tls) => {
            let mut peer = HttpPeer::new(addr, true, tls.sni.clone());
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
            peer_tls.apply(&mut peer);
            peer
        }
        None => HttpPeer::new(addr, false, String::new()),
    };
    speak(&mut peer.options, config.protocol, config.max_streams);
    peer
}

/// Sets what a connection to a backend of this upstream speaks: the
/// ALPN offer over TLS, prior-knowledge HTTP/2 over cleartext (Pingora's
/// connector starts HTTP/2 without ALPN when the minimum version is 2),
/// and how many streams one HTTP/2 connection carries before Pingora
/// opens another. Also used by the health checks, so they speak the
/// pool's protocol.
pub fn speak(
    options: &mut pingora::upstreams::peer::PeerOptions,
    protocol: UpstreamProtocol,
    max_streams: usize,
) {
    match protocol {
        UpstreamProtocol::Http1 => options.set_http_version(1, 1),
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => options.set_http_version(2, 2),
        UpstreamProtocol::Auto => options.set_http_version(2, 1),
    }
    options.max_h2_streams = max_streams;
}

#[cfg(test)]
mod tests;
