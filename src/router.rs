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
//!    plain byte prefixes of the path (without the query), as in nginx, of
//!    the path as `hygiene` normalised it; a route may ask for ASCII
//!    case-insensitive matching.
//! 3. Among routes with the same prefix, the first one in the file whose
//!    method set contains the request method wins.

pub use crate::host::{Host, HostPattern};
pub use crate::methods::MethodSet;
use http::Method;
use std::collections::HashMap;

/// Index of a route in the config's route list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteId(pub usize);

/// What the router needs to know about one route.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// Host condition, `None` for any host.
    pub host: Option<HostPattern>,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
    /// Match the prefix without regard to ASCII case.
    pub case_insensitive: bool,
    /// Allowed methods.
    pub methods: MethodSet,
}

#[derive(Debug)]
struct Entry {
    prefix: Box<str>,
    case_insensitive: bool,
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

impl Router {
    /// Compiles the table; routes keep their index in `routes` as their id.
    pub fn new(routes: &[RouteMatch]) -> Self {
        let mut router = Router::default();
        for (i, r) in routes.iter().enumerate() {
            let entry = Entry {
                prefix: r.path_prefix.clone().into_boxed_str(),
                case_insensitive: r.case_insensitive,
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

    /// Finds the route for a request. `host` is the request's normalised
    /// host ([`Host::parse`]), `None` when it sent none; `path` excludes the
    /// query string.
    pub fn find(&self, host: Option<&Host>, path: &str, method: &Method) -> Option<RouteId> {
        if let Some(host) = host.map(Host::as_str) {
            if let Some(found) = self.exact.get(host).and_then(|b| find_in(b, path, method)) {
                return Some(found);
            }
            for (suffix, bucket) in &self.wildcard {
                if crate::host::is_below(host, suffix) {
                    if let Some(found) = find_in(bucket, path, method) {
                        return Some(found);
                    }
                }
            }
        }
        find_in(&self.any_host, path, method)
    }
}

impl Entry {
    fn matches_path(&self, path: &str) -> bool {
        if self.case_insensitive {
            path.as_bytes()
                .get(..self.prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(self.prefix.as_bytes()))
        } else {
            path.starts_with(&*self.prefix)
        }
    }
}

fn find_in(bucket: &[Entry], path: &str, method: &Method) -> Option<RouteId> {
    bucket
        .iter()
        .find(|e| e.matches_path(path) && e.methods.contains(method))
        .map(|e| e.route)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str, methods: Option<&[&str]>) -> RouteMatch {
        RouteMatch {
            host: host.map(|h| HostPattern::parse(h).expect("valid host")),
            path_prefix: prefix.to_owned(),
            case_insensitive: false,
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
        let host = (!host.is_empty()).then(|| Host::parse_str(host).expect("valid host"));
        r.find(host.as_ref(), path, &method).map(|id| id.0)
    }

    #[test]
    fn case_insensitive_routes_match_any_case_of_their_prefix() {
        let mut admin = route(None, "/Admin/", None);
        admin.case_insensitive = true;
        let r = Router::new(&[route(None, "/", None), admin]);
        for path in ["/Admin/x", "/admin/x", "/ADMIN/", "/aDmIn/y"] {
            assert_eq!(find(&r, "", path, Method::GET), Some(1), "{path}");
        }
        assert_eq!(find(&r, "", "/Admin", Method::GET), Some(0));
        let exact = Router::new(&[route(None, "/", None), route(None, "/admin/", None)]);
        assert_eq!(find(&exact, "", "/ADMIN/x", Method::GET), Some(0));
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
}
