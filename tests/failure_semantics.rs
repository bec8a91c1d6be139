//! One misbehaving request must never become an outage: the sole backend
//! is never ejected by passive health, a pool whose backends are all
//! ejected panics to all of them, a stale pooled connection is replayed on
//! a fresh one, a timeout the route's deadline cut short is not the
//! backend's fault, and answers given before any upstream keep the
//! client's connection.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// An upstream that crashes (closes without answering) on `/crash`.
fn crashing_on_one_endpoint(body: &'static str) -> TestUpstream {
    TestUpstream::start(move |req| {
        if req.path.starts_with("/crash") {
            Action::Close
        } else {
            Action::Reply(Reply::ok(body))
        }
    })
}

fn pool(backends: &[&TestUpstream], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        "upstreams:\n  api:\n    backends: [{}]\n{extra}routes:\n  - {{ name: api, upstream: api }}\n",
        list.join(", ")
    )
}

/// The sum of every series of `name` whose labels contain `label`.
fn upstream_health(proxy: &TollgateProcess) -> serde_json::Value {
    proxy.health()["components"]["upstreams"]["api"].clone()
}

#[test]
fn sole_backend_is_never_ejected_by_passive_health() {
    let only = crashing_on_one_endpoint("ok");
    let proxy =
        TollgateProcess::start(&pool(&[&only], "    max_fails: 3\n    fail_timeout: 30s\n"));
    for _ in 0..6 {
        assert_eq!(get(proxy.addr, "/crash").expect("request").status, 502);
    }
    wait_until("the crashes are counted", || {
        proxy.metric_sum("tollgate_upstream_failures_total", "kind=\"closed\"") >= 6.0
    });
    // Every other request still works: one bad endpoint is not an outage.
    for _ in 0..5 {
        let r = get(proxy.addr, "/fine").expect("request");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    }
    let health = upstream_health(&proxy);
    assert_eq!(health["status"], "ok", "{health}");
    assert!(
        health["backends"][0]["passive_down_for_ms"].is_null(),
        "{health}"
    );
}

#[test]
fn all_backends_ejected_panics_to_all() {
    let (a, b) = (crashing_on_one_endpoint("a"), crashing_on_one_endpoint("b"));
    let proxy = TollgateProcess::start(&pool(
        &[&a, &b],
        "    max_fails: 1\n    fail_timeout: 30s\n    retries: 1\n",
    ));
    // One crash on each backend (the first attempt and its retry) takes
    // both out of rotation.
    wait_until("both backends are ejected", || {
        let _ = get(proxy.addr, "/crash");
        upstream_health(&proxy)["status"] == "panic"
    });
    let health = upstream_health(&proxy);
    assert_eq!(health["healthy"], 0, "{health}");
    assert_eq!(proxy.health()["status"], "degraded");

    // Instead of 503 for 30 s, traffic goes to all of them, and it says so.
    for _ in 0..4 {
        let r = get(proxy.addr, "/fine").expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(["a", "b"].contains(&r.text().as_str()));
    }
    let panics = proxy
        .metric("tollgate_upstream_panic_total{upstream=\"api\"}")
        .expect("panic counter");
    assert!(panics >= 4.0, "panic_total = {panics}");
}

/// A keep-alive upstream that answers the first request on a connection
/// and, like a server whose idle timeout just fired, closes the connection
/// without answering when a second request arrives on it.
struct OneShotConnections {
    addr: SocketAddr,
    answered: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl OneShotConnections {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (answered, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, d) = (answered.clone(), dropped.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (a, d) = (a.clone(), d.clone());
                std::thread::spawn(move || serve_one_then_drop(conn, &a, &d));
            }
        });
        Self {
            addr,
            answered,
            dropped,
        }
    }
}

fn serve_one_then_drop(conn: TcpStream, answered: &AtomicUsize, dropped: &AtomicUsize) {
    let mut reader = BufReader::new(conn);
    for n in 0.. {
        let mut content_length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if n > 0 {
            dropped.fetch_add(1, Ordering::SeqCst);
            return; // closes the connection without a response
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            body.len() + 2
        );
        let mut out = reply.into_bytes();
        out.extend_from_slice(b"ok");
        out.extend_from_slice(&body);
        if reader.get_mut().write_all(&out).is_err() {
            return;
        }
        answered.fetch_add(1, Ordering::SeqCst);
    }
}

/// Issue 24: a pooled connection the backend drops after reading a
/// request replays a GET on a fresh connection, but a POST the backend
/// read may have been processed: it gets 502 and reaches the backend once
/// (RFC 9110 §9.2.2).
#[test]
fn a_stale_pooled_connection_replays_a_get_but_never_a_post() {
    let up = OneShotConnections::start();
    // No retries and passive health that ejects on one failure: neither
    // may matter for a stale pooled connection.
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api:\n    backends: [\"{}\"]\n    max_fails: 1\n    retries: 0\n\
         routes:\n  - {{ name: api, upstream: api }}\n",
        up.addr
    ));
    let first = get(proxy.addr, "/a").expect("request");
    assert_eq!((first.status, first.text().as_str()), (200, "ok"));
    // Later requests go out on the pooled connection, which the upstream
    // drops: tollgate replays each on a fresh one. (Pingora returns a
    // connection to its pool just after the response, so a request may
    // still open a new connection instead; send until a drop happened.)
    let mut sent = 0;
    while up.dropped.load(Ordering::SeqCst) < 1 {
        sent += 1;
        assert!(sent <= 50, "no request ever met a pooled connection");
        let r = get(proxy.addr, "/b").expect("request");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    }
    // A POST on a dropped pooled connection: the backend read all of it
    // before dropping, so it is not sent again.
    let mut refused_posts = 0;
    while up.dropped.load(Ordering::SeqCst) < 2 {
        sent += 1;
        assert!(sent <= 100, "no POST ever met a pooled connection");
        let post = request(proxy.addr, "POST", "/d", &[], b"payload").expect("request");
        if post.status == 502 {
            refused_posts += 1;
        } else {
            assert_eq!((post.status, post.text().as_str()), (200, "okpayload"));
        }
    }
    assert_eq!(refused_posts, 1, "the dropped POST is answered 502");
    assert_eq!(up.dropped.load(Ordering::SeqCst), 2);
    // Every request but the dropped POST was answered exactly once, and
    // nothing reached the backend twice.
    assert_eq!(up.answered.load(Ordering::SeqCst), sent);
    wait_until("the stale connections are counted", || {
        proxy.metric_sum(
            "tollgate_upstream_failures_total",
            "kind=\"stale_connection\"",
        ) == 2.0
    });
    assert_eq!(
        proxy.metric_sum("tollgate_upstream_failures_total", "kind=\"closed\""),
        0.0
    );
    assert_eq!(
        proxy.metric("tollgate_upstream_retries_total{upstream=\"api\"}"),
        Some(1.0),
        "the GET was replayed, the POST was not"
    );
    let health = upstream_health(&proxy);
    assert_eq!(health["status"], "ok", "{health}");
}

#[test]
fn deadline_shortened_timeout_is_not_a_backend_failure() {
    let slow = TestUpstream::start(|_| Action::ReplyWhenReleased(Reply::ok("late")));
    let fast = TestUpstream::fixed("fast");
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api:\n    backends: [\"{}\", \"{}\"]\n    max_fails: 1\n    retries: 0\n\
         routes:\n  - {{ name: slow, upstream: api, match: {{ path_prefix: /slow }}, timeouts: {{ total: 300ms, read: 10s }} }}\n  \
         - {{ name: api, upstream: api }}\n",
        slow.addr, fast.addr
    ));
    // Until the slow backend gets one: the fast one answers at once.
    wait_until("the slow backend holds a request", || {
        let r = get(proxy.addr, "/slow/x").expect("request");
        if r.status == 504 {
            assert_eq!(r.json()["error"], "request_timeout");
        }
        slow.held() > 0
    });
    wait_until("the deadline is counted", || {
        proxy.metric_sum("tollgate_upstream_failures_total", "kind=\"deadline\"") >= 1.0
    });
    assert_eq!(
        proxy.metric_sum("tollgate_upstream_failures_total", "kind=\"timeout\""),
        0.0
    );
    // The client's budget ran out, not the backend's timeouts: with
    // max_fails 1 it would otherwise be out of rotation now.
    let health = upstream_health(&proxy);
    assert_eq!(health["healthy"], 2, "{health}");
    slow.release();
}

/// `GET path` on an open keep-alive connection: its status, and whether
/// the proxy said it will close.
fn keep_alive_get(conn: &mut KeptAlive, path: &str) -> (u16, bool) {
    let r = conn.send("GET", path, &[], b"").expect("response");
    let close = r
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    (r.status, close)
}

#[test]
fn rate_limited_client_keeps_its_connection() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&format!(
        "tiers:\n  free: {{ per_minute: 1 }}\nanonymous: {{ tier: free }}\n{}",
        one_route(up.addr)
    ));
    let mut conn = KeptAlive::open(proxy.addr).expect("connect");
    assert_eq!(keep_alive_get(&mut conn, "/x"), (200, false));
    // Throttled, on the same connection, which stays open for the next one.
    assert_eq!(keep_alive_get(&mut conn, "/x"), (429, false));
    assert_eq!(keep_alive_get(&mut conn, "/x"), (429, false));
    assert_eq!(up.count(), 1);
}

#[test]
fn unknown_route_answer_keeps_the_connection() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: api, upstream: api, match: {{ path_prefix: /api/ }} }}\n",
        up.addr
    ));
    let mut conn = KeptAlive::open(proxy.addr).expect("connect");
    assert_eq!(keep_alive_get(&mut conn, "/nowhere"), (404, false));
    assert_eq!(keep_alive_get(&mut conn, "/api/x"), (200, false));
}

#[test]
fn a_read_timeout_on_a_get_is_retried_on_another_backend_and_a_post_never_is() {
    let slow = TestUpstream::start(|_| Action::ReplyWhenReleased(Reply::ok("slow")));
    let fast = TestUpstream::fixed("fast");
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api:\n    backends: [\"{}\", \"{}\"]\n    max_fails: 0\n\
         routes:\n  - {{ name: api, upstream: api, timeouts: {{ read: 300ms, total: 10s }} }}\n",
        slow.addr, fast.addr
    ));
    // GETs until one has met the slow backend: each is answered by the fast one.
    for _ in 0..50 {
        let r = get(proxy.addr, "/x").expect("get");
        assert_eq!((r.status, r.text().as_str()), (200, "fast"));
        if slow.count() > 0 {
            break;
        }
    }
    assert!(slow.count() > 0, "no GET ever went to the slow backend");
    assert!(proxy.metric_sum("tollgate_upstream_retries_total", "api") >= 1.0);
    // A POST that times out is answered 504, never sent to a second backend.
    let (slow_before, fast_before) = (slow.count(), fast.count());
    let mut timed_out = 0;
    for _ in 0..20 {
        let r = request(proxy.addr, "POST", "/orders", &[], b"{}").expect("post");
        if r.status == 504 {
            timed_out += 1;
        } else {
            assert_eq!(r.status, 200);
        }
    }
    let delivered = (slow.count() - slow_before) + (fast.count() - fast_before);
    assert_eq!(delivered, 20, "every POST reached exactly one backend");
    assert_eq!(timed_out, slow.count() - slow_before);
    slow.release();
}

#[test]
fn retry_on_5xx_hides_a_failing_backend_from_gets() {
    let broken = TestUpstream::start(|_| {
        Action::Reply(Reply {
            status: 503,
            headers: Vec::new(),
            body: b"broken".to_vec(),
        })
    });
    let good = TestUpstream::fixed("good");
    // Without the option the backend's 503 is passed through as it was sent.
    let plain = TollgateProcess::start(&pool(&[&broken, &good], "    max_fails: 0\n"));
    let mut passed_through = false;
    for _ in 0..50 {
        let r = get(plain.addr, "/x").expect("get");
        if r.status == 503 {
            assert_eq!(r.text(), "broken");
            passed_through = true;
            break;
        }
    }
    assert!(passed_through);
    // With it, every GET gets the good backend's answer.
    let retrying = TollgateProcess::start(&pool(
        &[&broken, &good],
        "    max_fails: 0\n    retry_on_5xx: true\n",
    ));
    let broken_before = broken.count();
    for _ in 0..20 {
        let r = get(retrying.addr, "/x").expect("get");
        assert_eq!((r.status, r.text().as_str()), (200, "good"));
    }
    assert!(
        broken.count() > broken_before,
        "the broken backend was asked"
    );
    assert!(retrying.metric_sum("tollgate_upstream_retries_total", "api") >= 1.0);
    // A POST is not retried: it gets whatever backend it reached, as is.
    let statuses: Vec<u16> = (0..20)
        .map(|_| {
            request(retrying.addr, "POST", "/x", &[], b"{}")
                .expect("post")
                .status
        })
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
}
