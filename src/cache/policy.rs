//! Whether a response may be stored, and for how long: RFC 9111 for a
//! shared cache, with the route's `default_ttl` used only when the upstream
//! says nothing about freshness.
//!
//! Pingora's `CacheControl` parses the directives and answers the RFC's
//! per-directive questions (`no-store`/`private` → never; `s-maxage` over
//! `max-age`; `no-cache` → stored but stale at once; `must-revalidate` and
//! `proxy-revalidate` close the stale windows). What is ours: the order of
//! the checks below, the route defaults, and the cases Pingora leaves open
//! (`Vary: *`, `Set-Cookie`, statuses).

use super::freshness;
use crate::config::model::RouteCache;
use pingora::cache::cache_control::{CacheControl, Cacheable, DirectiveKey, InterpretCacheControl};
use pingora::cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};

/// Why a response was not stored, as `Cache-Status` `detail`.
fn not_stored(reason: &'static str) -> RespCacheable {
    RespCacheable::Uncacheable(NoCacheReason::Custom(reason))
}

/// `Set-Cookie2`.
const SET_COOKIE2: http::HeaderName = http::HeaderName::from_static("set-cookie2");

/// `detail` when the request carried a credential and the response did
/// not allow sharing it (§3.5).
const NOT_STORED_AUTHORIZATION: &str = "authorization";
/// `detail` for a method whose responses are never stored.
const NOT_STORED_METHOD: &str = "method";

/// Whether a refusal is about this request rather than the response, and
/// so says nothing about the next request for the key. Pingora's
/// predictor remembers every other `Custom` reason for the key and sends
/// later requests around the cache (`mark_uncacheable` in pingora-cache
/// `predictor.rs`): one client's `Authorization` must not turn the cache
/// off for everyone else.
pub fn refusal_is_per_request(reason: &'static str) -> bool {
    matches!(reason, NOT_STORED_AUTHORIZATION | NOT_STORED_METHOD)
}

/// What the proxy knows about the exchange besides the two headers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Exchange {
    /// The client's request carried `Authorization` or an API key (§3.5),
    /// read before tollgate removed the key on the way upstream.
    pub credentialed: bool,
    /// From sending the request upstream to receiving the response: part
    /// of the response's initial age (§4.2.3).
    pub response_delay: Duration,
}

/// Decides whether `resp` (to `req`) may be stored under `policy` (RFC 9111
/// §3), and for how long (§4.2, in `freshness`).
pub fn response_cacheable(
    req: &RequestHeader,
    resp: &ResponseHeader,
    policy: &RouteCache,
    exchange: Exchange,
) -> RespCacheable {
    // A HEAD on a cached route reached the upstream as a GET (pingora-cache
    // `filters::upstream::request_filter` rewrites it whenever the cache is
    // on), so this is a GET's response, body and all: stored like one,
    // and the HEAD answered from it (nginx's `proxy_cache_convert_head`).
    if !(req.method == http::Method::GET || req.method == http::Method::HEAD) {
        return not_stored(NOT_STORED_METHOD);
    }
    let status = resp.status.as_u16();
    // Final statuses only; 206 needs range-aware storage, a 304 is not a
    // response to store (it updates one, §4.3.4).
    if status < 200 || status == 206 || status == 304 {
        return not_stored("status");
    }
    // §4.1: "Vary: *" always fails to match.
    if resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|f| f.trim_ascii() == b"*")
    }) {
        return not_stored("vary-star");
    }
    // A Set-Cookie meant for one client must not be replayed to others:
    // not stored, or stored without it (`set_cookie: strip`).
    // `Set-Cookie2` (RFC 2965, obsolete but still sent) sets cookies too.
    let sets_cookie = resp.headers.contains_key(http::header::SET_COOKIE)
        || resp.headers.contains_key(SET_COOKIE2);
    if sets_cookie && !policy.strip_set_cookie {
        return not_stored("set-cookie");
    }
    if let Some(refused) = quick_refusal(req, resp, policy, exchange) {
        return refused;
    }
    let (cc, cc_field) = match directives(resp, policy) {
        Some((cc, field)) => (Some(cc), field),
        None => (None, Some(http::header::CACHE_CONTROL.as_str())),
    };
    // §3.5: a request with Authorization (or an API key) only if the
    // response explicitly allows it.
    if (exchange.credentialed || req.headers.contains_key(http::header::AUTHORIZATION))
        && !cc
            .as_ref()
            .is_some_and(|c| c.allow_caching_authorized_req())
    {
        return not_stored(NOT_STORED_AUTHORIZATION);
    }
    if cc
        .as_ref()
        .is_some_and(|c| c.is_cacheable() == Cacheable::No)
    {
        return not_stored("no-store-or-private");
    }
    let now = SystemTime::now();
    // §3: any final status with explicit freshness; without it, the
    // route's statuses with its default_ttl or a heuristic lifetime.
    let lifetime = match freshness::explicit_lifetime(cc.as_ref(), cc_field, resp, now) {
        Some(lifetime) => lifetime,
        None if !policy.statuses.contains(&status) => return not_stored("status"),
        None => match policy.default_ttl.or_else(|| {
            policy
                .heuristic_freshness
                .then(|| freshness::heuristic_lifetime(resp, now))
                .flatten()
        }) {
            Some(lifetime) => lifetime,
            None => return not_stored("no-freshness"),
        },
    };
    let lifetime = policy.max_ttl.map_or(lifetime, |cap| lifetime.min(cap));
    // §4.2.3: age is counted from when the origin made the response, so an
    // upstream `Age` or an old `Date` makes it older on arrival.
    let initial_age = freshness::corrected_initial_age(resp, now, exchange.response_delay);
    let epoch = now
        .checked_sub(initial_age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let Some(fresh_until) = epoch.checked_add(lifetime) else {
        return not_stored("no-freshness");
    };
    // §4.2.4: the route's stale windows fill in only where the response
    // says nothing, and never where it forbids serving stale.
    let (swr, sie) = if cc.as_ref().is_some_and(directives_forbid_stale) {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (
            cc.as_ref()
                .and_then(|c| c.serve_stale_while_revalidate_duration())
                .unwrap_or(policy.stale_while_revalidate),
            cc.as_ref()
                .and_then(|c| c.serve_stale_if_error_duration())
                .unwrap_or(policy.stale_if_error),
        )
    };
    let mut header = resp.clone();
    if let Some(c) = &cc {
        c.strip_private_headers(&mut header);
    }
    if sets_cookie {
        header.remove_header(&http::header::SET_COOKIE);
        header.remove_header(&SET_COOKIE2);
    }
    // Targeted fields stay stored (they decide `forbids_stale` on a hit)
    // and are stripped on the way out when the route says so.
    let mut meta = CacheMeta::new(fresh_until, now, secs(swr), secs(sie), header);
    if !initial_age.is_zero() {
        meta.set_epoch_override(epoch);
    }
    RespCacheable::Cacheable(meta)
}

/// The directives tollgate decides by: the first targeted field of the
/// route's list that is present and valid (RFC 9213 §2.2: it then
/// replaces `Cache-Control` entirely; `targeted`), else `Cache-Control`.
/// Returns them with `Cache-Control`'s name when they came from it.
/// The two checks below that refuse most uncacheable responses (a
/// credentialed request without permission, `no-store`/`private`), answered
/// from a scan of the directive names when the field is well-formed and no
/// targeted field overrides it (`refusal`); `None`: the full checks decide.
fn quick_refusal(
    req: &RequestHeader,
    resp: &ResponseHeader,
    policy: &RouteCache,
    exchange: Exchange,
) -> Option<RespCacheable> {
    if policy
        .targeted_fields
        .iter()
        .any(|name| resp.headers.contains_key(name))
    {
        return None;
    }
    let credentialed =
        exchange.credentialed || req.headers.contains_key(http::header::AUTHORIZATION);
    let lines = resp.headers.get_all(http::header::CACHE_CONTROL);
    if lines.iter().next().is_none() {
        return credentialed.then(|| not_stored(NOT_STORED_AUTHORIZATION));
    }
    let found = super::refusal::scan(lines)?;
    if credentialed && !found.allows_authorized {
        return Some(not_stored(NOT_STORED_AUTHORIZATION));
    }
    (found.no_store || found.private).then(|| not_stored("no-store-or-private"))
}

fn directives(
    resp: &ResponseHeader,
    policy: &RouteCache,
) -> Option<(CacheControl, Option<&'static str>)> {
    policy
        .targeted_fields
        .iter()
        .find_map(|name| super::targeted::directives(resp, name.as_str()).map(|cc| (cc, None)))
        .or_else(|| {
            CacheControl::from_resp_headers(resp)
                .map(|cc| (cc, Some(http::header::CACHE_CONTROL.as_str())))
        })
}

/// §4.2.4: `must-revalidate`, `proxy-revalidate`, `s-maxage` (which
/// implies `proxy-revalidate` for a shared cache, §5.2.2.10) and `no-cache`
/// forbid serving the stored response stale, whatever the client accepts.
/// Read from the stored header with the same precedence as when storing.
pub fn forbids_stale(stored: &ResponseHeader, policy: &RouteCache) -> bool {
    directives(stored, policy).is_some_and(|(cc, _)| directives_forbid_stale(&cc))
}

fn directives_forbid_stale(cc: &CacheControl) -> bool {
    cc.must_revalidate()
        || cc.proxy_revalidate()
        || cc.has_key("s-maxage")
        || cc.has_key("no-cache")
}

/// `max-stale` without a value accepts any staleness; an invalid value
/// accepts none (the strict reading, as for an invalid `max-age`).
fn max_stale(cc: &CacheControl) -> Option<u32> {
    let value = cc
        .directives
        .get(&DirectiveKey::from_lowercase("max-stale"))?;
    Some(match value {
        None => u32::MAX,
        Some(v) => v.parse_as_delta_seconds().unwrap_or(0),
    })
}

/// Removes the route's targeted fields (`strip_targeted_fields`).
pub fn strip_targeted(resp: &mut ResponseHeader, policy: &RouteCache) {
    for name in &policy.targeted_fields {
        resp.remove_header(name);
    }
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// What the request's own `Cache-Control` asks of the cache (§5.2.1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `no-cache` or `max-age=0`: revalidate before using a stored response.
    pub revalidate: bool,
    /// `max-age=N`: a stored response older than N seconds is not used
    /// without revalidation (§5.2.1.1).
    pub max_age: Option<u32>,
    /// `min-fresh=N`: a stored response must stay fresh N more seconds
    /// (§5.2.1.3).
    pub min_fresh: Option<u32>,
    /// `only-if-cached`: answer from the cache or with 504.
    pub only_if_cached: bool,
    /// `no-store`: do not store the response to this request.
    pub no_store: bool,
    /// `max-stale[=N]`: the client accepts a response stale by up to N
    /// seconds (`u32::MAX` without a value), §5.2.1.2.
    pub max_stale: Option<u32>,
}

impl RequestDirectives {
    /// Reads `Cache-Control` (and `Pragma: no-cache`, §5.4) from the request.
    pub fn of(req: &RequestHeader) -> Self {
        let Some(cc) = CacheControl::from_req_headers(req) else {
            let pragma_no_cache = req
                .headers
                .get(http::header::PRAGMA)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"));
            return Self {
                revalidate: pragma_no_cache,
                ..Self::default()
            };
        };
        // An invalid `max-age` or `min-fresh` asks for the strictest answer.
        let delta = |key: &str| {
            let value = cc.directives.get(&DirectiveKey::from_lowercase(key))?;
            Some(
                value
                    .as_ref()
                    .and_then(|v| v.parse_as_delta_seconds().ok())
                    .unwrap_or(0),
            )
        };
        let max_age = delta("max-age");
        Self {
            revalidate: cc.no_cache() || max_age == Some(0),
            max_age,
            min_fresh: delta("min-fresh"),
            only_if_cached: cc.has_key("only-if-cached"),
            no_store: cc.no_store(),
            max_stale: max_stale(&cc),
        }
    }

    /// Whether this request accepts `meta`, stale at `now`, as it is
    /// (§4.2.4, §5.2.1.2): it asked for `max-stale` covering the staleness,
    /// nothing else in the request asks for a revalidation, and the stored
    /// response does not forbid serving it stale.
    pub fn accepts_stale(&self, meta: &CacheMeta, policy: &RouteCache, now: SystemTime) -> bool {
        let Some(max_stale) = self.max_stale else {
            return false;
        };
        if self.revalidate || self.asks_to_revalidate(meta) {
            return false;
        }
        let staleness = now.duration_since(meta.fresh_until()).unwrap_or_default();
        staleness <= Duration::from_secs(u64::from(max_stale))
            && !forbids_stale(meta.response_header(), policy)
    }

    /// Whether a fresh stored response must be revalidated before this
    /// request may use it: `no-cache`, or older than `max-age`, or fresh
    /// for less than `min-fresh` more seconds.
    pub fn asks_to_revalidate(&self, meta: &CacheMeta) -> bool {
        if self.revalidate {
            return true;
        }
        let too_old = self
            .max_age
            .is_some_and(|max| meta.age() > Duration::from_secs(u64::from(max)));
        let fresh_left = meta
            .fresh_until()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let too_close = self
            .min_fresh
            .is_some_and(|min| fresh_left < Duration::from_secs(u64::from(min)));
        too_old || too_close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cacheable(req: &RequestHeader, resp: &ResponseHeader, policy: &RouteCache) -> RespCacheable {
        response_cacheable(req, resp, policy, Exchange::default())
    }

    fn policy(default_ttl: Option<u64>) -> RouteCache {
        RouteCache {
            default_ttl: default_ttl.map(Duration::from_secs),
            ..RouteCache::default()
        }
    }

    fn get() -> RequestHeader {
        RequestHeader::build("GET", b"/x", None).expect("req")
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).expect("resp");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("hdr");
        }
        r
    }

    fn ttl(c: RespCacheable) -> Option<u64> {
        match c {
            RespCacheable::Cacheable(meta) => Some(
                meta.fresh_until()
                    .duration_since(SystemTime::now())
                    .map_or(0, |d| d.as_secs() + 1),
            ),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn s_maxage_overrides_max_age() {
        let r = resp(200, &[("cache-control", "max-age=10, s-maxage=100")]);
        assert_eq!(ttl(cacheable(&get(), &r, &policy(None))), Some(100));
    }

    #[test]
    fn default_ttl_applies_only_when_the_upstream_is_silent() {
        assert_eq!(
            ttl(cacheable(&get(), &resp(200, &[]), &policy(Some(60)))),
            Some(60)
        );
        let explicit = resp(200, &[("cache-control", "max-age=5")]);
        assert_eq!(
            ttl(cacheable(&get(), &explicit, &policy(Some(60)))),
            Some(5)
        );
        assert_eq!(ttl(cacheable(&get(), &resp(200, &[]), &policy(None))), None);
    }

    #[test]
    fn max_ttl_caps_every_lifetime() {
        let mut p = policy(Some(3600));
        p.max_ttl = Some(Duration::from_secs(30));
        assert_eq!(
            ttl(cacheable(
                &get(),
                &resp(200, &[("cache-control", "max-age=600")]),
                &p
            )),
            Some(30)
        );
        assert_eq!(ttl(cacheable(&get(), &resp(200, &[]), &p)), Some(30));
    }

    #[test]
    fn no_store_private_vary_star_and_set_cookie_are_never_stored() {
        for headers in [
            vec![("cache-control", "no-store, max-age=60")],
            vec![("cache-control", "private, max-age=60")],
            vec![("cache-control", "max-age=60"), ("vary", "Accept, *")],
            vec![("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            vec![
                ("cache-control", "max-age=60"),
                ("set-cookie2", "a=b; Version=1"),
            ],
        ] {
            assert_eq!(
                ttl(cacheable(&get(), &resp(200, &headers), &policy(Some(60)))),
                None,
                "{headers:?}"
            );
        }
    }

    #[test]
    fn authorization_needs_public_or_s_maxage_or_must_revalidate() {
        let mut req = get();
        req.insert_header("authorization", "Bearer t").expect("hdr");
        assert_eq!(
            ttl(cacheable(
                &req,
                &resp(200, &[("cache-control", "max-age=60")]),
                &policy(None)
            )),
            None
        );
        assert_eq!(
            ttl(cacheable(&req, &resp(200, &[]), &policy(Some(60)))),
            None
        );
        for cc in [
            "public, max-age=60",
            "s-maxage=60",
            "must-revalidate, max-age=60",
        ] {
            assert!(
                ttl(cacheable(
                    &req,
                    &resp(200, &[("cache-control", cc)]),
                    &policy(None)
                ))
                .is_some(),
                "{cc}"
            );
        }
    }

    /// RFC 9111 §3: any final status with explicit freshness is storable;
    /// the route's list only says which ones get `default_ttl`.
    #[test]
    fn any_final_status_with_explicit_freshness_is_stored() {
        let cc = [("cache-control", "max-age=60")];
        for status in [302, 303, 307, 299, 500, 599] {
            assert!(
                ttl(cacheable(&get(), &resp(status, &cc), &policy(None))).is_some(),
                "{status}"
            );
        }
        assert_eq!(
            ttl(cacheable(&get(), &resp(500, &[]), &policy(Some(60)))),
            None
        );
        assert!(ttl(cacheable(&get(), &resp(404, &[]), &policy(Some(60)))).is_some());
        assert_eq!(ttl(cacheable(&get(), &resp(206, &cc), &policy(None))), None);
        assert_eq!(ttl(cacheable(&get(), &resp(304, &cc), &policy(None))), None);
        // A HEAD's fill went upstream as a GET: its answer is stored.
        let head = RequestHeader::build("HEAD", b"/x", None).expect("req");
        assert!(ttl(cacheable(&head, &resp(200, &cc), &policy(None))).is_some());
        let post = RequestHeader::build("POST", b"/x", None).expect("req");
        assert_eq!(ttl(cacheable(&post, &resp(200, &cc), &policy(None))), None);
    }

    /// A refusal about the request (its credential) must not teach
    /// Pingora's predictor that the key is uncacheable for everyone.
    #[test]
    fn only_refusals_about_the_request_are_kept_from_the_predictor() {
        let mut req = get();
        req.insert_header("authorization", "Basic eA==")
            .expect("hdr");
        let cc = [("cache-control", "max-age=60")];
        match cacheable(&req, &resp(200, &cc), &policy(None)) {
            RespCacheable::Uncacheable(NoCacheReason::Custom(reason)) => {
                assert!(refusal_is_per_request(reason), "{reason}");
            }
            _ => panic!("a credentialed request without permission is not stored"),
        }
        for reason in ["no-store-or-private", "set-cookie", "status", "vary-star"] {
            assert!(!refusal_is_per_request(reason), "{reason}");
        }
        // Pingora's predictor remembers every `Custom` reason it is not
        // told to skip (pingora-cache `predictor.rs`).
        use pingora::cache::predictor::{CacheablePredictor, Predictor};
        let key = pingora::cache::CacheKey::new("h/x", "");
        let remembering = Predictor::<1>::new(8, None);
        remembering.mark_uncacheable(&key, NoCacheReason::Custom(NOT_STORED_AUTHORIZATION));
        assert!(!remembering.cacheable_prediction(&key));
        let ours = Predictor::<1>::new(8, Some(refusal_is_per_request));
        ours.mark_uncacheable(&key, NoCacheReason::Custom(NOT_STORED_AUTHORIZATION));
        assert!(ours.cacheable_prediction(&key));
        ours.mark_uncacheable(&key, NoCacheReason::Custom("no-store-or-private"));
        assert!(!ours.cacheable_prediction(&key));
    }

    #[test]
    fn no_cache_is_stored_but_stale_at_once() {
        let c = cacheable(
            &get(),
            &resp(200, &[("cache-control", "no-cache, max-age=60")]),
            &policy(None),
        );
        match c {
            RespCacheable::Cacheable(meta) => assert!(!meta.is_fresh(SystemTime::now())),
            RespCacheable::Uncacheable(r) => panic!("not stored: {r:?}"),
        }
    }

    #[test]
    fn max_stale_and_what_forbids_serving_stale() {
        let with = |cc: &str| {
            let mut req = get();
            req.insert_header("cache-control", cc).expect("hdr");
            RequestDirectives::of(&req).max_stale
        };
        assert_eq!(with("max-stale"), Some(u32::MAX));
        assert_eq!(with("max-stale=30"), Some(30));
        assert_eq!(with("max-stale=3x"), Some(0), "invalid: accepts nothing");
        assert_eq!(with("max-age=5"), None);
        let route = policy(None);
        for cc in [
            "must-revalidate",
            "proxy-revalidate",
            "s-maxage=5",
            "no-cache",
        ] {
            assert!(
                forbids_stale(&resp(200, &[("cache-control", cc)]), &route),
                "{cc}"
            );
        }
        assert!(!forbids_stale(
            &resp(200, &[("cache-control", "max-age=5")]),
            &route
        ));
        let targeted = RouteCache {
            targeted_fields: vec![http::HeaderName::from_static("cdn-cache-control")],
            ..policy(None)
        };
        let both = resp(
            200,
            &[
                ("cache-control", "must-revalidate"),
                ("cdn-cache-control", "max-age=5"),
            ],
        );
        assert!(
            !forbids_stale(&both, &targeted),
            "the targeted field decides"
        );
    }

    #[test]
    fn request_directives_are_read() {
        let mut req = get();
        req.insert_header("cache-control", "max-age=0")
            .expect("hdr");
        assert!(RequestDirectives::of(&req).revalidate);
        let mut req = get();
        req.insert_header("cache-control", "only-if-cached")
            .expect("hdr");
        assert!(RequestDirectives::of(&req).only_if_cached);
        let mut req = get();
        req.insert_header("pragma", "no-cache").expect("hdr");
        assert!(RequestDirectives::of(&req).revalidate);
    }
}
