//! Response caching on pingora-cache: the policy (`policy`), the key
//! (`key`), the memory store (`store`), and what a response says about how
//! it was served (`Cache-Status`, RFC 9211).
//!
//! Pingora's cache machinery needs `'static` storage, eviction manager,
//! lock and predictor. They are created once per process ([`CacheRuntime`])
//! and survive reloads, so a reload neither leaks them nor drops the cache;
//! `cache.max_size` therefore only changes with a restart.

pub mod fresh;
pub mod freshness;
pub mod invalidation;
pub mod key;
pub mod l2;
pub mod names;
pub mod policy;
mod refusal;
pub mod revalidation;
pub mod store;
pub mod targeted;
pub mod tiered;
pub mod vary;

use crate::config::model::{CacheLimits, RouteCache};
use crate::metrics::Metrics;
use pingora::cache::eviction::lru::Manager as LruManager;
use pingora::cache::eviction::EvictionManager;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::{CacheablePredictor, Predictor};
use pingora::cache::{CachePhase, NoCacheReason, Storage};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use policy::RequestDirectives;
use std::fmt::Write as _;
use store::MemoryStore;

/// Shards of the LRU eviction manager.
const LRU_SHARDS: usize = 16;
/// Shards of the uncacheable-key predictor.
const PREDICTOR_SHARDS: usize = 16;

/// The process-wide cache objects Pingora's `HttpCache::enable` takes.
pub struct CacheRuntime {
    /// The memory tier.
    pub store: &'static MemoryStore,
    /// LRU by weight (bytes), bounded by `cache.max_size`.
    pub eviction: &'static LruManager<LRU_SHARDS>,
    /// One upstream fetch per key; other misses wait (`cache.lock_timeout`).
    pub lock: &'static CacheKeyLockImpl,
    /// Remembers keys that turned out uncacheable so they skip the lock.
    pub predictor: &'static Predictor<PREDICTOR_SHARDS>,
    /// The limits it was built with.
    pub limits: CacheLimits,
    /// Memory in front of Redis, when `cache.redis` is on.
    pub tiered: Option<&'static tiered::TieredStorage>,
}

/// A raw zstd dictionary of the header text API responses usually carry.
/// pingora-cache compresses stored headers with zstd and warns at start-up
/// without a dictionary; this one makes stored headers smaller too.
const HEADER_DICTIONARY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\n\
content-length: \r\ncache-control: public, max-age=\r\ncache-control: private, no-cache, no-store, \
must-revalidate, s-maxage=, stale-while-revalidate=, stale-if-error=\r\netag: W/\"\r\n\
last-modified: Mon, Tue, Wed, Thu, Fri, Sat, Sun, Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec GMT\r\n\
date: \r\nexpires: \r\nvary: Accept-Encoding, Accept-Language, Origin\r\nserver: \r\nx-request-id: \r\n\
content-encoding: gzip br zstd\r\naccess-control-allow-origin: *\r\nconnection: keep-alive\r\n";

impl CacheRuntime {
    /// Builds the cache objects once; they live for the rest of the process.
    pub fn new(limits: CacheLimits, redis: Option<std::sync::Arc<l2::RedisTier>>) -> Self {
        // Ignored if already set (a second runtime in tests).
        let _ = pingora::cache::set_compression_dict_content(std::borrow::Cow::Borrowed(
            HEADER_DICTIONARY,
        ));
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new()));
        let max = usize::try_from(limits.max_size).unwrap_or(usize::MAX);
        let eviction: &'static LruManager<LRU_SHARDS> =
            Box::leak(Box::new(LruManager::with_capacity(max, 1024)));
        store.set_eviction(eviction);
        let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(limits.lock_timeout));
        let predictor: &'static Predictor<PREDICTOR_SHARDS> = Box::leak(Box::new(Predictor::new(
            1024,
            Some(policy::refusal_is_per_request),
        )));
        let tiered = redis.map(|tier| {
            let tiered: &'static tiered::TieredStorage =
                Box::leak(Box::new(tiered::TieredStorage::new(store, tier)));
            tiered
        });
        Self {
            store,
            eviction,
            lock,
            predictor,
            limits,
            tiered,
        }
    }

    /// The storage Pingora's cache path uses: memory, or memory then Redis.
    pub fn storage(&self) -> &'static (dyn Storage + Sync) {
        match self.tiered {
            Some(tiered) => tiered,
            None => self.store,
        }
    }

    /// The Redis tier, when on.
    pub fn redis(&self) -> Option<&std::sync::Arc<l2::RedisTier>> {
        self.tiered.map(|t| t.redis())
    }

    /// The eviction manager as Pingora's trait object.
    pub fn eviction_manager(&self) -> &'static (dyn EvictionManager + Sync) {
        self.eviction
    }

    /// Entries evicted so far to stay within `cache.max_size`.
    pub fn evicted_items(&self) -> usize {
        self.eviction.evicted_items()
    }

    /// The predictor as Pingora's trait object.
    pub fn cache_predictor(&self) -> &'static (dyn CacheablePredictor + Sync) {
        self.predictor
    }

    /// Turns Pingora's cache on for a GET/HEAD request on a cached route,
    /// unless the request says `no-store`; returns what the request's
    /// `Cache-Control` asks of the cache (RFC 9111 §5.2.1).
    pub fn enable_for(
        &self,
        session: &mut Session,
        policy: Option<&RouteCache>,
    ) -> RequestDirectives {
        let req = session.req_header();
        if policy.is_none()
            || !(req.method == http::Method::GET || req.method == http::Method::HEAD)
        {
            return RequestDirectives::default();
        }
        let directives = RequestDirectives::of(req);
        if directives.no_store {
            return directives;
        }
        session.cache.enable(
            self.storage(),
            Some(self.eviction_manager()),
            Some(self.cache_predictor()),
            Some(self.lock),
            None,
        );
        session.cache.set_max_file_size_bytes(
            usize::try_from(self.limits.max_object_size).unwrap_or(usize::MAX),
        );
        directives
    }
}

/// Adds `Cache-Status` (RFC 9211) to a response on a cached route and
/// counts the outcome in `tollgate_cache_requests_total`.
pub fn annotate(
    session: &Session,
    resp: &mut ResponseHeader,
    route: &str,
    policy: &RouteCache,
    metrics: &Metrics,
) -> pingora::Result<()> {
    let phase = session.cache.phase();
    let fresh_until = matches!(
        phase,
        CachePhase::Hit | CachePhase::Stale | CachePhase::StaleUpdating
    )
    .then(|| session.cache.maybe_cache_meta().map(|m| m.fresh_until()))
    .flatten();
    if let Some((outcome, mut cache_status)) =
        describe(phase, &session.req_header().method, fresh_until)
    {
        // Only phases that looked the key up: asking for it earlier panics.
        let looked_up = matches!(
            phase,
            CachePhase::Hit
                | CachePhase::Stale
                | CachePhase::StaleUpdating
                | CachePhase::Miss
                | CachePhase::Expired
                | CachePhase::Revalidated
                | CachePhase::RevalidatedNoCache(_)
        );
        if policy.expose_key && looked_up {
            if let Some(primary) = session.cache.cache_key().primary_key_str() {
                let _ = write!(cache_status, "; key={}", key::status_form(primary));
            }
        }
        let from_l2 = matches!(phase, CachePhase::Hit)
            && session
                .cache
                .maybe_cache_meta()
                .is_some_and(|m| m.extensions().get::<tiered::FromL2>().is_some());
        if from_l2 {
            cache_status.push_str("; detail=l2");
        }
        append_cache_status(resp, &cache_status)?;
        metrics
            .cache_requests
            .with_label_values(&[route, outcome.label()])
            .inc();
    }
    Ok(())
}

/// Adds tollgate's member to `Cache-Status`. The field is a list of the
/// caches that handled the response, nearest the origin first (RFC 9211
/// §2): an upstream cache's members are kept and ours goes last, on one
/// line (repeated lines are combined first).
pub fn append_cache_status(resp: &mut ResponseHeader, ours: &str) -> pingora::Result<()> {
    let mut value: Vec<u8> = Vec::new();
    for line in resp.headers.get_all("cache-status") {
        let line = line.as_bytes().trim_ascii();
        if !line.is_empty() {
            value.extend_from_slice(line);
            value.extend_from_slice(b", ");
        }
    }
    if value.is_empty() {
        return resp.insert_header("Cache-Status", ours);
    }
    value.extend_from_slice(ours.as_bytes());
    resp.insert_header("Cache-Status", value)
}

/// How a response was served, for `Cache-Status` and
/// `tollgate_cache_requests_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fresh from the cache.
    Hit,
    /// Stale from the cache (stale-while-revalidate or stale-if-error).
    Stale,
    /// Stale entry confirmed by a 304 from the upstream.
    Revalidated,
    /// Stale entry replaced by a full response.
    Expired,
    /// Not in the cache; fetched (and stored if `stored`).
    Miss,
    /// Not looked up (method, request directives, predicted uncacheable).
    Bypass,
    /// Fetched, and the response may not be stored.
    Uncacheable,
}

impl Outcome {
    /// Reads the outcome off Pingora's cache phase once the response is known.
    pub fn of(phase: CachePhase) -> Option<Outcome> {
        Some(match phase {
            CachePhase::Hit => Outcome::Hit,
            CachePhase::Stale | CachePhase::StaleUpdating => Outcome::Stale,
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => Outcome::Revalidated,
            CachePhase::Expired => Outcome::Expired,
            CachePhase::Miss => Outcome::Miss,
            CachePhase::Bypass => Outcome::Bypass,
            CachePhase::Disabled(NoCacheReason::NeverEnabled) => Outcome::Bypass,
            CachePhase::Disabled(NoCacheReason::OriginNotCache)
            | CachePhase::Disabled(NoCacheReason::ResponseTooLarge)
            | CachePhase::Disabled(NoCacheReason::PredictedResponseTooLarge)
            | CachePhase::Disabled(NoCacheReason::Custom(_)) => Outcome::Uncacheable,
            CachePhase::Disabled(_) => Outcome::Bypass,
            CachePhase::Uninit | CachePhase::CacheKey => return None,
        })
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Revalidated => "revalidated",
            Outcome::Expired => "expired",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
            Outcome::Uncacheable => "uncacheable",
        }
    }

    /// The `Cache-Status` value (RFC 9211 §2): `ttl` (seconds of freshness
    /// left, negative when stale) on responses served from the cache.
    pub fn cache_status(self, detail: Option<&str>, ttl: Option<i64>) -> String {
        let base = match self {
            Outcome::Hit => "tollgate; hit",
            Outcome::Stale => "tollgate; hit; fwd=stale",
            Outcome::Revalidated => "tollgate; fwd=stale; fwd-status=304",
            Outcome::Expired => "tollgate; fwd=stale; stored",
            Outcome::Miss => "tollgate; fwd=uri-miss; stored",
            Outcome::Bypass => "tollgate; fwd=bypass",
            Outcome::Uncacheable => "tollgate; fwd=uri-miss",
        };
        let mut value = base.to_owned();
        if let Some(ttl) = ttl {
            let _ = write!(value, "; ttl={ttl}");
        }
        if let Some(d) = detail {
            let _ = write!(value, "; detail={d}");
        }
        value
    }
}

/// `Cache-Status` of a fresh hit with `ttl` seconds of freshness left, for
/// the fresh-hit path.
pub fn fresh_hit_status(ttl: std::time::Duration, key: Option<&str>) -> String {
    let mut value =
        Outcome::Hit.cache_status(None, Some(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)));
    if let Some(primary) = key {
        let _ = write!(value, "; key={}", key::status_form(primary));
    }
    value
}

/// How a response on a cached route was served: the metric outcome and the
/// `Cache-Status` value. `None` before the cache has decided anything.
/// `fresh_until` is the stored response's, when one was served.
pub fn describe(
    phase: CachePhase,
    method: &http::Method,
    fresh_until: Option<std::time::SystemTime>,
) -> Option<(Outcome, String)> {
    let outcome = Outcome::of(phase)?;
    let value = if phase == CachePhase::Disabled(NoCacheReason::NeverEnabled)
        && !matches!(*method, http::Method::GET | http::Method::HEAD)
    {
        "tollgate; fwd=method".to_owned()
    } else {
        let served_from_cache = matches!(outcome, Outcome::Hit | Outcome::Stale);
        let ttl = fresh_until.filter(|_| served_from_cache).map(ttl_secs);
        outcome.cache_status(detail(phase), ttl)
    };
    Some((outcome, value))
}

/// Seconds of freshness left; negative when already stale.
fn ttl_secs(fresh_until: std::time::SystemTime) -> i64 {
    let now = std::time::SystemTime::now();
    match fresh_until.duration_since(now) {
        Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The `detail` for a phase, when there is something to say.
fn detail(phase: CachePhase) -> Option<&'static str> {
    match phase {
        CachePhase::Disabled(NoCacheReason::Custom(reason)) => Some(reason),
        CachePhase::Disabled(NoCacheReason::OriginNotCache) => Some("origin-not-cacheable"),
        CachePhase::Disabled(
            NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge,
        ) => Some("too-large"),
        CachePhase::Disabled(NoCacheReason::NeverEnabled) => None,
        CachePhase::Disabled(r) => Some(r.as_str()),
        CachePhase::Bypass => Some("predicted-uncacheable"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_follows_rfc_9211() {
        assert_eq!(
            Outcome::Hit.cache_status(None, Some(60)),
            "tollgate; hit; ttl=60"
        );
        assert_eq!(
            fresh_hit_status(std::time::Duration::from_secs(5), None),
            "tollgate; hit; ttl=5"
        );
        assert_eq!(
            Outcome::Miss.cache_status(None, None),
            "tollgate; fwd=uri-miss; stored"
        );
        assert_eq!(
            Outcome::Uncacheable.cache_status(Some("no-store-or-private"), None),
            "tollgate; fwd=uri-miss; detail=no-store-or-private"
        );
        assert_eq!(
            Outcome::Revalidated.cache_status(None, None),
            "tollgate; fwd=stale; fwd-status=304"
        );
    }

    #[test]
    fn an_upstream_caches_status_is_kept_and_ours_goes_last() {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        append_cache_status(&mut resp, "tollgate; hit").expect("append");
        assert_eq!(resp.headers["cache-status"], "tollgate; hit");
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.append_header("cache-status", "origin-cache; hit")
            .expect("hdr");
        resp.append_header("cache-status", "cdn; fwd=miss")
            .expect("hdr");
        append_cache_status(&mut resp, "tollgate; hit").expect("append");
        assert_eq!(
            resp.headers["cache-status"],
            "origin-cache; hit, cdn; fwd=miss, tollgate; hit"
        );
        assert_eq!(resp.headers.get_all("cache-status").iter().count(), 1);
    }

    #[test]
    fn phases_map_to_outcomes() {
        assert_eq!(Outcome::of(CachePhase::Hit), Some(Outcome::Hit));
        assert_eq!(
            Outcome::of(CachePhase::Disabled(NoCacheReason::Custom("status"))),
            Some(Outcome::Uncacheable)
        );
        assert_eq!(Outcome::of(CachePhase::Uninit), None);
    }
}
