//! RFC 9111 §4.4: a successful unsafe request (POST, PUT, PATCH, DELETE)
//! invalidates the stored responses for its target URI, and for the URIs
//! in its `Location` and `Content-Location` when they are same-origin.

use crate::cache::key;
use crate::config::model::RouteCache;
use crate::ctx::RequestCtx;
use crate::state::AppState;
use pingora::proxy::Session;

/// Normalisation used when the route of the unsafe request has no cache
/// settings of its own: the defaults (sorted query, nothing excluded).
fn default_policy() -> RouteCache {
    RouteCache {
        default_ttl: None,
        max_ttl: None,
        stale_while_revalidate: std::time::Duration::ZERO,
        stale_if_error: std::time::Duration::ZERO,
        statuses: Vec::new(),
        exclude_query: Vec::new(),
        ignore_query: false,
        sort_query: true,
        key_headers: Vec::new(),
    }
}

/// Purges what a finished unsafe request made stale; counts what it removed.
pub fn after_unsafe_request(state: &AppState, session: &Session, ctx: &RequestCtx) {
    let req = session.req_header();
    let unsafe_method = matches!(
        req.method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH | http::Method::DELETE
    );
    let succeeded = session
        .response_written()
        .is_some_and(|r| r.status.is_success() || r.status.is_redirection());
    if !unsafe_method || !succeeded || state.cache.store.entries() == 0 {
        return;
    }
    let fallback;
    let policy = match ctx.route().and_then(|r| r.cache.as_ref()) {
        Some(p) => p,
        None => {
            fallback = default_policy();
            &fallback
        }
    };
    let target = key::primary(req, policy);
    let mut removed = state.cache.store.purge_uri(key::uri_part(&target));
    let host_end = target.find('/').unwrap_or(target.len());
    let host = &target[..host_end];
    if let Some(resp) = session.response_written() {
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            let Some(location) = resp.headers.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            if let Some(uri) = same_origin_uri(host, location) {
                removed += state.cache.store.purge_uri(&uri);
            }
        }
    }
    if removed > 0 {
        state
            .metrics
            .cache_purges
            .with_label_values(&["invalidation"])
            .inc_by(removed as u64);
    }
}

/// The stored-URI form (`host/path?query`) of a `Location` value, if it is
/// a path or an absolute URI on the same host.
fn same_origin_uri(host: &str, location: &str) -> Option<String> {
    if location.starts_with('/') && !location.starts_with("//") {
        return Some(format!("{host}{location}"));
    }
    let uri: http::Uri = location.parse().ok()?;
    let authority = uri.authority()?.host().to_ascii_lowercase();
    (authority == host)
        .then(|| format!("{host}{}", uri.path_and_query().map_or("/", |p| p.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
