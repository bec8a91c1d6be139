//! CORS on routes (`cors`): preflights answered by tollgate before
//! identity and budgets, the fields added per request from its own
//! `Origin` (cached answers included, so one origin's permission never
//! reaches another), disallowed origins answered without CORS fields,
//! and a real browser's preflight and request in headless Chromium.

mod common;
use common::*;

const APP: &str = "https://app.example.com";

fn backend() -> TestUpstream {
    TestUpstream::start(|r| {
        // An upstream that sends its own (too open) CORS field: the
        // route's policy replaces it.
        let cache = if r.path.starts_with("/cached") {
            "public, max-age=60"
        } else {
            "no-store"
        };
        reply(
            200,
            &[
                ("cache-control", cache),
                ("access-control-allow-origin", "*"),
                ("x-request-cost", "3"),
            ],
            "{\"ok\":true}",
        )
    })
}

fn config(up: &TestUpstream, extra_origin: &str) -> String {
    format!(
        "tiers: {{ tiny: {{ per_minute: 2 }} }}\n\
         tenants:\n  acme: {{ tier: tiny, api_keys: [\"{}\"] }}\n\
         anonymous: {{ reject: true }}\n\
         upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  \
         - {{ name: cached, upstream: api, match: {{ path_prefix: /cached }}, cache: {{}}, rate_limit: {{ exempt: true }},\n      \
              cors: {{ allow_origins: [\"{APP}\", \"https://*.partner.test\"{extra_origin}] }} }}\n  \
         - {{ name: api, upstream: api,\n      \
              cors: {{ allow_origins: [\"{APP}\"{extra_origin}], allow_methods: [GET, POST], allow_headers: [Content-Type, X-API-Key],\n              \
                       expose_headers: [X-Request-Cost], allow_credentials: true, max_age: 10m }} }}\n",
        tollgate::ratelimit::identity::hash_key("acme-key"),
        up.addr
    )
}

fn preflight(proxy: &TollgateProcess, origin: &str, method: &str, headers: &str) -> Response {
    let mut fields = vec![
        ("Origin", origin),
        ("Access-Control-Request-Method", method),
    ];
    if !headers.is_empty() {
        fields.push(("Access-Control-Request-Headers", headers));
    }
    request(proxy.addr, "OPTIONS", "/api/orders", &fields, b"").expect("preflight")
}

/// `GET /api/orders` as tenant acme from the allowed page origin.
fn tenant_get_from_app(proxy: &TollgateProcess) -> Response {
    request(
        proxy.addr,
        "GET",
        "/api/orders",
        &[("X-API-Key", "acme-key"), ("Origin", APP)],
        b"",
    )
    .expect("request")
}

#[test]
fn preflights_are_answered_here_within_the_policy_and_cost_nothing() {
    let up = backend();
    let proxy = TollgateProcess::start(&config(&up, ""));
    let ok = preflight(&proxy, APP, "POST", "content-type, x-api-key");
    assert_eq!(
        ok.status, 204,
        "answered without a key although anonymous requests are refused"
    );
    assert_eq!(ok.header("access-control-allow-origin"), Some(APP));
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(ok.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(
        ok.header("access-control-allow-headers"),
        Some("content-type, x-api-key")
    );
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    assert!(ok.header("vary").is_some_and(|v| v.contains("Origin")));
    for refused in [
        preflight(&proxy, "https://evil.example", "POST", ""),
        preflight(&proxy, APP, "DELETE", ""),
        preflight(&proxy, APP, "POST", "x-secret"),
    ] {
        assert_eq!(refused.status, 204, "no error page");
        assert!(
            refused
                .headers
                .iter()
                .all(|(n, _)| !n.starts_with("access-control-")),
            "{:?}",
            refused.headers
        );
    }
    assert_eq!(up.count(), 0, "preflights never reach the backend");
    proxy.wait_metric(
        r#"tollgate_cors_preflights_total{result="allowed",route="api"}"#,
        1.0,
    );
    proxy.wait_metric(
        r#"tollgate_cors_preflights_total{result="refused",route="api"}"#,
        3.0,
    );
    // None of the four was charged: the tenant's 2 per minute are whole.
    let first = tenant_get_from_app(&proxy);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-remaining"), Some("1"));
}

#[test]
fn answers_carry_the_fields_of_their_own_origin_only() {
    let up = backend();
    let proxy = TollgateProcess::start(&config(&up, ""));
    let ask = |origin: Option<&str>| {
        let mut fields = vec![("X-API-Key", "acme-key")];
        if let Some(o) = origin {
            fields.push(("Origin", o));
        }
        request(proxy.addr, "GET", "/cached/item", &fields, b"").expect("request")
    };
    // Stored for an allowed origin...
    let first = ask(Some(APP));
    assert_eq!(first.header("access-control-allow-origin"), Some(APP));
    // ...then served from the cache to others, each with its own answer.
    let evil = ask(Some("https://evil.example"));
    assert_eq!(evil.cache_status().as_deref(), Some("tollgate; hit"));
    assert_eq!(
        evil.header("access-control-allow-origin"),
        None,
        "not the upstream's *, not APP"
    );
    let partner = ask(Some("https://shop.partner.test"));
    assert_eq!(partner.cache_status().as_deref(), Some("tollgate; hit"));
    assert_eq!(
        partner.header("access-control-allow-origin"),
        Some("https://shop.partner.test")
    );
    let none = ask(None);
    assert_eq!(none.header("access-control-allow-origin"), None);
    for r in [&first, &evil, &partner, &none] {
        assert!(
            r.header("vary").is_some_and(|v| v.contains("Origin")),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(up.count(), 1);
    // Exposed fields and credentials on the credentialed route.
    let api = tenant_get_from_app(&proxy);
    assert_eq!(
        api.header("access-control-expose-headers"),
        Some("x-request-cost")
    );
    assert_eq!(api.header("access-control-allow-credentials"), Some("true"));
    // tollgate's own answers carry them too (a 401 a script can read).
    let refused =
        request(proxy.addr, "GET", "/api/orders", &[("Origin", APP)], b"").expect("request");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("access-control-allow-origin"), Some(APP));
}

#[test]
fn check_refuses_unsafe_or_malformed_policies_with_their_line() {
    let dir = scratch_dir("cors-check");
    for (cors, expect) in [
        (
            "{ allow_origins: [\"*\"], allow_credentials: true }",
            "any site could read credentialed answers",
        ),
        ("{ allow_origins: [app.example.com] }", "is not an origin"),
        ("{ allow_origins: [\"https://*\"] }", "is not an origin"),
        ("{ allow_origins: [] }", "at least one origin"),
        (
            "{ allow_origins: [\"*\"], allow_methods: [\"G E T\"] }",
            "is not a method",
        ),
    ] {
        let file = dir.join("c.yaml");
        std::fs::write(
            &file,
            format!(
                "upstreams:\n  api: {{ backends: [\"127.0.0.1:9\"] }}\n\
                 routes:\n  - {{ name: r, upstream: api, cors: {cors} }}\n"
            ),
        )
        .expect("write");
        let (ok, out, err) = run_cli(&["check", &file.to_string_lossy()]);
        let text = out + &err;
        assert!(!ok, "{cors} accepted");
        assert!(
            text.contains("c.yaml:4:") && text.contains("routes[0].cors"),
            "{text}"
        );
        assert!(text.contains(expect), "{expect} in {text}");
    }
}

/// Loads `url` in headless Chromium, lets its script run, returns the DOM.
fn rendered(url: &str) -> String {
    common::browser::run_chromium(url, &["--dump-dom"])
}

/// A page whose script POSTs JSON with a custom field and credentials to
/// `target` (a preflighted request) and writes what it could read.
fn page(target: &str) -> String {
    format!(
        "<!doctype html><html><body data-result=\"pending\"><script>\n\
         fetch('{target}', {{ method: 'POST', credentials: 'include',\n\
           headers: {{ 'Content-Type': 'application/json', 'X-API-Key': 'acme-key' }}, body: '{{}}' }})\n\
           .then(r => r.text().then(t => document.body.dataset.result = 'read:' + r.status + ':' + r.headers.get('x-request-cost') + ':' + t))\n\
           .catch(e => document.body.dataset.result = 'blocked');\n\
         </script></body></html>"
    )
}

#[test]
fn a_browser_reads_only_from_an_allowed_origin() {
    let up = backend();
    // Two sites serving the same page: one allowed, one not.
    let serve = |html: String| {
        TestUpstream::start(move |_| reply(200, &[("content-type", "text/html")], &html))
    };
    let proxy_port = free_port();
    let target = format!("http://localhost:{proxy_port}/api/orders");
    let allowed_site = serve(page(&target));
    let other_site = serve(page(&target));
    let allowed_origin = format!("http://127.0.0.1:{}", allowed_site.addr.port());
    let proxy = TollgateProcess::start_with_listener(
        move |_| format!("\"127.0.0.1:{proxy_port}\""),
        &config(&up, &format!(", \"{allowed_origin}\"")),
    );
    let dom = rendered(&format!("{allowed_origin}/"));
    assert!(
        dom.contains("data-result=\"read:200:3:{&quot;ok&quot;:true}\"")
            || dom.contains("data-result=\"read:200:3:{\"ok\":true}\""),
        "the allowed page read the answer and its exposed field:\n{dom}"
    );
    let other = rendered(&format!("http://127.0.0.1:{}/", other_site.addr.port()));
    assert!(other.contains("data-result=\"blocked\""), "{other}");
    // The browser's preflights were answered by tollgate (one allowed,
    // one refused); only the allowed page's POST reached the backend.
    proxy.wait_metric(
        r#"tollgate_cors_preflights_total{result="allowed",route="api"}"#,
        1.0,
    );
    proxy.wait_metric(
        r#"tollgate_cors_preflights_total{result="refused",route="api"}"#,
        1.0,
    );
    assert_eq!(
        up.recorded().iter().filter(|r| r.method == "POST").count(),
        1
    );
    assert!(up.recorded().iter().all(|r| r.method != "OPTIONS"));
}
