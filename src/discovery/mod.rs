//! Backends that move: host names and SRV names in `backends`, re-resolved
//! in the background as their records' TTL says (bounded by `dns.min_ttl`
//! and `dns.max_ttl`). The request path never waits for DNS: it selects
//! among the members a pool last built from its names' last good answers.
//!
//! - [`resolver`]: the questions, asked through `hickory-resolver`.
//! - [`target`]: one name's last good answer, schedule and last error.
//! - [`DnsRefresher`]: the background service that asks when due and
//!   rebuilds the pools an answer changed.
//! - [`resolve_first`]: the first answers, before a generation is built
//!   (start-up, reload, `tollgate check`), so a pool does not start empty
//!   when DNS answers.

pub mod resolver;
pub mod screen;
pub mod target;

pub use resolver::DnsClient;
pub use target::{Applied, DnsTarget};

use crate::config::model::DnsSettings;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::UpstreamMemory;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use resolver::{Answer, Failure};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every `result` label of `tollgate_dns_resolutions_total`.
pub const RESULTS: [&str; 8] = [
    "ok",
    "timeout",
    "nxdomain",
    "no_records",
    "servfail",
    "refused",
    "unreachable",
    "error",
];

/// Counts a resolution, logs a change or a failure, and records it on the
/// target; returns what applying it did.
fn record(
    target: &DnsTarget,
    result: Result<Answer, Failure>,
    settings: &DnsSettings,
    metrics: Option<&Metrics>,
) -> Applied {
    let result = result.and_then(|answer| {
        let (screened, left_out) =
            screen::screen(answer, &settings.own_addresses, &target.query().to_string());
        if left_out != screen::Screened::default() {
            log::warn!(
                "upstream {} backend {}: left out of the answer: {:?}, and {} past the limit of {}",
                target.upstream(),
                target.query(),
                left_out.refused,
                left_out.over_limit,
                screen::MAX_ADDRESSES
            );
        }
        screened
    });
    let label = match &result {
        Ok(_) => "ok",
        Err(f) => f.result,
    };
    if let Some(metrics) = metrics {
        metrics
            .dns_resolutions
            .with_label_values(&[target.upstream(), label])
            .inc();
    }
    let was_failing = target.asked() && target.is_failing();
    let failure = result.as_ref().err().cloned();
    let applied = target.apply(result, settings);
    match (applied, failure) {
        (Applied::Changed, _) => {
            let addrs: Vec<String> = target
                .resolved()
                .members
                .iter()
                .map(|m| m.addr.to_string())
                .collect();
            log::info!(
                "upstream {} backend {}: now {}",
                target.upstream(),
                target.query(),
                addrs.join(", ")
            );
        }
        (Applied::Failed, Some(f)) if !was_failing => log::warn!(
            "upstream {} backend {}: resolution failed ({}: {}); {}",
            target.upstream(),
            target.query(),
            f.result,
            f.message,
            if target.ever_resolved() {
                "keeping its last good addresses"
            } else {
                "it has no addresses yet"
            }
        ),
        (Applied::Failed, Some(f)) => log::debug!(
            "upstream {} backend {}: still failing ({}: {})",
            target.upstream(),
            target.query(),
            f.result,
            f.message
        ),
        (Applied::Unchanged, _) if was_failing => log::info!(
            "upstream {} backend {}: resolves again",
            target.upstream(),
            target.query()
        ),
        _ => {}
    }
    applied
}

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
    let targets: Vec<Arc<DnsTarget>> = config
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
