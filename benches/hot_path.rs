//! Per-request costs of the hot-path pieces, in isolation:
//! route match, least-connections pick, cache key. Not a test:
//! `cargo bench --bench hot_path`. Numbers: docs/BENCHMARKS.md.

use http::Method;
use pingora::http::RequestHeader;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tollgate::config::model::{BackendConfig, PassiveHealth, RouteCache, UpstreamConfig};
use tollgate::metrics::Metrics;
use tollgate::router::{HostPattern, MethodSet, RouteMatch, Router};
use tollgate::upstream::{UpstreamMemory, UpstreamPool};

fn report(label: &str, n: u32, elapsed: Duration) {
    println!(
        "{label:<48} {:>8.1} ns/op",
        elapsed.as_nanos() as f64 / f64::from(n)
    );
}

fn main() {
    let n = 2_000_000u32;

    // 200 routes over 10 hosts, wildcard and host-less.
    let mut routes = Vec::new();
    for h in 0..10 {
        for p in 0..20 {
            routes.push(RouteMatch {
                host: Some(HostPattern::Exact(format!("api{h}.example.com"))),
                path_prefix: format!("/v1/resource{p}/"),
                methods: MethodSet::ANY,
            });
        }
    }
    routes.push(RouteMatch {
        host: HostPattern::parse("*.example.com").ok(),
        path_prefix: "/".into(),
        methods: MethodSet::ANY,
    });
    let router = Router::new(&routes);
    let started = Instant::now();
    for i in 0..n {
        let path = if i % 2 == 0 {
            "/v1/resource17/items/42"
        } else {
            "/other"
        };
        black_box(router.find(
            Some(b"API7.example.com:8080"),
            black_box(path),
            &Method::GET,
        ));
    }
    report("route match (201 routes, 10 hosts)", n, started.elapsed());

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
            tls: None,
            host_header: None,
            health_check: None,
            passive: PassiveHealth {
                max_fails: 3,
                fail_timeout: Duration::from_secs(30),
                fail_on_5xx: false,
            },
            retries: 1,
        },
        &metrics,
        &UpstreamMemory::default(),
    )
    .expect("pool");
    let started = Instant::now();
    for _ in 0..n {
        let slot = pool.select(None).expect("backend");
        black_box(slot.lease());
    }
    report(
        "least-connections pick + lease (8 backends)",
        n,
        started.elapsed(),
    );

    let policy = RouteCache {
        default_ttl: None,
        max_ttl: None,
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        statuses: vec![200],
        exclude_query: vec!["utm_source".into()],
        ignore_query: false,
        sort_query: true,
        key_headers: Vec::new(),
    };
    let mut req = RequestHeader::build("GET", b"/v1/products?page=2&utm_source=x&sort=price", None)
        .expect("req");
    req.insert_header("host", "api.example.com").expect("host");
    let started = Instant::now();
    let n_key = n / 4;
    for _ in 0..n_key {
        black_box(tollgate::cache::key::cache_key(black_box(&req), &policy));
    }
    report(
        "cache key (sorted, filtered query)",
        n_key,
        started.elapsed(),
    );
}
