//! Trust at the edge: every test here is written as an attacker would try
//! it against the shared cache or the upstream, and checks what the
//! victim (the next client, or the upstream) sees.

mod common;
use common::*;

fn reply(headers: &[(&str, &str)], body: &str) -> Action {
    Action::Reply(Reply {
        status: 200,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.as_bytes().to_vec(),
    })
}

/// An upstream that names itself in every cacheable body.
fn origin(name: &'static str) -> TestUpstream {
    TestUpstream::start(move |_| reply(&[("Cache-Control", "max-age=300")], name))
}

/// `api.test` has its own route; everything else goes to the catch-all.
/// Both are cached, on different upstreams.
fn two_routes(exact: &TestUpstream, catch_all: &TestUpstream) -> String {
    format!(
        "upstreams:
  exact: {{ backends: [\"{}\"] }}
  other: {{ backends: [\"{}\"] }}
routes:
  - {{ name: exact, upstream: exact, match: {{ host: api.test }}, cache: {{ default_ttl: 60s }} }}
  - {{ name: catch-all, upstream: other, cache: {{ default_ttl: 60s }} }}
",
        exact.addr, catch_all.addr
    )
}

fn get_host(proxy: &TollgateProcess, host: &str, path: &str) -> Response {
    request(proxy.addr, "GET", path, &[("Host", host)], b"").expect("request")
}

#[test]
fn cross_route_cache_poisoning_through_host_variants() {
    let (exact, other) = (origin("exact"), origin("catch-all"));
    let proxy = TollgateProcess::start(&two_routes(&exact, &other));
    // The attacker goes first, with every spelling of the victim's host
    // that a router and a cache key could read differently.
    let long = format!("{}.api.test", "a".repeat(250));
    for host in [
        "api.test..",
        "api.test...",
        "API.TEST.",
        "api.test:80",
        "api.test:",
        "api.test:abc",
        "api.test.:8080",
        "api.test%2e",
        "api.test\t",
        long.as_str(),
        "xn--api.test",
        "api.test@evil.test",
    ] {
        let r = get_host(&proxy, host, "/data");
        assert!(
            r.status == 400 || r.status == 200,
            "{host:?} got {}",
            r.status
        );
        if ["API.TEST.", "api.test:80", "api.test.:8080"].contains(&host) {
            // Spellings of the same host reach that host's route.
            assert_eq!((r.status, r.text().as_str()), (200, "exact"), "{host:?}");
        }
    }
    // The victim: the exact route's response, from the exact upstream.
    let victim = get_host(&proxy, "api.test", "/data");
    assert_eq!(victim.status, 200);
    assert_eq!(victim.text(), "exact");
    // The catch-all's own entry for another host is not the victim's either.
    assert_eq!(get_host(&proxy, "other.test", "/data").text(), "catch-all");
    assert_eq!(get_host(&proxy, "api.test", "/data").text(), "exact");
}

#[test]
fn cache_entries_are_scoped_to_their_route_and_upstream() {
    let (first, second) = (origin("first"), origin("second"));
    let config = |upstream: &TestUpstream, route: &str| {
        format!(
            "upstreams:\n  api: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: {route}, upstream: api, cache: {{ default_ttl: 60s }} }}\n",
            upstream.addr
        )
    };
    let proxy = TollgateProcess::start(&config(&first, "old"));
    assert_eq!(get(proxy.addr, "/doc").expect("get").text(), "first");
    assert_eq!(
        get(proxy.addr, "/doc")
            .expect("get")
            .cache_status()
            .as_deref()
            .map(|s| s.contains("hit")),
        Some(true)
    );
    // The same host and path now belongs to another route: what the old
    // route stored is not its answer.
    proxy.rewrite_config(&config(&second, "new"));
    proxy.signal("HUP");
    proxy.wait_metric(r#"tollgate_config_reloads_total{result="ok"}"#, 1.0);
    assert_eq!(get(proxy.addr, "/doc").expect("get").text(), "second");
}

#[test]
fn missing_or_invalid_host_is_refused() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&one_route(up.addr));
    for raw in [
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: a.test:99999x\r\nConnection: close\r\n\r\n".to_owned(),
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(300)
        ),
    ] {
        let r = send_raw(proxy.addr, raw.as_bytes()).expect("response");
        assert_eq!(r.status, 400, "{raw:?}");
        assert!(!r.body.is_empty(), "empty 400 for {raw:?}");
        assert_eq!(r.json()["error"], "bad_request", "{raw:?}");
    }
    // These Pingora's parser refuses before any hook of ours runs: 400,
    // with Pingora's empty body (see docs/book/src/decisions.md).
    for raw in [
        "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: user@a.test\r\nConnection: close\r\n\r\n",
        "GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    ] {
        let r = send_raw(proxy.addr, raw.as_bytes()).expect("response");
        assert_eq!(r.status, 400, "{raw:?}");
    }
    assert_eq!(
        up.count(),
        0,
        "nothing with a bad Host reached the upstream"
    );
    // HTTP/1.0 may omit Host; a matching absolute-form target is fine.
    let r = send_raw(proxy.addr, b"GET / HTTP/1.0\r\n\r\n").expect("response");
    assert_eq!(r.status, 200);
    let r = send_raw(
        proxy.addr,
        b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 2);
}

#[test]
fn response_hop_by_hop_headers_are_stripped() {
    let up = TestUpstream::start(|_| {
        reply(
            &[
                ("Cache-Control", "max-age=60"),
                ("Connection", "X-Internal-Token"),
                ("X-Internal-Token", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authenticate", "Basic realm=internal"),
                ("Proxy-Connection", "keep-alive"),
                ("Trailer", "X-Checksum"),
                ("Upgrade", "h2c"),
                ("TE", "trailers"),
                ("X-Kept", "yes"),
            ],
            "body",
        )
    });
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: api, upstream: api, cache: {{ default_ttl: 60s }} }}\n",
        up.addr
    ));
    for round in ["miss", "hit"] {
        let r = get(proxy.addr, "/x").expect("get");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-kept"), Some("yes"), "{round}");
        for name in [
            "x-internal-token",
            "keep-alive",
            "proxy-authenticate",
            "proxy-connection",
            "trailer",
            "upgrade",
            "te",
        ] {
            assert_eq!(
                r.header(name),
                None,
                "{name} reached the client on a {round}"
            );
        }
    }
    assert_eq!(up.count(), 1, "the second answer was the stored one");
}

/// An upstream that answers with what it received (path and the headers a
/// poisoning attempt would use), so a test sees what reached the origin.
fn echo() -> TestUpstream {
    TestUpstream::start(|req| {
        let pick = |n: &str| req.header(n).unwrap_or("-").to_owned();
        reply(
            &[],
            &format!(
                "{} xff={} xfp={} xfh={} fwd={} orig={} override={}",
                req.path,
                pick("x-forwarded-for"),
                pick("x-forwarded-proto"),
                pick("x-forwarded-host"),
                pick("forwarded"),
                pick("x-original-url"),
                pick("x-http-method-override"),
            ),
        )
    })
}

const FORGED: [(&str, &str); 7] = [
    ("X-Forwarded-For", "1.2.3.4"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.test"),
    ("Forwarded", "for=1.2.3.4;host=evil.test;proto=https"),
    ("X-Original-URL", "/admin/delete-everything"),
    ("X-Rewrite-URL", "/admin/"),
    ("X-HTTP-Method-Override", "DELETE"),
];

#[test]
fn unkeyed_forwarding_and_override_headers_do_not_reach_the_origin() {
    let up = echo();
    let proxy = TollgateProcess::start(&one_route(up.addr));
    let r = request(proxy.addr, "GET", "/x", &FORGED, b"").expect("request");
    assert_eq!(
        r.text(),
        "/x xff=127.0.0.1 xfp=http xfh=test.local fwd=for=127.0.0.1;host=\"test.local\";proto=http orig=- override=-"
    );
    let seen = &up.recorded()[0];
    assert_eq!(seen.header("x-rewrite-url"), None);
}

#[test]
fn a_trusted_proxys_forwarding_headers_stand() {
    let up = echo();
    let proxy = TollgateProcess::start_with_server(
        "  trusted_proxies: [127.0.0.1]\n  keep_override_headers: [X-HTTP-Method-Override]\n",
        &one_route(up.addr),
    );
    let r = request(proxy.addr, "GET", "/x", &FORGED, b"").expect("request");
    assert_eq!(
        r.text(),
        "/x xff=1.2.3.4, 127.0.0.1 xfp=https xfh=evil.test fwd=for=1.2.3.4;host=evil.test;proto=https, for=127.0.0.1;host=\"test.local\";proto=http orig=- override=DELETE"
    );
}

#[test]
fn get_with_a_body_is_refused() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&one_route(up.addr));
    let r = request(proxy.addr, "GET", "/search", &[], b"{\"q\":1}").expect("request");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request");
    let chunked = send_raw(
        proxy.addr,
        b"HEAD /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .expect("response");
    assert_eq!(chunked.status, 400);
    assert_eq!(up.count(), 0);
    let empty = request(proxy.addr, "GET", "/x", &[("Content-Length", "0")], b"").expect("request");
    assert_eq!(empty.status, 200);
}

#[test]
fn route_policy_bypass_by_path_variants() {
    let (public, admin) = (echo(), echo());
    let proxy = TollgateProcess::start(&format!(
        "upstreams:
  public: {{ backends: [\"{}\"] }}
  admin: {{ backends: [\"{}\"] }}
routes:
  - {{ name: public, upstream: public, match: {{ path_prefix: /public/ }} }}
  - {{ name: admin, upstream: admin, match: {{ path_prefix: /admin/, case_insensitive: true }} }}
",
        public.addr, admin.addr
    ));
    // Spellings of the admin path reach the admin route, and the admin
    // upstream gets the one normal spelling.
    for variant in [
        "/%61dmin/users",
        "/%61%64%6D%69%6E/users",
        "//admin/users",
        "/admin//users",
        "/ADMIN/users",
        "/Admin/%75sers",
    ] {
        let r = get(proxy.addr, variant).expect("get");
        assert_eq!(r.status, 200, "{variant}");
        let path = r.text().split(' ').next().unwrap_or_default().to_owned();
        assert!(
            path.eq_ignore_ascii_case("/admin/users"),
            "{variant} reached upstream as {path}"
        );
    }
    // Spellings that leave the public prefix once a backend decodes them
    // are refused, not sent to the public upstream.
    for attack in [
        "/public/..;/admin/users",
        "/public/..;jsessionid=x/admin/users",
        "/public/.;/../admin/users",
        "/public/%2e%2e/admin/users",
        "/public/%2E%2E%2Fadmin/users",
        "/public/..%5cadmin/users",
        "/public/..%3B/admin/users",
        "/public/x%00/../../admin",
        "/public/%zz",
    ] {
        let r = get(proxy.addr, attack).expect("get");
        assert_eq!(r.status, 400, "{attack}");
        assert_eq!(r.json()["error"], "bad_request", "{attack}");
    }
    assert_eq!(public.count(), 0, "nothing reached the public upstream");
    assert_eq!(admin.count(), 6);
    // An encoded slash is refused by default (hygiene.encoded_slash):
    // frameworks that decode it would read another path than was routed.
    let r = get(proxy.addr, "/public/group%2fname?q=%2f").expect("get");
    assert_eq!(r.status, 400);
    // Other encoded reserved characters stay encoded, in one (upper-case) spelling.
    let r = get(proxy.addr, "/public/group%3fname?q=%2f").expect("get");
    assert_eq!(
        r.text().split(' ').next(),
        Some("/public/group%3Fname?q=%2f")
    );
}

#[test]
fn repeated_content_length_reaches_the_upstream_as_one_value() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&one_route(up.addr));
    for lengths in [
        "Content-Length: 3, 3\r\n",
        "Content-Length: 3\r\nContent-Length: 3\r\n",
    ] {
        let raw =
            format!("POST /p HTTP/1.1\r\nHost: a.test\r\n{lengths}Connection: close\r\n\r\nabc");
        let r = send_raw(proxy.addr, raw.as_bytes()).expect("response");
        assert_eq!(r.status, 200, "{lengths:?}");
    }
    for seen in up.recorded().iter().take(2) {
        let lengths: Vec<&str> = seen
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(lengths, ["3"]);
        assert_eq!(seen.body, b"abc");
    }
    // Content-Length next to Transfer-Encoding is the smuggling shape:
    // forwarded with one framing only (RFC 9112 §6.3: Transfer-Encoding
    // wins, the Content-Length is removed, the chunked body intact), and
    // the connection is closed after the answer (§6.1), so nothing the
    // two framings disagree on can become a second request.
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(proxy.addr).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    conn.write_all(
        b"POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
    )
    .expect("write");
    let r = common::client::read_response_from(&mut conn).expect("response");
    assert_eq!(r.status, 200);
    let seen = up.recorded().pop().expect("recorded");
    assert_eq!(seen.header("content-length"), None);
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    let mut rest = Vec::new();
    let closed = conn.read_to_end(&mut rest);
    assert!(
        closed.is_ok() && rest.is_empty(),
        "the connection was closed after one answer: {closed:?} {rest:?}"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    use std::io::{BufRead, BufReader, Read, Write};
    let up = TestUpstream::start(|req| reply(&[], &req.path));
    let proxy = TollgateProcess::start(&one_route(up.addr));
    let mut conn = std::net::TcpStream::connect(proxy.addr).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    conn.write_all(
        b"GET /one HTTP/1.1\r\nHost: a.test\r\n\r\nGET /two HTTP/1.1\r\nHost: a.test\r\n\r\nGET /three HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let mut reader = BufReader::new(conn);
    for expected in ["/one", "/two", "/three"] {
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{expected}: {status:?}");
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).expect("body");
        assert_eq!(body, expected.as_bytes());
    }
}

#[test]
fn oversized_requests_get_431_414_and_413() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&format!(
        "limits: {{ max_header_size: 4KiB, max_headers: 20, max_uri_length: 1KiB }}
upstreams:
  api: {{ backends: [\"{}\"] }}
routes:
  - {{ name: small, upstream: api, match: {{ path_prefix: /small/ }}, max_body_size: 1KiB }}
  - {{ name: api, upstream: api }}
",
        up.addr
    ));
    let big_value = "v".repeat(5000);
    let r = request(proxy.addr, "GET", "/x", &[("X-Big", &big_value)], b"").expect("request");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (431, Some("request_header_too_large"))
    );
    let many: Vec<(String, String)> = (0..30)
        .map(|i| (format!("X-H{i}"), "1".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let r = request(proxy.addr, "GET", "/x", &many, b"").expect("request");
    assert_eq!(r.status, 431);
    let long = format!("/x?q={}", "a".repeat(2000));
    let r = get(proxy.addr, &long).expect("request");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (414, Some("uri_too_long"))
    );
    // A declared body over the route's limit is refused before it is read.
    let r = request(proxy.addr, "POST", "/small/upload", &[], &[b'x'; 2048]).expect("request");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    assert_eq!(up.count(), 0, "nothing oversized reached the upstream");
    // The default limit (10 MiB) lets the same body through elsewhere.
    let r = request(proxy.addr, "POST", "/upload", &[], &[b'x'; 2048]).expect("request");
    assert_eq!(r.status, 200);
}

#[test]
fn a_chunked_body_is_stopped_at_the_routes_limit() {
    let up = TestUpstream::start(|_| Action::ReplyWhenReleased(Reply::ok("late")));
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: api, upstream: api, max_body_size: 1KiB }}\n",
        up.addr
    ));
    let mut raw = b"POST /upload HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..8 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend_from_slice(&[b'x'; 512]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = send_raw(proxy.addr, &raw).expect("response");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    up.release();
}

#[test]
fn a_trickled_request_head_is_cut_at_the_header_timeout() {
    use std::io::{Read, Write};
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&format!(
        "limits: {{ header_timeout: 1s }}\n{}",
        one_route(up.addr)
    ));
    let mut conn = std::net::TcpStream::connect(proxy.addr).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .expect("timeout");
    conn.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
        .expect("write");
    // One byte every 200 ms would keep any per-read idle timer happy for
    // ever; the head's own deadline must end it long before 200 bytes.
    let mut closed = false;
    for _ in 0..200 {
        if conn.write_all(b"X").is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match conn.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("the trickled head got an answer"),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the connection outlived its header timeout");
    proxy.wait_metric("tollgate_request_header_timeouts_total", 1.0);
    assert_eq!(up.count(), 0);
    assert_eq!(get(proxy.addr, "/x").expect("get").status, 200);
}

#[test]
fn connections_over_the_per_ip_limit_get_503() {
    use std::io::Write;
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&format!(
        "limits: {{ max_connections_per_ip: 2 }}\n{}",
        one_route(up.addr)
    ));
    // The readiness probe's connection (made at start) is accepted in
    // order before this request, and gone once the gauge reads 0.
    assert_eq!(get(proxy.addr, "/x").expect("get").status, 200);
    proxy.wait_metric("tollgate_client_connections", 0.0);
    let first = std::net::TcpStream::connect(proxy.addr).expect("connect");
    let mut second = std::net::TcpStream::connect(proxy.addr).expect("connect");
    proxy.wait_metric("tollgate_client_connections", 2.0);
    let third = get(proxy.addr, "/x").expect("third connection");
    assert_eq!(third.status, 503);
    assert_eq!(third.json()["error"], "too_many_connections");
    assert_eq!(
        proxy.metric(r#"tollgate_connections_refused_total{reason="max_connections_per_ip"}"#),
        Some(1.0)
    );
    // A closed connection frees its slot; the admitted ones are served.
    drop(first);
    proxy.wait_metric("tollgate_client_connections", 1.0);
    assert_eq!(get(proxy.addr, "/x").expect("get").status, 200);
    second
        .write_all(b"GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut second, &mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A proxy that trusts the test client as a proxy, so `X-Forwarded-For`
/// can play any client address, with a small anonymous budget.
fn anonymous_budget(up: &TestUpstream, extra: &str) -> TollgateProcess {
    TollgateProcess::start_with_server(
        "  trusted_proxies: [127.0.0.1]\n",
        &format!(
            "tiers: {{ free: {{ per_hour: 3 }} }}\nanonymous: {{ tier: free }}\nrate_limit: {{ {extra} }}\n{}",
            one_route(up.addr)
        ),
    )
}

fn as_client(proxy: &TollgateProcess, ip: &str) -> u16 {
    request(proxy.addr, "GET", "/x", &[("X-Forwarded-For", ip)], b"")
        .expect("request")
        .status
}

#[test]
fn ipv6_addresses_of_one_network_share_a_budget() {
    let up = TestUpstream::fixed("ok");
    let proxy = anonymous_budget(&up, "");
    // An attacker rotating through the addresses of its /64.
    let statuses: Vec<u16> = (1..=10)
        .map(|i| as_client(&proxy, &format!("2001:db8:0:7::{i:x}")))
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(statuses[9], 429);
    // Another /64 has its own budget; an IPv4-mapped address is its IPv4.
    assert_eq!(as_client(&proxy, "2001:db8:0:8::1"), 200);
    for _ in 0..3 {
        as_client(&proxy, "192.0.2.7");
    }
    assert_eq!(as_client(&proxy, "::ffff:192.0.2.7"), 429);
}

#[test]
fn a_flood_of_source_addresses_keeps_bucket_memory_bounded() {
    let up = TestUpstream::fixed("ok");
    let proxy = anonymous_budget(&up, "max_local_buckets: 1024");
    for i in 0..3000u32 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
        assert_eq!(as_client(&proxy, &ip), 200);
    }
    let evicted = proxy
        .metric("tollgate_ratelimit_buckets_evicted_total")
        .unwrap_or(0.0);
    assert!(evicted >= 3000.0 - 1024.0, "{evicted} evicted");
    wait_until("the bucket gauge is refreshed", || {
        proxy
            .metric("tollgate_ratelimit_buckets")
            .is_some_and(|n| (0.0..=1024.0).contains(&n) && n > 0.0)
    });
}

const BIGCO_HASH: &str = "sha256:4af43ec152b50d5d08bdffd2883cb31743b36f6f1c63744040f84dbd73bd20a9"; // "bigco-key"

fn tenants_config(up: &TestUpstream, rate_limit: &str, route_cache: &str) -> String {
    format!(
        "tiers: {{ paid: {{ per_hour: 1000 }}, free: {{ per_hour: 1000 }} }}
tenants:
  bigco: {{ tier: paid, api_keys: [\"{BIGCO_HASH}\"] }}
anonymous: {{ tier: free }}
rate_limit: {{ {rate_limit} }}
upstreams:
  api: {{ backends: [\"{}\"] }}
routes:
  - {{ name: api, upstream: api{route_cache} }}
",
        up.addr
    )
}

#[test]
fn api_key_requests_are_stored_only_when_the_response_allows() {
    let up = TestUpstream::start(|req| {
        let cc = if req.path.starts_with("/public") {
            "public, max-age=60"
        } else {
            "max-age=60"
        };
        reply(
            &[("Cache-Control", cc)],
            &format!("for {}", req.header("x-tenant").unwrap_or("anyone")),
        )
    });
    let proxy = TollgateProcess::start(&tenants_config(&up, "", ", cache: { default_ttl: 60s }"));
    let with_key = |path: &str| {
        request(proxy.addr, "GET", path, &[("X-API-Key", "bigco-key")], b"").expect("request")
    };
    // A tenant's answer without `public` is not stored for the next client.
    assert_eq!(with_key("/mine").text(), "for bigco");
    let anonymous = get(proxy.addr, "/mine").expect("get");
    assert_eq!(anonymous.text(), "for anyone");
    assert_eq!(up.count(), 2);
    // `public` says the answer is for everyone: stored.
    with_key("/public/doc");
    with_key("/public/doc");
    assert_eq!(up.count(), 3);
}

#[test]
fn api_keys_stay_at_the_edge_and_the_tenant_goes_upstream() {
    let up = TestUpstream::start(|req| {
        reply(
            &[],
            &format!(
                "key={} auth={} tenant={}",
                req.header("x-api-key").unwrap_or("-"),
                req.header("authorization").unwrap_or("-"),
                req.header("x-tenant").unwrap_or("-")
            ),
        )
    });
    let proxy = TollgateProcess::start(&tenants_config(&up, "", ""));
    let seen = |headers: &[(&str, &str)]| {
        request(proxy.addr, "GET", "/x", headers, b"")
            .expect("request")
            .text()
    };
    assert_eq!(
        seen(&[("X-API-Key", "bigco-key")]),
        "key=- auth=- tenant=bigco"
    );
    assert_eq!(
        seen(&[
            ("Authorization", "Bearer bigco-key"),
            ("X-Tenant", "othercorp")
        ]),
        "key=- auth=- tenant=bigco"
    );
    // An anonymous client cannot name a tenant for the upstream.
    assert_eq!(seen(&[("X-Tenant", "bigco")]), "key=- auth=- tenant=-");

    let forwarding = TollgateProcess::start(&tenants_config(
        &up,
        "forward_api_key: true, tenant_header: X-Customer",
        "",
    ));
    let r = request(
        forwarding.addr,
        "GET",
        "/x",
        &[("X-API-Key", "bigco-key")],
        b"",
    )
    .expect("request");
    assert_eq!(r.text(), "key=bigco-key auth=- tenant=-");
    assert_eq!(
        up.recorded()
            .last()
            .and_then(|r| r.header("x-customer").map(str::to_owned))
            .as_deref(),
        Some("bigco")
    );
}
