//! Per-request costs of the hot-path pieces, in isolation, with criterion:
//! route match, least-connections pick, cache key and cacheability
//! decision, rate-limit identification and local decision.
//!
//! `cargo bench --bench hot_path` measures; `cargo test --benches` (part of
//! `scripts/test`) runs each once so they keep compiling and working.
//! Latest numbers: docs/book/src/benchmarks-history.md.

use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;
use tollgate::config::model::{BackendConfig, PassiveHealth, RouteCache, UpstreamConfig};
use tollgate::metrics::Metrics;
use tollgate::ratelimit::gcra::Window;
use tollgate::ratelimit::local::{Check, LocalBuckets};
use tollgate::ratelimit::RateLimiter;
use tollgate::router::{Host, HostPattern, MethodSet, RouteMatch, Router};
use tollgate::upstream::{UpstreamMemory, UpstreamPool};

/// 200 routes over 10 hosts plus a wildcard catch-all.
fn router() -> Router {
    let mut routes = Vec::new();
    for h in 0..10 {
        for p in 0..20 {
            routes.push(RouteMatch {
                host: Some(HostPattern::Exact(format!("api{h}.example.com"))),
                path_prefix: format!("/v1/resource{p}/"),
                case_insensitive: false,
                headers: Vec::new(),
                methods: MethodSet::ANY,
            });
        }
    }
    routes.push(RouteMatch {
        host: HostPattern::parse("*.example.com").ok(),
        path_prefix: "/".into(),
        case_insensitive: false,
        headers: Vec::new(),
        methods: MethodSet::ANY,
    });
    Router::new(&routes)
}

fn route_match(c: &mut Criterion) {
    let router = router();
    let mut g = c.benchmark_group("route_match");
    // Host normalisation included, as on the request path.
    let cases = [
        (
            "exact host, prefix hit (201 routes)",
            &b"API7.example.com:8080"[..],
            "/v1/resource17/items/42",
        ),
        (
            "falls through to wildcard (201 routes)",
            &b"api7.example.com"[..],
            "/other",
        ),
    ];
    for (name, host, path) in cases {
        g.bench_function(name, |b| {
            b.iter(|| {
                router.find(
                    Host::parse(black_box(host)).as_ref(),
                    black_box(path),
                    &Method::GET,
                    &http::HeaderMap::new(),
                )
            })
        });
    }
    g.finish();
}

/// Routes that share a prefix and differ by a header condition (one per
/// customer, `X-Customer: c<i>`), from 10 to 100,000: matching the last
/// one must cost the same at every size (the conditions are indexed, not
/// scanned). The ratio of the 100,000 to the 10 case is the check.
fn header_route_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("header_route_match");
    for n in [10usize, 1_000, 100_000] {
        let mut routes: Vec<RouteMatch> = (0..n)
            .map(|i| RouteMatch {
                host: None,
                path_prefix: "/api/".into(),
                case_insensitive: false,
                methods: MethodSet::ANY,
                headers: vec![(
                    http::HeaderName::from_static("x-customer"),
                    http::HeaderValue::from_str(&format!("c{i}")).expect("value"),
                )],
            })
            .collect();
        routes.push(RouteMatch {
            host: None,
            path_prefix: "/api/".into(),
            case_insensitive: false,
            methods: MethodSet::ANY,
            headers: Vec::new(),
        });
        let router = Router::new(&routes);
        let mut fields = http::HeaderMap::new();
        fields.insert(
            "x-customer",
            http::HeaderValue::from_str(&format!("c{}", n - 1)).expect("value"),
        );
        let plain = http::HeaderMap::new();
        g.bench_function(format!("last of {n} header routes"), |b| {
            b.iter(|| {
                router.find(
                    None,
                    black_box("/api/orders"),
                    &Method::GET,
                    black_box(&fields),
                )
            })
        });
        g.bench_function(format!("fallback past {n} header routes"), |b| {
            b.iter(|| {
                router.find(
                    None,
                    black_box("/api/orders"),
                    &Method::GET,
                    black_box(&plain),
                )
            })
        });
    }
    g.finish();
}

/// Building the table for 100,000 routes (50,000 host routes, 50,000
/// prefixes), as a reload of such a file does.
fn route_table_build(c: &mut Criterion) {
    let mut routes = Vec::with_capacity(100_000);
    for i in 0..50_000 {
        routes.push(RouteMatch {
            host: Some(HostPattern::Exact(format!("h{i}.example.com"))),
            path_prefix: "/".into(),
            case_insensitive: false,
            headers: Vec::new(),
            methods: MethodSet::ANY,
        });
        routes.push(RouteMatch {
            host: None,
            path_prefix: format!("/svc-{i}/"),
            case_insensitive: false,
            headers: Vec::new(),
            methods: MethodSet::ANY,
        });
    }
    let mut g = c.benchmark_group("route_table");
    g.sample_size(10);
    g.bench_function("build (100,000 routes)", |b| {
        b.iter(|| Router::new(black_box(&routes)))
    });
    g.finish();
}

fn least_connections(c: &mut Criterion) {
    let metrics = Metrics::new().expect("metrics");
    let pool = UpstreamPool::new(
        &UpstreamConfig {
            name: "api".into(),
            backends: (0..8)
                .map(|i| BackendConfig {
                    addr: SocketAddr::from(([10, 0, 0, i], 8000)),
                    weight: 1 + usize::from(i % 3),
                })
                .collect(),
            names: Vec::new(),
            tls: None,
            host_header: None,
            health_check: None,
            passive: PassiveHealth {
                max_fails: 3,
                fail_timeout: Duration::from_secs(30),
                fail_on_5xx: false,
            },
            retries: 1,
            retry_on_5xx: false,
            protocol: tollgate::config::model::UpstreamProtocol::Http1,
            max_streams: 100,
        },
        &metrics,
        &UpstreamMemory::default(),
    )
    .expect("pool");
    c.bench_function(
        "least_connections/pick + lease (8 weighted backends)",
        |b| {
            b.iter(|| {
                let slot = pool.select(None).expect("backend");
                black_box(slot.lease())
            })
        },
    );
}

fn cache_policy() -> RouteCache {
    RouteCache {
        exclude_query: vec!["utm_source".into()],
        ..RouteCache::default()
    }
}

fn cache_decisions(c: &mut Criterion) {
    let policy = cache_policy();
    let mut req = RequestHeader::build("GET", b"/v1/products?page=2&utm_source=x&sort=price", None)
        .expect("request");
    req.insert_header("host", "api.example.com").expect("host");
    let mut resp = ResponseHeader::build(200, None).expect("response");
    resp.insert_header("content-type", "application/json")
        .expect("content-type");
    resp.insert_header(
        "cache-control",
        "public, max-age=300, stale-while-revalidate=30",
    )
    .expect("cache-control");
    resp.insert_header("etag", "\"abc123\"").expect("etag");
    resp.insert_header("content-length", "1024")
        .expect("content-length");

    let mut g = c.benchmark_group("cache");
    g.bench_function("key (sorted, filtered query)", |b| {
        b.iter(|| {
            let host = Host::parse(black_box(b"api.example.com"));
            let scope = tollgate::cache::key::Scope {
                scheme: "https",
                route: "api",
                upstream: "api",
            };
            tollgate::cache::key::cache_key(black_box(&req), host.as_ref(), scope, &policy)
        })
    });
    g.bench_function("cacheability decision (max-age + swr)", |b| {
        b.iter(|| {
            tollgate::cache::policy::response_cacheable(
                black_box(&req),
                black_box(&resp),
                &policy,
                tollgate::cache::policy::Exchange::default(),
            )
        })
    });
    g.finish();
}

const RATE_CONFIG: &str = r#"
listen: ["127.0.0.1:1"]
admin: { listen: "127.0.0.1:2" }
upstreams:
  api: { backends: ["127.0.0.1:3"] }
routes:
  - { name: api, match: { path_prefix: / }, upstream: api }
tiers:
  pro: { per_minute: 1000000, per_hour: 50000000 }
tenants:
  acme:
    tier: pro
    # sha256 of "bench-key"
    api_keys: ["sha256:b0962662e937d44c699c8305d90cbf190b3150c59b13863d1380b5cc3c711bb7"]
anonymous: { tier: pro }
"#;

fn rate_limiting(c: &mut Criterion) {
    let windows = [
        Window::new(1_000_000, 60, 1_000_000),
        Window::new(50_000_000, 3600, 50_000_000),
    ];
    let keys: Vec<String> = (0..1000).map(|i| format!("t:tenant-{i}")).collect();
    let local = LocalBuckets::new();
    let mut g = c.benchmark_group("ratelimit");
    let mut i = 0usize;
    g.bench_function("local decision (1000 tenants, minute + hour)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            local.decide(&[Check {
                key: &keys[i],
                windows: &windows,
                cost: 1,
            }])
        })
    });

    let config = tollgate::config::parse(RATE_CONFIG, "bench.yaml").expect("bench config");
    let limiter = RateLimiter::new(
        config.rate_limit.as_ref().expect("rate limiting"),
        &Default::default(),
    );
    let mut keyed = RequestHeader::build("GET", b"/v1/products", None).expect("request");
    keyed
        .insert_header("authorization", "Bearer bench-key")
        .expect("authorization");
    let peer = Some(std::net::IpAddr::from([192, 0, 2, 7]));
    // Measure the path of a known key, not of a refusal.
    assert!(matches!(
        limiter.identify(&keyed, peer, None),
        Ok(tollgate::ratelimit::identity::Identity::Tenant(_))
    ));
    g.bench_function("identify API key (SHA-256 + lookup)", |b| {
        b.iter(|| limiter.identify(black_box(&keyed), peer, None))
    });
    let anonymous = RequestHeader::build("GET", b"/v1/products", None).expect("request");
    g.bench_function("identify anonymous (client IP)", |b| {
        b.iter(|| limiter.identify(black_box(&anonymous), peer, None))
    });
    g.finish();
}

criterion_group!(
    hot_path,
    route_match,
    header_route_match,
    route_table_build,
    least_connections,
    cache_decisions,
    rate_limiting
);
criterion_main!(hot_path);
