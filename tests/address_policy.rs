//! Source-address allow and deny lists (`addresses`) on routes and
//! tenants: the most specific listed network decides, the address is the
//! one tollgate trusts (the peer, or what a trusted proxy forwarded), and
//! a refusal is a 403 before any budget is spent. Written as the caller
//! who is not on the list would try: forged forwarding fields, IPv6, and
//! spending a tenant's budget from the wrong place.

mod common;
use common::*;

const ACME_KEY: &str = "acme-key";

fn routes(up: &TestUpstream) -> String {
    format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  \
         - {{ name: internal, upstream: api, match: {{ path_prefix: /internal }}, addresses: {{ allow: [10.0.0.0/8, 127.0.0.0/8], deny: [127.0.0.2] }} }}\n  \
         - {{ name: partners, upstream: api, match: {{ path_prefix: /partners }}, addresses: {{ allow: [203.0.113.0/24, \"2001:db8::/32\"], deny: [203.0.113.128/25] }} }}\n  \
         - {{ name: blocked, upstream: api, match: {{ path_prefix: /blocked }}, addresses: {{ deny: [127.0.0.0/8, \"::1\"] }} }}\n  \
         - {{ name: open, upstream: api }}\n",
        up.addr
    )
}

fn status(proxy: &TollgateProcess, path: &str, headers: &[(&str, &str)]) -> u16 {
    request(proxy.addr, "GET", path, headers, b"")
        .expect("request")
        .status
}

#[test]
fn a_route_admits_only_its_networks_and_refuses_with_403_json() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&routes(&up));
    // 127.0.0.1 is in the allowed 127/8 and not the denied 127.0.0.2.
    assert_eq!(status(&proxy, "/internal/x", &[]), 200);
    let refused = get(proxy.addr, "/blocked/x").expect("request");
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"], "forbidden");
    assert_eq!(
        status(&proxy, "/partners/x", &[]),
        403,
        "not on the allow list"
    );
    assert_eq!(status(&proxy, "/open", &[]), 200);
    assert_eq!(up.count(), 2, "refused requests never reach the backend");
    proxy.wait_metric(
        r#"tollgate_address_refusals_total{by="route",route="blocked"}"#,
        1.0,
    );
}

#[test]
fn a_forged_forwarding_field_does_not_move_an_untrusted_caller() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&routes(&up));
    // No trusted proxies: the peer (127.0.0.1) decides, whatever it says.
    for forged in ["203.0.113.9", "10.1.2.3, 203.0.113.9"] {
        assert_eq!(
            status(&proxy, "/partners/x", &[("X-Forwarded-For", forged)]),
            403
        );
    }
    assert_eq!(
        status(&proxy, "/blocked/x", &[("X-Forwarded-For", "192.0.2.1")]),
        403
    );
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_client_decides() {
    let up = TestUpstream::fixed("ok");
    let proxy =
        TollgateProcess::start_with_server("  trusted_proxies: [127.0.0.1]\n", &routes(&up));
    let via = |client: &str| status(&proxy, "/partners/x", &[("X-Forwarded-For", client)]);
    assert_eq!(via("203.0.113.9"), 200);
    assert_eq!(via("203.0.113.200"), 403, "the more specific deny wins");
    assert_eq!(via("198.51.100.1"), 403);
    assert_eq!(
        via("2001:db8::5"),
        200,
        "IPv6 clients are judged on IPv6 networks"
    );
    assert_eq!(via("2001:db9::5"), 403);
    assert_eq!(
        status(&proxy, "/blocked/x", &[("X-Forwarded-For", "192.0.2.1")]),
        200,
        "the proxy's own address is not the client's"
    );
}

#[test]
fn ipv6_clients_are_judged_on_their_own_address() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start_with_listener(
        |port| format!("\"127.0.0.1:{port}\", \"[::1]:{port}\""),
        &routes(&up),
    );
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, proxy.addr.port()));
    let over_v6 = |path: &str| request(v6, "GET", path, &[], b"").expect("request").status;
    assert_eq!(over_v6("/blocked/x"), 403, "::1 is denied");
    assert_eq!(over_v6("/internal/x"), 403, "::1 is not in 127.0.0.0/8");
    assert_eq!(over_v6("/open"), 200);
}

#[test]
fn a_tenant_refused_for_its_address_spends_no_budget() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start_with_server(
        "  trusted_proxies: [127.0.0.1]\n",
        &format!(
            "tiers: {{ tiny: {{ per_minute: 2 }} }}\n\
             tenants:\n  \
             acme: {{ tier: tiny, api_keys: [\"{}\"], addresses: {{ allow: [203.0.113.0/24] }} }}\n  \
             other: {{ tier: tiny, api_keys: [\"{}\"] }}\n\
             anonymous: {{ tier: tiny }}\n{}",
            tollgate::ratelimit::identity::hash_key(ACME_KEY),
            tollgate::ratelimit::identity::hash_key("other-key"),
            routes(&up)
        ),
    );
    let as_acme = |client: &str| {
        request(
            proxy.addr,
            "GET",
            "/open",
            &[("X-API-Key", ACME_KEY), ("X-Forwarded-For", client)],
            b"",
        )
        .expect("request")
    };
    for _ in 0..3 {
        let refused = as_acme("198.51.100.7");
        assert_eq!(refused.status, 403);
        assert_eq!(refused.json()["error"], "forbidden");
    }
    // The refusals spent nothing: the tier's two requests are still there.
    let first = as_acme("203.0.113.7");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(as_acme("203.0.113.8").status, 200);
    assert_eq!(as_acme("203.0.113.8").status, 429);
    // A tenant without a list is not held to acme's.
    let other = request(
        proxy.addr,
        "GET",
        "/open",
        &[
            ("X-API-Key", "other-key"),
            ("X-Forwarded-For", "198.51.100.7"),
        ],
        b"",
    )
    .expect("request");
    assert_eq!(other.status, 200);
    proxy.wait_metric(
        r#"tollgate_address_refusals_total{by="tenant",route="open"}"#,
        3.0,
    );
}

#[test]
fn check_refuses_bad_lists_with_their_line() {
    let dir = scratch_dir("addresses-check");
    for (addresses, expect) in [
        ("{ allow: [10.1.2.3/8] }", "write 10.0.0.0/8"),
        (
            "{ allow: [10.0.0.0/8], deny: [10.0.0.0/8] }",
            "both allowed and denied",
        ),
        ("{ deny: [example.com] }", "not an address or a network"),
        ("{ deny: [10.0.0.0/33] }", "not an address or a network"),
    ] {
        let file = dir.join("a.yaml");
        std::fs::write(
            &file,
            format!(
                "upstreams:\n  api: {{ backends: [\"127.0.0.1:9\"] }}\n\
                 routes:\n  - {{ name: r, upstream: api, addresses: {addresses} }}\n"
            ),
        )
        .expect("write");
        let (ok, out, err) = run_cli(&["check", &file.to_string_lossy()]);
        let text = out + &err;
        assert!(!ok, "{addresses} accepted");
        assert!(text.contains("a.yaml:4:"), "{text}");
        assert!(text.contains("routes[0].addresses"), "{text}");
        assert!(text.contains(expect), "{expect} in {text}");
    }
}
