//! What a route does to the request and the response beyond choosing an
//! upstream: header conditions, path rewrites, header policy, weighted
//! splits and redirects, as a client and the upstream see them.

mod common;
use common::*;

/// An upstream that answers with the target it received.
fn echo(tag: &'static str) -> TestUpstream {
    TestUpstream::start(move |req| Action::Reply(Reply::ok(&format!("{tag} {}", req.path))))
}

fn send(proxy: &TollgateProcess, path: &str, headers: &[(&str, &str)]) -> Response {
    request(proxy.addr, "GET", path, headers, b"").expect("request")
}

#[test]
fn a_header_condition_wins_over_a_plain_route_of_the_same_prefix() {
    let (stable, canary) = (echo("stable"), echo("canary"));
    let proxy = TollgateProcess::start(&format!(
        "upstreams:
  stable: {{ backends: [\"{}\"] }}
  canary: {{ backends: [\"{}\"] }}
routes:
  - {{ name: api, upstream: stable, match: {{ path_prefix: /api/ }} }}
  - {{ name: api-canary, upstream: canary, match: {{ path_prefix: /api/, headers: {{ X-Canary: \"on\", X-Team: core }} }} }}
",
        stable.addr, canary.addr
    ));
    assert_eq!(send(&proxy, "/api/x", &[]).text(), "stable /api/x");
    assert_eq!(
        send(&proxy, "/api/x", &[("X-Canary", "on")]).text(),
        "stable /api/x",
        "every condition must hold"
    );
    assert_eq!(
        send(&proxy, "/api/x", &[("X-Canary", "on"), ("X-Team", "core")]).text(),
        "canary /api/x"
    );
    assert_eq!(
        send(&proxy, "/api/x", &[("X-Canary", "ON"), ("X-Team", "core")]).text(),
        "stable /api/x",
        "values are exact"
    );
}

#[test]
fn rewrites_change_the_upstreams_path_only_and_keep_the_query() {
    let (billing, api) = (echo("billing"), echo("api"));
    let up = TestUpstream::start(|req| {
        Action::Reply(Reply {
            status: 200,
            headers: vec![("Cache-Control".into(), "max-age=60".into())],
            body: format!("cached {}", req.path).into_bytes(),
        })
    });
    let proxy = TollgateProcess::start(&format!(
        "upstreams:
  billing: {{ backends: [\"{}\"] }}
  api: {{ backends: [\"{}\"] }}
  cached: {{ backends: [\"{}\"] }}
routes:
  - {{ name: billing, upstream: billing, match: {{ path_prefix: /billing/ }}, rewrite: {{ strip_prefix: true }} }}
  - {{ name: legacy, upstream: api, match: {{ path_prefix: /old/, case_insensitive: true }}, rewrite: {{ replace_prefix: /v2/ }} }}
  - {{ name: cached, upstream: cached, match: {{ path_prefix: /c/ }}, rewrite: {{ replace_prefix: /store/ }}, cache: {{}} }}
",
        billing.addr, api.addr, up.addr
    ));
    let cases = [
        ("/billing/invoices?x=1&y=2", "billing /invoices?x=1&y=2"),
        ("/billing/", "billing /"),
        ("/billing//invoices", "billing /invoices"),
        ("/billing/%69nvoices", "billing /invoices"),
        ("/old/users?page=2", "api /v2/users?page=2"),
        ("/OLD/users", "api /v2/users"),
    ];
    for (path, expected) in cases {
        assert_eq!(send(&proxy, path, &[]).text(), expected, "{path}");
    }
    // An encoded slash is refused before routing (hygiene), never produced.
    assert_eq!(send(&proxy, "/billing/a%2Fb", &[]).status, 400);
    // The cache keys the client's URL: a purge of /c/item reaches it.
    assert_eq!(send(&proxy, "/c/item", &[]).text(), "cached /store/item");
    let hit = send(&proxy, "/c/item", &[]);
    assert_eq!(hit.cache_status().as_deref(), Some("tollgate; hit"));
    assert_eq!(up.count(), 1);
    let purged = proxy.admin_post(
        "/cache/purge",
        ADMIN_TOKEN,
        "{\"url\": \"http://test.local/c/item\"}",
    );
    assert_eq!(purged.status, 200, "{}", purged.text());
    assert_eq!(purged.json()["purged"], 1, "{}", purged.text());
    // The access log shows both paths.
    wait_until("the access line", || {
        proxy
            .log_text()
            .contains("GET /billing/invoices status=200 route=billing upstream=billing")
            && proxy.log_text().contains("upstream_path=/invoices")
    });
}

#[test]
fn header_policy_sets_adds_and_removes_with_placeholders() {
    let up = TestUpstream::start(|_| {
        Action::Reply(Reply {
            status: 200,
            headers: vec![
                ("Server".into(), "gunicorn".into()),
                ("X-Powered-By".into(), "Django".into()),
                ("X-Version".into(), "1".into()),
            ],
            body: b"ok".to_vec(),
        })
    });
    let proxy = TollgateProcess::start(&format!(
        "upstreams:
  api: {{ backends: [\"{}\"] }}
routes:
  - name: api
    upstream: api
    max_body_size: 1KiB
    headers:
      request:
        set: {{ X-Env: prod, X-Client-Ip: \"{{client_ip}}\", X-Route: \"route={{route}}\", X-Host: \"{{host}}\", X-Tenant-Copy: \"{{tenant}}\" }}
        add: {{ X-Via-Gateway: tollgate }}
        remove: [X-Debug]
      response:
        set: {{ Strict-Transport-Security: \"max-age=63072000\", X-Request-Copy: \"{{request_id}}\" }}
        add: {{ X-Version: \"2\" }}
        remove: [Server, X-Powered-By]
",
        up.addr
    ));
    let r = send(
        &proxy,
        "/x",
        &[
            ("X-Env", "dev"),
            ("X-Debug", "1"),
            ("X-Via-Gateway", "edge"),
            ("X-Client-Ip", "6.6.6.6"),
            ("X-Tenant-Copy", "forged"),
            ("X-Request-Id", "abc-123"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=63072000")
    );
    assert_eq!(r.header("x-request-copy"), Some("abc-123"));
    assert_eq!(r.header("server"), None);
    assert_eq!(r.header("x-powered-by"), None);
    let versions: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-version"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(versions, vec!["1", "2"]);
    let seen = up.recorded().pop().expect("forwarded");
    assert_eq!(seen.header("x-env"), Some("prod"));
    assert_eq!(seen.header("x-client-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-route"), Some("route=api"));
    assert_eq!(seen.header("x-host"), Some("test.local"));
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(
        seen.header("x-tenant-copy"),
        None,
        "no tenant: the client's copy is gone"
    );
    let vias: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(n, _)| n == "x-via-gateway")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(vias, vec!["edge", "tollgate"]);
    // tollgate's own answers on the route carry the response policy too.
    let refused = request(proxy.addr, "POST", "/x", &[], &[b'x'; 2048]).expect("request");
    assert_eq!(refused.status, 413);
    assert_eq!(
        refused.header("strict-transport-security"),
        Some("max-age=63072000")
    );
}

#[test]
fn check_refuses_rewrites_and_headers_that_break_requests_with_their_line() {
    let dir = scratch_dir("routing-check");
    let cases = [
        (
            "rewrite: { strip_prefix: true }",
            "/billing",
            "strip_prefix needs a path_prefix ending in '/'",
        ),
        (
            "rewrite: { replace_prefix: /v2 }",
            "/old/",
            "must both end in '/'",
        ),
        (
            "rewrite: { replace_prefix: \"/a/../b/\" }",
            "/old/",
            "replace_prefix \"/a/../b/\"",
        ),
        (
            "headers: { request: { set: { X-Ip: \"{client_addr}\" } } }",
            "/",
            "{client_addr} is not a placeholder here",
        ),
        (
            "headers: { request: { set: { Host: other } } }",
            "/",
            "\"Host\" is framing, hop-by-hop or Host",
        ),
        (
            "headers: { request: { remove: [X-Forwarded-For] } }",
            "/",
            "forwarding field tollgate writes itself",
        ),
        (
            "headers: { request: { set: { X-Tenant: acme } } }",
            "/",
            "x-tenant carries the identified tenant",
        ),
        (
            "headers: { response: { remove: [Transfer-Encoding] } }",
            "/",
            "\"Transfer-Encoding\" is framing",
        ),
        (
            "match: { path_prefix: /, headers: { X-A: \"a\\u0001b\" } }",
            "/",
            "is not a valid header value",
        ),
    ];
    for (i, (field, prefix, message)) in cases.iter().enumerate() {
        let file = dir.join(format!("case{i}.yaml"));
        let matcher = if field.starts_with("match:") {
            String::new()
        } else {
            format!("\n    match: {{ path_prefix: {prefix} }}")
        };
        std::fs::write(
            &file,
            format!(
                "upstreams: {{ api: {{ backends: [\"127.0.0.1:9\"] }} }}
routes:
  - name: r
    upstream: api{matcher}
    {field}
"
            ),
        )
        .expect("write");
        let (ok, _, err) = run_cli(&["check", &file.to_string_lossy()]);
        assert!(!ok, "{field}");
        let line = if matcher.is_empty() { 5 } else { 6 };
        assert!(
            err.lines()
                .any(|l| l.contains(&format!(".yaml:{line}:")) && l.contains(message)),
            "{field}: {err}"
        );
    }
}

#[test]
fn a_weighted_split_shares_requests_by_weight_and_sticky_cookies_hold() {
    let (v1, v2) = (echo("v1"), echo("v2"));
    let proxy = TollgateProcess::start(&format!(
        "upstreams:
  v1: {{ backends: [\"{}\"] }}
  v2: {{ backends: [\"{}\"] }}
routes:
  - {{ name: split, upstreams: [{{ name: v1, weight: 90 }}, {{ name: v2, weight: 10 }}], match: {{ path_prefix: /api/ }} }}
  - {{ name: sticky, upstreams: [{{ name: v1, weight: 1 }}, {{ name: v2, weight: 1 }}], sticky: {{ cookie: tg_pool }}, match: {{ path_prefix: /s/ }} }}
",
        v1.addr, v2.addr
    ));
    let mut to_v2 = 0;
    for _ in 0..1000 {
        if send(&proxy, "/api/x", &[]).text().starts_with("v2") {
            to_v2 += 1;
        }
    }
    // Binomial(1000, 0.1): mean 100, sd 9.5; 40..=160 is over 6 sd each way.
    assert!((40..=160).contains(&to_v2), "{to_v2} of 1000 went to v2");
    let first = send(&proxy, "/s/x", &[]);
    let cookie = first
        .header("set-cookie")
        .expect("a sticky cookie")
        .to_owned();
    let pair = cookie.split(';').next().expect("pair").to_owned();
    let pool = pair.split('=').nth(1).expect("value").to_owned();
    assert!(
        first.text().starts_with(&pool),
        "{cookie} / {}",
        first.text()
    );
    for _ in 0..50 {
        let r = send(&proxy, "/s/x", &[("Cookie", &pair)]);
        assert!(r.text().starts_with(&pool));
        assert_eq!(r.header("set-cookie"), None);
    }
}

#[test]
fn redirects_answer_without_an_upstream_and_keep_the_query() {
    let api = echo("api");
    let proxy = TollgateProcess::start(&format!(
        "upstreams:
  api: {{ backends: [\"{}\"] }}
routes:
  - {{ name: api, upstream: api }}
  - {{ name: moved, match: {{ path_prefix: /moved/ }}, redirect: {{ to: \"https://new.example.com{{uri}}\" }} }}
  - {{ name: gone, match: {{ path_prefix: /old/ }}, redirect: {{ to: \"/new{{path}}\", status: 301, max_age: 1h }} }}
",
        api.addr
    ));
    let r = send(&proxy, "/moved/a//b?x=1&y=2", &[]);
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://new.example.com/moved/a/b?x=1&y=2")
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = send(&proxy, "/old/p", &[]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/new/old/p"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
    assert_eq!(api.count(), 0);
}

#[test]
fn check_refuses_bad_splits_and_redirects_with_their_line() {
    let dir = scratch_dir("split-check");
    let cases = [
        (
            "upstreams: [{ name: api, weight: 0 }]",
            "a weight must be at least 1",
        ),
        (
            "upstreams: [{ name: nope, weight: 1 }]",
            "unknown upstream \"nope\"",
        ),
        (
            "redirect: { to: \"https://x{query}\" }",
            "{query} is not a placeholder here",
        ),
        (
            "redirect: { to: /x, status: 200 }",
            "200 is not a redirect status",
        ),
    ];
    for (i, (field, message)) in cases.iter().enumerate() {
        let file = dir.join(format!("case{i}.yaml"));
        std::fs::write(
            &file,
            format!(
                "upstreams: {{ api: {{ backends: [\"127.0.0.1:9\"] }} }}
routes:
  - name: r
    {field}
"
            ),
        )
        .expect("write");
        let (ok, _, err) = run_cli(&["check", &file.to_string_lossy()]);
        assert!(!ok, "{field}");
        assert!(
            err.lines()
                .any(|l| l.contains(".yaml:4:") && l.contains(message)),
            "{field}: {err}"
        );
    }
}
