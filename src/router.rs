//! The compiled routing table: host, then longest path prefix, then method.
//!
//! Built once per config generation; [`Router::find`] does not allocate.
//!
//! Matching rules (documented in the README):
//! 1. Host buckets are tried from most to least specific: the exact host,
//!    then wildcard hosts (`*.example.com`, longest suffix first), then routes
//!    without a host. A request falls through to a less specific bucket when
//!    nothing in a more specific one matches its path and method.
//! 2. Inside a bucket the longest matching `path_prefix` wins; prefixes are
//!    plain byte prefixes of the path (without the query), as in nginx.
//! 3. Among routes with the same prefix, the first one in the file whose
//!    method set contains the request method wins.

use http::Method;
use std::collections::HashMap;

/// Index of a route in the config's route list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteId(pub usize);

/// A route's host condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `api.example.com`: this host only (compared case-insensitively).
    Exact(String),
    /// `*.example.com`: any subdomain of `example.com`, not `example.com` itself.
    /// Holds the suffix with its leading dot (`.example.com`).
    Wildcard(String),
}

impl HostPattern {
    /// Parses `api.example.com` or `*.example.com`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let host = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid_name = |name: &str| {
            !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        if let Some(rest) = host.strip_prefix("*.") {
            if valid_name(rest) {
                return Ok(HostPattern::Wildcard(format!(".{rest}")));
            }
        } else if valid_name(&host) {
            return Ok(HostPattern::Exact(host));
        }
        Err(format!(
            "invalid host {raw:?} (write a host name such as api.example.com, or *.example.com for its subdomains)"
        ))
    }
}

/// A set of HTTP methods, as a bit mask. `ANY` also matches extension methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSet(u16);

const KNOWN_METHODS: [(&str, u16); 9] = [
    ("GET", 1 << 0),
    ("HEAD", 1 << 1),
    ("POST", 1 << 2),
    ("PUT", 1 << 3),
    ("DELETE", 1 << 4),
    ("PATCH", 1 << 5),
    ("OPTIONS", 1 << 6),
    ("CONNECT", 1 << 7),
    ("TRACE", 1 << 8),
];

impl MethodSet {
    /// Every method, including extension methods.
    pub const ANY: MethodSet = MethodSet(u16::MAX);

    /// Builds a set from method names (case-insensitive).
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        if names.is_empty() {
            return Err(
                "methods must not be empty (leave the field out to allow every method)".into(),
            );
        }
        let mut bits = 0u16;
        for name in names {
            let upper = name.as_ref().to_ascii_uppercase();
            let bit = KNOWN_METHODS
                .iter()
                .find(|(n, _)| *n == upper)
                .map(|(_, b)| *b)
                .ok_or_else(|| {
                    format!(
                        "unknown method {:?} (one of GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, CONNECT, TRACE)",
                        name.as_ref()
                    )
                })?;
            bits |= bit;
        }
        Ok(MethodSet(bits))
    }

    fn bit(method: &Method) -> Option<u16> {
        let bit = match *method {
            Method::GET => 1 << 0,
            Method::HEAD => 1 << 1,
            Method::POST => 1 << 2,
            Method::PUT => 1 << 3,
            Method::DELETE => 1 << 4,
            Method::PATCH => 1 << 5,
            Method::OPTIONS => 1 << 6,
            Method::CONNECT => 1 << 7,
            Method::TRACE => 1 << 8,
            _ => return None,
        };
        Some(bit)
    }

    /// Whether a request with this method may use the route.
    pub fn contains(self, method: &Method) -> bool {
        if self == Self::ANY {
            return true;
        }
        Self::bit(method).is_some_and(|b| self.0 & b != 0)
    }

    /// Whether every method in `other` is also in `self`.
    pub fn covers(self, other: MethodSet) -> bool {
        self == Self::ANY || (other != Self::ANY && other.0 & !self.0 == 0)
    }
}

/// What the router needs to know about one route.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// Host condition, `None` for any host.
    pub host: Option<HostPattern>,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
    /// Allowed methods.
    pub methods: MethodSet,
}

#[derive(Debug)]
struct Entry {
    prefix: Box<str>,
    methods: MethodSet,
    route: RouteId,
}

/// The compiled routing table. See the module docs for the rules.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<Box<str>, Vec<Entry>>,
    /// Sorted by suffix length, longest first.
    wildcard: Vec<(Box<str>, Vec<Entry>)>,
    any_host: Vec<Entry>,
}

/// Longest host name we will look up (RFC 1035: 253 characters + port).
const MAX_HOST: usize = 256;

impl Router {
    /// Compiles the table; routes keep their index in `routes` as their id.
    pub fn new(routes: &[RouteMatch]) -> Self {
        let mut router = Router::default();
        for (i, r) in routes.iter().enumerate() {
            let entry = Entry {
                prefix: r.path_prefix.clone().into_boxed_str(),
                methods: r.methods,
                route: RouteId(i),
            };
            match &r.host {
                None => router.any_host.push(entry),
                Some(HostPattern::Exact(h)) => router
                    .exact
                    .entry(h.clone().into_boxed_str())
                    .or_default()
                    .push(entry),
                Some(HostPattern::Wildcard(suffix)) => {
                    match router.wildcard.iter_mut().find(|(s, _)| **s == **suffix) {
                        Some((_, bucket)) => bucket.push(entry),
                        None => router
                            .wildcard
                            .push((suffix.clone().into_boxed_str(), vec![entry])),
                    }
                }
            }
        }
        // Longest prefix first; the sort is stable so file order breaks ties.
        let by_prefix = |v: &mut Vec<Entry>| v.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
        router.exact.values_mut().for_each(by_prefix);
        router.wildcard.iter_mut().for_each(|(_, v)| by_prefix(v));
        by_prefix(&mut router.any_host);
        router
            .wildcard
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        router
    }

    /// Finds the route for a request. `host` is the raw `Host` header or
    /// URI authority (port and case are handled here); `path` excludes the
    /// query string.
    pub fn find(&self, host: Option<&[u8]>, path: &str, method: &Method) -> Option<RouteId> {
        let mut buf = [0u8; MAX_HOST];
        if let Some(host) = host.and_then(|h| normalize_host(h, &mut buf)) {
            if let Some(found) = self.exact.get(host).and_then(|b| find_in(b, path, method)) {
                return Some(found);
            }
            for (suffix, bucket) in &self.wildcard {
                if host.len() > suffix.len() && host.ends_with(&**suffix) {
                    if let Some(found) = find_in(bucket, path, method) {
                        return Some(found);
                    }
                }
            }
        }
        find_in(&self.any_host, path, method)
    }
}

fn find_in(bucket: &[Entry], path: &str, method: &Method) -> Option<RouteId> {
    bucket
        .iter()
        .find(|e| path.starts_with(&*e.prefix) && e.methods.contains(method))
        .map(|e| e.route)
}

/// Lower-cases `raw` into `buf` and strips the port and a trailing dot,
/// without allocating. `None` when the host is too long or not ASCII.
fn normalize_host<'a>(raw: &[u8], buf: &'a mut [u8; MAX_HOST]) -> Option<&'a str> {
    let host = if raw.first() == Some(&b'[') {
        // IPv6 literal: keep up to and including the closing bracket.
        let end = raw.iter().position(|&b| b == b']')?;
        &raw[..=end]
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > buf.len() || !host.is_ascii() {
        return None;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str, methods: Option<&[&str]>) -> RouteMatch {
        RouteMatch {
            host: host.map(|h| HostPattern::parse(h).expect("valid host")),
            path_prefix: prefix.to_owned(),
            methods: methods.map_or(MethodSet::ANY, |m| {
                MethodSet::from_names(m).expect("methods")
            }),
        }
    }

    fn table() -> Router {
        Router::new(&[
            route(None, "/", None),                                    // 0
            route(None, "/api/", None),                                // 1
            route(None, "/api/v2/", Some(&["GET", "HEAD"])),           // 2
            route(None, "/api/v2/", Some(&["POST"])),                  // 3
            route(Some("api.example.com"), "/", None),                 // 4
            route(Some("*.example.com"), "/tenant/", None),            // 5
            route(Some("*.eu.example.com"), "/tenant/", None),         // 6
            route(Some("api.example.com"), "/admin/", Some(&["GET"])), // 7
        ])
    }

    fn find(r: &Router, host: &str, path: &str, method: Method) -> Option<usize> {
        let host = (!host.is_empty()).then_some(host.as_bytes());
        r.find(host, path, &method).map(|id| id.0)
    }

    #[test]
    fn longest_prefix_wins() {
        let r = table();
        assert_eq!(find(&r, "", "/", Method::GET), Some(0));
        assert_eq!(find(&r, "", "/api/users", Method::GET), Some(1));
        assert_eq!(find(&r, "", "/api/v2/users", Method::GET), Some(2));
    }

    #[test]
    fn method_picks_among_equal_prefixes_and_falls_back_to_shorter_prefix() {
        let r = table();
        assert_eq!(find(&r, "", "/api/v2/x", Method::POST), Some(3));
        assert_eq!(find(&r, "", "/api/v2/x", Method::DELETE), Some(1));
        assert_eq!(
            find(
                &r,
                "",
                "/api/v2/x",
                Method::from_bytes(b"PURGE").expect("m")
            ),
            Some(1)
        );
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any_and_ignores_case_and_port() {
        let r = table();
        assert_eq!(find(&r, "API.Example.com:8443", "/x", Method::GET), Some(4));
        assert_eq!(
            find(&r, "api.example.com.", "/admin/x", Method::GET),
            Some(7)
        );
        assert_eq!(
            find(&r, "acme.example.com", "/tenant/1", Method::GET),
            Some(5)
        );
        assert_eq!(
            find(&r, "acme.eu.example.com", "/tenant/1", Method::GET),
            Some(6)
        );
        assert_eq!(find(&r, "example.com", "/tenant/1", Method::GET), Some(0));
    }

    #[test]
    fn a_host_bucket_without_a_matching_path_falls_through() {
        let r = table();
        // *.example.com only has /tenant/: other paths use the host-less routes.
        assert_eq!(find(&r, "acme.example.com", "/api/x", Method::GET), Some(1));
        // api.example.com /admin/ is GET-only: a POST falls to api.example.com "/".
        assert_eq!(
            find(&r, "api.example.com", "/admin/x", Method::POST),
            Some(4)
        );
    }

    #[test]
    fn no_route_means_none() {
        let r = Router::new(&[route(None, "/only/", Some(&["GET"]))]);
        assert_eq!(find(&r, "", "/other", Method::GET), None);
        assert_eq!(find(&r, "", "/only/x", Method::PUT), None);
    }

    #[test]
    fn ipv6_and_oversized_hosts_are_handled() {
        let mut buf = [0u8; MAX_HOST];
        assert_eq!(normalize_host(b"[::1]:8080", &mut buf), Some("[::1]"));
        assert_eq!(normalize_host(&[b'a'; 300], &mut buf), None);
    }

    #[test]
    fn host_patterns_are_validated() {
        assert!(HostPattern::parse("*.example.com").is_ok());
        assert!(HostPattern::parse("a*.example.com").is_err());
        assert!(HostPattern::parse("bad host").is_err());
        assert!(HostPattern::parse("").is_err());
    }

    #[test]
    fn method_sets_cover_subsets() {
        let get_head = MethodSet::from_names(&["GET", "head"]).expect("set");
        let get = MethodSet::from_names(&["GET"]).expect("set");
        assert!(get_head.covers(get));
        assert!(!get.covers(get_head));
        assert!(MethodSet::ANY.covers(get));
        assert!(!get.covers(MethodSet::ANY));
        assert!(MethodSet::from_names(&["FETCH"]).is_err());
    }
}
