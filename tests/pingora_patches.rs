//! The Pingora defects tollgate carries patches for
//! (`pingora-patched/PATCHES.md`), each seen from the client's side. Every
//! test here fails on unpatched Pingora 0.9.1; the patch it guards is named
//! in its doc comment.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

fn cached_route(up: &TestUpstream, route: &str) -> TollgateProcess {
    TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"], max_fails: 0 }}\n\
         routes:\n  - {{ name: api, upstream: api, {route} }}\n",
        up.addr
    ))
}

/// Patch 0001 (keep-alive after an upstream error): a route-timeout 504
/// for a bodiless request is an ordinary answer; the client's connection
/// stays open for its next request, as nginx and HAProxy keep it. So does
/// a 502 from a backend that hangs up.
#[test]
fn an_upstream_error_answer_keeps_the_connection_alive() {
    let up = TestUpstream::start(|req| match req.path.as_str() {
        "/slow" => Action::ReplyWhenReleased(Reply::ok("late")),
        "/hangup" => Action::Close,
        _ => Action::Reply(Reply::ok("fine")),
    });
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"], max_fails: 0 }}\n\
         routes:\n  - {{ name: api, upstream: api, timeouts: {{ total: 300ms }} }}\n",
        up.addr
    ));
    let mut client = KeptAlive::open(proxy.addr).expect("connect");
    let timed_out = client.send("GET", "/slow", &[], b"").expect("the 504");
    assert_eq!(timed_out.status, 504, "{}", timed_out.text());
    assert_ne!(timed_out.header("connection"), Some("close"));
    let next = client
        .send("GET", "/next", &[], b"")
        .expect("the next request on the same connection is answered");
    assert_eq!((next.status, next.text().as_str()), (200, "fine"));
    let hung_up = client.send("GET", "/hangup", &[], b"").expect("the 502");
    assert_eq!(hung_up.status, 502, "{}", hung_up.text());
    let after = client
        .send("GET", "/after", &[], b"")
        .expect("the connection outlives the 502 too");
    assert_eq!(after.status, 200);
}

/// Patch 0001, the stale-if-error half: a stale answer served because the
/// upstream failed (hung up, or answered 503) says `Connection:
/// keep-alive` and keeps its word: each next request on the connection is
/// answered. Before the patch the connection was closed after an answer
/// that announced keep-alive, and a client's next request on it failed.
#[test]
fn a_stale_if_error_answer_never_announces_keep_alive_and_then_closes() {
    let calls = AtomicUsize::new(0);
    let up = TestUpstream::start(move |_| match calls.fetch_add(1, Ordering::SeqCst) {
        0 => reply(
            200,
            &[("Cache-Control", "max-age=0, stale-if-error=600")],
            "v1",
        ),
        n if n % 2 == 1 => Action::Close,
        _ => reply(503, &[], "down"),
    });
    let proxy = cached_route(&up, "cache: { default_ttl: 60s }");
    let mut client = KeptAlive::open(proxy.addr).expect("connect");
    let filled = client.send("GET", "/page", &[], b"").expect("the fill");
    assert_eq!(filled.text(), "v1");
    for round in 0..4 {
        let stale = client
            .send("GET", "/page", &[], b"")
            .unwrap_or_else(|e| panic!("round {round}: the connection was closed: {e}"));
        assert_eq!(stale.text(), "v1", "round {round}: served stale");
        match stale.header("connection") {
            Some(c) if c.eq_ignore_ascii_case("close") => {
                assert!(client.closed_by_peer(), "round {round}: said close");
                return;
            }
            _ => {} // kept alive: the next round sends on it
        }
    }
    assert!(up.count() >= 5, "every round asked the upstream first");
}

fn http_date(offset_secs: u64) -> String {
    httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(offset_secs))
}

/// Patch 0002 (`Date` kept): a response's `Date` is when its origin made
/// it (RFC 9110 §6.6.1), so a cached answer carries the origin's `Date`
/// on the miss and on every hit (RFC 9111 §4; `Age` says how long it has
/// been stored); a response without one gets the proxy's clock.
#[test]
fn a_cached_response_keeps_the_origins_date() {
    let origin_date = http_date(30);
    let date = origin_date.clone();
    let up = TestUpstream::start(move |req| match req.path.as_str() {
        "/dated" => reply(
            200,
            &[("Cache-Control", "max-age=600"), ("Date", &date)],
            "x",
        ),
        _ => reply(200, &[("Cache-Control", "max-age=600")], "y"),
    });
    let proxy = cached_route(&up, "cache: { default_ttl: 60s }");
    let miss = get(proxy.addr, "/dated").expect("miss");
    assert_eq!(miss.header("date"), Some(origin_date.as_str()), "the miss");
    let hit = get(proxy.addr, "/dated").expect("hit");
    assert_eq!(up.count(), 1, "the second answer came from the cache");
    assert_eq!(hit.header("date"), Some(origin_date.as_str()), "the hit");
    let age: u64 = hit.header("age").expect("Age").parse().expect("age");
    assert!(age >= 30, "the age counts from the origin's Date: {age}");
    let undated = get(proxy.addr, "/undated").expect("undated");
    let stamped = undated.header("date").expect("a Date is added");
    let stamped = httpdate::parse_http_date(stamped).expect("an HTTP-date");
    let drift = SystemTime::now()
        .duration_since(stamped)
        .unwrap_or(Duration::ZERO);
    assert!(drift < Duration::from_secs(300), "the proxy's clock");
}

/// One HTTP/2 (prior knowledge) GET on its own connection: the status and
/// body.
async fn h2_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://localhost{path}"))
        .body(())
        .expect("request");
    let mut send = send.ready().await.expect("ready");
    let (response, _) = send.send_request(req, true).expect("send");
    let response = response.await.expect("response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// Patch 0003 (background refreshes for HTTP/2 clients): a stale entry
/// served to an HTTP/2 client within `stale-while-revalidate` is
/// refreshed in the background, once; the next request sees the new body
/// without asking the upstream again. Before the patch the refresh was
/// rebuilt with the request line `HTTP/2`, which the HTTP/1 parser
/// refused, and never ran.
#[test]
fn a_stale_entry_served_to_an_http2_client_is_refreshed_in_the_background() {
    let calls = AtomicUsize::new(0);
    let up = TestUpstream::start(move |_| match calls.fetch_add(1, Ordering::SeqCst) {
        0 => reply(
            200,
            &[("Cache-Control", "max-age=0, stale-while-revalidate=600")],
            "v1",
        ),
        _ => reply(200, &[("Cache-Control", "max-age=600")], "v2"),
    });
    let proxy = TollgateProcess::start_with_listener(
        |port| format!("{{ address: \"127.0.0.1:{port}\", h2c: true }}"),
        &format!(
            "upstreams:\n  api: {{ backends: [\"{}\"], max_fails: 0 }}\n\
             routes:\n  - {{ name: api, upstream: api, cache: {{ default_ttl: 60s }} }}\n",
            up.addr
        ),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let h2 = |path| rt.block_on(h2_get(proxy.addr, path));
    assert_eq!(h2("/swr"), (200, "v1".to_owned()));
    assert_eq!(h2("/swr"), (200, "v1".to_owned()), "served stale");
    proxy.wait_metric(
        "tollgate_cache_background_refreshes_total{route=\"api\",status=\"200\"}",
        1.0,
    );
    assert_eq!(up.count(), 2, "one background fetch");
    assert_eq!(h2("/swr"), (200, "v2".to_owned()));
    assert_eq!(up.count(), 2, "the refreshed entry answered");
}

/// Patch 0004 (tunnel idle bound): `timeouts.idle` ends a tunnel to a
/// backend that stays silent, also while the client keeps sending. Before
/// the patch each client read re-armed the backend's read timer, so the
/// tunnel lived as long as the client talked.
#[test]
fn a_tunnel_to_a_silent_backend_ends_after_idle_while_the_client_sends() {
    let silent = TunnelBackend::start(false);
    let (backend, upgrades) = (silent.addr, silent.upgrades.clone());
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  ws: {{ backends: [\"{backend}\"] }}\n\
         routes:\n  - {{ name: ws, upstream: ws, timeouts: {{ total: 1s, idle: 500ms }} }}\n"
    ));
    let mut client = TcpStream::connect(proxy.addr).expect("connect");
    client
        .write_all(&websocket_handshake("/chat"))
        .expect("upgrade request");
    let answer = client::read_response_from(&mut client).expect("the 101");
    assert_eq!(answer.status, 101);
    // The backend counts the upgrade after writing its 101, which the
    // client may read first.
    wait_until("the backend counted the upgrade", || {
        upgrades.load(Ordering::SeqCst) == 1
    });
    proxy.wait_metric("tollgate_tunnels_open", 1.0);
    // A masked WebSocket ping every 100 ms (the idle bound is 500 ms),
    // until tollgate ends the tunnel or 20 s pass.
    client
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let ping = [0x89u8, 0x80, 1, 2, 3, 4];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut ended = false;
    let mut byte = [0u8; 64];
    while std::time::Instant::now() < deadline {
        if client.write_all(&ping).is_err() {
            ended = true;
            break;
        }
        match client.read(&mut byte) {
            Ok(0) => {
                ended = true;
                break;
            }
            Ok(_) => {} // nothing is expected from a silent backend
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                ended = true;
                break;
            }
        }
    }
    assert!(
        ended,
        "the tunnel outlived its idle bound while the client talked"
    );
    proxy.wait_metric("tollgate_tunnels_open", 0.0);
}

/// Patch 0005 (h2c preface peek): an HTTP/1 request shorter than the
/// 24-byte HTTP/2 preface, on a listener that also takes h2c, is answered
/// at once; before the patch the listener waited for bytes that never
/// came (until `header_timeout`, here far longer than the client waits).
#[test]
fn a_short_http1_request_on_an_h2c_listener_is_answered() {
    let up = TestUpstream::fixed("fine");
    let proxy = TollgateProcess::start_with_listener(
        |port| format!("{{ address: \"127.0.0.1:{port}\", h2c: true }}"),
        &format!(
            "limits: {{ header_timeout: 60s }}\n\
             upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
             routes:\n  - {{ name: api, upstream: api }}\n",
            up.addr
        ),
    );
    for request in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],  // 18 bytes
        &b"GET / HTTP/1.0\r\n\n"[..],    // 17 bytes
        &b"GET / HTTP/1.0\n\n"[..],      // 16 bytes, bare line feeds
        &b"PUT / HTTP/1.0\r\n\r\n"[..],  // its first byte is the preface's
        &b"PRI / HTTP/1.0\r\n\r\n"[..],  // four bytes of the preface
        &b"HEAD / HTTP/1.0\r\n\r\n"[..], // 19 bytes
    ] {
        let mut client = TcpStream::connect(proxy.addr).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        client.write_all(request).expect("send");
        let mut first = [0u8; 7];
        let text = String::from_utf8_lossy(request);
        match client.read_exact(&mut first) {
            Ok(()) => assert_eq!(&first, b"HTTP/1.", "{text:?}"),
            Err(e) => panic!("{text:?} was not answered: {e}"),
        }
    }
    // HTTP/2 with prior knowledge still works on the same listener.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    assert_eq!(
        rt.block_on(h2_get(proxy.addr, "/")),
        (200, "fine".to_owned())
    );
}

/// Patch 0006 (strict chunk-size lines): a chunk-size line RFC 9112 §7.1
/// does not allow — empty or blank (which Pingora's parser took for the
/// last chunk), with a bare LF or a non-token in its extension — is a
/// 400, and nothing after it is read as a request: the attacker's
/// pipelined `GET /smuggled` never reaches the upstream.
#[test]
fn malformed_chunk_size_lines_are_refused_and_smuggle_nothing() {
    let up = TestUpstream::start(|req| reply(200, &[], &req.path));
    let proxy = TollgateProcess::start(&one_route(up.addr));
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: test.local\r\n\r\n";
    for body in [
        format!("\r\n{smuggled}"),
        format!(" \r\n{smuggled}"),
        format!("\t\r\n{smuggled}"),
        format!("3;a\nb\r\nabc\r\n0\r\n\r\n{smuggled}"),
        format!("3;\"quoted\"\r\nabc\r\n0\r\n\r\n{smuggled}"),
        format!("3;a=\"open\r\nabc\r\n0\r\n\r\n{smuggled}"),
        format!("3;a=b c\r\nabc\r\n0\r\n\r\n{smuggled}"),
        format!("0x3\r\nabc\r\n0\r\n\r\n{smuggled}"),
    ] {
        let mut client = TcpStream::connect(proxy.addr).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let head = "POST /p HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n";
        client
            .write_all(format!("{head}{body}").as_bytes())
            .expect("send");
        let answer = client::read_response_from(&mut client).expect("an answer");
        assert_eq!(answer.status, 400, "{body:?}");
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest);
        assert!(
            !String::from_utf8_lossy(&rest).contains("smuggled"),
            "{body:?}: {rest:?}"
        );
    }
    // Well-formed extensions still pass.
    for body in [
        "3;name=value\r\nabc\r\n0\r\n\r\n",
        "3 ; a = \"q \\\" x\" ;b\r\nabc\r\n0\r\n\r\n",
    ] {
        let head = "POST /ok HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let r = send_raw(proxy.addr, format!("{head}{body}").as_bytes()).expect("answer");
        assert_eq!(r.status, 200, "{body:?}");
    }
    assert!(
        up.recorded().iter().all(|r| r.path != "/smuggled"),
        "a smuggled request reached the upstream"
    );
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Opens `n` keep-alive connections and answers one request on each.
fn idle_connections(addr: SocketAddr, n: usize) -> Vec<KeptAlive> {
    (0..n)
        .map(|i| {
            let mut c = KeptAlive::open(addr).expect("connect");
            let r = c
                .send("GET", &format!("/idle/{i}"), &[], b"")
                .expect("answer");
            assert_eq!(r.status, 200, "{}", r.text());
            c
        })
        .collect()
}

/// Patches 0007 (the write buffer freed once flushed) and 0008 (the wait
/// for a kept-alive connection's next request held outside the request's
/// future): an idle keep-alive connection costs kilobytes. Unpatched, each
/// kept a 16 KiB write buffer, a 4 KiB header buffer and every future of
/// a request's life (over 100 KB each in a release build, with the
/// 64 KiB read buffer tollgate no longer asks for). Measured as the
/// growth of the process's resident memory over 1,000 idle connections
/// (the bound has room for a debug build's larger futures and for noise).
#[test]
fn idle_keep_alive_connections_cost_kilobytes_not_buffers() {
    const IDLE: usize = 1000;
    const BOUND_BYTES: u64 = 12 * 1024;
    let up = TestUpstream::fixed(Box::leak("x".repeat(1024).into_boxed_str()));
    let proxy = TollgateProcess::start(&one_route(up.addr));
    // The allocator's first pages and the upstream pool come with the
    // first connections: warm them, then measure from there.
    drop(idle_connections(proxy.addr, 50));
    proxy.wait_metric("tollgate_client_connections", 0.0);
    let before = rss_kib(proxy.pid());
    let mut idle = idle_connections(proxy.addr, IDLE);
    proxy.wait_metric("tollgate_client_connections", IDLE as f64);
    let after = rss_kib(proxy.pid());
    let per_connection = after.saturating_sub(before) * 1024 / IDLE as u64;
    assert!(
        per_connection <= BOUND_BYTES,
        "an idle keep-alive connection costs {per_connection} bytes \
         (RSS {before} KiB -> {after} KiB over {IDLE} connections)"
    );
    // Each is still a working connection.
    for c in idle.iter_mut().step_by(40) {
        let r = c
            .send("GET", "/again", &[], b"")
            .expect("answered after idling");
        assert_eq!(r.status, 200);
    }
}

/// Patch 0008 keeps what the wait for a kept-alive connection's next
/// request did: the next request is answered, a connection idle past
/// `limits.keepalive_timeout` is closed, and so is every idle one when a
/// graceful shutdown starts.
#[test]
fn a_kept_alive_connection_is_answered_then_closed_when_idle_or_shutting_down() {
    let up = TestUpstream::fixed("fine");
    let mut proxy = TollgateProcess::start(&format!(
        "limits: {{ keepalive_timeout: 1s }}\n{}",
        one_route(up.addr)
    ));
    let mut timed = KeptAlive::open(proxy.addr).expect("connect");
    for path in ["/one", "/two", "/three"] {
        let r = timed.send("GET", path, &[], b"").expect("answer");
        assert_eq!((r.status, r.text().as_str()), (200, "fine"));
    }
    // Idle past the keep-alive time: the proxy closes it (EOF, no answer).
    let mut raw = timed.into_stream();
    raw.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert_eq!(
        raw.read(&mut byte).expect("closed, not timed out"),
        0,
        "an idle connection past keepalive_timeout is closed"
    );

    // Shutdown: an idle connection is closed as the drain begins.
    let mut idle = KeptAlive::open(proxy.addr).expect("connect");
    assert_eq!(
        idle.send("GET", "/x", &[], b"").expect("answer").status,
        200
    );
    let mut raw = idle.into_stream();
    raw.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    proxy.signal("TERM");
    assert_eq!(
        raw.read(&mut byte).expect("closed, not timed out"),
        0,
        "an idle connection is closed when shutdown starts"
    );
    assert!(proxy.wait_exit().success());
}
