//! The cache key. A wrong key is cache poisoning, so its parts are few,
//! documented and tested:
//!
//! ```text
//! primary = host + path + ("?" + query)?            (the URI part)
//!         + "\n" + scheme + " " + route + " " + upstream   (the scope line)
//!         + ("\n" + name + (":" + value)?)*       (configured headers)
//! ```
//!
//! - `host`: the request's host as [`crate::values::host::Host`] normalised it,
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
//!   the rest sorted by name (`sort_query`, default on), or left out
//!   (`ignore_query`) — never merging two queries that an upstream could
//!   read differently (see [`push_query`]).
//! - one line per configured `key.headers` entry, in config order: the
//!   name, then `:` and the request's lines combined, when the field is
//!   present. The request is the one the upstream receives
//!   (`crate::forwarded`): `X-Tenant` is tollgate's, never the client's.
//!
//! The method is not in the key: only GET and HEAD are looked up, and a
//! HEAD is answered from a stored GET. `Vary` is handled by Pingora's
//! variance key on top of this primary key.

use crate::config::model::RouteCache;
use crate::values::host::Host;
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
        push_field_lines(&mut key, req.headers.get_all(name));
    }
    key
}

/// A configured key field's value as the key holds it: nothing when the
/// field is absent; otherwise `:` and every line, joined by `", "` (RFC
/// 9111 §4.1 combines lines before comparing), with bytes outside visible
/// ASCII and `%` itself escaped as `%XX` — a value that is not ASCII is a
/// value, and no two values share a spelling.
fn push_field_lines(key: &mut String, lines: http::header::GetAll<'_, http::HeaderValue>) {
    for (i, line) in lines.iter().enumerate() {
        key.push_str(if i == 0 { ":" } else { ", " });
        for &b in line.as_bytes() {
            if (b == b' ' || b.is_ascii_graphic()) && b != b'%' {
                key.push(char::from(b));
            } else {
                key.push('%');
                key.push(char::from(HEX[usize::from(b >> 4)]));
                key.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

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
/// purge API: the host and the path normalised as a request's are
/// (`hygiene`, with the config's path `rules`), so every spelling of a URL
/// purges the entry it would have hit. The query is kept as given: purge
/// the form the cache stores.
pub fn uri_of_url(url: &str, rules: &crate::config::model::Hygiene) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let host = Host::parse_str(uri.authority()?.as_str())?;
    let path = crate::values::hygiene::normalise_path(uri.path()).ok()?;
    let path =
        crate::values::hygiene::apply_path_rules(&path, rules.encoded_slash, rules.path_parameters)
            .ok()?;
    Some(match uri.query() {
        Some(query) => format!("{}{path}?{query}", host.as_str()),
        None => format!("{}{path}", host.as_str()),
    })
}

/// The URI part of a stored key (what purges match on).
pub fn uri_of(key: &CacheKey) -> Option<&str> {
    key.primary_key_str().map(uri_part)
}

/// The query as the key holds it. Upstream frameworks disagree on how a
/// query splits (`&` only, or `;` too) and on which of a repeated name
/// wins (first, last, all), so the key keeps every distinction any of them
/// makes:
/// - `exclude_query` drops a `&`-separated parameter only when it has no
///   `;`: under the `;` reading, `utm_source=x;id=5` also carries `id`;
/// - `sort_query` orders parameters by name (percent-decoded, `+` as a
///   space, ASCII case folded, so every spelling of one name sorts
///   together) and keeps the order of parameters with the same name, which
///   upstreams read as a list; a query with a `;` is not sorted at all.
fn push_query(key: &mut String, query: &str, policy: &RouteCache) {
    if policy.exclude_query.is_empty() && !policy.sort_query {
        key.push('?');
        key.push_str(query);
        return;
    }
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| p.contains(';') || !policy.exclude_query.iter().any(|x| x == param_name(p)))
        .collect();
    if params.is_empty() {
        return;
    }
    if policy.sort_query && !query.contains(';') {
        params.sort_by_cached_key(|p| folded_name(param_name(p)));
    }
    key.push('?');
    for (i, param) in params.iter().enumerate() {
        if i > 0 {
            key.push('&');
        }
        key.push_str(param);
    }
}

/// The raw name of a `name=value` parameter.
fn param_name(param: &str) -> &str {
    param.split('=').next().unwrap_or(param)
}

/// A parameter name as upstreams compare it, at its loosest: percent
/// escapes decoded, `+` as a space, ASCII case folded.
fn folded_name(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        i += 2;
                        hi << 4 | lo
                    }
                    _ => b'%',
                }
            }
            b'+' => b' ',
            b => b,
        };
        out.push(decoded.to_ascii_lowercase());
        i += 1;
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
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
    fn a_parameter_behind_a_semicolon_is_not_excluded_with_its_neighbour() {
        let mut p = policy();
        p.exclude_query = vec!["utm_source".into()];
        let hidden = key_of(&req("/s?utm_source=x;id=5", &[("host", "h")]), &p);
        let plain = key_of(&req("/s", &[("host", "h")]), &p);
        assert_ne!(hidden, plain);
        assert_eq!(
            key_of(&req("/s?utm_source=x&id=5", &[("host", "h")]), &p),
            "h/s?id=5"
        );
    }

    #[test]
    fn sorting_keeps_the_order_of_a_repeated_name_in_every_spelling() {
        let p = policy();
        let h = [("host", "h")];
        assert_eq!(key_of(&req("/s?b=2&a=1", &h), &p), "h/s?a=1&b=2");
        for (one, other) in [
            ("/s?id=1&id=2", "/s?id=2&id=1"),
            ("/s?a=1&%61=2", "/s?%61=2&a=1"),
            ("/s?ID=1&id=2", "/s?id=2&ID=1"),
            ("/s?a+b=1&a%20b=2", "/s?a%20b=2&a+b=1"),
            ("/s?x=1;a=1&a=2", "/s?a=2&x=1;a=1"),
        ] {
            assert_ne!(
                key_of(&req(one, &h), &p),
                key_of(&req(other, &h), &p),
                "{one} / {other}"
            );
        }
    }

    #[test]
    fn key_fields_combine_lines_and_keep_absent_apart_from_empty() {
        let mut p = policy();
        p.key_headers = vec![http::HeaderName::from_static("x-tenant")];
        let host = Host::parse_str("h");
        let key = |headers: &[(&str, &[u8])]| {
            let mut r = RequestHeader::build("GET", b"/x", None).expect("req");
            for (n, v) in headers {
                let v = http::HeaderValue::from_bytes(v).expect("value");
                r.append_header(n.to_string(), v).expect("hdr");
            }
            primary(&r, host.as_ref(), SCOPE, &p)
        };
        assert_eq!(
            key(&[("x-tenant", b"a"), ("x-tenant", b"b")]),
            key(&[("x-tenant", b"a, b")])
        );
        assert_ne!(
            key(&[("x-tenant", b"a"), ("x-tenant", b"b")]),
            key(&[("x-tenant", b"a")])
        );
        assert_ne!(key(&[]), key(&[("x-tenant", b"")]));
        assert_ne!(key(&[]), key(&[("x-tenant", b"caf\xe9")]));
        assert_ne!(key(&[("x-tenant", b"%E9")]), key(&[("x-tenant", b"\xe9")]));
    }

    #[test]
    fn purge_urls_are_normalised_as_requests_are() {
        let rules = crate::config::model::Hygiene::default();
        assert_eq!(
            uri_of_url("http://API.Test:8080//%61/b?x=1", &rules).as_deref(),
            Some("api.test/a/b?x=1")
        );
        assert_eq!(uri_of_url("http://api.test/a/../b", &rules), None);
        assert_eq!(uri_of_url("/no/host", &rules), None);
    }

    #[test]
    fn different_hosts_never_share_an_entry() {
        let a = key_of(&req("/x", &[("host", "a.test")]), &policy());
        let b = key_of(&req("/x", &[("host", "b.test")]), &policy());
        assert_ne!(a, b);
    }
}
