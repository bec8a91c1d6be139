//! Routing by host, path prefix and method; request ids; forwarding headers.

mod common;
use common::*;

fn tagged(tag: &'static str) -> TestUpstream {
    TestUpstream::fixed(tag)
}

struct Setup {
    proxy: TollgateProcess,
    api: TestUpstream,
    v2_reads: TestUpstream,
    tenant: TestUpstream,
    exact: TestUpstream,
}

fn setup() -> Setup {
    let (api, v2_reads, tenant, exact) = (
        tagged("api"),
        tagged("v2-reads"),
        tagged("tenant"),
        tagged("exact"),
    );
    let proxy = TollgateProcess::start(&format!(
        "upstreams:
  api: {{ backends: [\"{}\"] }}
  v2_reads: {{ backends: [\"{}\"] }}
  tenant: {{ backends: [\"{}\"] }}
  exact: {{ backends: [\"{}\"] }}
routes:
  - name: api
    match: {{ path_prefix: /api/ }}
    upstream: api
  - name: v2-reads
    match: {{ path_prefix: /api/v2/, methods: [GET, HEAD] }}
    upstream: v2_reads
  - name: tenant
    match: {{ host: \"*.tenants.test\", path_prefix: / }}
    upstream: tenant
  - name: exact
    match: {{ host: \"api.tenants.test\", path_prefix: /special/ }}
    upstream: exact
",
        api.addr, v2_reads.addr, tenant.addr, exact.addr
    ));
    Setup {
        proxy,
        api,
        v2_reads,
        tenant,
        exact,
    }
}

fn body_for(proxy: &TollgateProcess, method: &str, path: &str, host: &str) -> (u16, String) {
    let r = request(proxy.addr, method, path, &[("Host", host)], b"").expect("request");
    (r.status, r.text())
}

#[test]
fn longest_prefix_and_method_choose_the_route() {
    let s = setup();
    assert_eq!(
        body_for(&s.proxy, "GET", "/api/users", "x.test"),
        (200, "api".into())
    );
    assert_eq!(
        body_for(&s.proxy, "GET", "/api/v2/users", "x.test"),
        (200, "v2-reads".into())
    );
    // POST is not in the v2 route's methods: the shorter /api/ prefix takes it.
    assert_eq!(
        body_for(&s.proxy, "POST", "/api/v2/users", "x.test"),
        (200, "api".into())
    );
    assert_eq!(s.v2_reads.count(), 1);
    assert_eq!(s.api.count(), 2);
}

#[test]
fn hosts_route_exact_before_wildcard_and_fall_through() {
    let s = setup();
    assert_eq!(
        body_for(&s.proxy, "GET", "/special/x", "API.tenants.test:8080"),
        (200, "exact".into())
    );
    assert_eq!(
        body_for(&s.proxy, "GET", "/other", "api.tenants.test"),
        (200, "tenant".into())
    );
    assert_eq!(
        body_for(&s.proxy, "GET", "/other", "acme.tenants.test"),
        (200, "tenant".into())
    );
    // A wildcard does not match the bare domain; nothing else matches "/".
    assert_eq!(body_for(&s.proxy, "GET", "/other", "tenants.test").0, 404);
    assert_eq!((s.exact.count(), s.tenant.count()), (1, 2));
}

#[test]
fn no_route_is_a_json_404() {
    let s = setup();
    let r = get(s.proxy.addr, "/nothing-here").expect("request");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "not_found", "message": "No route matches this request"})
    );
    assert!(r.header("x-request-id").is_some_and(|id| id.len() == 32));
}

#[test]
fn dot_segments_are_refused_before_routing() {
    let s = setup();
    let r = get(s.proxy.addr, "/api/..%2fadmin").expect("request");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request");
    assert_eq!(s.api.count(), 0);
}

#[test]
fn request_id_round_trips_and_forwarding_headers_reach_the_upstream() {
    let s = setup();
    let r = request(
        s.proxy.addr,
        "GET",
        "/api/echo",
        &[
            ("X-Request-Id", "client-chosen-42"),
            ("X-Forwarded-For", "203.0.113.7"),
        ],
        b"",
    )
    .expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("client-chosen-42"));
    assert!(r
        .header("x-response-time")
        .is_some_and(|v| v.ends_with("ms")));
    assert_eq!(r.header("via"), Some("1.1 tollgate"));
    let seen = &s.api.recorded()[0];
    assert_eq!(seen.header("x-request-id"), Some("client-chosen-42"));
    // The test client is not a trusted proxy: its claim is replaced.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("via"), Some("1.1 tollgate"));
    assert_eq!(seen.header("host"), Some("test.local"));
}

#[test]
fn generated_request_ids_are_sent_upstream_and_back() {
    let s = setup();
    let r = get(s.proxy.addr, "/api/x").expect("request");
    let id = r.header("x-request-id").expect("id").to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(
        s.api.recorded()[0].header("x-request-id"),
        Some(id.as_str())
    );
}

/// `response_headers` turns tollgate's own `X-Response-Time` and `Via` off
/// (the request id stays: it is how a response is traced).
#[test]
fn response_time_and_via_can_be_turned_off() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&format!(
        "response_headers: {{ response_time: false, via: false }}\n{}",
        one_route(up.addr)
    ));
    let r = get(proxy.addr, "/x").expect("get");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-response-time"), None);
    assert_eq!(r.header("via"), None);
    assert!(r.header("x-request-id").is_some());
}
