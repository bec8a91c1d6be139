//! Property tests for the parsers that see client bytes (and the config's
//! units): each property is what an attacker would need to break, checked
//! on generated inputs built from the characters that matter. A modest
//! case count keeps them in the README's test command.

use proptest::prelude::*;
use std::borrow::Cow;
use tollgate::cache::key::{self, Scope};
use tollgate::config::model::RouteCache;
use tollgate::router::{MethodSet, RouteMatch, Router};
use tollgate::values::host::{Host, HostPattern};
use tollgate::values::hygiene::normalise_path;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Host-ish strings: the characters and shapes a normaliser can get wrong.
fn raw_host() -> impl Strategy<Value = String> {
    let label = prop::sample::select(vec![
        "api",
        "API",
        "Api",
        "example",
        "com",
        "xn--bcher-kva",
        "a-b",
        "a_b",
        "",
        "ä",
        "a b",
        "a%2e",
        "1",
        "255",
        "[::1]",
        "[FE80::1]",
        "*",
    ]);
    let suffix = prop::sample::select(vec![
        "", ".", "..", ":", ":80", ":8080", ".:443", ":99999", ":abc", "/x", "@evil", "\t",
    ]);
    (prop::collection::vec(label, 1..4), suffix)
        .prop_map(|(labels, suffix)| format!("{}{suffix}", labels.join(".")))
}

/// Paths built from segments a backend may read differently from a router.
fn raw_path() -> impl Strategy<Value = String> {
    let segment = prop::sample::select(vec![
        "public", "admin", "a", "", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "..;", ".;",
        "..;x=1", "x;y=2", "%2f", "%2F", "%5c", "..%2f", "..%5C", "%61dmin", "%41", "%7e", "~",
        "%00", "%zz", "%", "%3b", "..%3B", "\\..", "b%2fc",
    ]);
    prop::collection::vec(segment, 1..6).prop_map(|segs| format!("/{}", segs.join("/")))
}

/// How a lenient backend reads a path: every escape decoded, `\` and `;`
/// parameters as Tomcat reads them, then dot segments resolved (RFC 3986
/// §5.2.4). If this view leaves a prefix, a path routed by the prefix
/// reaches something else.
fn backend_view(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                decoded.push(b);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for segment in text.split('/').skip(1) {
        match segment.split(';').next().unwrap_or(segment) {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn policy() -> RouteCache {
    RouteCache::default()
}

fn route(host: Option<&str>, prefix: &str) -> RouteMatch {
    RouteMatch {
        host: host.map(|h| HostPattern::parse(h).expect("pattern")),
        path_prefix: prefix.to_owned(),
        case_insensitive: false,
        headers: Vec::new(),
        methods: MethodSet::ANY,
    }
}

const ROUTE_NAMES: [&str; 4] = ["exact", "exact-admin", "wildcard", "catch-all"];

fn routes() -> Router {
    Router::new(&[
        route(Some("api.example.com"), "/"),
        route(Some("api.example.com"), "/admin/"),
        route(Some("*.example.com"), "/"),
        route(None, "/"),
    ])
}

/// Pairs of queries built from the pieces upstreams read differently
/// (`;` as a separator or not, names spelled with escapes, `+` and case,
/// repeated names, the parameter the route excludes): the second is the
/// first's parameters reordered, with an excluded one maybe added, so the
/// pairs often share a key and the property has something to check.
fn query_pair() -> impl Strategy<Value = (String, String)> {
    let name = prop::sample::select(vec![
        "a",
        "A",
        "%61",
        "b",
        "a+b",
        "a%20b",
        "utm_source",
        "UTM_SOURCE",
        "utm%5Fsource",
    ]);
    let value = prop::sample::select(vec!["", "=", "=1", "=2", "=x;a=3", "=%3B"]);
    let sep = prop::sample::select(vec!["&", ";"]);
    let part = (name, value, sep).prop_map(|(n, v, sep)| (format!("{n}{v}"), sep));
    prop::collection::vec(part, 1..6)
        .prop_flat_map(|parts| {
            let extra = prop::sample::select(vec!["", "utm_source=z", "utm_source=z;a=9"]);
            (Just(parts.clone()), Just(parts).prop_shuffle(), extra)
        })
        .prop_map(|(parts, shuffled, extra)| {
            let join = |parts: &[(String, &str)]| {
                let mut q = String::new();
                for (i, (p, sep)) in parts.iter().enumerate() {
                    if i > 0 {
                        q.push_str(sep);
                    }
                    q.push_str(p);
                }
                q
            };
            let mut b = join(&shuffled);
            if !extra.is_empty() {
                b = format!("{extra}&{b}");
            }
            (join(&parts), b)
        })
}

/// How an upstream reads a query: which separators split it, whether names
/// are percent-decoded and compared without case. The result is each
/// name's values in order (what a framework hands the application), minus
/// the parameter the route's `exclude_query` says the answer ignores.
fn upstream_reading(
    query: &str,
    semicolon: bool,
    decode: bool,
    fold: bool,
) -> Vec<(String, Vec<String>)> {
    let decode_name = |raw: &str| -> String {
        let mut name = if decode {
            let spaced = raw.replace('+', " ");
            percent_decode(&spaced)
        } else {
            raw.to_owned()
        };
        if fold {
            name = name.to_ascii_lowercase();
        }
        name
    };
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    let params = query.split(|c| c == '&' || (semicolon && c == ';'));
    for param in params.filter(|p| !p.is_empty()) {
        let (raw_name, value) = param.split_once('=').unwrap_or((param, ""));
        let name = decode_name(raw_name);
        if name == "utm_source" {
            continue;
        }
        match grouped.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value.to_owned()),
            None => grouped.push((name, vec![value.to_owned()])),
        }
    }
    grouped.sort();
    grouped
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn host_normalisation_is_idempotent_and_the_router_and_key_agree(raw in raw_host()) {
        let Some(host) = Host::parse_str(&raw) else {
            return Ok(()); // refused: the request gets a 400 and is never keyed
        };
        let again = Host::parse_str(host.as_str());
        prop_assert_eq!(again.as_ref().map(Host::as_str), Some(host.as_str()));
        // A route for exactly this host catches every spelling of it.
        if !host.as_str().starts_with('[') {
            let router = Router::new(&[route(Some(host.as_str()), "/"), route(None, "/")]);
            let found = router.find(Some(&host), "/x", &http::Method::GET, &http::HeaderMap::new());
            prop_assert_eq!(found.map(|r| r.0), Some(0));
        }
        // The key holds the very host the router matched.
        let req = pingora::http::RequestHeader::build("GET", b"/x", None).expect("req");
        let scope = Scope { scheme: "http", route: "r", upstream: "u" };
        let primary = key::primary(&req, Some(&host), scope, &policy());
        prop_assert_eq!(key::uri_part(&primary), format!("{}/x", host.as_str()));
    }

    #[test]
    fn path_normalisation_is_idempotent_and_never_leaves_the_matched_prefix(raw in raw_path()) {
        let Ok(normal) = normalise_path(&raw) else {
            return Ok(()); // refused with 400
        };
        prop_assert!(normal.starts_with('/'));
        let again = normalise_path(&normal);
        prop_assert!(matches!(again, Ok(Cow::Borrowed(p)) if p == normal.as_ref()), "{:?}", again);
        for prefix in ["/public/", "/a/"] {
            if normal.starts_with(prefix) {
                let seen = backend_view(&normal);
                prop_assert!(seen.starts_with(prefix) || seen == prefix.trim_end_matches('/'),
                    "{raw:?} → {normal:?} routed under {prefix}, a backend reads {seen:?}");
            }
        }
    }

    #[test]
    fn requests_routed_differently_never_share_a_cache_key(
        a in (raw_host(), raw_path()),
        b in (raw_host(), raw_path()),
    ) {
        let router = routes();
        let keyed = |(host, path): &(String, String)| {
            let host = Host::parse_str(host)?;
            let path = normalise_path(path).ok()?.into_owned();
            let id = router.find(Some(&host), &path, &http::Method::GET, &http::HeaderMap::new())?;
            let req = pingora::http::RequestHeader::build("GET", path.as_bytes(), None).ok()?;
            let scope = Scope { scheme: "https", route: ROUTE_NAMES[id.0], upstream: "up" };
            Some((id, key::primary(&req, Some(&host), scope, &policy())))
        };
        if let (Some((route_a, key_a)), Some((route_b, key_b))) = (keyed(&a), keyed(&b)) {
            if route_a != route_b {
                prop_assert_ne!(key_a, key_b);
            }
        }
    }

    /// Issue 24: a parameter must not hide behind an excluded one, and
    /// sorting must not merge orders an upstream reads differently: two
    /// queries that share a key are read alike by every upstream model.
    #[test]
    fn queries_an_upstream_reads_differently_never_share_a_key(
        (a, b) in query_pair(),
        sort in any::<bool>(),
    ) {
        let mut policy = policy();
        policy.exclude_query = vec!["utm_source".into()];
        policy.sort_query = sort;
        let keyed = |q: &str| {
            let target = format!("/s?{q}");
            let req = pingora::http::RequestHeader::build("GET", target.as_bytes(), None).ok()?;
            let host = Host::parse_str("h");
            let scope = Scope { scheme: "https", route: "r", upstream: "up" };
            Some(key::primary(&req, host.as_ref(), scope, &policy))
        };
        if let (Some(ka), Some(kb)) = (keyed(&a), keyed(&b)) {
            if ka == kb {
                for semicolon in [false, true] {
                    for decode in [false, true] {
                        for fold in [false, true] {
                            prop_assert_eq!(
                                upstream_reading(&a, semicolon, decode, fold),
                                upstream_reading(&b, semicolon, decode, fold),
                                "{:?} and {:?} share {:?} (semicolon {}, decode {}, fold {})",
                                a, b, ka, semicolon, decode, fold
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn accept_encoding_yields_only_what_we_produce_once_each(
        items in prop::collection::vec(
            (prop::sample::select(vec!["gzip", "GZIP", "x-gzip", "br", "zstd", "identity", "*", "deflate", ""]),
             prop::sample::select(vec!["", ";q=0", ";q=0.5", ";q=1", ";q=nan", ";q=-1", ";q=abc", ";q=0.001"])),
            0..6),
        brotli in any::<bool>(),
    ) {
        let header: Vec<String> = items.iter().map(|(t, q)| format!("{t}{q}")).collect();
        let list = tollgate::compression::preferred_encodings(&header.join(", "), brotli);
        let codings: Vec<&str> = list.split(", ").filter(|s| !s.is_empty()).collect();
        let mut seen = std::collections::HashSet::new();
        for c in &codings {
            prop_assert!(["gzip", "zstd", "br"].contains(c), "{c} from {header:?}");
            prop_assert!(brotli || *c != "br");
            prop_assert!(seen.insert(*c), "{c} twice from {header:?}");
        }
    }

    #[test]
    fn durations_and_sizes_parse_what_they_print_and_never_panic(
        n in 0u32..1_000_000,
        unit in prop::sample::select(vec![("ms", 1u64), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]),
        size_unit in prop::sample::select(vec![("", 1u64), ("KB", 1000), ("KiB", 1024), ("MiB", 1 << 20), ("GB", 1_000_000_000)]),
        junk in "\\PC{0,12}",
    ) {
        let d = tollgate::config::units::parse_duration(&format!("{n}{}", unit.0));
        prop_assert_eq!(d.map(|d| d.as_millis() as u64), Ok(u64::from(n) * unit.1));
        let s = tollgate::config::units::parse_byte_size(&format!("{n}{}", size_unit.0));
        prop_assert_eq!(s, Ok(u64::from(n) * size_unit.1));
        let _ = tollgate::config::units::parse_duration(&junk);
        let _ = tollgate::config::units::parse_byte_size(&junk);
    }
}
