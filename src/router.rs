//! The compiled routing table: host, then longest path prefix, then
//! header conditions and method.
//!
//! Built once per config generation; [`Router::find`] does not allocate
//! (beyond a lower-cased copy of the path when a bucket has
//! case-insensitive routes) and does not scan the route list: the host is
//! one hash lookup (a wildcard one per label of the host), the longest
//! prefix one hash lookup per distinct prefix length no longer than the
//! path, so 100,000 routes cost what a handful do.
//!
//! Matching rules (documented in the book, `docs/book/src/routing.md`):
//! 1. Host buckets are tried from most to least specific: the exact host,
//!    then wildcard hosts (`*.example.com`, longest suffix first), then routes
//!    without a host. A request falls through to a less specific bucket when
//!    nothing in a more specific one matches its path, headers and method.
//! 2. Inside a bucket the longest matching `path_prefix` wins; prefixes are
//!    plain byte prefixes of the path (without the query), as in nginx, of
//!    the path as `hygiene` normalised it; a route may ask for ASCII
//!    case-insensitive matching.
//! 3. Among routes with the same prefix, routes with header conditions
//!    (every listed field has the exact value) come before routes without;
//!    then the first one in the file whose method set contains the request
//!    method and whose conditions hold wins.

pub use crate::values::host::{Host, HostPattern};
pub use crate::values::methods::MethodSet;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
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
    /// Header fields that must each have this exact value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
struct Entry {
    methods: MethodSet,
    headers: Box<[(HeaderName, HeaderValue)]>,
    route: RouteId,
}

impl Entry {
    /// Whether the request's method and fields satisfy this route.
    fn accepts(&self, method: &Method, fields: &HeaderMap) -> bool {
        self.methods.contains(method)
            && self
                .headers
                .iter()
                .all(|(name, value)| fields.get_all(name).iter().any(|v| v == value))
    }
}

/// The routes of one prefix, and an index of their header conditions, so
/// a request is matched against the routes its own fields name rather
/// than against every route of the prefix.
#[derive(Debug, Default)]
struct Slot {
    /// In precedence order: routes with header conditions (file order),
    /// then routes without (file order).
    entries: Vec<Entry>,
    /// Routes with header conditions by their first condition (by field
    /// name): field → value → positions in `entries`, ascending.
    keyed: HashMap<
        HeaderName,
        HashMap<HeaderValue, Vec<usize>, ahash::RandomState>,
        ahash::RandomState,
    >,
    /// Position of the first route without header conditions.
    plain_from: usize,
}

impl Slot {
    /// Orders the entries (header conditions first, then file order) and
    /// indexes the conditioned ones by their first condition.
    fn seal(&mut self) {
        self.entries
            .sort_by_key(|e| (e.headers.is_empty(), e.route.0));
        self.plain_from = self.entries.partition_point(|e| !e.headers.is_empty());
        self.keyed.clear();
        for (i, entry) in self.entries[..self.plain_from].iter().enumerate() {
            if let Some((name, value)) = entry.headers.first() {
                self.keyed
                    .entry(name.clone())
                    .or_default()
                    .entry(value.clone())
                    .or_default()
                    .push(i);
            }
        }
    }

    /// The best-ranked entry that accepts the request: among the
    /// conditioned entries its fields name (one hash lookup per value of
    /// each indexed field), the first; else the first plain entry.
    fn find(&self, method: &Method, fields: &HeaderMap) -> Option<&Entry> {
        let mut best: Option<usize> = None;
        for (name, by_value) in &self.keyed {
            for value in fields.get_all(name) {
                let Some(positions) = by_value.get(value) else {
                    continue;
                };
                for &i in positions {
                    if best.is_some_and(|b| b <= i) {
                        break;
                    }
                    if self.entries[i].accepts(method, fields) {
                        best = Some(i);
                        break;
                    }
                }
            }
        }
        match best {
            Some(i) => self.entries.get(i),
            None => self.entries[self.plain_from..]
                .iter()
                .find(|e| e.accepts(method, fields)),
        }
    }
}

type PrefixMap = HashMap<Box<[u8]>, Slot, ahash::RandomState>;

/// The routes of one host condition, by prefix.
#[derive(Debug, Default)]
struct Bucket {
    /// Case-sensitive prefixes; entries in precedence order.
    exact: PrefixMap,
    /// Case-insensitive prefixes, ASCII lower-cased.
    folded: PrefixMap,
    /// Every distinct prefix length of either map, longest first.
    lengths: Vec<usize>,
}

impl Bucket {
    fn add(&mut self, prefix: &str, case_insensitive: bool, entry: Entry) {
        let (map, key) = if case_insensitive {
            (&mut self.folded, prefix.to_ascii_lowercase().into_bytes())
        } else {
            (&mut self.exact, prefix.as_bytes().to_vec())
        };
        map.entry(key.into_boxed_slice())
            .or_default()
            .entries
            .push(entry);
    }

    /// Orders each prefix's entries (header conditions first, then file
    /// order) and lists the prefix lengths to probe.
    fn seal(&mut self) {
        for slot in self.exact.values_mut().chain(self.folded.values_mut()) {
            slot.seal();
        }
        let mut lengths: Vec<usize> = self
            .exact
            .keys()
            .chain(self.folded.keys())
            .map(|k| k.len())
            .collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        self.lengths = lengths;
    }

    fn find(&self, path: &[u8], method: &Method, fields: &HeaderMap) -> Option<RouteId> {
        let folded_path = (!self.folded.is_empty()).then(|| path.to_ascii_lowercase());
        for &len in self.lengths.iter().filter(|&&len| len <= path.len()) {
            let exact = self.exact.get(&path[..len]);
            let folded = folded_path
                .as_ref()
                .and_then(|p| self.folded.get(&p[..len]));
            // Both spellings may hold this length: the better ranked wins.
            let best = exact
                .into_iter()
                .chain(folded)
                .filter_map(|slot| slot.find(method, fields))
                .min_by_key(|e| (e.headers.is_empty(), e.route.0));
            if let Some(entry) = best {
                return Some(entry.route);
            }
        }
        None
    }
}

/// The compiled routing table. See the module docs for the rules.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<Box<str>, Bucket, ahash::RandomState>,
    /// By suffix (`.example.com`).
    wildcard: HashMap<Box<str>, Bucket, ahash::RandomState>,
    any_host: Bucket,
}

impl Router {
    /// Compiles the table; routes keep their index in `routes` as their id.
    pub fn new(routes: &[RouteMatch]) -> Self {
        let mut router = Router::default();
        for (i, r) in routes.iter().enumerate() {
            let entry = Entry {
                methods: r.methods,
                headers: r.headers.clone().into_boxed_slice(),
                route: RouteId(i),
            };
            let bucket = match &r.host {
                None => &mut router.any_host,
                Some(HostPattern::Exact(h)) => router.exact.entry(h.as_str().into()).or_default(),
                Some(HostPattern::Wildcard(suffix)) => {
                    router.wildcard.entry(suffix.as_str().into()).or_default()
                }
            };
            bucket.add(&r.path_prefix, r.case_insensitive, entry);
        }
        router.exact.values_mut().for_each(Bucket::seal);
        router.wildcard.values_mut().for_each(Bucket::seal);
        router.any_host.seal();
        router
    }

    /// Finds the route for a request. `host` is the request's normalised
    /// host ([`Host::parse`]), `None` when it sent none; `path` excludes the
    /// query string; `fields` are the request's header fields.
    pub fn find(
        &self,
        host: Option<&Host>,
        path: &str,
        method: &Method,
        fields: &HeaderMap,
    ) -> Option<RouteId> {
        let path = path.as_bytes();
        if let Some(host) = host.map(Host::as_str) {
            if let Some(found) = self
                .exact
                .get(host)
                .and_then(|b| b.find(path, method, fields))
            {
                return Some(found);
            }
            if !self.wildcard.is_empty() {
                // `.b.example.com`, `.example.com`, `.com`: longest first.
                for (i, _) in host.match_indices('.') {
                    if let Some(found) = self
                        .wildcard
                        .get(&host[i..])
                        .and_then(|b| b.find(path, method, fields))
                    {
                        return Some(found);
                    }
                }
            }
        }
        self.any_host.find(path, method, fields)
    }
}

impl Router {
    /// Whether any route that accepts `method` on `host` + `path`, by host
    /// and path prefix alone, satisfies `wanted` — header conditions
    /// ignored and shorter prefixes included, so it answers "could a
    /// request like this reach such a route" conservatively (a superset
    /// of what [`Router::find`] would pick for some header fields). Used
    /// where a false "yes" only costs work: whether an unsafe request's
    /// URI can be cached by any route (`cache::invalidation`).
    pub fn any_candidate(
        &self,
        host: Option<&Host>,
        path: &str,
        method: &Method,
        wanted: impl Fn(RouteId) -> bool,
    ) -> bool {
        let path = path.as_bytes();
        let accepts =
            |b: &Bucket| b.any_entry(path, |e| e.methods.contains(method) && wanted(e.route));
        if let Some(host) = host.map(Host::as_str) {
            if self.exact.get(host).is_some_and(accepts) {
                return true;
            }
            for (i, _) in host.match_indices('.') {
                if self.wildcard.get(&host[i..]).is_some_and(accepts) {
                    return true;
                }
            }
        }
        accepts(&self.any_host)
    }
}

impl Bucket {
    /// Whether any entry whose prefix (either spelling) the path starts
    /// with satisfies `f`.
    fn any_entry(&self, path: &[u8], f: impl Fn(&Entry) -> bool) -> bool {
        let folded_path = (!self.folded.is_empty()).then(|| path.to_ascii_lowercase());
        self.lengths
            .iter()
            .filter(|&&len| len <= path.len())
            .any(|&len| {
                let exact = self.exact.get(&path[..len]);
                let folded = folded_path
                    .as_ref()
                    .and_then(|p| self.folded.get(&p[..len]));
                exact
                    .into_iter()
                    .chain(folded)
                    .flat_map(|slot| &slot.entries)
                    .any(&f)
            })
    }
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
            headers: Vec::new(),
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
        r.find(host.as_ref(), path, &method, &HeaderMap::new())
            .map(|id| id.0)
    }

    #[test]
    fn any_candidate_sees_every_route_a_path_could_reach() {
        let t = table();
        let get = Method::GET;
        // /api/v2/x: routes 0, 1, 2 accept GET by prefix (3 is POST only).
        for (id, expected) in [(0, true), (1, true), (2, true), (3, false), (4, false)] {
            assert_eq!(
                t.any_candidate(None, "/api/v2/x", &get, |r| r == RouteId(id)),
                expected,
                "route {id}"
            );
        }
        let host = Host::parse_str("api.example.com");
        assert!(t.any_candidate(host.as_ref(), "/x", &get, |r| r == RouteId(4)));
        assert!(t.any_candidate(host.as_ref(), "/x", &get, |r| r == RouteId(0)));
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
    fn header_conditions_win_over_plain_routes_of_the_same_prefix() {
        let mut canary = route(None, "/api/", None);
        canary.headers = vec![(
            HeaderName::from_static("x-canary"),
            HeaderValue::from_static("on"),
        )];
        // The plain route comes first in the file; the conditioned one
        // still wins when its condition holds.
        let r = Router::new(&[route(None, "/", None), route(None, "/api/", None), canary]);
        let mut fields = HeaderMap::new();
        let get = |fields: &HeaderMap, path: &str| {
            r.find(None, path, &Method::GET, fields).map(|id| id.0)
        };
        assert_eq!(get(&fields, "/api/x"), Some(1));
        fields.insert("x-canary", HeaderValue::from_static("off"));
        assert_eq!(get(&fields, "/api/x"), Some(1), "exact value only");
        fields.append("x-canary", HeaderValue::from_static("on"));
        assert_eq!(get(&fields, "/api/x"), Some(2), "any line with the value");
        assert_eq!(
            get(&fields, "/other"),
            Some(0),
            "a longer prefix still comes first"
        );
    }

    #[test]
    fn a_hundred_thousand_routes_build_and_resolve() {
        let mut routes = Vec::new();
        for i in 0..50_000 {
            routes.push(route(Some(&format!("h{i}.example.com")), "/", None));
            routes.push(route(None, &format!("/svc-{i}/"), None));
        }
        routes.push(route(Some("*.wild.example.com"), "/w/", None));
        let r = Router::new(&routes);
        assert_eq!(
            find(&r, "h49999.example.com", "/x", Method::GET),
            Some(99_998)
        );
        assert_eq!(
            find(&r, "nohost.test", "/svc-777/x", Method::GET),
            Some(1_555)
        );
        assert_eq!(
            find(&r, "a.b.wild.example.com", "/w/1", Method::GET),
            Some(100_000)
        );
        assert_eq!(find(&r, "nohost.test", "/svc-x", Method::GET), None);
    }

    #[test]
    fn no_route_means_none() {
        let r = Router::new(&[route(None, "/only/", Some(&["GET"]))]);
        assert_eq!(find(&r, "", "/other", Method::GET), None);
        assert_eq!(find(&r, "", "/only/x", Method::PUT), None);
    }

    proptest::proptest! {
        /// The header index picks what a scan of every route in precedence
        /// order would: the first route with conditions that accepts the
        /// request, else the first without.
        #[test]
        fn the_header_index_agrees_with_a_scan(
            specs in proptest::collection::vec(
                (
                    proptest::collection::vec((0..3usize, 0..3usize), 0..3),
                    proptest::bool::ANY,
                ),
                1..24,
            ),
            request in proptest::collection::vec((0..3usize, 0..3usize), 0..4),
            post in proptest::bool::ANY,
        ) {
            let names = ["x-a", "x-b", "x-c"];
            let values = ["1", "2", "3"];
            let routes: Vec<RouteMatch> = specs
                .iter()
                .map(|(conditions, get_only)| {
                    let mut r = route(None, "/api/", get_only.then_some(&["GET"][..]));
                    r.headers = conditions
                        .iter()
                        .map(|(n, v)| (HeaderName::from_static(names[*n]), HeaderValue::from_static(values[*v])))
                        .collect();
                    r
                })
                .collect();
            let mut fields = HeaderMap::new();
            for (n, v) in &request {
                fields.append(HeaderName::from_static(names[*n]), HeaderValue::from_static(values[*v]));
            }
            let method = if post { Method::POST } else { Method::GET };
            let scan = routes
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.methods.contains(&method)
                        && r.headers.iter().all(|(n, v)| fields.get_all(n).iter().any(|f| f == v))
                })
                .min_by_key(|(i, r)| (r.headers.is_empty(), *i))
                .map(|(i, _)| RouteId(i));
            let router = Router::new(&routes);
            proptest::prop_assert_eq!(router.find(None, "/api/x", &method, &fields), scan);
        }
    }
}
