//! The cache's phases: whether the cache is on for a request, its key,
//! whether a response may be stored, what a hit's own request directives
//! ask, and when a stale entry may be served. The rules live in `cache`
//! (`policy`, `key`, `vary`, `revalidation`); this is where Pingora's
//! cache phases reach them.

use crate::cache;
use crate::ctx::RequestCtx;
use crate::state::AppState;
use pingora::cache::key::CacheKey;
use pingora::cache::{CacheMeta, ForcedFreshness, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use std::time::Duration;

/// Turns the cache on for GET/HEAD on routes that have it; never for an
/// upgrade (its 101 is a connection, not a representation).
pub(super) fn enable(state: &AppState, session: &mut Session, ctx: &mut RequestCtx) {
    let policy = ctx
        .route()
        .filter(|_| !ctx.upgrade)
        .and_then(|r| r.cache.as_ref());
    ctx.cache_directives = state.cache.enable_for(session, policy);
}

/// The key, built in one place (`cache::key`), with the fill ticket that
/// drops what this request fetches if a purge naming it is recorded before
/// it is stored (`cache::store::purge_log`).
pub(super) fn key(state: &AppState, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
    let tap = ctx.recording().and_then(|t| t.tier_tap());
    if let Some(mut key) = ctx.cache_key.take() {
        if let Some(tap) = tap {
            key.extensions.insert(tap);
        }
        return Ok(key);
    }
    let route = ctx.route();
    let cached =
        route.and_then(|r| Some((r.key_scope(ctx.tls, ctx.pool_name()), r.cache.as_ref()?)));
    let (scope, policy) = cached.ok_or_else(|| {
        Error::explain(
            ErrorType::InternalError,
            "cache key for a route without cache",
        )
    })?;
    let mut key = cache::key::cache_key(session.req_header(), ctx.host.as_ref(), scope, policy);
    key.extensions.insert(state.cache.store.ticket());
    if let Some(tap) = tap {
        key.extensions.insert(tap);
    }
    Ok(key)
}

/// RFC 9111 storability and freshness (`cache::policy`). A 304 updates
/// every stored field it carries (§4.3.4); Pingora's merge copies only a
/// few of them.
pub(super) fn cacheable(
    session: &Session,
    resp: &ResponseHeader,
    ctx: &mut RequestCtx,
) -> RespCacheable {
    let not_modified = ctx.not_modified.take();
    let Some(policy) = ctx.route().and_then(|r| r.cache.as_ref()) else {
        return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
    };
    let exchange = cache::policy::Exchange {
        credentialed: ctx.credentialed,
        response_delay: ctx
            .upstream
            .timing()
            .chosen_at
            .map_or(Duration::ZERO, |t| t.elapsed()),
    };
    let merged = not_modified.map(|fields| cache::revalidation::updated_header(resp, &fields));
    let resp = merged.as_ref().unwrap_or(resp);
    cache::policy::response_cacheable(session.req_header(), resp, policy, exchange)
}

/// The request's own directives (§5.2.1): `no-cache`, `max-age`,
/// `min-fresh` revalidate a fresh entry; `max-stale` takes a stale one as
/// it is unless the stored response forbids it (§4.2.4).
pub(super) fn on_hit(
    meta: &CacheMeta,
    is_fresh: bool,
    ctx: &RequestCtx,
) -> Option<ForcedFreshness> {
    let directives = ctx.cache_directives;
    if is_fresh {
        let revalidate = directives.asks_to_revalidate(meta);
        return revalidate.then_some(ForcedFreshness::ForceExpired);
    }
    let accepts_stale = ctx
        .route()
        .and_then(|r| r.cache.as_ref())
        .is_some_and(|policy| directives.accepts_stale(meta, policy, std::time::SystemTime::now()));
    accepts_stale.then_some(ForcedFreshness::ForceFresh)
}

/// Stale-while-revalidate (`error` is `None`) and stale-if-error on
/// upstream failures (unreachable, timed out, closed, or a 500, 502, 503,
/// 504 answer), and when the pool has no backend that may take traffic
/// (tollgate's own 503, the case stale-if-error exists for); Pingora checks
/// the entry's windows first.
pub(super) fn may_serve_stale(error: Option<&Error>) -> bool {
    error.is_none_or(|e| match e.etype() {
        // RFC 5861 §4: the error statuses are 500, 502, 503 and 504.
        ErrorType::HTTPStatus(status) => matches!(status, 500 | 502 | 503 | 504),
        etype if *etype == crate::errors::NO_HEALTHY_UPSTREAM => true,
        _ => *e.esource() == pingora::ErrorSource::Upstream,
    })
}
