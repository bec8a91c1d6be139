//! Active health checks, on Pingora's machinery: `HttpHealthCheck` /
//! `TcpHealthCheck` probe each backend and flip its `Health` in a
//! `HealthRegistry` after the configured number of consecutive results.
//!
//! What is ours: the registry is kept across config reloads (so health state
//! survives for backends that stay), and one background service runs every
//! pool's checks on its own interval. Pingora's `HealthCheckService` is bound
//! to registries known at start-up, and pools come and go with reloads.

use crate::config::model::{HealthCheckConfig, Probe, UpstreamTls};
use crate::state::AppState;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::{Backend, HealthRegistry};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::{Error, ErrorType};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A pool's active health state and schedule.
pub struct PoolHealth {
    /// Health of every backend of the pool, shared by its config generations.
    pub registry: Arc<HealthRegistry>,
    /// The config it was built from; a changed check gets a new registry.
    pub config: HealthCheckConfig,
    running: AtomicBool,
    next_due: Mutex<Instant>,
}

impl PoolHealth {
    /// Builds the Pingora check for `config` and a registry that uses it.
    pub fn new(
        upstream: &str,
        config: &HealthCheckConfig,
        tls: Option<&UpstreamTls>,
    ) -> Result<Self, String> {
        let check = NamedCheck {
            upstream: upstream.to_owned(),
            inner: pingora_check(config, tls)
                .map_err(|e| format!("upstream {upstream}: health check: {e}"))?,
        };
        let registry = Arc::new(HealthRegistry::new());
        registry.set_health_check(Box::new(check));
        Ok(Self {
            registry,
            config: config.clone(),
            running: AtomicBool::new(false),
            next_due: Mutex::new(Instant::now()),
        })
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

fn pingora_check(
    config: &HealthCheckConfig,
    tls: Option<&UpstreamTls>,
) -> pingora::Result<Box<dyn HealthCheck + Send + Sync>> {
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
            let mut req = RequestHeader::build("GET", path.as_bytes(), None)?;
            req.insert_header("Host", host.as_str())?;
            req.insert_header("User-Agent", "tollgate-health-check")?;
            check.req = req;
            check.consecutive_success = config.healthy_threshold;
            check.consecutive_failure = config.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(config.timeout);
            check.peer_template.options.total_connection_timeout = Some(config.timeout);
            check.peer_template.options.read_timeout = Some(config.timeout);
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
    }
}

/// Wraps a Pingora check so its state-change logs name the upstream and
/// the backend address instead of printing the `Backend` struct.
struct NamedCheck {
    upstream: String,
    inner: Box<dyn HealthCheck + Send + Sync>,
}

#[async_trait]
impl HealthCheck for NamedCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        self.inner.check(target).await
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }

    fn backend_summary(&self, target: &Backend) -> String {
        format!("upstream {} backend {}", self.upstream, target.addr)
    }
}

/// Runs every pool's active checks on its interval, following reloads.
pub struct HealthChecker {
    state: Arc<AppState>,
}

/// How often the checker looks for due pools; the finest useful interval.
const TICK: Duration = Duration::from_millis(100);

impl HealthChecker {
    /// A checker over whatever config generation `state` holds.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
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
            let gateway = self.state.gateway();
            let now = Instant::now();
            for pool in gateway.pools.iter() {
                if let Some(health) = pool.active_health() {
                    health.start_if_due(now);
                }
            }
        }
    }
}
