//! Forward auth (issue 42): a route asks an auth service — a real HTTP
//! test upstream deciding on the request's fields — before proxying. A
//! 2xx admits (naming the tenant, whose tier then applies, and giving
//! fields for the upstream), a 3xx/4xx goes back to the client as the
//! service wrote it, a failure is a 503 (or fails open where configured),
//! and decisions are remembered per credential for the TTL.

mod common;
use common::upstream::{reply, Action};
use common::*;

/// An auth service: `Bearer alice` is tenant acme (user alice), `Bearer
/// ghost` a tenant tollgate does not know, `Bearer bob` is refused 401
/// with a body, `Bearer big` refused with a body over 64KiB, `Bearer crash` a
/// 500; anyone else is sent to log in (302).
fn auth_service() -> TestUpstream {
    TestUpstream::start(|r| match r.header("authorization") {
        Some("Bearer alice") => reply(
            200,
            &[
                ("X-Auth-Tenant", "acme"),
                ("X-User-Id", "alice"),
                ("X-Other", "no"),
            ],
            "",
        ),
        Some("Bearer ghost") => reply(200, &[("X-Auth-Tenant", "ghost")], ""),
        Some("Bearer bob") => reply(
            401,
            &[
                (
                    "WWW-Authenticate",
                    "Bearer realm=\"api\", error=\"invalid_token\"",
                ),
                ("Content-Type", "application/json"),
            ],
            "{\"error\":\"who are you\"}",
        ),
        Some("Bearer big") => reply(401, &[], &"x".repeat(70_000)),
        Some("Bearer crash") => reply(500, &[], "boom"),
        _ => reply(302, &[("Location", "https://login.test/?next=/orders")], ""),
    })
}

fn config(auth: &TestUpstream, api: &TestUpstream, extra: &str) -> String {
    format!(
        "tiers:
  gold: {{ per_minute: 1000 }}
  free: {{ per_minute: 5 }}
tenants:
  acme: {{ tier: gold, api_keys: [\"sha256:{zero}\"] }}
anonymous: {{ tier: free }}
upstreams:
  auth: {{ backends: [\"{auth}\"] }}
  api: {{ backends: [\"{api}\"] }}
routes:
  - name: orders
    upstream: api
    forward_auth:
      upstream: auth
      path: /check?app=orders
      request_fields: [authorization]
      upstream_fields: [x-user-id]
      tenant_field: x-auth-tenant
{extra}",
        zero = "0".repeat(64),
        auth = auth.addr,
        api = api.addr
    )
}

fn call(proxy: &TollgateProcess, path: &str, bearer: &str, extra: &[(&str, &str)]) -> Response {
    let auth = format!("Bearer {bearer}");
    let mut fields = vec![
        ("Authorization", auth.as_str()),
        ("Cookie", "session=s3cr3t"),
    ];
    fields.extend_from_slice(extra);
    request(proxy.addr, "GET", path, &fields, b"").expect("request")
}

#[test]
fn an_admitting_answer_names_the_tenant_and_gives_fields_for_the_upstream() {
    let auth = auth_service();
    let api = TestUpstream::fixed("orders");
    let proxy = TollgateProcess::start(&config(&auth, &api, ""));
    let r = call(
        &proxy,
        "/orders/7?y=2",
        "alice",
        &[("X-User-Id", "forged"), ("X-Tenant", "forged")],
    );
    assert_eq!((r.status, r.text().as_str()), (200, "orders"));
    let policy = r.header("ratelimit-policy").expect("policy");
    assert!(policy.contains("q=1000"), "acme's gold tier: {policy}");
    let seen = api.recorded().pop().expect("proxied");
    assert_eq!(seen.header("x-tenant"), Some("acme"));
    assert_eq!(
        seen.header("x-user-id"),
        Some("alice"),
        "the client's copy replaced"
    );
    assert_eq!(seen.header("x-other"), None, "only upstream_fields pass");
    // What the auth service was asked.
    let asked = auth.recorded().pop().expect("asked");
    assert_eq!(
        (asked.method.as_str(), asked.path.as_str()),
        ("GET", "/check?app=orders")
    );
    assert_eq!(asked.header("x-forwarded-method"), Some("GET"));
    assert_eq!(asked.header("x-forwarded-uri"), Some("/orders/7?y=2"));
    assert_eq!(asked.header("x-forwarded-proto"), Some("http"));
    assert_eq!(asked.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(asked.header("authorization"), Some("Bearer alice"));
    assert_eq!(asked.header("cookie"), None, "only request_fields are sent");
    assert!(asked.header("x-request-id").is_some());
    assert_eq!(
        proxy.metric("tollgate_forward_auth_decisions_total{decision=\"admitted\",route=\"orders\",source=\"service\"}"),
        Some(1.0)
    );
    assert!(
        proxy.metric("tollgate_forward_auth_duration_seconds_count{route=\"orders\"}") == Some(1.0),
        "{}",
        proxy.metrics()
    );
}

#[test]
fn a_refusal_is_returned_as_the_auth_service_wrote_it() {
    let auth = auth_service();
    let api = TestUpstream::fixed("orders");
    let proxy = TollgateProcess::start(&config(&auth, &api, ""));
    let r = call(&proxy, "/orders", "bob", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), "{\"error\":\"who are you\"}");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"api\", error=\"invalid_token\"")
    );
    assert!(r.header("x-request-id").is_some());
    let r = call(&proxy, "/orders", "nobody", &[]);
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("https://login.test/?next=/orders")
    );
    // An admitted tenant tollgate does not know is refused, not anonymous.
    let r = call(&proxy, "/orders", "ghost", &[]);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(api.count(), 0, "nothing reached the upstream");
    // The refusals spent no budget: the free tier (5 a minute) is whole.
    let r = call(&proxy, "/orders", "nobody", &[]);
    assert_eq!(r.status, 302);
    assert_eq!(
        proxy.metric_sum("tollgate_ratelimit_decisions_total", ""),
        0.0,
        "no budget was asked"
    );
}

#[test]
fn a_failing_auth_service_is_a_503_unless_the_route_fails_open() {
    let auth = auth_service();
    let hung =
        TestUpstream::start(|_| Action::ReplyWhenReleased(common::upstream::Reply::ok("late")));
    let api = TestUpstream::fixed("orders");
    let extra = "  - name: open
    match: { path_prefix: /open }
    upstream: api
    forward_auth: { upstream: hung, timeout: 300ms, fail_open: true, upstream_fields: [x-user-id] }
  - name: slow
    match: { path_prefix: /slow }
    upstream: api
    forward_auth: { upstream: hung, timeout: 300ms }
";
    let body = config(&auth, &api, extra).replace(
        "  api: {",
        &format!("  hung: {{ backends: [\"{}\"] }}\n  api: {{", hung.addr),
    );
    let proxy = TollgateProcess::start(&body);
    // A 500, an oversized refusal, no answer in time: 503 auth_unavailable.
    for bearer in ["crash", "big"] {
        let r = call(&proxy, "/orders", bearer, &[]);
        assert_eq!(r.status, 503, "{bearer}");
        assert_eq!(r.json()["error"], "auth_unavailable");
    }
    let r = call(&proxy, "/slow/x", "alice", &[]);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("auth_unavailable"))
    );
    // Failing open: proxied, without a tenant or the service's fields.
    let r = call(&proxy, "/open/x", "alice", &[("X-User-Id", "forged")]);
    assert_eq!((r.status, r.text().as_str()), (200, "orders"));
    let seen = api.recorded().pop().expect("proxied");
    assert_eq!(seen.header("x-user-id"), None);
    assert_eq!(
        proxy.metric("tollgate_forward_auth_decisions_total{decision=\"failed\",route=\"orders\",source=\"service\"}"),
        Some(2.0)
    );
    assert_eq!(
        proxy.metric("tollgate_forward_auth_decisions_total{decision=\"failed_open\",route=\"open\",source=\"service\"}"),
        Some(1.0)
    );
    // An auth service that is down altogether.
    auth.stop();
    let r = call(&proxy, "/orders", "alice", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    hung.release();
}

#[test]
fn decisions_are_remembered_per_credential_for_the_ttl() {
    let auth = auth_service();
    let api = TestUpstream::fixed("orders");
    let extra = "      cache_ttl: 60s\n      cache_key: credential\n";
    let proxy = TollgateProcess::start(&config(&auth, &api, extra));
    for path in ["/orders/1", "/orders/2", "/orders/3?x"] {
        let r = call(&proxy, path, "alice", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(
            api.recorded().pop().expect("proxied").header("x-user-id"),
            Some("alice")
        );
    }
    assert_eq!(auth.count(), 1, "one question for alice's credential");
    for _ in 0..3 {
        assert_eq!(call(&proxy, "/orders", "bob", &[]).status, 401);
    }
    assert_eq!(
        auth.count(),
        2,
        "and one for bob's, refusals remembered too"
    );
    // Failures are not remembered.
    assert_eq!(call(&proxy, "/orders", "crash", &[]).status, 503);
    assert_eq!(call(&proxy, "/orders", "crash", &[]).status, 503);
    assert_eq!(auth.count(), 4);
    assert_eq!(
        proxy.metric("tollgate_forward_auth_decisions_total{decision=\"admitted\",route=\"orders\",source=\"cache\"}"),
        Some(2.0)
    );

    // Per request (the default): another URI asks again.
    let auth = auth_service();
    let proxy = TollgateProcess::start(&config(&auth, &api, "      cache_ttl: 60s\n"));
    for path in ["/orders/1", "/orders/1", "/orders/2"] {
        assert_eq!(call(&proxy, path, "alice", &[]).status, 200);
    }
    assert_eq!(auth.count(), 2);
}

#[test]
fn check_refuses_bad_forward_auth_settings_with_their_line() {
    let dir = scratch_dir("forward-auth-check");
    let file = dir.join("t.yaml");
    let cases = [
        (
            "{ upstream: nowhere }",
            "routes[0].forward_auth.upstream: unknown upstream \"nowhere\"",
        ),
        (
            "{ upstream: a, path: check }",
            "routes[0].forward_auth.path: \"check\" is not a path",
        ),
        (
            "{ upstream: a, request_fields: [host] }",
            "routes[0].forward_auth.request_fields[0]: \"host\"",
        ),
        (
            "{ upstream: a, upstream_fields: [x-forwarded-for] }",
            "routes[0].forward_auth.upstream_fields[0]",
        ),
        ("{ upstream: a, upstream_fields: [x-tenant] }", "identity"),
        (
            "{ upstream: a, tenant_field: x-t }",
            "no tenants are configured",
        ),
        (
            "{ upstream: a, timeout: 0s }",
            "routes[0].forward_auth.timeout",
        ),
        (
            "{ upstream: a, max_answer_size: 2MiB }",
            "routes[0].forward_auth.max_answer_size",
        ),
        (
            "{ upstream: a, request_fields: [], cache_ttl: 10s }",
            "routes[0].forward_auth.cache_ttl: decisions are remembered per credential",
        ),
    ];
    for (block, says) in cases {
        let body = format!(
            "listen: [\"127.0.0.1:1\"]\nupstreams: {{ a: {{ backends: [\"127.0.0.1:2\"] }} }}\nroutes:\n  - {{ name: r, upstream: a, forward_auth: {block} }}\n"
        );
        std::fs::write(&file, &body).expect("write");
        let (ok, _, err) = run_cli(&["check", &file.display().to_string()]);
        assert!(!ok, "accepted:\n{body}");
        assert!(err.contains("t.yaml:4:"), "no line in:\n{err}");
        assert!(err.contains(says), "wanted {says:?} in:\n{err}");
    }
}

#[test]
fn the_question_is_a_span_of_the_request_trace() {
    let receiver = common::otlp::OtlpReceiver::start();
    let auth = auth_service();
    let api = TestUpstream::fixed("orders");
    let tracing = receiver.config("sample_ratio: 1.0, accept_parent: all");
    let proxy = TollgateProcess::start(&format!(
        "{tracing}{}",
        config(&auth, &api, "      cache_ttl: 60s\n")
    ));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    for _ in 0..2 {
        let r = call(
            &proxy,
            "/orders/1",
            "alice",
            &[("traceparent", &parent), ("tracestate", "vendor=7")],
        );
        assert_eq!(r.status, 200);
    }
    wait_until("both requests' forward-auth spans arrive", || {
        receiver
            .trace(trace_id)
            .iter()
            .filter(|s| s.span.name == "forward auth")
            .count()
            == 2
    });
    let spans = receiver.trace(trace_id);
    let sources: Vec<(Option<String>, Option<String>)> = spans
        .iter()
        .filter(|s| s.span.name == "forward auth")
        .map(|s| {
            (
                s.attr("tollgate.forward_auth.decision"),
                s.attr("tollgate.forward_auth.source"),
            )
        })
        .collect();
    assert!(
        sources.contains(&(Some("admitted".into()), Some("service".into()))),
        "{sources:?}"
    );
    assert!(
        sources.contains(&(Some("admitted".into()), Some("cache".into()))),
        "{sources:?}"
    );
    // The auth service was asked once (the second decision came from the
    // cache), under the span that asked it: its own spans join the trace.
    let asking = spans
        .iter()
        .find(|s| {
            s.span.name == "forward auth"
                && s.attr("tollgate.forward_auth.source").as_deref() == Some("service")
        })
        .expect("the span that asked");
    let asked = auth.recorded();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0].header("traceparent"),
        Some(format!("00-{trace_id}-{}-01", asking.span_id()).as_str())
    );
    assert_eq!(asked[0].header("tracestate"), Some("vendor=7"));
    let identity = spans
        .iter()
        .find(|s| s.span.name == "identity")
        .expect("identity span");
    assert_eq!(
        identity.attr("tollgate.identity").as_deref(),
        Some("auth_service")
    );
    assert_eq!(identity.attr("tollgate.tenant").as_deref(), Some("acme"));
}
