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

use crate::config::model::RouteCache;
use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters::calculate_expires_header_time;
use pingora::cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};

/// Why a response was not stored, as `Cache-Status` `detail`.
fn not_stored(reason: &'static str) -> RespCacheable {
    RespCacheable::Uncacheable(NoCacheReason::Custom(reason))
}

/// Decides whether `resp` (to `req`) may be stored under `policy` (RFC 9111 §3).
/// `credentialed`: the request carries an API key, which is treated like
/// `Authorization` (§3.5).
pub fn response_cacheable(
    req: &RequestHeader,
    resp: &ResponseHeader,
    policy: &RouteCache,
    credentialed: bool,
) -> RespCacheable {
    // A HEAD response has no body: storing it would answer later GETs with nothing.
    if req.method != http::Method::GET {
        return not_stored("method");
    }
    let status = resp.status.as_u16();
    if !policy.statuses.contains(&status) {
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
    // A Set-Cookie meant for one client must not be replayed to others.
    if resp.headers.contains_key(http::header::SET_COOKIE) {
        return not_stored("set-cookie");
    }
    let cc = CacheControl::from_resp_headers(resp);
    // §3.5: a request with Authorization (or an API key, `credentialed`)
    // only if the response explicitly allows it.
    if (credentialed || req.headers.contains_key(http::header::AUTHORIZATION))
        && !cc
            .as_ref()
            .is_some_and(|c| c.allow_caching_authorized_req())
    {
        return not_stored("authorization");
    }
    if cc
        .as_ref()
        .is_some_and(|c| c.is_cacheable() == Cacheable::No)
    {
        return not_stored("no-store-or-private");
    }
    // §4.2.1: s-maxage, then max-age, then Expires; then the route default.
    let explicit = cc
        .as_ref()
        .and_then(|c| c.fresh_duration())
        .map(Freshness::For)
        .or_else(|| calculate_expires_header_time(resp).map(Freshness::Until));
    let now = SystemTime::now();
    let fresh_until = match explicit {
        Some(Freshness::For(ttl)) => now.checked_add(ttl.min(policy.max_ttl.unwrap_or(ttl))),
        Some(Freshness::Until(at)) => Some(match policy.max_ttl.and_then(|m| now.checked_add(m)) {
            Some(cap) => at.min(cap),
            None => at,
        }),
        None => match policy.default_ttl {
            Some(ttl) => now.checked_add(ttl.min(policy.max_ttl.unwrap_or(ttl))),
            None => return not_stored("no-freshness"),
        },
    };
    let Some(fresh_until) = fresh_until else {
        return not_stored("no-freshness");
    };
    let swr = cc
        .as_ref()
        .and_then(|c| c.serve_stale_while_revalidate_duration())
        .unwrap_or(policy.stale_while_revalidate);
    let sie = cc
        .as_ref()
        .and_then(|c| c.serve_stale_if_error_duration())
        .unwrap_or(policy.stale_if_error);
    let mut header = resp.clone();
    if let Some(c) = &cc {
        c.strip_private_headers(&mut header);
    }
    RespCacheable::Cacheable(CacheMeta::new(
        fresh_until,
        now,
        secs(swr),
        secs(sie),
        header,
    ))
}

enum Freshness {
    For(Duration),
    Until(SystemTime),
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// What the request's own `Cache-Control` asks of the cache (§5.2.1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `no-cache` or `max-age=0`: revalidate before using a stored response.
    pub revalidate: bool,
    /// `only-if-cached`: answer from the cache or with 504.
    pub only_if_cached: bool,
    /// `no-store`: do not store the response to this request.
    pub no_store: bool,
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
        Self {
            revalidate: cc.no_cache() || matches!(cc.max_age(), Ok(Some(0))),
            only_if_cached: cc.has_key("only-if-cached"),
            no_store: cc.no_store(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cacheable(req: &RequestHeader, resp: &ResponseHeader, policy: &RouteCache) -> RespCacheable {
        response_cacheable(req, resp, policy, false)
    }

    fn policy(default_ttl: Option<u64>) -> RouteCache {
        RouteCache {
            default_ttl: default_ttl.map(Duration::from_secs),
            max_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            statuses: crate::config::model::defaults::CACHEABLE_STATUSES.to_vec(),
            exclude_query: Vec::new(),
            ignore_query: false,
            sort_query: true,
            key_headers: Vec::new(),
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

    #[test]
    fn statuses_outside_the_list_and_head_responses_are_not_stored() {
        let cc = [("cache-control", "max-age=60")];
        assert_eq!(ttl(cacheable(&get(), &resp(500, &cc), &policy(None))), None);
        assert_eq!(ttl(cacheable(&get(), &resp(206, &cc), &policy(None))), None);
        assert!(ttl(cacheable(&get(), &resp(404, &cc), &policy(None))).is_some());
        let head = RequestHeader::build("HEAD", b"/x", None).expect("req");
        assert_eq!(ttl(cacheable(&head, &resp(200, &cc), &policy(None))), None);
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
