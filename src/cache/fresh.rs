//! The fresh-hit fast path: a fresh stored response served straight from
//! the memory store, for GET/HEAD requests that ask nothing special of the
//! cache, on entries without `Vary`.
//!
//! Pingora's cache path (lock, predictor, meta rebuild, hit handler, state
//! machine) costs more than the rest of a hit together; this answers the
//! common case with what that path would send (`Age`, `Cache-Status: hit`,
//! the LRU touched) and leaves every other case to it. A compressed hit is
//! served from an encoded copy kept with the entry. Measured in
//! docs/book/src/benchmarks-history.md.

use super::{key, CacheRuntime, Outcome};
use crate::compression;
use crate::config::model::{CompressionConfig, RouteCache, RouteCompression};
use crate::metrics::Metrics;
use crate::values::host::Host;
use bytes::Bytes;
use pingora::cache::key::{CacheHashKey, CacheKey};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use std::time::SystemTime;

/// Request headers that ask more of the cache than "a fresh copy, whole":
/// such requests take Pingora's full cache path (304s, ranges, revalidation).
const ASKS_MORE_OF_THE_CACHE: [http::header::HeaderName; 8] = [
    http::header::CACHE_CONTROL,
    http::header::PRAGMA,
    http::header::RANGE,
    http::header::IF_NONE_MATCH,
    http::header::IF_MODIFIED_SINCE,
    http::header::IF_MATCH,
    http::header::IF_UNMODIFIED_SINCE,
    http::header::IF_RANGE,
];

/// A cached route, as the fast path needs it.
pub struct CachedRoute<'a> {
    /// The route's name (metrics label).
    pub name: &'a str,
    /// Its cache policy (the key's parts).
    pub policy: &'a RouteCache,
    /// Route, upstream and scheme: the key's scope line.
    pub scope: key::Scope<'a>,
    /// The process-wide compression settings.
    pub compression: Option<&'a CompressionConfig>,
    /// The route's compression overrides.
    pub route_compression: RouteCompression,
}

/// What the fast path found.
pub enum Lookup {
    /// A fresh hit, ready to send once the usual response headers are added.
    Hit(FreshResponse),
    /// Nothing to serve here: Pingora's cache path decides, with this key
    /// (built once, handed to `cache_key_callback`).
    Miss(CacheKey),
    /// Not a request for the fast path (method, conditionals, directives).
    NotEligible,
}

/// A fresh hit's response.
pub struct FreshResponse {
    /// The stored header with `Age` and `Cache-Status` (and the encoding).
    pub header: Box<ResponseHeader>,
    /// The body to send (the stored one, or its encoded copy).
    pub body: Bytes,
    /// Bytes of the stored body, before any encoding.
    pub stored_len: u64,
    /// A HEAD request: send the header only.
    pub head: bool,
}

/// Looks the request up in the memory store and, on a fresh hit, prepares
/// the response (choosing an encoded copy when the client takes one). The
/// key of a miss carries the store's [`FillTicket`](super::store::FillTicket)
/// from now, so a purge recorded while it is fetched drops its fill.
pub async fn lookup(
    session: &mut Session,
    host: Option<&Host>,
    route: &CachedRoute<'_>,
    cache: &CacheRuntime,
    metrics: &Metrics,
) -> Result<Lookup> {
    let req = session.req_header();
    let head = req.method == http::Method::HEAD;
    if !(head || req.method == http::Method::GET)
        || ASKS_MORE_OF_THE_CACHE
            .iter()
            .any(|h| req.headers.contains_key(h))
    {
        return Ok(Lookup::NotEligible);
    }
    let mut key = key::cache_key(req, host, route.scope, route.policy);
    let now = SystemTime::now();
    let Some(hit) = cache.store.fresh(&key.primary_bin(), now) else {
        key.extensions.insert(cache.store.ticket());
        return Ok(Lookup::Miss(key));
    };
    metrics
        .cache_requests
        .with_label_values(&[route.name, Outcome::Hit.label()])
        .inc();
    let mut header = Box::new(hit.header);
    header.set_version(http::Version::HTTP_11);
    if route.policy.strip_targeted_fields {
        super::policy::strip_targeted(&mut header, route.policy);
    }
    header.insert_header(http::header::AGE, hit.age.as_secs())?;
    let shown_key = route
        .policy
        .expose_key
        .then(|| key.primary_key_str())
        .flatten();
    super::append_cache_status(&mut header, &super::fresh_hit_status(hit.ttl, shown_key))?;
    let stored_len = hit.body.len() as u64;
    let mut body = hit.body;
    let coding = compression::stored_coding(
        session.req_header(),
        &header,
        route.compression,
        Some(route.route_compression),
    );
    if let Some((coding, level)) = coding {
        let encoded = cache
            .store
            .encoded_body(&hit.entry, coding.as_str(), |b| {
                compression::encode(coding, level, b)
            })
            .await;
        match encoded {
            Ok(encoded) => {
                compression::mark_encoded(&mut header, coding, encoded.len())?;
                compression::bypass_module(session);
                body = encoded;
            }
            // The module encodes this one as it would any response.
            Err(e) => log::warn!("encoding a cached body as {}: {e}", coding.as_str()),
        }
    }
    Ok(Lookup::Hit(FreshResponse {
        header,
        body,
        stored_len,
        head,
    }))
}
