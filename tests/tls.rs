//! A TLS listener serves HTTPS, offers HTTP/2, and tells the upstream the
//! client used https.

mod common;
use common::*;
use std::process::Command;

/// A tollgate with a TLS listener (throwaway certificate) in front of `origin`.
fn tls_proxy(origin: &TestUpstream, tag: &str) -> TollgateProcess {
    TollgateProcess::start_with_listener(tls_listener(tag), &one_route(origin.addr))
}

#[test]
fn tls_listener_serves_http2_and_forwards_https_proto() {
    let upstream = TestUpstream::fixed("over tls");
    let proxy = tls_proxy(&upstream, "tls");
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "-",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .arg(format!("https://{}/x", proxy.addr))
        .output()
        .expect("run curl (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "over tls\n2 200",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        upstream.recorded()[0].header("x-forwarded-proto"),
        Some("https")
    );
}

#[test]
fn missing_certificate_is_a_config_error() {
    let (ok, _, err) = run_cli(&["check", "tests/fixtures/tls_missing_cert.yaml"]);
    assert!(!ok);
    assert!(
        err.contains("listen[0].tls.cert: cannot read /nonexistent/cert.pem"),
        "{err}"
    );
}

#[test]
fn upstreams_can_be_reached_over_tls_with_sni() {
    // The TLS upstream is a second tollgate with a TLS listener in front of
    // a plain test upstream.
    let origin = TestUpstream::fixed("through two proxies");
    let tls_front = tls_proxy(&origin, "tls-upstream");
    let edge = TollgateProcess::start(&format!(
        "upstreams:\n  secure:\n    backends: [\"{}\"]\n    tls: {{ sni: localhost, verify: false }}\n\
         routes:\n  - {{ name: api, upstream: secure }}\n",
        tls_front.addr
    ));
    let r = get(edge.addr, "/x").expect("request");
    assert_eq!((r.status, r.text().as_str()), (200, "through two proxies"));
    // The inner proxy saw a TLS client: it told the origin so.
    assert_eq!(
        origin.recorded()[0].header("x-forwarded-proto"),
        Some("https")
    );
    assert_eq!(
        origin.recorded()[0].header("via"),
        Some("1.1 tollgate, 1.1 tollgate")
    );
}

#[test]
fn an_unverifiable_upstream_certificate_is_a_502() {
    let origin = TestUpstream::fixed("never");
    let tls_front = tls_proxy(&origin, "tls-verify");
    let edge = TollgateProcess::start(&format!(
        "upstreams:\n  secure:\n    backends: [\"{}\"]\n    tls: {{ sni: localhost }}\n\
         routes:\n  - {{ name: api, upstream: secure }}\n",
        tls_front.addr
    ));
    let r = get(edge.addr, "/x").expect("request");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "bad_gateway");
    assert_eq!(origin.count(), 0);
}

/// A TLS connection speaking HTTP/2 (ALPN `h2`) through `openssl s_client`,
/// writing `bytes` and keeping its side open: the test sees when the proxy
/// closes the connection (s_client exits).
fn h2_client_sending(addr: std::net::SocketAddr, bytes: &[u8]) -> std::process::Child {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-alpn", "h2", "-connect"])
        .arg(addr.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run openssl s_client (scripts/test installs it)");
    let stdin = child.stdin.as_mut().expect("stdin");
    stdin.write_all(bytes).expect("write");
    stdin.flush().expect("flush");
    child
}

/// Issue 25: the head deadline covers HTTP/2 — a connection that sends the
/// preface and nothing more, or stops in the middle of a HEADERS frame, is
/// closed after `header_timeout` (Pingora's HTTP/2 server would wait).
#[test]
fn an_http2_connection_that_never_completes_a_header_block_is_closed() {
    let origin = TestUpstream::fixed("never");
    let proxy = TollgateProcess::start_with_listener(
        tls_listener("h2-deadline"),
        &format!(
            "limits: {{ header_timeout: 500ms }}\n{}",
            one_route(origin.addr)
        ),
    );
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    // A HEADERS frame (stream 1) announcing 64 bytes, of which 5 arrive.
    let headers_start = [0u8, 0, 64, 1, 0, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x41, 0x8a];
    let only_preface = [preface.as_slice(), &settings].concat();
    let mid_headers = [preface.as_slice(), &settings, &headers_start].concat();
    for bytes in [only_preface, mid_headers] {
        let mut client = h2_client_sending(proxy.addr, &bytes);
        wait_until("the proxy closes the connection", || {
            matches!(client.try_wait(), Ok(Some(_)))
        });
    }
    assert!(proxy
        .metric("tollgate_request_header_timeouts_total")
        .is_some_and(|n| n >= 2.0));
    assert_eq!(origin.count(), 0);
}

/// Issue 25: before the TLS handshake a connection already takes a slot of
/// `max_connections`, and one that never starts TLS is closed after
/// `header_timeout` (Pingora would hold it for its own 60 s).
#[test]
fn a_tcp_connection_that_never_starts_tls_takes_a_slot_and_is_closed() {
    use std::io::Read;
    let origin = TestUpstream::fixed("served");
    let proxy = TollgateProcess::start_with_listener(
        tls_listener("tls-silent"),
        &format!(
            "limits: {{ header_timeout: 3s, max_connections: 2 }}\n{}",
            one_route(origin.addr)
        ),
    );
    let curl = || {
        Command::new("curl")
            .args(["-sk", "-o", "-"])
            .arg(format!("https://{}/x", proxy.addr))
            .output()
            .expect("run curl")
    };
    let mut silent: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(proxy.addr).expect("connect"))
        .collect();
    wait_until("the silent connections hold both slots", || {
        !curl().status.success()
    });
    for stream in &mut silent {
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut rest = Vec::new();
        let closed = stream.read_to_end(&mut rest);
        assert!(
            closed.is_ok()
                || closed.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
        );
    }
    let served = curl();
    assert_eq!(String::from_utf8_lossy(&served.stdout), "served");
    assert!(proxy
        .metric("tollgate_connections_refused_total{reason=\"max_connections\"}")
        .is_some_and(|n| n >= 1.0));
}

/// Issue 25: an HTTP/2 request whose path tollgate normalises keeps its
/// `:authority`: the upstream gets the host, not an empty `Host`.
#[test]
fn an_http2_request_with_a_normalised_path_keeps_its_host() {
    let origin = TestUpstream::start(|req| {
        Action::Reply(Reply::ok(&format!(
            "{} {}",
            req.header("host").unwrap_or("(none)"),
            req.path
        )))
    });
    let proxy =
        TollgateProcess::start_with_listener(tls_listener("h2-host"), &one_route(origin.addr));
    let out = Command::new("curl")
        .args(["-sk", "--http2", "--path-as-is", "-o", "-"])
        .arg(format!("https://localhost:{}//a//b", proxy.addr.port()))
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "localhost /a/b");
}
