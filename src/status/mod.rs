//! What the admin status page computes from: the counters `/metrics`
//! exports, sampled every two seconds by [`Sampler`] (a background
//! service, off the request path) into a five-minute [`History`]. The page
//! itself (`/`, `/status.json`) is `admin::status_page`.
//!
//! One source of truth: every number is read from the same Prometheus
//! registry `/metrics` renders. The one addition is
//! [`crate::rejections::RejectionTally`], the rejected tenants of the last
//! interval, which `/metrics` keeps only for tiers that opt into
//! per-tenant labels.

pub mod history;

use crate::metrics::Metrics;
use async_trait::async_trait;
pub use history::History;
use history::{RouteCounters, Sample, TierCounters};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::proto::Metric;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// The sampled history the page is computed from.
pub struct StatusBoard {
    history: Mutex<History>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusBoard {
    /// An empty board for tollgate's latency histogram.
    pub fn new() -> Self {
        Self {
            history: Mutex::new(History::new(crate::metrics::LATENCY_BUCKETS.to_vec())),
        }
    }

    /// Takes one sample of `metrics` now.
    pub fn sample(&self, metrics: &Metrics) {
        let sample = snapshot(metrics, Instant::now());
        self.lock().push(sample, SystemTime::now());
    }

    /// The history, locked (the sampler writes every two seconds).
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The background service that samples the counters for the status page.
pub struct Sampler {
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
}

impl Sampler {
    /// Samples `metrics` into `board`.
    pub fn new(board: Arc<StatusBoard>, metrics: Arc<Metrics>) -> Self {
        Self { board, metrics }
    }
}

#[async_trait]
impl BackgroundService for Sampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(history::SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.board.sample(&self.metrics);
        }
    }
}

fn label<'m>(metric: &'m Metric, name: &str) -> &'m str {
    metric
        .get_label()
        .iter()
        .find(|l| l.name() == name)
        .map_or("", |l| l.value())
}

fn counter(metric: &Metric) -> u64 {
    metric.get_counter().value() as u64
}

/// The counters the page reads, from the registry `/metrics` renders.
fn snapshot(metrics: &Metrics, at: Instant) -> Sample {
    let mut sample = Sample::empty(at);
    for family in metrics.gather() {
        let name = family.name();
        for m in family.get_metric() {
            match name {
                "tollgate_requests_total" => {
                    let r = route(&mut sample, m);
                    let n = counter(m);
                    let status: u16 = label(m, "status").parse().unwrap_or(0);
                    r.requests += n;
                    if let Some(class) = r
                        .by_class
                        .get_mut(usize::from(status / 100).wrapping_sub(1))
                    {
                        *class += n;
                    }
                    if status == 429 {
                        r.too_many += n;
                    }
                }
                "tollgate_request_duration_seconds" => {
                    let r = route(&mut sample, m);
                    let h = m.get_histogram();
                    let counts = h
                        .get_bucket()
                        .iter()
                        .map(|b| b.cumulative_count())
                        .chain(std::iter::once(h.sample_count()));
                    if r.buckets.is_empty() {
                        r.buckets = counts.collect();
                    } else {
                        for (total, n) in r.buckets.iter_mut().zip(counts) {
                            *total += n;
                        }
                    }
                }
                "tollgate_cache_requests_total" => {
                    let r = route(&mut sample, m);
                    let n = counter(m);
                    r.cache_lookups += n;
                    if matches!(label(m, "result"), "hit" | "stale" | "revalidated") {
                        r.cache_hits += n;
                    }
                }
                "tollgate_upstream_failures_total" => {
                    let backend = (
                        label(m, "upstream").to_owned(),
                        label(m, "backend").to_owned(),
                    );
                    let kinds = sample.failures.entry(backend).or_default();
                    *kinds.entry(label(m, "kind").to_owned()).or_default() += counter(m);
                }
                "tollgate_ratelimit_decisions_total" => {
                    let t = tier(&mut sample, m);
                    match label(m, "decision") {
                        "allowed" => t.allowed += counter(m),
                        _ => t.limited += counter(m),
                    }
                }
                "tollgate_ratelimit_fallback_total" => tier(&mut sample, m).fallback += counter(m),
                "tollgate_compression_bytes_total" => match label(m, "direction") {
                    "in" => sample.compression.0 += counter(m),
                    _ => sample.compression.1 += counter(m),
                },
                _ => break,
            }
        }
    }
    sample.rejected = metrics.rejected_tenants.take();
    sample
}

fn route<'s>(sample: &'s mut Sample, m: &Metric) -> &'s mut RouteCounters {
    sample
        .routes
        .entry(label(m, "route").to_owned())
        .or_default()
}

fn tier<'s>(sample: &'s mut Sample, m: &Metric) -> &'s mut TierCounters {
    sample.tiers.entry(label(m, "tier").to_owned()).or_default()
}
