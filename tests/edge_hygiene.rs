//! Edge hygiene, second round (issue 25): what the client controls never
//! reaches the upstream differently from how tollgate read it, and every
//! limit runs from the first moment. Each test is the attack, against an
//! upstream that behaves like the framework that makes it dangerous.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// An upstream that answers with the path it received.
fn echo_path() -> TestUpstream {
    TestUpstream::start(|req| reply(200, &[], &req.path))
}

/// Reads from `stream` until the proxy closes it; fails the test if it
/// stays open past the read timeout (a liveness bound, not a timing check).
fn closed_by_proxy(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let mut got = Vec::new();
    let result = stream.read_to_end(&mut got);
    let reset = matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
    assert!(result.is_ok() || reset, "still open: {result:?}");
    got
}

/// RFC 9112 §3.2: a target that is none of the four forms (or one Pingora
/// would keep verbatim while reading `/`) is refused, never routed as `/`;
/// an absolute-form target goes upstream in origin-form.
#[test]
fn request_targets_outside_origin_form_are_refused_or_rewritten() {
    let up = echo_path();
    let proxy = TollgateProcess::start(&one_route(up.addr));
    for line in [
        "GET admin HTTP/1.1",
        "GET ?x=1 HTTP/1.1",
        "GET foo:bar HTTP/1.1",
        "GET https://test.local/a HTTP/1.1",
        "GET ftp://test.local/a HTTP/1.1",
        "OPTIONS * HTTP/1.1",
    ] {
        let raw = format!("{line}\r\nHost: test.local\r\nConnection: close\r\n\r\n");
        let r = send_raw(proxy.addr, raw.as_bytes()).expect("answer");
        assert_eq!(r.status, 400, "{line}");
    }
    let connect = send_raw(
        proxy.addr,
        b"CONNECT test.local:443 HTTP/1.1\r\nHost: test.local:443\r\n\r\n",
    )
    .expect("answer");
    assert!(matches!(connect.status, 400 | 405), "{}", connect.status);
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    let absolute = send_raw(
        proxy.addr,
        b"GET http://test.local/a//b?c=1 HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
    )
    .expect("answer");
    assert_eq!(
        (absolute.status, absolute.text().as_str()),
        (200, "/a/b?c=1")
    );
}

/// nginx sends `$host`: the upstream builds links from the host that was
/// routed and keyed, so a client's port or case cannot end up in a cached
/// page served to everyone.
#[test]
fn the_upstream_gets_the_host_that_was_keyed() {
    let up = TestUpstream::start(|req| {
        let link = format!(
            "http://{}/next via {}",
            req.header("host").unwrap_or("?"),
            req.header("x-forwarded-host").unwrap_or("?")
        );
        reply(200, &[("Cache-Control", "max-age=60")], &link)
    });
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: api, upstream: api, cache: {{ default_ttl: 60s }} }}\n",
        up.addr
    ));
    let first = request(proxy.addr, "GET", "/p", &[("Host", "API.Test.:1234")], b"").expect("get");
    assert_eq!(first.text(), "http://api.test/next via api.test");
    let second = request(proxy.addr, "GET", "/p", &[("Host", "api.test")], b"").expect("get");
    assert_eq!(second.text(), "http://api.test/next via api.test");
    assert_eq!(second.cache_status().as_deref(), Some("tollgate; hit"));
}

fn two_routes(extra: &str, admin: &TestUpstream, public: &TestUpstream) -> String {
    format!(
        "{extra}upstreams:\n  admin: {{ backends: [\"{}\"] }}\n  public: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: admin, upstream: admin, match: {{ path_prefix: /admin/ }} }}\n  \
         - {{ name: files, upstream: public, match: {{ path_prefix: /files/ }}, encoded_slash: keep }}\n  \
         - {{ name: public, upstream: public }}\n",
        admin.addr, public.addr
    )
}

/// `/admin%2Fusers` misses the `/admin/` route, and a framework that
/// decodes `%2F` serves `/admin/users` from the public route: refused by
/// default, routed as decoded with `decode`, kept for a route that says so.
#[test]
fn encoded_slashes_are_refused_decoded_or_kept_never_read_two_ways() {
    let (admin, public) = (echo_path(), echo_path());
    let proxy = TollgateProcess::start(&two_routes("", &admin, &public));
    for attack in [
        "/admin%2Fusers",
        "/admin%2fusers",
        "/admin%5Cusers",
        "/x%2F..%2Fadmin",
    ] {
        let r = get(proxy.addr, attack).expect("get");
        assert_eq!(r.status, 400, "{attack}");
    }
    let kept = get(proxy.addr, "/files/a%2Fb").expect("get");
    assert_eq!(kept.text(), "/files/a%2Fb", "a route that keeps them");
    assert_eq!((admin.count(), public.count()), (0, 1));

    let (admin, public) = (echo_path(), echo_path());
    let decoding = TollgateProcess::start(&two_routes(
        "hygiene: { encoded_slash: decode }\n",
        &admin,
        &public,
    ));
    let r = get(decoding.addr, "/admin%2Fusers").expect("get");
    assert_eq!(r.text(), "/admin/users");
    assert_eq!((admin.count(), public.count()), (1, 0));
}

/// Tomcat and Spring drop `;…` from a segment before mapping it:
/// `/admin;jsessionid=1/users` is `/admin/users` to them.
#[test]
fn path_parameters_are_kept_stripped_or_refused_as_configured() {
    let (admin, public) = (echo_path(), echo_path());
    let stripping = TollgateProcess::start(&two_routes(
        "hygiene: { path_parameters: strip }\n",
        &admin,
        &public,
    ));
    let r = get(stripping.addr, "/admin;jsessionid=1/users").expect("get");
    assert_eq!(r.text(), "/admin/users");
    assert_eq!(admin.count(), 1);
    let refusing = TollgateProcess::start(&two_routes(
        "hygiene: { path_parameters: reject }\n",
        &admin,
        &public,
    ));
    assert_eq!(
        get(refusing.addr, "/admin;x=1/users").expect("get").status,
        400
    );
    assert_eq!(public.count(), 0);
}

/// CGI, WSGI and Rack read `X_Tenant` as `X-Tenant`: a client's
/// underscored copy must not reach them as the field tollgate vouches for.
#[test]
fn underscored_field_names_are_dropped_refused_or_allowed() {
    let up = TestUpstream::start(|req| {
        let seen: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| n.contains('_'))
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        reply(200, &[], &seen.join(","))
    });
    let headers = [("X_Tenant", "acme"), ("X_Forwarded_For", "1.2.3.4")];
    let dropping = TollgateProcess::start(&one_route(up.addr));
    let r = request(dropping.addr, "GET", "/x", &headers, b"").expect("get");
    assert_eq!((r.status, r.text().as_str()), (200, ""));
    let refusing = TollgateProcess::start(&format!(
        "hygiene: {{ underscore_headers: reject }}\n{}",
        one_route(up.addr)
    ));
    assert_eq!(
        request(refusing.addr, "GET", "/x", &headers, b"")
            .expect("get")
            .status,
        400
    );
    let allowing = TollgateProcess::start(&format!(
        "hygiene: {{ underscore_headers: allow }}\n{}",
        one_route(up.addr)
    ));
    let r = request(allowing.addr, "GET", "/x", &[("X_Custom", "1")], b"").expect("get");
    assert_eq!(r.text(), "x_custom=1");
}

/// A Rack app behind TLS redirects to https when `X-Forwarded-Scheme`
/// says http; a client's copy of it (or of any field of the family) must
/// not reach it, or the redirect is cached for everyone.
#[test]
fn the_whole_forwarding_family_is_removed_from_untrusted_clients() {
    let family = [
        ("X-Forwarded-Scheme", "http"),
        ("X-Forwarded-SSL", "off"),
        ("Front-End-Https", "off"),
        ("X-Url-Scheme", "http"),
        ("X-Host", "evil.test"),
        ("X-Original-Host", "evil.test"),
        ("True-Client-IP", "203.0.113.7"),
        ("CF-Connecting-IP", "203.0.113.7"),
        ("Fastly-Client-IP", "203.0.113.7"),
        ("X-Cluster-Client-IP", "203.0.113.7"),
        ("Client-IP", "203.0.113.7"),
        ("X-Forwarded-Uri", "/admin"),
        ("X-Envoy-Original-Path", "/admin"),
        ("X-Forwarded-Path", "/admin"),
        ("X-Forwarded-Client-Cert", "Hash=abc"),
    ];
    let up = TestUpstream::start(|req| {
        if req.header("x-forwarded-scheme") == Some("http") {
            return reply(
                301,
                &[
                    ("Location", "https://test.local/"),
                    ("Cache-Control", "max-age=600"),
                ],
                "",
            );
        }
        let leaked: Vec<&str> = req
            .headers
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| {
                !matches!(
                    *n,
                    "host"
                        | "x-forwarded-for"
                        | "x-forwarded-proto"
                        | "x-forwarded-host"
                        | "forwarded"
                        | "via"
                        | "x-request-id"
                        | "connection"
                        | "content-length"
                )
            })
            .collect();
        reply(200, &[("Cache-Control", "max-age=600")], &leaked.join(","))
    });
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: api, upstream: api, cache: {{ default_ttl: 60s }} }}\n",
        up.addr
    ));
    let attack = request(proxy.addr, "GET", "/", &family, b"").expect("get");
    assert_eq!(
        (attack.status, attack.text().as_str()),
        (200, ""),
        "nothing leaked"
    );
    let everyone = get(proxy.addr, "/").expect("get");
    assert_eq!(everyone.status, 200, "no redirect loop stored");
}

/// nginx's `client_header_timeout` runs from the accept: a connection that
/// sends nothing, or only empty lines, is closed; so is one on the admin
/// listener.
#[test]
fn head_deadlines_run_from_the_accept_and_empty_lines_do_not_end_them() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&format!(
        "limits: {{ header_timeout: 500ms }}\n{}",
        one_route(up.addr)
    ));
    let mut silent = TcpStream::connect(proxy.addr).expect("connect");
    assert!(closed_by_proxy(&mut silent).is_empty());
    let mut admin_silent = TcpStream::connect(proxy.admin).expect("connect");
    assert!(closed_by_proxy(&mut admin_silent).is_empty());
    let mut blank = TcpStream::connect(proxy.addr).expect("connect");
    let mut writer = blank.try_clone().expect("clone");
    let trickler = std::thread::spawn(move || {
        // Empty lines, one every 100 ms, until the proxy stops listening.
        for _ in 0..200 {
            if writer.write_all(b"\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100)); // pace: the attacker's trickle
        }
    });
    closed_by_proxy(&mut blank);
    trickler.join().expect("trickler");
    assert!(
        proxy
            .metric("tollgate_request_header_timeouts_total")
            .is_some_and(|n| n >= 3.0),
        "each late head is counted"
    );
    assert_eq!(up.count(), 0);
}

/// `limits.body_timeout` bounds the wait between two reads of a body.
#[test]
fn a_request_body_that_stops_is_not_waited_for_past_the_body_timeout() {
    let up = TestUpstream::fixed("stored");
    let proxy = TollgateProcess::start(&format!(
        "limits: {{ body_timeout: 500ms }}\n{}",
        one_route(up.addr)
    ));
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    stream
        .write_all(
            b"PUT /doc HTTP/1.1\r\nHost: test.local\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .expect("write");
    closed_by_proxy(&mut stream);
    assert_eq!(up.count(), 0, "the upstream never got a whole request");
}

/// An upstream `101` to a request that asked for no upgrade must not turn
/// the client's connection into a tunnel to the backend.
#[test]
fn a_101_to_a_plain_request_is_a_bad_gateway() {
    let up = TestUpstream::start(|_| {
        reply(
            101,
            &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
            "",
        )
    });
    let proxy = TollgateProcess::start(&one_route(up.addr));
    let r = get(proxy.addr, "/chat").expect("answer");
    assert_eq!(r.status, 502);
}

/// `Set-Cookie2` sets a cookie as `Set-Cookie` does: not stored by default.
#[test]
fn set_cookie2_responses_are_not_replayed() {
    let up = TestUpstream::start(|_| {
        reply(
            200,
            &[
                ("Cache-Control", "max-age=60"),
                ("Set-Cookie2", "sid=alice; Version=1"),
            ],
            "mine",
        )
    });
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: api, upstream: api, cache: {{ default_ttl: 60s }} }}\n",
        up.addr
    ));
    get(proxy.addr, "/me").expect("get");
    let second = get(proxy.addr, "/me").expect("get");
    assert_ne!(second.cache_status().as_deref(), Some("tollgate; hit"));
    assert_eq!(up.count(), 2);
}

/// Purge by URL reads the path as requests are read: every spelling of
/// the URL purges the entry it would have hit.
#[test]
fn purge_by_url_normalises_the_path_as_requests_are() {
    let up = TestUpstream::start(|req| reply(200, &[("Cache-Control", "max-age=600")], &req.path));
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: api, upstream: api, cache: {{ default_ttl: 60s }} }}\n",
        up.addr
    ));
    get(proxy.addr, "/a/b").expect("get");
    let purged = proxy.admin_post(
        "/cache/purge",
        ADMIN_TOKEN,
        r#"{"url": "http://TEST.local:8080//%61/b"}"#,
    );
    assert_eq!(purged.json()["purged"], 1, "{}", purged.text());
}

/// A page in the operator's browser must not purge or reload with the
/// Basic credentials the browser keeps for the status page.
#[test]
fn admin_posts_accept_only_same_origin_json() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&one_route(up.addr));
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let body = br#"{"prefix": "/"}"#;
    let form = request(
        proxy.admin,
        "POST",
        "/cache/purge",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body,
    )
    .expect("post");
    assert_eq!(form.status, 415);
    let cross_site = request(
        proxy.admin,
        "POST",
        "/config/reload",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Origin", "https://evil.example"),
        ],
        b"",
    )
    .expect("post");
    assert_eq!(cross_site.status, 403);
    assert_eq!(
        proxy
            .admin_post("/cache/purge", ADMIN_TOKEN, r#"{"prefix": "/"}"#)
            .status,
        200
    );
}

/// A 1 MiB gzip body that inflates to 1 GiB, for a client that does not
/// take gzip: memory stays within a few MiB (measured as the process's
/// peak resident set), and the body is cut rather than inflated whole.
#[test]
fn a_decompression_bomb_is_decoded_in_bounded_memory() {
    let out = Command::new("sh")
        .args(["-c", "head -c 1073741824 /dev/zero | gzip -9 -c"])
        .output()
        .expect("gzip");
    let bomb = out.stdout;
    assert!(bomb.len() < 2 * 1024 * 1024, "{} bytes", bomb.len());
    let up = TestUpstream::start(move |_| {
        Action::Reply(Reply {
            status: 200,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Content-Encoding".into(), "gzip".into()),
                ("Cache-Control".into(), "no-store".into()),
            ],
            body: bomb.clone(),
        })
    });
    let proxy = TollgateProcess::start(&format!("compression: {{}}\n{}", one_route(up.addr)));
    let peak = || -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .expect("VmHWM")
    };
    let bomb_request = || -> u64 {
        let mut stream = TcpStream::connect(proxy.addr).expect("connect");
        stream
            .write_all(b"GET /bomb HTTP/1.1\r\nHost: test.local\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        total
    };
    get(proxy.addr, "/warm").ok();
    let before = peak();
    let total = bomb_request();
    assert!(
        total < 1 << 30,
        "cut before the whole gigabyte: {total} bytes"
    );
    bomb_request();
    // Two bombs (each worker thread's allocator may take its own pool):
    // tens of MiB at most, where inflating one whole is 1 GiB and
    // Pingora's decoder made 64 MiB of each 64 KiB read.
    let grown = peak().saturating_sub(before);
    eprintln!("peak RSS grew {grown} KiB over two bombs; {total} bytes decoded before the cut");
    assert!(grown < 48 * 1024, "peak RSS grew {grown} KiB");
}
