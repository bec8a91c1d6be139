//! Tenant tiers and budgets, decided locally (Redis tests: ratelimit_redis.rs).

mod common;
use common::*;
use std::thread;
use std::time::Instant;

const ACME: &str = "acme-key"; // tier tiny: 5 per second
const BIGCO: &str = "bigco-key"; // tier hourly: 100/s but 10 per hour
const FREECO: &str = "freeco-key"; // tier free: 60/min, 1000/h

fn config(upstream: &TestUpstream) -> String {
    format!(
        "tiers:
  tiny: {{ per_second: 5 }}
  hourly: {{ per_second: 100, per_hour: 10 }}
  free: {{ per_minute: 60, per_hour: 1000 }}
tenants:
  acme: {{ tier: tiny, api_keys: [\"sha256:afacab3575137afa4e00d9cbcafcb14c9ae25f779d964eb0ea5b2c4eb5dfd163\"] }}
  bigco: {{ tier: hourly, api_keys: [\"sha256:4af43ec152b50d5d08bdffd2883cb31743b36f6f1c63744040f84dbd73bd20a9\"] }}
  freeco: {{ tier: free, api_keys: [\"sha256:fc1a5b760cbe6b2b7df802bc4221227adbbbe0b79bcf7067c229ce41bd33caf9\"] }}
anonymous: {{ tier: tiny }}
upstreams:
  api: {{ backends: [\"{}\"] }}
routes:
  - {{ name: health, upstream: api, match: {{ path_prefix: /health }}, rate_limit: {{ exempt: true }} }}
  - {{ name: search, upstream: api, match: {{ path_prefix: /search }}, rate_limit: {{ cost: 5 }} }}
  - {{ name: reports, upstream: api, match: {{ path_prefix: /reports }}, rate_limit: {{ per_hour: 2 }} }}
  - {{ name: api, upstream: api }}
",
        upstream.addr
    )
}

fn setup() -> (TollgateProcess, TestUpstream) {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&config(&up));
    (proxy, up)
}

fn call(proxy: &TollgateProcess, path: &str, key: Option<&str>) -> Response {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request(proxy.addr, "GET", path, &headers, b"").expect("request")
}

/// Sends until the first 429; returns (allowed count, the 429, seconds it took).
fn until_limited(
    proxy: &TollgateProcess,
    path: &str,
    key: Option<&str>,
    max: usize,
) -> (usize, Response, f64) {
    let started = Instant::now();
    for allowed in 0..max {
        let r = call(proxy, path, key);
        if r.status == 429 {
            return (allowed, r, started.elapsed().as_secs_f64());
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    panic!("no 429 after {max} requests");
}

#[test]
fn a_free_tier_key_gets_its_minute_budget_then_429_with_headers() {
    let (proxy, up) = setup();
    let first = call(&proxy, "/x", Some(FREECO));
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"minute\";q=60;w=60, \"hour\";q=1000;w=3600")
    );
    assert_eq!(first.header("ratelimit"), Some("\"minute\";r=59;t=1"));
    assert_eq!(first.header("x-ratelimit-limit"), Some("60"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("59"));
    let (allowed, limited, secs) = until_limited(&proxy, "/x", Some(FREECO), 200);
    // 60 per minute refills one request per second while the loop runs.
    let total = allowed + 1;
    assert!(
        (60..=60 + secs.ceil() as usize).contains(&total),
        "{total} allowed in {secs:.2}s"
    );
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        limited.json(),
        serde_json::json!({
            "error": "rate_limited",
            "message": "Rate limit exceeded for tier free: 60 requests per minute",
            "tier": "free",
            "retry_after": 1
        })
    );
    assert_eq!(up.count(), total, "a refused request reached the upstream");
    proxy.wait_metric(
        r#"tollgate_ratelimit_decisions_total{decision="limited",tier="free"}"#,
        1.0,
    );
}

#[test]
fn budgets_refill() {
    let (proxy, _up) = setup();
    until_limited(&proxy, "/x", Some(ACME), 100);
    wait_until("the per-second budget refills", || {
        call(&proxy, "/x", Some(ACME)).status == 200
    });
}

#[test]
fn the_hour_budget_binds_when_the_second_budget_does_not() {
    let (proxy, _up) = setup();
    let (allowed, limited, _) = until_limited(&proxy, "/x", Some(BIGCO), 50);
    assert_eq!(allowed, 10);
    assert!(limited
        .header("ratelimit")
        .is_some_and(|v| v.starts_with("\"hour\";r=0;")));
    let retry: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!(retry > 60, "retry after {retry}s");
}

#[test]
fn unknown_and_malformed_keys_are_401_never_a_downgrade() {
    let (proxy, up) = setup();
    let unknown = call(&proxy, "/x", Some("nope"));
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.json()["error"], "invalid_api_key");
    let basic = request(
        proxy.addr,
        "GET",
        "/x",
        &[("Authorization", "Basic dXNlcjpwdw==")],
        b"",
    )
    .expect("req");
    assert_eq!(basic.status, 401);
    let header_key = request(proxy.addr, "GET", "/x", &[("X-API-Key", ACME)], b"").expect("req");
    assert_eq!(header_key.status, 200, "X-API-Key is read too");
    assert_eq!(up.count(), 1);
}

#[test]
fn anonymous_requests_are_limited_per_ip_apart_from_tenants() {
    let (proxy, _up) = setup();
    let (allowed, limited, _) = until_limited(&proxy, "/x", None, 100);
    assert!(allowed >= 5);
    assert_eq!(limited.json()["tier"], "tiny");
    assert_eq!(
        call(&proxy, "/x", Some(BIGCO)).status,
        200,
        "a tenant has its own bucket"
    );
}

#[test]
fn exempt_routes_are_never_limited_and_need_no_key() {
    let (proxy, _up) = setup();
    until_limited(&proxy, "/x", None, 100);
    for _ in 0..20 {
        let r = call(&proxy, "/health", None);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit"), None);
    }
}

#[test]
fn a_route_cost_takes_several_tokens() {
    let (proxy, _up) = setup();
    // tiny allows 5 at once; one search costs 5.
    assert_eq!(call(&proxy, "/search", Some(ACME)).status, 200);
    assert_eq!(call(&proxy, "/x", Some(ACME)).status, 429);
}

#[test]
fn a_route_budget_binds_on_its_own_route_only() {
    let (proxy, _up) = setup();
    assert_eq!(call(&proxy, "/reports/1", Some(FREECO)).status, 200);
    assert_eq!(call(&proxy, "/reports/2", Some(FREECO)).status, 200);
    let limited = call(&proxy, "/reports/3", Some(FREECO));
    assert_eq!(limited.status, 429);
    assert!(
        limited
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"route-hour\";r=0")),
        "{:?}",
        limited.header("ratelimit")
    );
    assert_eq!(call(&proxy, "/x", Some(FREECO)).status, 200);
}

#[test]
fn parallel_clients_of_one_tenant_never_exceed_the_budget() {
    let (proxy, up) = setup();
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let addr = proxy.addr;
            thread::spawn(move || {
                (0..5)
                    .map(|_| {
                        request(
                            addr,
                            "GET",
                            "/x",
                            &[("Authorization", &format!("Bearer {BIGCO}"))],
                            b"",
                        )
                        .expect("request")
                        .status
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 40);
    assert_eq!(up.count(), 10);
}

#[test]
fn hash_key_prints_the_config_form() {
    let (ok, out, _) = run_cli(&["hash-key", ACME]);
    assert!(ok);
    assert_eq!(
        out.trim(),
        "sha256:afacab3575137afa4e00d9cbcafcb14c9ae25f779d964eb0ea5b2c4eb5dfd163"
    );
}

fn cached_config(upstream: &TestUpstream, count_cached: bool) -> String {
    format!(
        "tiers:
  hourly: {{ per_hour: 2 }}
tenants:
  bigco: {{ tier: hourly, api_keys: [\"sha256:4af43ec152b50d5d08bdffd2883cb31743b36f6f1c63744040f84dbd73bd20a9\"] }}
anonymous: {{ reject: true }}
rate_limit: {{ count_cached_responses: {count_cached} }}
upstreams:
  api: {{ backends: [\"{}\"] }}
routes:
  - {{ name: api, upstream: api, cache: {{ default_ttl: 60s }} }}
",
        upstream.addr
    )
}

/// `public`: requests carry an API key, whose answers are stored only when
/// the upstream says they are for everyone (RFC 9111 §3.5).
fn cacheable_upstream() -> TestUpstream {
    TestUpstream::start(|_| {
        Action::Reply(Reply {
            status: 200,
            headers: vec![("Cache-Control".into(), "public, max-age=60".into())],
            body: b"cached".to_vec(),
        })
    })
}

#[test]
fn cached_responses_count_against_budgets_by_default() {
    let up = cacheable_upstream();
    let proxy = TollgateProcess::start(&cached_config(&up, true));
    let statuses: Vec<u16> = (0..4)
        .map(|_| {
            request(proxy.addr, "GET", "/x", &[("X-API-Key", BIGCO)], b"")
                .expect("req")
                .status
        })
        .collect();
    assert_eq!(statuses, vec![200, 200, 429, 429]);
    assert_eq!(up.count(), 1, "the second request was a cache hit");
}

#[test]
fn cached_responses_can_be_left_out_of_budgets() {
    let up = cacheable_upstream();
    let proxy = TollgateProcess::start(&cached_config(&up, false));
    for _ in 0..5 {
        let r = request(proxy.addr, "GET", "/x", &[("X-API-Key", BIGCO)], b"").expect("req");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.count(), 1);
    // Requests that reach the upstream still count: two misses, then 429.
    for (path, want) in [("/y", 200), ("/z", 429)] {
        let r = request(proxy.addr, "GET", path, &[("X-API-Key", BIGCO)], b"").expect("req");
        assert_eq!(r.status, want, "{path}");
    }
}
