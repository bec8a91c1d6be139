//! Keeps the pools' DNS names answered: the first answers before a
//! generation is built ([`resolve_first`]: start-up, reload, `tollgate
//! check`, so a pool does not start empty when DNS answers), then the
//! background service that asks again when a name is due and rebuilds the
//! pools an answer changed ([`DnsRefresher`]). What an answer does to a
//! name is `discovery`'s.

use super::UpstreamMemory;
use crate::config::model::DnsSettings;
use crate::config::Config;
use crate::discovery::resolver::{Answer, Failure};
use crate::discovery::{record, Applied, DnsClient, DnsName};
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Resolves every name of `config` that `memory` has never asked, before
/// the generation that uses them is built, and returns one message per
/// name that did not resolve (its pool starts without it; the refresher
/// keeps asking). Blocking: it runs the questions on a runtime of its own,
/// so it works from `main`, from a reload's blocking thread and from
/// `tollgate check` alike.
pub fn resolve_first(
    config: &Config,
    memory: &UpstreamMemory,
    metrics: Option<&Metrics>,
) -> Vec<String> {
    let now = Instant::now();
    let targets: Vec<Arc<DnsName>> = config
        .upstreams
        .iter()
        .flat_map(|u| u.names.iter().map(|n| memory.dns_target(&u.name, &n.query)))
        .filter(|t| !t.asked() && t.claim_if_due(now))
        .collect();
    if targets.is_empty() {
        return Vec::new();
    }
    let settings = &config.dns;
    let answers = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Vec<Result<Answer, Failure>>, String> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("dns: cannot start a resolver runtime: {e}"))?;
                runtime.block_on(async {
                    let client = DnsClient::new(settings)?;
                    let questions = targets.iter().map(|t| client.resolve(t.query()));
                    Ok(futures::future::join_all(questions).await)
                })
            })
            .join()
            .unwrap_or_else(|_| Err("dns: the resolver thread panicked".to_owned()))
    });
    let answers = match answers {
        Ok(answers) => answers,
        Err(message) => targets
            .iter()
            .map(|_| {
                Err(Failure {
                    result: "error",
                    message: message.clone(),
                })
            })
            .collect(),
    };
    let mut problems = Vec::new();
    for (target, answer) in targets.iter().zip(answers) {
        if let Err(f) = &answer {
            problems.push(format!(
                "upstreams.{}: backend {} did not resolve ({}: {}); the pool starts without it \
                 and it joins when it resolves",
                target.upstream(),
                target.query(),
                f.result,
                f.message
            ));
        }
        record(target, answer, settings, metrics);
    }
    problems
}

/// Asks each live pool's names when they are due, rebuilds the pools whose
/// answers changed, and forgets backends that have drained. Follows
/// reloads through [`UpstreamMemory`] (its live pools and `dns` settings).
pub struct DnsRefresher {
    memory: Arc<UpstreamMemory>,
    metrics: Arc<Metrics>,
    client: Mutex<Option<Arc<DnsClient>>>,
}

/// How often the refresher looks for due names: the finest useful
/// `min_ttl` granularity.
const TICK: Duration = Duration::from_millis(100);

/// Ticks between two sweeps of drained backends.
const SWEEP_EVERY: u32 = 10;

impl DnsRefresher {
    /// A refresher over the pools `memory` publishes.
    pub fn new(memory: Arc<UpstreamMemory>, metrics: Arc<Metrics>) -> Self {
        Self {
            memory,
            metrics,
            client: Mutex::new(None),
        }
    }

    /// The client for the live settings, rebuilt when a reload changed them.
    fn client(&self, settings: &DnsSettings) -> Option<Arc<DnsClient>> {
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = client.as_ref().filter(|c| c.settings() == settings) {
            return Some(c.clone());
        }
        match DnsClient::new(settings) {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                *client = Some(fresh.clone());
                Some(fresh)
            }
            Err(e) => {
                log::error!("{e}; backend names are not refreshed");
                None
            }
        }
    }

    /// Starts the resolution of every due name of the live pools.
    fn tick(&self, now: Instant) {
        let pools = self.memory.live_pools();
        if pools.iter().all(|p| p.dns_targets().next().is_none()) {
            return;
        }
        let settings = self.memory.dns_settings();
        let Some(client) = self.client(&settings) else {
            return;
        };
        for pool in pools.iter() {
            for target in pool.dns_targets() {
                if !target.claim_if_due(now) {
                    continue;
                }
                let (target, client, settings) = (target.clone(), client.clone(), settings.clone());
                let (memory, metrics) = (self.memory.clone(), self.metrics.clone());
                tokio::spawn(async move {
                    let answer = client.resolve(target.query()).await;
                    if record(&target, answer, &settings, Some(&metrics)) == Applied::Changed {
                        memory.sync_live_pools();
                    }
                });
            }
        }
    }
}

#[async_trait]
impl BackgroundService for DnsRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.tick(Instant::now());
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(SWEEP_EVERY) {
                self.memory.sweep(&self.metrics);
            }
        }
    }
}
