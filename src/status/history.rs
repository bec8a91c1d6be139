//! The status page's memory: a snapshot of the counters every
//! [`SAMPLE_EVERY`], kept for five minutes, from which the page's rates,
//! latency quantiles and sparklines are derived. Pure data and arithmetic,
//! so every rule has a unit test; the snapshots are taken by `sampler`.
//!
//! Bounded: [`KEPT`] samples, each with one entry per route, backend and
//! tier of the config (the operator's own cardinality) and at most
//! [`crate::rejections::MAX_TENANTS`] rejected tenants.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

/// How often the counters are sampled (the page polls as often).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// The span the page's rates and quantiles cover.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The span of the sparklines.
pub const SPARK_SPAN: Duration = Duration::from_secs(300);
/// Points per sparkline (one per 10 s).
pub const SPARK_POINTS: usize = 30;
/// Samples kept: five minutes and the one before.
pub const KEPT: usize = (SPARK_SPAN.as_secs() / SAMPLE_EVERY.as_secs()) as usize + 1;

/// One route's counters at a sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteCounters {
    /// Requests answered.
    pub requests: u64,
    /// Answers by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub by_class: [u64; 5],
    /// 429 answers (also counted in 4xx).
    pub too_many: u64,
    /// Request-duration histogram: cumulative counts per bucket bound
    /// (the bounds are [`History::bounds`]; the last is +Inf).
    pub buckets: Vec<u64>,
    /// Answers from the cache: fresh, stale, or revalidated.
    pub cache_hits: u64,
    /// Requests the cache saw at all.
    pub cache_lookups: u64,
}

/// One rate-limit tier's counters at a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierCounters {
    /// Requests the tier let through.
    pub allowed: u64,
    /// Requests it refused (429).
    pub limited: u64,
    /// Decisions made locally because Redis failed.
    pub fallback: u64,
}

/// A backend, as `(upstream pool, address)`.
pub type BackendId = (String, String);

/// The counters at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// Per route.
    pub routes: BTreeMap<String, RouteCounters>,
    /// Failures per backend, by kind (`connect`, `timeout`, …).
    pub failures: BTreeMap<BackendId, BTreeMap<String, u64>>,
    /// Per rate-limit tier.
    pub tiers: BTreeMap<String, TierCounters>,
    /// Body bytes before and after compression.
    pub compression: (u64, u64),
    /// Rejections per tenant since the previous sample (not cumulative).
    pub rejected: Vec<(String, u64)>,
}

impl Sample {
    /// An empty sample taken at `at`.
    pub fn empty(at: Instant) -> Self {
        Self {
            at,
            routes: BTreeMap::new(),
            failures: BTreeMap::new(),
            tiers: BTreeMap::new(),
            compression: (0, 0),
            rejected: Vec::new(),
        }
    }
}

/// What a route did over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteWindow {
    /// Requests per second.
    pub rate: f64,
    /// Latency quantiles in milliseconds (`None` without requests).
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Answers by status class (1xx … 5xx).
    pub by_class: [u64; 5],
    /// 429 answers.
    pub too_many: u64,
    /// Requests on the route the cache saw.
    pub cache_lookups: u64,
    /// Of those, answered from the cache.
    pub cache_hits: u64,
}

impl RouteWindow {
    /// Share of cache lookups answered from the cache (`None` without any).
    pub fn hit_ratio(&self) -> Option<f64> {
        (self.cache_lookups > 0).then(|| self.cache_hits as f64 / self.cache_lookups as f64)
    }
}

/// A backend's most recent failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// The failure kind, as in `tollgate_upstream_failures_total{kind}`.
    pub kind: String,
    /// When it was first seen (to within a sample).
    pub seen: SystemTime,
}

/// The samples and what is derived from consecutive ones.
#[derive(Debug)]
pub struct History {
    samples: VecDeque<Sample>,
    /// Upper bounds of the latency histogram, in seconds (+Inf last).
    pub bounds: Vec<f64>,
    last_errors: BTreeMap<BackendId, LastError>,
}

impl History {
    /// An empty history for a latency histogram with these upper bounds.
    pub fn new(mut bounds: Vec<f64>) -> Self {
        if bounds.last().is_none_or(|b| b.is_finite()) {
            bounds.push(f64::INFINITY);
        }
        Self {
            samples: VecDeque::with_capacity(KEPT),
            bounds,
            last_errors: BTreeMap::new(),
        }
    }

    /// Adds a sample taken at wall-clock `now`; forgets the oldest past
    /// [`KEPT`], and backends no longer configured.
    pub fn push(&mut self, sample: Sample, now: SystemTime) {
        if let Some(previous) = self.samples.back() {
            for (backend, kinds) in &sample.failures {
                let before = previous.failures.get(backend);
                let grew = kinds
                    .iter()
                    .filter(|(kind, n)| {
                        **n > before.and_then(|b| b.get(*kind)).copied().unwrap_or(0)
                    })
                    .max_by_key(|(_, n)| **n);
                if let Some((kind, _)) = grew {
                    let error = LastError {
                        kind: kind.clone(),
                        seen: now,
                    };
                    self.last_errors.insert(backend.clone(), error);
                }
            }
        }
        self.last_errors
            .retain(|backend, _| sample.failures.contains_key(backend));
        self.samples.push_back(sample);
        while self.samples.len() > KEPT {
            self.samples.pop_front();
        }
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample was taken yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The oldest sample no more than `span` older than `newest`.
    fn since(&self, newest: &Sample, span: Duration) -> Option<&Sample> {
        self.samples
            .iter()
            .find(|s| newest.at.saturating_duration_since(s.at) <= span)
    }

    /// The newest sample and the one the window starts at, with the time
    /// between them (`None` until two samples exist).
    fn window(&self) -> Option<(&Sample, &Sample, f64)> {
        let newest = self.latest()?;
        let oldest = self.since(newest, WINDOW)?;
        let secs = newest.at.saturating_duration_since(oldest.at).as_secs_f64();
        (secs > 0.0).then_some((oldest, newest, secs))
    }

    /// What `route` did over the window.
    pub fn route(&self, route: &str) -> Option<RouteWindow> {
        let (then, now, secs) = self.window()?;
        // A route that has not answered yet has no counters: zeros.
        let zero = RouteCounters::default();
        let after = now.routes.get(route).unwrap_or(&zero);
        let before = then.routes.get(route).unwrap_or(&zero);
        Some(route_between(before, after, secs, &self.bounds))
    }

    /// `route`'s requests per second and p95 (ms) per 10 s step over the
    /// last five minutes, oldest first; steps before the first sample are
    /// left out.
    pub fn spark(&self, route: &str) -> (Vec<f64>, Vec<Option<f64>>) {
        let Some(newest) = self.latest() else {
            return (Vec::new(), Vec::new());
        };
        let step = SPARK_SPAN / SPARK_POINTS as u32;
        let zero = RouteCounters::default();
        let mut rates = Vec::with_capacity(SPARK_POINTS);
        let mut p95s = Vec::with_capacity(SPARK_POINTS);
        for k in (0..SPARK_POINTS as u32).rev() {
            let (Some(end), Some(start)) = (
                self.since(newest, step * k),
                self.since(newest, step * (k + 1)),
            ) else {
                continue;
            };
            let secs = end.at.saturating_duration_since(start.at).as_secs_f64();
            if secs <= 0.0 {
                continue;
            }
            let before = start.routes.get(route).unwrap_or(&zero);
            let after = end.routes.get(route).unwrap_or(&zero);
            let w = route_between(before, after, secs, &self.bounds);
            rates.push(w.rate);
            p95s.push(w.p95_ms);
        }
        (rates, p95s)
    }

    /// Failures of a backend over the window.
    pub fn failures(&self, backend: &BackendId) -> u64 {
        let Some((then, now, _)) = self.window() else {
            return 0;
        };
        let total = |s: &Sample| {
            s.failures
                .get(backend)
                .map_or(0, |k| k.values().sum::<u64>())
        };
        total(now).saturating_sub(total(then))
    }

    /// A backend's most recent failure kind, while it is configured.
    pub fn last_error(&self, backend: &BackendId) -> Option<&LastError> {
        self.last_errors.get(backend)
    }

    /// A tier's decisions over the window.
    pub fn tier(&self, tier: &str) -> TierCounters {
        let Some((then, now, _)) = self.window() else {
            return TierCounters::default();
        };
        let after = now.tiers.get(tier).copied().unwrap_or_default();
        let before = then.tiers.get(tier).copied().unwrap_or_default();
        TierCounters {
            allowed: after.allowed.saturating_sub(before.allowed),
            limited: after.limited.saturating_sub(before.limited),
            fallback: after.fallback.saturating_sub(before.fallback),
        }
    }

    /// Compression bytes in and out over the window.
    pub fn compression(&self) -> (u64, u64) {
        let Some((then, now, _)) = self.window() else {
            return (0, 0);
        };
        (
            now.compression.0.saturating_sub(then.compression.0),
            now.compression.1.saturating_sub(then.compression.1),
        )
    }

    /// The `n` tenants with the most rejections over the window, most first.
    pub fn top_rejected(&self, n: usize) -> Vec<(String, u64)> {
        let Some(newest) = self.latest() else {
            return Vec::new();
        };
        let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
        // A sample's tally covers the time since the one before it, so
        // the window's first sample is left out.
        let in_window = self
            .samples
            .iter()
            .filter(|s| newest.at.saturating_duration_since(s.at) < WINDOW);
        for sample in in_window {
            for (tenant, n) in &sample.rejected {
                *sums.entry(tenant).or_default() += n;
            }
        }
        let mut top: Vec<(String, u64)> =
            sums.into_iter().map(|(t, n)| (t.to_owned(), n)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(n);
        top
    }
}

fn route_between(
    before: &RouteCounters,
    after: &RouteCounters,
    secs: f64,
    bounds: &[f64],
) -> RouteWindow {
    let mut by_class = [0; 5];
    for (i, n) in by_class.iter_mut().enumerate() {
        *n = after.by_class[i].saturating_sub(before.by_class[i]);
    }
    let buckets: Vec<u64> = after
        .buckets
        .iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(before.buckets.get(i).copied().unwrap_or(0)))
        .collect();
    let ms = |q| quantile(q, bounds, &buckets).map(|s| s * 1000.0);
    RouteWindow {
        rate: after.requests.saturating_sub(before.requests) as f64 / secs,
        p50_ms: ms(0.5),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        by_class,
        too_many: after.too_many.saturating_sub(before.too_many),
        cache_lookups: after.cache_lookups.saturating_sub(before.cache_lookups),
        cache_hits: after.cache_hits.saturating_sub(before.cache_hits),
    }
}

/// The `q` quantile of a histogram given as cumulative counts per upper
/// bound (+Inf last), interpolating linearly inside the bucket as
/// Prometheus's `histogram_quantile` does; in the +Inf bucket, the last
/// finite bound. `None` without observations.
pub fn quantile(q: f64, bounds: &[f64], cumulative: &[u64]) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let i = cumulative.iter().position(|c| *c as f64 >= rank)?;
    let upper = *bounds.get(i)?;
    if !upper.is_finite() {
        return bounds.iter().rev().find(|b| b.is_finite()).copied();
    }
    let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
    let below = if i == 0 { 0 } else { cumulative[i - 1] };
    let inside = cumulative[i] - below;
    if inside == 0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below as f64) / inside as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 3] = [0.001, 0.01, 0.1];

    fn sample(at: Instant, requests: u64, buckets: [u64; 4]) -> Sample {
        let mut s = Sample::empty(at);
        s.routes.insert(
            "api".into(),
            RouteCounters {
                requests,
                by_class: [0, requests, 0, 0, 0],
                buckets: buckets.to_vec(),
                cache_hits: requests / 2,
                cache_lookups: requests,
                ..RouteCounters::default()
            },
        );
        s
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_like_prometheus() {
        let bounds = [0.001, 0.01, 0.1, f64::INFINITY];
        // 100 observations: 50 under 1 ms, 40 in (1, 10] ms, 10 in (10, 100] ms.
        let cumulative = [50, 90, 100, 100];
        assert_eq!(quantile(0.5, &bounds, &cumulative), Some(0.001));
        let p95 = quantile(0.95, &bounds, &cumulative).expect("p95");
        assert!((p95 - 0.055).abs() < 1e-9, "{p95}");
        assert_eq!(
            quantile(0.99, &bounds, &[0, 0, 0, 5]),
            Some(0.1),
            "+Inf: last bound"
        );
        assert_eq!(quantile(0.5, &bounds, &[0, 0, 0, 0]), None);
    }

    #[test]
    fn the_window_is_the_last_minute_of_samples() {
        let t0 = Instant::now();
        let mut h = History::new(BOUNDS.to_vec());
        assert!(h.route("api").is_none(), "nothing before two samples");
        h.push(sample(t0, 0, [0, 0, 0, 0]), SystemTime::now());
        for i in 1..=60u64 {
            let n = i * 10; // 5 requests per second
            h.push(
                sample(t0 + SAMPLE_EVERY * i as u32, n, [n, n, n, n]),
                SystemTime::now(),
            );
        }
        let w = h.route("api").expect("window");
        assert!((w.rate - 5.0).abs() < 1e-9, "{}", w.rate);
        assert_eq!(w.by_class[1], 300, "the last 60 s, not all 120");
        assert_eq!(w.hit_ratio(), Some(0.5));
        assert!(w.p99_ms.is_some_and(|p| p <= 1.0));
        assert!(h.len() <= KEPT);
        let (rates, p95s) = h.spark("api");
        assert_eq!(rates.len(), 12, "two minutes of 10 s steps");
        assert_eq!(p95s.len(), rates.len());
        assert!(rates.iter().all(|r| (r - 5.0).abs() < 1e-9));
    }

    #[test]
    fn history_is_bounded() {
        let t0 = Instant::now();
        let mut h = History::new(BOUNDS.to_vec());
        for i in 0..(KEPT as u32 * 3) {
            h.push(
                sample(t0 + SAMPLE_EVERY * i, u64::from(i), [0; 4]),
                SystemTime::now(),
            );
        }
        assert_eq!(h.len(), KEPT);
        assert_eq!(h.spark("api").0.len(), SPARK_POINTS);
    }

    #[test]
    fn last_error_is_the_kind_that_grew_and_top_tenants_sum_the_window() {
        let t0 = Instant::now();
        let backend: BackendId = ("api".into(), "10.0.0.1:80".into());
        let mut h = History::new(BOUNDS.to_vec());
        let mut a = Sample::empty(t0);
        a.failures
            .insert(backend.clone(), BTreeMap::from([("connect".into(), 3)]));
        h.push(a, SystemTime::now());
        assert_eq!(h.last_error(&backend), None, "nothing grew yet");
        let mut b = Sample::empty(t0 + SAMPLE_EVERY);
        b.failures.insert(
            backend.clone(),
            BTreeMap::from([("connect".into(), 3), ("timeout".into(), 2)]),
        );
        b.rejected = vec![("acme".into(), 4), ("globex".into(), 1)];
        h.push(b, SystemTime::now());
        assert_eq!(
            h.last_error(&backend).map(|e| e.kind.as_str()),
            Some("timeout")
        );
        assert_eq!(h.failures(&backend), 2);
        let mut c = Sample::empty(t0 + SAMPLE_EVERY * 2);
        c.rejected = vec![("globex".into(), 5)];
        h.push(c, SystemTime::now());
        assert_eq!(h.top_rejected(1), vec![("globex".to_owned(), 6)]);
        assert_eq!(h.last_error(&backend), None, "backend no longer counted");
    }
}
