//! RFC 9111 §4.4: a successful unsafe request (POST, PUT, PATCH, DELETE)
//! invalidates the stored responses for its target URI, and for the URIs
//! in its `Location` and `Content-Location` when they are same-origin.
//!
//! Takes only what it uses — the store, the request and response headers,
//! the request's normalised host and the route's key policy — so it is
//! tested without a proxy around it.

use super::{Purge, Selection};
use crate::cache::key;
use crate::cache::store::MemoryStore;
use crate::config::model::RouteCache;
use crate::metrics::Metrics;
use crate::values::host::Host;
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

/// An answered request, as invalidation sees it.
pub struct Finished<'a> {
    /// The request as the client sent it.
    pub req: &'a RequestHeader,
    /// Its normalised host.
    pub host: Option<&'a Host>,
    /// Its response (the upstream's, before it is sent), if any.
    pub resp: Option<&'a ResponseHeader>,
    /// The route's cache policy, when the route caches.
    pub policy: Option<&'a RouteCache>,
}

/// The stored-URI forms a finished request makes stale (§4.4): for a
/// successful unsafe request, its own URI and its same-origin `Location`
/// and `Content-Location`; nothing otherwise.
fn stale_uris(done: &Finished<'_>) -> Vec<String> {
    // §4.4: every method not defined as safe (RFC 9110 §9.2.1) — POST,
    // PUT, PATCH, DELETE and any method the cache does not know.
    if crate::values::methods::is_safe(&done.req.method) || !succeeded(done) {
        return Vec::new();
    }
    let fallback;
    let policy = match done.policy {
        Some(p) => p,
        None => {
            fallback = RouteCache::default();
            &fallback
        }
    };
    // Every route's, upstream's and scheme's copy of the URI goes.
    let mut uris = vec![key::uri(done.req, done.host, policy)];
    let host = done.host.map_or("", Host::as_str);
    if let Some(resp) = done.resp {
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            let Some(location) = resp.headers.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            if let Some(uri) = same_origin_uri(host, location) {
                uris.push(uri);
            }
        }
    }
    uris
}

/// A 2xx or 3xx answer: what §4.4 means by a non-error response.
fn succeeded(done: &Finished<'_>) -> bool {
    done.resp
        .is_some_and(|r| r.status.is_success() || r.status.is_redirection())
}

/// Everything an answered request invalidates: the URIs it made stale
/// (§4.4) and, when it succeeded, the cache tags its upstream named in the
/// invalidation field (`named_tags`, collected from unsafe requests only).
///
/// Each purge is first handed to `share` (which queues its shared part,
/// and so hides it from Redis lookups, `outbox`), then the URIs are
/// removed from memory here: in that order, no request can take a Redis
/// copy of them into memory after the memory part (invariant 4 of
/// `invalidation`). Tag purges (a tag can name many entries) are returned
/// for the caller to apply to memory off the request's thread.
pub fn after_request(
    store: &'static MemoryStore,
    metrics: &Metrics,
    done: &Finished<'_>,
    named_tags: Vec<Arc<str>>,
    mut share: impl FnMut(&Purge),
) -> Vec<Purge> {
    let stale = stale_uris(done);
    let tags = if succeeded(done) {
        named_tags
    } else {
        Vec::new()
    };
    let hard = |target| Purge {
        selection: target,
        soft: false,
    };
    for uri in &stale {
        share(&hard(Selection::Uri(uri.clone())));
    }
    let tagged: Vec<Purge> = tags
        .iter()
        .map(|t| hard(Selection::Tag(t.to_string())))
        .collect();
    tagged.iter().for_each(&mut share);
    purge_stale(store, metrics, &stale);
    tagged
}

/// Purges `uris` from memory; counts what it removed in
/// `tollgate_cache_purges_total{reason="invalidation"}` and returns it.
fn purge_stale(store: &'static MemoryStore, metrics: &Metrics, uris: &[String]) -> usize {
    // Even with nothing stored: the purge is recorded, so a fill of these
    // URIs in flight is dropped (`cache::store::purges`).
    if uris.is_empty() {
        return 0;
    }
    let removed: usize = uris.iter().map(|uri| store.purge_uri(uri)).sum();
    counted(metrics, removed)
}

/// Counts entries an invalidation removed in
/// `tollgate_cache_purges_total{reason="invalidation"}`; returns them.
pub fn counted(metrics: &Metrics, removed: usize) -> usize {
    if removed > 0 {
        metrics
            .cache_purges
            .with_label_values(&["invalidation"])
            .inc_by(removed as u64);
    }
    removed
}

/// RFC 9111 §4.3.5: a 200 to a HEAD that reached the upstream (its
/// header as the upstream sent it, before compression) shows
/// whether the stored GET responses for its URI are still current; those
/// whose validators (`ETag`, `Last-Modified`) or `Content-Length` it
/// contradicts are removed. Those it agrees with stay as they are, fresh
/// or stale (freshening them from a HEAD is left to the next GET's
/// revalidation). Counted like other invalidations; returns how many went.
pub fn after_head_response(store: &MemoryStore, metrics: &Metrics, done: &Finished<'_>) -> usize {
    let Some(resp) = done.resp.filter(|r| r.status == http::StatusCode::OK) else {
        return 0;
    };
    if done.req.method != http::Method::HEAD || store.entries() == 0 {
        return 0;
    }
    let fallback = RouteCache::default();
    let policy = done.policy.unwrap_or(&fallback);
    let uri = key::uri(done.req, done.host, policy);
    counted(
        metrics,
        store.purge_uri_where(&uri, |stored| contradicts(resp, stored)),
    )
}

/// Whether a HEAD response `head` shows that `stored` is no longer the
/// selected representation (§4.3.5): a validator it carries differs from
/// the stored one or is missing there (entity tags compared weakly, RFC
/// 9110 §8.8.3.2), or its `Content-Length` differs.
fn contradicts(head: &ResponseHeader, stored: &ResponseHeader) -> bool {
    fn field<'r>(r: &'r ResponseHeader, name: &http::header::HeaderName) -> Option<&'r [u8]> {
        r.headers.get(name).map(|v| v.as_bytes().trim_ascii())
    }
    let weak = |tag: &[u8]| tag.strip_prefix(b"W/").unwrap_or(tag).to_vec();
    let etag = http::header::ETAG;
    if let Some(tag) = field(head, &etag) {
        if field(stored, &etag).map(weak) != Some(weak(tag)) {
            return true;
        }
    }
    [http::header::LAST_MODIFIED, http::header::CONTENT_LENGTH]
        .iter()
        .any(|name| field(head, name).is_some_and(|v| field(stored, name) != Some(v)))
}

/// The stored-URI form (`host/path?query`) of a `Location` value, if it is
/// a path or an absolute URI on the same host.
fn same_origin_uri(host: &str, location: &str) -> Option<String> {
    if location.starts_with('/') && !location.starts_with("//") {
        return Some(format!("{host}{location}"));
    }
    let uri: http::Uri = location.parse().ok()?;
    let authority = Host::parse_str(uri.authority()?.as_str())?;
    (authority.as_str() == host)
        .then(|| format!("{host}{}", uri.path_and_query().map_or("/", |p| p.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The URI part of `after_request`, returning how many entries went.
    fn invalidate(store: &'static MemoryStore, metrics: &Metrics, done: &Finished<'_>) -> usize {
        purge_stale(store, metrics, &stale_uris(done))
    }
    use pingora::cache::key::CacheKey;
    use pingora::cache::trace::Span;
    use pingora::cache::{CacheMeta, Storage};
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_head_response_contradicts_only_on_a_changed_validator_or_length() {
        let resp = |pairs: &[(&str, &str)]| {
            let mut r = ResponseHeader::build(200, None).expect("resp");
            for (n, v) in pairs {
                r.append_header(n.to_string(), *v).expect("hdr");
            }
            r
        };
        let stored = resp(&[
            ("etag", "\"a\""),
            ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT"),
            ("content-length", "5"),
        ]);
        assert!(
            !contradicts(&resp(&[("etag", "W/\"a\"")]), &stored),
            "weak match"
        );
        assert!(!contradicts(&resp(&[]), &stored), "nothing to compare");
        assert!(contradicts(&resp(&[("etag", "\"b\"")]), &stored));
        assert!(contradicts(&resp(&[("content-length", "6")]), &stored));
        assert!(contradicts(
            &resp(&[("last-modified", "Tue, 03 Nov 2026 10:00:00 GMT")]),
            &stored
        ));
        assert!(
            contradicts(&resp(&[("etag", "\"a\"")]), &resp(&[])),
            "new tag"
        );
    }

    #[test]
    fn only_same_origin_locations_are_invalidated() {
        assert_eq!(
            same_origin_uri("api.test", "/items/7"),
            Some("api.test/items/7".into())
        );
        assert_eq!(
            same_origin_uri("api.test", "https://API.test/items/7?x=1"),
            Some("api.test/items/7?x=1".into())
        );
        assert_eq!(
            same_origin_uri("api.test", "https://evil.test/items/7"),
            None
        );
        assert_eq!(same_origin_uri("api.test", "//evil.test/items"), None);
    }

    /// Stores a 200 for `host` + `path` the way Pingora's miss path does.
    async fn store_entry(store: &'static MemoryStore, host: &str, path: &str) {
        let req = RequestHeader::build("GET", path.as_bytes(), None).expect("req");
        let host = Host::parse_str(host);
        let scope = key::Scope {
            scheme: "http",
            route: "api",
            upstream: "api",
        };
        let key: CacheKey = key::cache_key(&req, host.as_ref(), scope, &RouteCache::default());
        let now = SystemTime::now();
        let resp = ResponseHeader::build(200, None).expect("resp");
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, resp);
        let span = Span::inactive().handle();
        let mut miss = store
            .get_miss_handler(&key, &meta, &span)
            .await
            .expect("miss handler");
        miss.write_body(bytes::Bytes::from_static(b"{}"), true)
            .await
            .expect("body");
        miss.finish().await.expect("finish");
    }

    fn finished<'a>(
        req: &'a RequestHeader,
        host: Option<&'a Host>,
        resp: &'a ResponseHeader,
    ) -> Finished<'a> {
        Finished {
            req,
            host,
            resp: Some(resp),
            policy: None,
        }
    }

    #[tokio::test]
    async fn a_successful_post_purges_its_target_and_same_origin_location() {
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new()));
        let metrics = Metrics::new().expect("metrics");
        store_entry(store, "api.test", "/items").await;
        store_entry(store, "api.test", "/items/7").await;
        store_entry(store, "api.test", "/other").await;
        store_entry(store, "evil.test", "/items/7").await;
        let post = RequestHeader::build("POST", b"/items", None).expect("req");
        let host = Host::parse_str("API.test:443");
        let mut created = ResponseHeader::build(201, None).expect("resp");
        created
            .insert_header("location", "https://api.test/items/7")
            .expect("location");
        let removed = invalidate(store, &metrics, &finished(&post, host.as_ref(), &created));
        assert_eq!(removed, 2);
        assert_eq!(store.entries(), 2, "/other and the other host stay");
        assert_eq!(
            metrics
                .cache_purges
                .with_label_values(&["invalidation"])
                .get(),
            2
        );
    }

    #[tokio::test]
    async fn failed_or_safe_requests_invalidate_nothing() {
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new()));
        let metrics = Metrics::new().expect("metrics");
        store_entry(store, "api.test", "/items").await;
        let host = Host::parse_str("api.test");
        let post = RequestHeader::build("POST", b"/items", None).expect("req");
        let failed = ResponseHeader::build(500, None).expect("resp");
        assert_eq!(
            invalidate(store, &metrics, &finished(&post, host.as_ref(), &failed)),
            0
        );
        let get = RequestHeader::build("GET", b"/items", None).expect("req");
        let ok = ResponseHeader::build(200, None).expect("resp");
        assert_eq!(
            invalidate(store, &metrics, &finished(&get, host.as_ref(), &ok)),
            0
        );
        assert_eq!(store.entries(), 1);
    }

    /// RFC 9111 §4.4: a method the cache does not know is unsafe too.
    #[tokio::test]
    async fn an_unknown_method_invalidates_like_post() {
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new()));
        let metrics = Metrics::new().expect("metrics");
        store_entry(store, "api.test", "/items").await;
        let host = Host::parse_str("api.test");
        let purge = RequestHeader::build("PURGEITEMS", b"/items", None).expect("req");
        let ok = ResponseHeader::build(200, None).expect("resp");
        assert_eq!(
            invalidate(store, &metrics, &finished(&purge, host.as_ref(), &ok)),
            1
        );
        assert_eq!(store.entries(), 0);
    }
}
