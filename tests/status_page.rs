//! The status page on the admin listener: `/status.json` (shape, numbers
//! that move with traffic, bounded lists), the self-contained HTML page and
//! its text fallback, and the token for reads. The real-browser check is
//! `status_browser.rs`.

mod common;
use common::*;
use serde_json::Value;

const TENANTS: usize = 15;
const ROUTES: usize = 40;

/// Many routes, and tenants on a one-per-minute tier so a burst is
/// rejected after its first request however slowly it is sent.
fn config(up: &TestUpstream) -> String {
    let mut text = String::from("tiers:\n  tiny: { per_minute: 1 }\ntenants:\n");
    for t in 0..TENANTS {
        let hash = tollgate::ratelimit::identity::hash_key(&format!("key-{t}"));
        text.push_str(&format!(
            "  t{t}: {{ tier: tiny, api_keys: [\"{hash}\"] }}\n"
        ));
    }
    text.push_str(&format!(
        "anonymous: {{ tier: tiny }}\nupstreams:\n  api: {{ backends: [\"{}\"] }}\nroutes:\n",
        up.addr
    ));
    for r in 0..ROUTES {
        text.push_str(&format!(
            "  - {{ name: r{r}, upstream: api, match: {{ path_prefix: /r{r}/ }}, cache: {{ default_ttl: 60s }} }}\n"
        ));
    }
    text
}

fn status(proxy: &TollgateProcess) -> Value {
    let r = get(proxy.admin, "/status.json").expect("GET /status.json");
    assert_eq!(r.status, 200);
    r.json()
}

fn route<'v>(report: &'v Value, name: &str) -> &'v Value {
    report["routes"]
        .as_array()
        .and_then(|routes| routes.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("route {name} in {report}"))
}

/// An upstream whose answers may be shared (`public`), so requests with an
/// API key are stored and hit.
fn public_upstream() -> TestUpstream {
    TestUpstream::start(|_| {
        Action::Reply(Reply {
            status: 200,
            headers: vec![("Cache-Control".into(), "public, max-age=60".into())],
            body: b"ok".to_vec(),
        })
    })
}

#[test]
fn status_json_moves_with_traffic_and_its_lists_stay_bounded() {
    let up = public_upstream();
    let proxy = TollgateProcess::start(&config(&up));
    let before = status(&proxy);
    for key in [
        "instance",
        "routes",
        "upstreams",
        "cache",
        "compression",
        "rate_limiting",
    ] {
        assert!(before.get(key).is_some(), "{key} missing: {before}");
    }
    assert_eq!(before["instance"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(before["routes"].as_array().map(Vec::len), Some(ROUTES));
    assert_eq!(before["upstreams"][0]["backends"][0]["healthy"], true);

    // Every tenant is rejected twice or more; the first is served and
    // stored, so r0 sees hits and 429s.
    for t in 0..TENANTS {
        let key = format!("key-{t}");
        for _ in 0..3 {
            request(proxy.addr, "GET", "/r0/item", &[("X-API-Key", &key)], b"").expect("get");
        }
    }
    wait_until("the status page counts the traffic", || {
        let now = status(&proxy);
        let r0 = route(&now, "r0");
        r0["requests_per_second"].as_f64().is_some_and(|r| r > 0.0)
            && r0["responses"]["429"]
                .as_u64()
                .is_some_and(|n| n >= TENANTS as u64)
            && now["rate_limiting"]["top_rejected_tenants"]
                .as_array()
                .is_some_and(|t| t.len() == 10)
            && now["rate_limiting"]["tiers"][0]["limited_last_minute"]
                .as_u64()
                .is_some_and(|n| n >= 2 * TENANTS as u64)
    });
    let now = status(&proxy);
    let r0 = route(&now, "r0");
    assert!(
        r0["responses"]["2xx"].as_u64().is_some_and(|n| n >= 1),
        "{r0}"
    );
    assert!(r0["latency_ms"]["p99"].as_f64().is_some(), "{r0}");
    assert!(
        r0["cache_hit_ratio"].as_f64().is_some_and(|h| h > 0.0),
        "{r0}"
    );
    assert!(r0["spark"]["requests_per_second"]
        .as_array()
        .is_some_and(|s| s.len() <= 30));
    let top = now["rate_limiting"]["top_rejected_tenants"]
        .as_array()
        .expect("top");
    assert!(
        top[0]["rejected"].as_u64().is_some_and(|n| n >= 2),
        "{top:?}"
    );
    let tier = &now["rate_limiting"]["tiers"][0];
    assert_eq!(tier["name"], "tiny");
    assert!(tier["limited_last_minute"]
        .as_u64()
        .is_some_and(|n| n >= 2 * TENANTS as u64));
    let idle = route(&now, "r1");
    assert_eq!(
        idle["requests_per_second"], 0.0,
        "an idle route reads zero, not nothing"
    );
    assert!(now["cache"]["entries"].as_u64().is_some_and(|n| n >= 1));
    assert!(now["cache"]["max_size_bytes"]
        .as_u64()
        .is_some_and(|n| n > 0));
}

#[test]
fn the_page_is_self_contained_with_a_text_fallback() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&config(&up));
    let r = get(proxy.admin, "/").expect("GET /");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = r.header("content-security-policy").expect("CSP");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = r.text();
    assert!(
        html.contains("<noscript>"),
        "a text fallback for terminal browsers"
    );
    assert!(html.contains("r39"), "the text summary names the routes");
    for external in ["src=", "href=", "@import", "url("] {
        assert!(
            !html.contains(external),
            "no external assets: found {external}"
        );
    }
    assert!(
        html.contains("fetch(\"status.json\""),
        "the page polls the JSON"
    );
}

#[test]
fn reads_need_the_token_when_configured() {
    use base64::Engine as _;
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start_with_admin("require_token_for_reads: true", &config(&up));
    for path in ["/", "/status.json", "/metrics"] {
        let r = get(proxy.admin, path).expect("get");
        assert_eq!(r.status, 401, "{path}");
        assert!(r
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic ")));
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let r = request(proxy.admin, "GET", path, &[("Authorization", &bearer)], b"").expect("get");
        assert_eq!(r.status, 200, "{path} with the Bearer token");
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("ops:{ADMIN_TOKEN}"))
        );
        let r = request(proxy.admin, "GET", path, &[("Authorization", &basic)], b"").expect("get");
        assert_eq!(r.status, 200, "{path} with the token as Basic password");
        let wrong = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ops:guess")
        );
        let r = request(proxy.admin, "GET", path, &[("Authorization", &wrong)], b"").expect("get");
        assert_eq!(r.status, 401, "{path} with a wrong password");
    }
    for probe in ["/health", "/ready"] {
        assert_eq!(
            get(proxy.admin, probe).expect("get").status,
            200,
            "{probe} stays open"
        );
    }
    // Issue 24: /health follows require_token_for_reads — a probe without
    // the token learns the status, not the config file, backends or warnings.
    let open = get(proxy.admin, "/health").expect("get").json();
    assert_eq!(open, serde_json::json!({"status": "ok"}));
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let full = request(
        proxy.admin,
        "GET",
        "/health",
        &[("Authorization", &bearer)],
        b"",
    )
    .expect("get")
    .json();
    assert!(full["components"]["upstreams"].is_object(), "{full}");
}
