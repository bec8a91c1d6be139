//! Property tests for the parsers that see client bytes (and the config's
//! units): each property is what an attacker would need to break, checked
//! on generated inputs built from the characters that matter. A modest
//! case count keeps them in the README's test command.

use proptest::prelude::*;
use std::borrow::Cow;
use tollgate::cache::key::{self, Scope};
use tollgate::config::model::RouteCache;
use tollgate::host::{Host, HostPattern};
use tollgate::hygiene::normalise_path;
use tollgate::router::{MethodSet, RouteMatch, Router};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
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
            let found = router.find(Some(&host), "/x", &http::Method::GET);
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
            let id = router.find(Some(&host), &path, &http::Method::GET)?;
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
