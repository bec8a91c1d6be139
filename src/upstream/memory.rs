//! What upstream pools remember across config reloads: each backend's
//! in-flight count and passive-health window, each pool's active-health
//! registry, and each backend name's last good DNS answer. A reload builds
//! new pools from this memory, so a backend that stays keeps its count and
//! health, and a name keeps its addresses; a backend that goes (from the
//! file or from DNS) is forgotten once no pool and no request holds it.

use super::backend::BackendState;
use super::health::{self, ActiveHealth, PoolHealth};
use super::UpstreamPool;
use crate::config::model::{DnsQuery, DnsSettings, UpstreamConfig};
use crate::config::Config;
use crate::discovery::DnsName;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use prometheus::IntGaugeVec;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct PoolMemory {
    backends: HashMap<SocketAddr, Arc<BackendState>>,
    health: Option<Arc<PoolHealth>>,
    names: HashMap<DnsQuery, Arc<DnsName>>,
}

/// Upstream state kept for the life of the process.
#[derive(Default)]
pub struct UpstreamMemory {
    pools: Mutex<HashMap<String, PoolMemory>>,
    /// The active checks of the live generation's pools, for the checker.
    scheduled: ArcSwap<Vec<Arc<PoolHealth>>>,
    /// The live generation's pools, for the DNS refresher.
    live_pools: ArcSwap<Vec<Arc<UpstreamPool>>>,
    /// The live generation's `dns` settings.
    dns: ArcSwap<DnsSettings>,
}

impl UpstreamMemory {
    /// The state of `addr` in pool `upstream`, created on first use;
    /// `gauges` is `tollgate_upstream_in_flight`.
    pub fn backend(
        &self,
        upstream: &str,
        addr: SocketAddr,
        gauges: &IntGaugeVec,
    ) -> Arc<BackendState> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let pool = pools.entry(upstream.to_owned()).or_default();
        pool.backends
            .entry(addr)
            .or_insert_with(|| {
                let gauge = gauges.with_label_values(&[upstream, addr.to_string().as_str()]);
                Arc::new(BackendState::new(addr, gauge))
            })
            .clone()
    }

    /// The live state of a backend name of pool `upstream`, created (never
    /// asked yet) on first use.
    pub fn dns_target(&self, upstream: &str, query: &DnsQuery) -> Arc<DnsName> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let pool = pools.entry(upstream.to_owned()).or_default();
        pool.names
            .entry(query.clone())
            .or_insert_with(|| Arc::new(DnsName::new(upstream, query.clone())))
            .clone()
    }

    /// The pools of the live generation.
    pub fn live_pools(&self) -> Arc<Vec<Arc<UpstreamPool>>> {
        self.live_pools.load_full()
    }

    /// The live generation's `dns` settings.
    pub fn dns_settings(&self) -> Arc<DnsSettings> {
        self.dns.load_full()
    }

    /// Rebuilds the members of every live pool that a changed DNS answer
    /// feeds.
    pub fn sync_live_pools(&self) {
        for pool in self.live_pools.load().iter() {
            pool.sync(self);
        }
    }

    /// Forgets backends that no pool of any generation and no request
    /// holds any more (a DNS address drained after it left its name's
    /// answers), with their metric series.
    pub fn sweep(&self, metrics: &Metrics) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        for (name, pool) in pools.iter_mut() {
            pool.backends.retain(|addr, state| {
                let held = Arc::strong_count(state) > 1;
                if !held {
                    metrics.forget_backend(name, *addr);
                }
                held
            });
        }
    }

    /// The active-health state of a pool: kept when its check is unchanged,
    /// replaced (health starts over) when the check changed; and the check
    /// built for this generation (its certificate files read now), which
    /// [`Self::schedule`] installs when the generation goes live.
    pub fn health(&self, config: &UpstreamConfig) -> Result<Option<ActiveHealth>, String> {
        let Some(check) = &config.health_check else {
            return Ok(None);
        };
        let probe = health::probe(config, check)?;
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let pool = pools.entry(config.name.clone()).or_default();
        if let Some(existing) = &pool.health {
            if existing.config == *check && existing.speaks_like(config) {
                return Ok(Some((existing.clone(), probe)));
            }
        }
        let fresh = Arc::new(PoolHealth::new(config, check, probe.clone()));
        pool.health = Some(fresh.clone());
        Ok(Some((fresh, probe)))
    }

    /// Publishes the active checks of a generation that just went live:
    /// from now on the health checker runs these and only these. (Checks of
    /// a generation that was built but never went live — a reload refused
    /// later — are never run.)
    pub fn schedule(&self, pools: &[Arc<UpstreamPool>], dns: &DnsSettings) {
        let checks = pools
            .iter()
            .filter_map(|p| {
                let (health, probe) = p.active_health_with_probe()?;
                health.install(probe);
                Some(health.clone())
            })
            .collect();
        self.scheduled.store(Arc::new(checks));
        self.dns.store(Arc::new(dns.clone()));
        self.live_pools.store(Arc::new(pools.to_vec()));
        // An answer that changed between building these pools and now.
        self.sync_live_pools();
    }

    /// The checks [`Self::schedule`] published last.
    pub fn scheduled_checks(&self) -> Arc<Vec<Arc<PoolHealth>>> {
        self.scheduled.load_full()
    }

    /// After a generation was built and refused: forgets what that build
    /// added (pools, backends and their metric series) and gives each live
    /// pool back the active-health state it runs with, so the refused
    /// build leaves no trace.
    pub fn revert_to(&self, config: &Config, live: &[Arc<UpstreamPool>], metrics: &Metrics) {
        self.retain(config, metrics);
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        for pool in live {
            if let Some(memory) = pools.get_mut(pool.name()) {
                memory.health = pool.active_health().cloned();
            }
        }
    }

    /// Forgets pools, backends and names that `config` no longer has, and
    /// their metric series. Requests still holding them keep them alive.
    pub fn retain(&self, config: &Config, metrics: &Metrics) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|name, pool| {
            let Some(upstream) = config.upstreams.iter().find(|u| &u.name == name) else {
                for addr in pool.backends.keys() {
                    metrics.forget_backend(name, *addr);
                }
                metrics.forget_upstream(name);
                return false;
            };
            pool.names
                .retain(|query, _| upstream.names.iter().any(|n| n.query == *query));
            let resolved: Vec<SocketAddr> = pool
                .names
                .values()
                .flat_map(|t| {
                    t.resolved()
                        .members
                        .iter()
                        .map(|m| m.addr)
                        .collect::<Vec<_>>()
                })
                .collect();
            pool.backends.retain(|addr, _| {
                let keep =
                    upstream.backends.iter().any(|b| b.addr == *addr) || resolved.contains(addr);
                if !keep {
                    metrics.forget_backend(name, *addr);
                }
                keep
            });
            if upstream.health_check.is_none() {
                pool.health = None;
            }
            true
        });
    }
}
