use super::*;
use crate::config::model::DnsQuery;
use std::time::Duration;

const MINIMAL: &str = "\
upstreams:
  api:
    backends: [\"127.0.0.1:9000\"]
routes:
  - name: default
    upstream: api
";

fn problems(src: &str) -> Vec<String> {
    match parse(src, "t.yaml") {
        Ok(_) => Vec::new(),
        Err(e) => e.to_string().lines().map(str::to_owned).collect(),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MINIMAL, "t.yaml").expect("valid");
    assert_eq!(c.listeners[0].addr, "0.0.0.0:8080".parse().expect("addr"));
    assert_eq!(c.admin_listen, "127.0.0.1:9090".parse().expect("addr"));
    assert_eq!(c.routes[0].path_prefix, "/");
    assert_eq!(c.routes[0].timeouts.total, defaults::TOTAL_TIMEOUT);
    assert_eq!(c.routes[0].timeouts.read, defaults::TOTAL_TIMEOUT);
    assert_eq!(c.routes[0].timeouts.connect, defaults::CONNECT_TIMEOUT);
    assert!(!c.server.work_stealing);
    assert!(c.warnings.is_empty());
}

#[test]
fn unknown_field_names_its_line_and_path() {
    let src = MINIMAL.replace("    upstream: api", "    upstream: api\n    timeout: 5s");
    let p = problems(&src);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("t.yaml:7:"), "{}", p[0]);
    assert!(p[0].contains("routes[0]"), "{}", p[0]);
    assert!(p[0].contains("unknown field `timeout`"), "{}", p[0]);
}

#[test]
fn bad_duration_names_the_field() {
    let src = format!("{MINIMAL}    timeouts: {{ total: 5 minutes }}\n");
    let p = problems(&src);
    assert!(p[0].starts_with("t.yaml:7:"), "{}", p[0]);
    assert!(
        p[0].contains("routes[0].timeouts.total: invalid duration \"5 minutes\""),
        "{}",
        p[0]
    );
}

#[test]
fn cross_reference_errors_are_all_reported_with_lines() {
    let src = "\
upstreams:
  api:
    backends: []
routes:
  - name: a
    upstream: apii
  - name: a
    upstream: api
    match: { path_prefix: nope }
";
    let p = problems(src);
    assert_eq!(
        p,
        vec![
            "t.yaml:3:5: upstreams.api.backends: upstream \"api\" has no backends",
            "t.yaml:6:5: routes[0].upstream: unknown upstream \"apii\" (defined: api)",
            "t.yaml:7:5: routes[1].name: duplicate route name \"a\" (first used by routes[0])",
            "t.yaml:9:14: routes[1].match.path_prefix: path_prefix \"nope\" must start with /",
        ]
    );
}

#[test]
fn shadowed_route_is_a_warning_not_an_error() {
    let src =
        format!("{MINIMAL}  - name: again\n    upstream: api\n    match: {{ methods: [GET] }}\n");
    let c = parse(&src, "t.yaml").expect("valid");
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].contains("\"again\" is unreachable"),
        "{}",
        c.warnings[0]
    );
    assert!(
        c.warnings[0].starts_with("line 7: routes[1]"),
        "{}",
        c.warnings[0]
    );
}

#[test]
fn backends_accept_strings_and_maps() {
    let src = MINIMAL.replace(
        "[\"127.0.0.1:9000\"]",
        "\n      - 127.0.0.1:9000\n      - { address: \"localhost:9001\", weight: 3 }",
    );
    let c = parse(&src, "t.yaml").expect("valid");
    let b = &c.upstreams[0].backends;
    assert_eq!(b.len(), 1, "the IP address is used as it is");
    let names = &c.upstreams[0].names;
    assert_eq!(names.len(), 1, "the host name is resolved while running");
    assert_eq!(names[0].weight, 3);
    assert_eq!(
        names[0].query,
        DnsQuery::Host {
            name: "localhost".into(),
            port: 9001
        }
    );
}

#[test]
fn srv_backends_and_the_dns_section_are_read_with_defaults() {
    let src = MINIMAL.replace(
        "[\"127.0.0.1:9000\"]",
        "[{ srv: \"_http._tcp.users.internal\", weight: 2 }]",
    );
    let src = format!("dns: {{ servers: [\"10.0.0.2\", \"10.0.0.3:5353\"], max_ttl: 30s }}\n{src}");
    let c = parse(&src, "t.yaml").expect("valid");
    assert_eq!(
        c.upstreams[0].names[0].query,
        DnsQuery::Srv {
            name: "_http._tcp.users.internal".into()
        }
    );
    assert_eq!(c.dns.servers[0].port(), 53);
    assert_eq!(c.dns.servers[1].port(), 5353);
    assert_eq!(c.dns.max_ttl, Duration::from_secs(30));
    assert_eq!(c.dns.min_ttl, Duration::from_secs(1));
    assert!(!c.dns.require_at_start);
}

#[test]
fn bad_names_and_dns_settings_are_refused_with_their_field() {
    let src = MINIMAL.replace(
        "[\"127.0.0.1:9000\"]",
        "[\"bad name:80\", { address: \"a.internal:80\", srv: \"_x._tcp.a\" }, { srv: \"-..\" }, \"10.0.0.300:80\", \"a.internal:80\", \"a.internal:80\"]",
    );
    let src = format!("dns: {{ servers: [\"ns1\"], min_ttl: 10s, max_ttl: 5s }}\n{src}");
    let p = problems(&src);
    let expect = [
        "dns.servers[0]: invalid name server \"ns1\"",
        "dns.max_ttl: max_ttl (5s) must not be below min_ttl (10s)",
        "upstreams.api.backends[0]: invalid backend address \"bad name:80\"",
        "upstreams.api.backends[1]: write either address (host:port) or srv",
        "upstreams.api.backends[2].srv: invalid SRV name \"-..\"",
        "upstreams.api.backends[3]: invalid backend address \"10.0.0.300:80\"",
        "upstreams.api.backends[5]: backend a.internal:80 is listed twice",
    ];
    assert_eq!(p.len(), expect.len(), "{p:#?}");
    for (problem, want) in p.iter().zip(expect) {
        assert!(problem.contains(want), "{problem} lacks {want}");
    }
}

#[test]
fn bad_backend_and_listener_addresses_are_refused() {
    let src = MINIMAL
        .replace("127.0.0.1:9000", "no-port-here")
        .replace("upstreams:", "listen: [\"8080\"]\nupstreams:");
    let p = problems(&src);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].contains("listen[0]: invalid listen address \"8080\""),
        "{}",
        p[0]
    );
    assert!(
        p[1].contains("upstreams.api.backends[0]: invalid backend address"),
        "{}",
        p[1]
    );
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    let p = problems("routes: [\n  - : :\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("t.yaml:"), "{}", p[0]);
    assert!(
        p[0].chars().nth(7).is_some_and(|c| c.is_ascii_digit()),
        "{}",
        p[0]
    );
}

#[test]
fn a_path_prefix_must_be_written_as_requests_are_matched() {
    let src = MINIMAL.replace(
        "    upstream: api",
        "    upstream: api\n    match: { path_prefix: \"/%61pi//v1/\" }",
    );
    let p = problems(&src);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("routes[0].match.path_prefix"), "{}", p[0]);
    assert!(p[0].contains("write \"/api/v1/\""), "{}", p[0]);
}

#[test]
fn trusted_proxies_from_either_section_are_one_list() {
    let src = format!(
        "server: {{ trusted_proxies: [10.0.0.0/8], keep_override_headers: [X-HTTP-Method-Override] }}\n\
         rate_limit: {{ trusted_proxies: [192.0.2.7] }}\ntiers: {{ free: {{ per_minute: 1 }} }}\n\
         anonymous: {{ tier: free }}\n{MINIMAL}"
    );
    let c = parse(&src, "t.yaml").expect("valid");
    let expected: Vec<ipnet::IpNet> = vec![
        "10.0.0.0/8".parse().expect("net"),
        "192.0.2.7/32".parse().expect("net"),
    ];
    assert_eq!(c.server.trusted_proxies, expected);
    assert_eq!(c.rate_limit.expect("rate limit").trusted_proxies, expected);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let bad = problems(&format!(
        "server: {{ keep_override_headers: [X-Anything] }}\n{MINIMAL}"
    ));
    assert!(
        bad[0].contains("server.keep_override_headers[0]"),
        "{bad:?}"
    );
}

#[test]
fn token_for_reads_needs_a_token() {
    let src = "admin:\n  require_token_for_reads: true\nupstreams:\n  api: { backends: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: api, upstream: api }\n";
    let p = problems(src);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("t.yaml:2:"), "{}", p[0]);
    assert!(p[0].contains("admin.require_token_for_reads"), "{}", p[0]);
}

#[test]
fn redis_is_a_url_or_a_cluster_never_both() {
    let base = "tiers:\n  t: { per_second: 1 }\nanonymous: { reject: true }\nupstreams:\n  api: { backends: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: api, upstream: api }\n";
    let both = format!("redis: {{ url: \"redis://a:1\", cluster: [\"b:2\"] }}\n{base}");
    let p = problems(&both);
    assert!(
        p.iter()
            .any(|l| l.contains("exactly one of url, url_env or cluster")),
        "{p:?}"
    );
    let bad = format!("redis:\n  cluster: [\"b:2\", \"http://c:3\"]\n{base}");
    let p = problems(&bad);
    assert!(
        p.iter()
            .any(|l| l.starts_with("t.yaml:2:") && l.contains("redis.cluster[1]")),
        "{p:?}"
    );
    let ok = format!("redis: {{ cluster: [\"b:2\", \"rediss://c:3\"] }}\n{base}");
    let c = parse(&ok, "t.yaml").expect("a cluster config");
    let redis = c.redis.expect("redis");
    assert_eq!(redis.cluster, ["redis://b:2", "rediss://c:3"]);
}

/// A route chosen on a field tollgate removes, replaces or never forwards
/// would be chosen by whoever forges it (issue 38): `check` refuses each,
/// with its line, and keeps plain fields and `Upgrade`.
#[test]
fn routes_may_not_match_on_fields_tollgate_rewrites() {
    let route = |field: &str| {
        format!(
            "tiers:\n  pro: {{ per_minute: 10 }}\ntenants:\n  acme: {{ tier: pro, api_keys: [\"sha256:{}\"] }}\nanonymous: {{ tier: pro }}\n{}",
            "ab".repeat(32),
            MINIMAL.replace(
                "    upstream: api",
                &format!("    upstream: api\n    match: {{ headers: {{ {field}: \"on\" }} }}"),
            )
        )
    };
    for field in [
        "X-Tenant",
        "X-Forwarded-For",
        "forwarded",
        "X-Real-IP",
        "Via",
        "X-Request-Id",
        "Host",
        "Content-Length",
        "Connection",
        "X-HTTP-Method-Override",
        "X_Internal",
    ] {
        let p = problems(&route(field));
        assert_eq!(p.len(), 1, "{field}: {p:?}");
        assert!(
            p[0].contains(&format!("routes[0].match.headers.{field}"))
                && p[0].contains("t.yaml:12:"),
            "{field}: {}",
            p[0]
        );
    }
    for field in ["X-Canary", "Upgrade", "Accept"] {
        assert_eq!(problems(&route(field)), Vec::<String>::new(), "{field}");
    }
}

/// `sticky.header` reads the request as forwarded: fields tollgate writes
/// (the tenant, the forwarding fields) are fine there, fields that never
/// reach the upstream are not.
#[test]
fn a_sticky_field_must_reach_the_upstream() {
    let split = |field: &str| {
        format!(
            "upstreams:\n  a: {{ backends: [\"127.0.0.1:9000\"] }}\n  b: {{ backends: [\"127.0.0.1:9001\"] }}\n\
             routes:\n  - name: s\n    upstreams: [{{ name: a, weight: 1 }}, {{ name: b, weight: 1 }}]\n    sticky: {{ header: {field} }}\n"
        )
    };
    for field in ["Content-Length", "X_User", "X-Original-URL"] {
        let p = problems(&split(field));
        assert_eq!(p.len(), 1, "{field}: {p:?}");
        assert!(
            p[0].contains("routes[0].sticky.header"),
            "{field}: {}",
            p[0]
        );
    }
    for field in ["X-Tenant", "X-Forwarded-For", "X-User-Id"] {
        assert_eq!(problems(&split(field)), Vec::<String>::new(), "{field}");
    }
}

#[test]
fn the_config_watch_is_off_by_default_and_refuses_a_busy_interval() {
    let c = parse(MINIMAL, "t.yaml").expect("valid");
    assert!(!c.server.watch_config);
    assert_eq!(c.server.watch_interval, defaults::WATCH_INTERVAL);
    let on = format!("server: {{ watch_config: true, watch_interval: 250ms }}\n{MINIMAL}");
    let c = parse(&on, "t.yaml").expect("valid");
    assert!(c.server.watch_config);
    assert_eq!(
        c.server.watch_interval,
        std::time::Duration::from_millis(250)
    );
    let busy = format!("server: {{ watch_config: true, watch_interval: 10ms }}\n{MINIMAL}");
    let p = problems(&busy);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("t.yaml:1:"), "{}", p[0]);
    assert!(
        p[0].contains("server.watch_interval: watch_interval must be at least 100ms"),
        "{}",
        p[0]
    );
}
