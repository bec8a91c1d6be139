//! Active health checks, on Pingora's machinery: `HttpHealthCheck` /
//! `TcpHealthCheck` probe each backend and flip its `Health` in a
//! `HealthRegistry` after the configured number of consecutive results.
//!
//! What is ours: the registry is kept across config reloads (so health state
//! survives for backends that stay), and one background service runs every
//! pool's checks on its own interval. Pingora's `HealthCheckService` is bound
//! to registries known at start-up, and pools come and go with reloads.

use super::UpstreamMemory;
use crate::config::model::{
    HealthCheckConfig, Probe, UpstreamConfig, UpstreamProtocol, UpstreamTls,
};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::{Backend, HealthRegistry};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A pool's Pingora check, built from its config and its certificate
/// files as they were read for one config generation.
pub type HealthProbe = Box<dyn HealthCheck + Send + Sync>;

/// A pool's active health state and the check one config generation
/// built for it (installed when that generation goes live).
pub type ActiveHealth = (Arc<PoolHealth>, Arc<HealthProbe>);

/// A pool's active health state and schedule.
pub struct PoolHealth {
    /// Health of every backend of the pool, shared by its config generations.
    pub registry: Arc<HealthRegistry>,
    /// The check the registry runs, replaced by each generation that goes
    /// live (Pingora's registry takes its check once): a reload that
    /// re-read the pool's client certificate checks with the new one
    /// while the backends' health carries on.
    probe: Arc<ArcSwap<HealthProbe>>,
    /// The config it was built from; a changed check gets a new registry.
    pub config: HealthCheckConfig,
    /// How the checks connect (TLS, protocol): a change rebuilds them too.
    transport: (Option<UpstreamTls>, UpstreamProtocol, usize),
    running: AtomicBool,
    next_due: Mutex<Instant>,
}

impl PoolHealth {
    /// A registry running `probe` (built by [`probe`] for `config`).
    pub fn new(pool: &UpstreamConfig, config: &HealthCheckConfig, probe: Arc<HealthProbe>) -> Self {
        let probe = Arc::new(ArcSwap::new(probe));
        let check = NamedCheck {
            upstream: pool.name.clone(),
            inner: probe.clone(),
        };
        let registry = Arc::new(HealthRegistry::new());
        registry.set_health_check(Box::new(check));
        Self {
            registry,
            probe,
            config: config.clone(),
            transport: transport_of(pool),
            running: AtomicBool::new(false),
            next_due: Mutex::new(Instant::now()),
        }
    }

    /// From the next check on, checks run `probe` (a pass under way
    /// finishes with the one it started with).
    pub fn install(&self, probe: &Arc<HealthProbe>) {
        self.probe.store(probe.clone());
    }

    /// Whether checks built for `pool` would connect the way these do.
    pub fn speaks_like(&self, pool: &UpstreamConfig) -> bool {
        self.transport == transport_of(pool)
    }

    /// Starts a check pass if one is due and none is running.
    fn start_if_due(self: &Arc<Self>, now: Instant) {
        {
            let mut due = self.next_due.lock().unwrap_or_else(|p| p.into_inner());
            if now < *due || self.running.swap(true, Ordering::AcqRel) {
                return;
            }
            *due = now + self.config.interval;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.registry.run_health_check(true).await;
            me.running.store(false, Ordering::Release);
        });
    }
}

/// The key of how a pool's checks connect.
fn transport_of(pool: &UpstreamConfig) -> (Option<UpstreamTls>, UpstreamProtocol, usize) {
    (pool.tls.clone(), pool.protocol, pool.max_streams)
}

/// The check of `pool` for `config`, its certificate files read now.
pub fn probe(
    pool: &UpstreamConfig,
    config: &HealthCheckConfig,
) -> Result<Arc<HealthProbe>, String> {
    pingora_check(config, pool)
        .map(Arc::new)
        .map_err(|e| format!("upstream {}: health check: {e}", pool.name))
}

/// Pingora's check for `config`, connecting as the pool's requests do
/// (TLS, and HTTP/2 when the pool speaks it).
fn pingora_check(
    config: &HealthCheckConfig,
    pool: &UpstreamConfig,
) -> pingora::Result<Box<dyn HealthCheck + Send + Sync>> {
    let tls = pool.tls.as_ref();
    match &config.probe {
        Probe::Tcp => {
            let mut check = match tls {
                Some(t) => TcpHealthCheck::new_tls(&t.sni),
                None => TcpHealthCheck::new(),
            };
            check.consecutive_success = config.healthy_threshold;
            check.consecutive_failure = config.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(config.timeout);
            check.peer_template.options.total_connection_timeout = Some(config.timeout);
            super::speak(&mut check.peer_template.options, pool.protocol, 1);
            if let Some(t) = tls {
                check.peer_template.options.verify_cert = t.verify;
                check.peer_template.options.verify_hostname = t.verify;
            }
            Ok(check)
        }
        Probe::Http {
            path,
            host,
            expect_status,
        } => {
            let mut check = HttpHealthCheck::new(host, tls.is_some());
            peer_tls(pool)?.apply(&mut check.peer_template);
            let mut req = RequestHeader::build("GET", path.as_bytes(), None)?;
            req.insert_header("Host", host.as_str())?;
            req.insert_header("User-Agent", "tollgate-health-check")?;
            check.req = req;
            check.consecutive_success = config.healthy_threshold;
            check.consecutive_failure = config.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(config.timeout);
            check.peer_template.options.total_connection_timeout = Some(config.timeout);
            check.peer_template.options.read_timeout = Some(config.timeout);
            super::speak(&mut check.peer_template.options, pool.protocol, 1);
            if let Some(t) = tls {
                check.peer_template.sni = t.sni.clone();
                check.peer_template.options.verify_cert = t.verify;
                check.peer_template.options.verify_hostname = t.verify;
            }
            let expect = expect_status.clone();
            check.validator = Some(Box::new(move |resp| {
                let status = resp.status.as_u16();
                if expect.contains(&status) {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::CustomCode("unexpected status", status),
                        "health check",
                    )
                }
            }));
            Ok(Box::new(check))
        }
        Probe::Grpc { service, host } => {
            let mut peer = match tls {
                Some(t) => HttpPeer::new("0.0.0.0:1", true, t.sni.clone()),
                None => HttpPeer::new("0.0.0.0:1", false, String::new()),
            };
            peer.options.connection_timeout = Some(config.timeout);
            peer.options.total_connection_timeout = Some(config.timeout);
            peer.options.read_timeout = Some(config.timeout);
            peer.options.write_timeout = Some(config.timeout);
            super::speak(&mut peer.options, pool.protocol, 1);
            if let Some(t) = tls {
                peer.options.verify_cert = t.verify;
                peer.options.verify_hostname = t.verify;
            }
            peer_tls(pool)?.apply(&mut peer);
            let check = super::grpc_health::GrpcHealthCheck::new(
                peer,
                service,
                host,
                config.timeout,
                config.healthy_threshold,
                config.unhealthy_threshold,
            )?;
            Ok(Box::new(check))
        }
    }
}

/// Wraps a Pingora check so its state-change logs name the upstream and
/// the backend address instead of printing the `Backend` struct.
struct NamedCheck {
    upstream: String,
    inner: Arc<ArcSwap<HealthProbe>>,
}

#[async_trait]
impl HealthCheck for NamedCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let probe = self.inner.load_full();
        probe.check(target).await
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.load().health_threshold(success)
    }

    fn backend_summary(&self, target: &Backend) -> String {
        format!("upstream {} backend {}", self.upstream, target.addr)
    }
}

/// Runs the active checks of every live pool on its interval, following
/// reloads: it reads the schedule [`UpstreamMemory::schedule`] publishes
/// whenever a config generation goes live, and nothing else.
pub struct HealthChecker {
    memory: Arc<UpstreamMemory>,
}

/// How often the checker looks for due pools; the finest useful interval.
const TICK: Duration = Duration::from_millis(100);

impl HealthChecker {
    /// A checker over the pools `memory` schedules.
    pub fn new(memory: Arc<UpstreamMemory>) -> Self {
        Self { memory }
    }

    /// Starts the check pass of every scheduled pool that is due at `now`.
    pub fn tick(&self, now: Instant) {
        for health in self.memory.scheduled_checks().iter() {
            health.start_if_due(now);
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.tick(Instant::now());
        }
    }
}

/// The pool's client certificate and CAs, for checks that connect as its
/// requests do. (Pingora's TCP check connects with a `BasicPeer`, which
/// carries neither: a `tcp` check over TLS presents no certificate.)
fn peer_tls(pool: &UpstreamConfig) -> pingora::Result<crate::certificates::upstream::PeerTls> {
    crate::certificates::upstream::PeerTls::load(pool.tls.as_ref())
        .map_err(|e| Error::explain(ErrorType::InternalError, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{BackendConfig, PassiveHealth, UpstreamConfig};
    use crate::metrics::Metrics;
    use crate::upstream::UpstreamPool;
    use std::net::SocketAddr;

    /// A pool of one backend on a port nothing listens on, checked by TCP
    /// every 50 ms and marked down after one failure.
    fn pool(memory: &UpstreamMemory, metrics: &Metrics) -> UpstreamPool {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let config = UpstreamConfig {
            name: "api".into(),
            backends: vec![BackendConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], closed.port())),
                weight: 1,
            }],
            names: Vec::new(),
            tls: None,
            host_header: None,
            health_check: Some(HealthCheckConfig {
                probe: Probe::Tcp,
                interval: Duration::from_millis(50),
                timeout: Duration::from_millis(500),
                healthy_threshold: 1,
                unhealthy_threshold: 1,
            }),
            passive: PassiveHealth {
                max_fails: 0,
                fail_timeout: Duration::from_secs(30),
                fail_on_5xx: false,
            },
            retries: 0,
            retry_on_5xx: false,
            protocol: crate::config::model::UpstreamProtocol::Http1,
            max_streams: 100,
        };
        UpstreamPool::new(&config, metrics, memory).expect("pool")
    }

    #[tokio::test]
    async fn scheduled_pools_are_checked_and_unscheduled_ones_are_not() {
        let memory = Arc::new(UpstreamMemory::default());
        let metrics = Metrics::new().expect("metrics");
        let live = Arc::new(pool(&memory, &metrics));
        let checker = HealthChecker::new(memory.clone());

        // Built but not scheduled (a reload that failed later): not run.
        assert!(memory.scheduled_checks().is_empty());
        memory.schedule(std::slice::from_ref(&live), &Default::default());
        assert_eq!(memory.scheduled_checks().len(), 1);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let service = tokio::spawn(async move { checker.start(rx).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while live.actively_healthy(&live.members().slots()[0]) {
            assert!(
                Instant::now() < deadline,
                "the closed backend was never marked down"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.send(true).expect("shutdown");
        tokio::time::timeout(Duration::from_secs(5), service)
            .await
            .expect("the checker stops on shutdown")
            .expect("no panic");
    }
}
