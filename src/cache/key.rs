//! The cache key. A wrong key is cache poisoning, so its parts are few,
//! documented and tested:
//!
//! ```text
//! primary = host + path + ("?" + query)?            (the URI part)
//!         + "\n" + scheme + " " + route + " " + upstream   (the scope line)
//!         + ("\n" + name + ":" + value)*           (configured headers)
//! ```
//!
//! - `host`: the request's host as [`crate::host::Host`] normalised it,
//!   once per request — the very value the router matched (empty when the
//!   request had no host, which only HTTP/1.0 may omit).
//! - `path`: as routed — normalised once (`crate::path`), so every spelling
//!   of a path that reaches the same route and upstream path shares a key.
//! - the scope line: `http`/`https`, the matched route's name and its
//!   upstream's name. Whatever the client sends, a response is only ever
//!   served to requests of the route (and upstream, and scheme) that
//!   produced it; names are `[A-Za-z0-9._-]`, so the line cannot be forged
//!   by the parts before it (a URI has no newline either).
//! - `query`: as received, or with `exclude_query` parameters dropped and
//!   the rest sorted (`sort_query`, default on), or left out (`ignore_query`).
//! - one line per configured `key.headers` entry, in config order, with the
//!   request's value (empty when absent).
//!
//! The method is not in the key: only GET and HEAD are looked up, and a
//! HEAD is answered from a stored GET. `Vary` is handled by Pingora's
//! variance key on top of this primary key.

use crate::config::model::RouteCache;
use crate::host::Host;
use pingora::cache::key::CacheKey;
use pingora::http::RequestHeader;

/// The parts of a key the client does not choose: where the response came
/// from and how the client reached it.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// `http` or `https`: what the client connected with.
    pub scheme: &'a str,
    /// The matched route's name.
    pub route: &'a str,
    /// The route's upstream's name.
    pub upstream: &'a str,
}

/// Builds the primary key string for a request on a cached route; `host` is
/// the request's normalised host.
pub fn primary(
    req: &RequestHeader,
    host: Option<&Host>,
    scope: Scope<'_>,
    policy: &RouteCache,
) -> String {
    let host = host.map_or("", Host::as_str);
    let mut key = String::with_capacity(
        host.len() + req.uri.path().len() + scope.route.len() + scope.upstream.len() + 40,
    );
    push_uri(&mut key, req, host, policy);
    key.push('\n');
    key.push_str(scope.scheme);
    key.push(' ');
    key.push_str(scope.route);
    key.push(' ');
    key.push_str(scope.upstream);
    for name in &policy.key_headers {
        key.push('\n');
        key.push_str(name.as_str());
        key.push(':');
        if let Some(v) = req.headers.get(name).and_then(|v| v.to_str().ok()) {
            key.push_str(v.trim());
        }
    }
    key
}

/// The key Pingora stores under. Its hash is computed here once and set
/// as the override: Pingora would otherwise hash the key again (Blake2b) on
/// every `primary_bin()` call — four times per hit, 3 % of a hit's CPU.
/// Same function, same value.
pub fn cache_key(
    req: &RequestHeader,
    host: Option<&Host>,
    scope: Scope<'_>,
    policy: &RouteCache,
) -> CacheKey {
    let primary = primary(req, host, scope, policy);
    let hash = pingora::cache::key::hash_key(&primary);
    let mut key = CacheKey::new(primary, "");
    key.set_primary_bin_override(hash);
    key
}

/// The key as `Cache-Status` shows it (`key=`, RFC 9211 §2.7): an
/// sf-string, its lines joined with ` | `.
pub fn status_form(primary: &str) -> String {
    let mut out = String::with_capacity(primary.len() + 8);
    out.push('"');
    for c in primary.chars() {
        match c {
            '\n' => out.push_str(" | "),
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// The URI part of a request's key (what purges and invalidation match).
pub fn uri(req: &RequestHeader, host: Option<&Host>, policy: &RouteCache) -> String {
    let host = host.map_or("", Host::as_str);
    let mut uri = String::with_capacity(host.len() + req.uri.path().len() + 16);
    push_uri(&mut uri, req, host, policy);
    uri
}

fn push_uri(key: &mut String, req: &RequestHeader, host: &str, policy: &RouteCache) {
    key.push_str(host);
    key.push_str(req.uri.path());
    if let Some(query) = req
        .uri
        .query()
        .filter(|q| !policy.ignore_query && !q.is_empty())
    {
        push_query(key, query, policy);
    }
}

/// The URI part of a primary key string (before the scope line).
pub fn uri_part(primary: &str) -> &str {
    primary.split('\n').next().unwrap_or(primary)
}

/// The route named in a primary key string's scope line.
pub fn route_part(primary: &str) -> Option<&str> {
    primary.split('\n').nth(1)?.split(' ').nth(1)
}

/// The stored-URI form (`host/path?query`) of an absolute URL given to the
/// purge API. The query is kept as given: purge the form the cache stores.
pub fn uri_of_url(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let host = Host::parse_str(uri.authority()?.as_str())?;
    Some(format!(
        "{}{}",
        host.as_str(),
        uri.path_and_query().map_or("/", |p| p.as_str())
    ))
}

/// The URI part of a stored key (what purges match on).
pub fn uri_of(key: &CacheKey) -> Option<&str> {
    key.primary_key_str().map(uri_part)
}

fn push_query(key: &mut String, query: &str, policy: &RouteCache) {
    if policy.exclude_query.is_empty() && !policy.sort_query {
        key.push('?');
        key.push_str(query);
        return;
    }
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split('=').next().unwrap_or(p);
            !policy.exclude_query.iter().any(|x| x == name)
        })
        .collect();
    if params.is_empty() {
        return;
    }
    if policy.sort_query {
        params.sort_unstable();
    }
    key.push('?');
    key.push_str(&params.join("&"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RouteCache {
        RouteCache::default()
    }

    const SCOPE: Scope<'static> = Scope {
        scheme: "http",
        route: "api",
        upstream: "backend",
    };

    /// The URI part of the key as the proxy builds it: host normalised first.
    fn key_of(r: &RequestHeader, p: &RouteCache) -> String {
        let host = r
            .headers
            .get("host")
            .and_then(|h| Host::parse(h.as_bytes()));
        uri_part(&primary(r, host.as_ref(), SCOPE, p)).to_owned()
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).expect("req");
        for (n, v) in headers {
            r.insert_header(n.to_string(), *v).expect("hdr");
        }
        r
    }

    #[test]
    fn precomputed_hash_is_the_one_pingora_computes() {
        use pingora::cache::key::CacheHashKey;
        let request = req("/a?b=1", &[("host", "h")]);
        let host = Host::parse_str("h");
        let key = cache_key(&request, host.as_ref(), SCOPE, &policy());
        let plain = CacheKey::new(primary(&request, host.as_ref(), SCOPE, &policy()), "");
        assert_eq!(key.primary_bin(), plain.primary_bin());
        assert_eq!(key.combined_bin(), plain.combined_bin());
    }

    #[test]
    fn host_is_normalised_and_path_kept() {
        let k = key_of(
            &req("/a/B?x=1", &[("host", "API.Example.com:8080")]),
            &policy(),
        );
        assert_eq!(k, "api.example.com/a/B?x=1");
    }

    #[test]
    fn query_is_sorted_and_excluded_parameters_dropped() {
        let mut p = policy();
        p.exclude_query = vec!["utm_source".into()];
        let a = key_of(&req("/s?b=2&utm_source=x&a=1", &[("host", "h")]), &p);
        let b = key_of(&req("/s?a=1&b=2", &[("host", "h")]), &p);
        assert_eq!(a, "h/s?a=1&b=2");
        assert_eq!(a, b);
        assert_eq!(key_of(&req("/s?utm_source=x", &[("host", "h")]), &p), "h/s");
    }

    #[test]
    fn query_order_matters_when_sorting_is_off_and_can_be_ignored() {
        let mut p = policy();
        p.sort_query = false;
        assert_ne!(
            key_of(&req("/s?b=2&a=1", &[("host", "h")]), &p),
            key_of(&req("/s?a=1&b=2", &[("host", "h")]), &p)
        );
        p.ignore_query = true;
        assert_eq!(key_of(&req("/s?b=2&a=1", &[("host", "h")]), &p), "h/s");
    }

    #[test]
    fn configured_headers_separate_entries_but_not_the_uri() {
        let mut p = policy();
        p.key_headers = vec![http::HeaderName::from_static("accept-language")];
        let host = Host::parse_str("h");
        let en = cache_key(
            &req("/x", &[("host", "h"), ("accept-language", "en")]),
            host.as_ref(),
            SCOPE,
            &p,
        );
        let fr = cache_key(
            &req("/x", &[("host", "h"), ("accept-language", "fr")]),
            host.as_ref(),
            SCOPE,
            &p,
        );
        assert_ne!(en.primary_key(), fr.primary_key());
        assert_eq!(uri_of(&en), Some("h/x"));
        assert_eq!(uri_of(&fr), Some("h/x"));
    }

    #[test]
    fn the_status_form_is_one_sf_string() {
        assert_eq!(
            status_form("h/x?q=\"1\"\nhttp api up"),
            "\"h/x?q=\\\"1\\\" | http api up\""
        );
    }

    #[test]
    fn route_upstream_and_scheme_separate_entries() {
        let request = req("/x", &[("host", "h")]);
        let host = Host::parse_str("h");
        let key = |scope| primary(&request, host.as_ref(), scope, &policy());
        let base = key(SCOPE);
        assert_eq!(base, "h/x\nhttp api backend");
        assert_eq!(route_part(&base), Some("api"));
        for other in [
            Scope {
                route: "catch-all",
                ..SCOPE
            },
            Scope {
                upstream: "other",
                ..SCOPE
            },
            Scope {
                scheme: "https",
                ..SCOPE
            },
        ] {
            assert_ne!(key(other), base, "{other:?}");
            assert_eq!(uri_part(&key(other)), "h/x", "purge by URL still finds it");
        }
    }

    #[test]
    fn different_hosts_never_share_an_entry() {
        let a = key_of(&req("/x", &[("host", "a.test")]), &policy());
        let b = key_of(&req("/x", &[("host", "b.test")]), &policy());
        assert_ne!(a, b);
    }
}
