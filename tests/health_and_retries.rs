//! Active and passive health, retries, and the all-down 503.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn backend_json(proxy: &TollgateProcess, addr: std::net::SocketAddr) -> serde_json::Value {
    let health = proxy.health();
    health["components"]["upstreams"]["api"]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .expect("backend in /health")
}

fn healthy(proxy: &TollgateProcess, addr: std::net::SocketAddr) -> bool {
    backend_json(proxy, addr)["healthy"] == true
}

fn failures(proxy: &TollgateProcess, addr: std::net::SocketAddr, kind: &str) -> f64 {
    proxy
        .metric(&format!(
            "tollgate_upstream_failures_total{{backend=\"{addr}\",kind=\"{kind}\",upstream=\"api\"}}"
        ))
        .unwrap_or(0.0)
}

const ACTIVE_CHECK: &str = "    health_check: { path: /health, interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 2 }\n";

fn config(backends: &[&TestUpstream], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        "upstreams:\n  api:\n    backends: [{}]\n{extra}routes:\n  - {{ name: api, upstream: api }}\n",
        list.join(", ")
    )
}

#[test]
fn a_backend_that_goes_down_is_taken_out_and_comes_back() {
    let (a, b) = (TestUpstream::fixed("a"), TestUpstream::fixed("b"));
    // Passive health off: this test is about the active check alone.
    let proxy = TollgateProcess::start(&config(
        &[&a, &b],
        &format!("{ACTIVE_CHECK}    max_fails: 0\n"),
    ));
    wait_until("both backends are healthy", || {
        healthy(&proxy, a.addr) && healthy(&proxy, b.addr)
    });

    a.stop();
    // While A is down, idempotent requests never see its connect failures:
    // they are retried on B until the health check takes A out.
    for _ in 0..40 {
        let r = get(proxy.addr, "/x").expect("request");
        assert_eq!((r.status, r.text().as_str()), (200, "b"));
    }
    wait_until("A is marked down", || !healthy(&proxy, a.addr));
    assert_eq!(backend_json(&proxy, a.addr)["active_check"], "failing");

    // Marked down: no request is even attempted on A.
    let attempts_before = failures(&proxy, a.addr, "connect");
    for _ in 0..20 {
        assert_eq!(get(proxy.addr, "/x").expect("request").status, 200);
    }
    assert_eq!(failures(&proxy, a.addr, "connect"), attempts_before);

    a.restart();
    wait_until("A is healthy again", || healthy(&proxy, a.addr));
    let served_before = a.count();
    wait_until("A serves traffic again", || {
        get(proxy.addr, "/x").expect("request");
        a.count() > served_before
    });
    proxy.wait_metric(
        &format!(
            "tollgate_upstream_healthy{{backend=\"{}\",upstream=\"api\"}}",
            a.addr
        ),
        1.0,
    );
}

#[test]
fn passive_health_takes_a_failing_backend_out_for_fail_timeout() {
    let broken = Arc::new(AtomicBool::new(true));
    let flag = broken.clone();
    let a = TestUpstream::start(move |_| {
        if flag.load(Ordering::SeqCst) {
            Action::Close
        } else {
            Action::Reply(Reply::ok("a"))
        }
    });
    let b = TestUpstream::fixed("b");
    let proxy = TollgateProcess::start(&config(
        &[&a, &b],
        "    max_fails: 2\n    fail_timeout: 1s\n",
    ));

    // Until A has failed twice, GETs that land on it are retried on B.
    wait_until("A is out of rotation", || {
        assert_eq!(get(proxy.addr, "/x").expect("request").text(), "b");
        backend_json(&proxy, a.addr)["passive_down_for_ms"].is_u64()
    });
    assert!(!healthy(&proxy, a.addr));
    let seen_by_a = a.count();
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/x").expect("request").text(), "b");
    }
    assert_eq!(
        a.count(),
        seen_by_a,
        "a backend out of rotation got traffic"
    );
    assert!(failures(&proxy, a.addr, "closed") >= 2.0);

    // After fail_timeout A is tried again, and now it answers.
    broken.store(false, Ordering::SeqCst);
    wait_until("A serves again after fail_timeout", || {
        get(proxy.addr, "/x").expect("request").text() == "a"
    });
}

#[test]
fn all_backends_down_is_a_json_503_and_recovers_without_restart() {
    let a = TestUpstream::fixed("a");
    let proxy =
        TollgateProcess::start(&config(&[&a], &format!("{ACTIVE_CHECK}    max_fails: 0\n")));
    wait_until("A is healthy", || healthy(&proxy, a.addr));
    a.stop();
    wait_until("/health reports degraded", || {
        proxy.health()["status"] == "degraded"
    });
    assert_eq!(
        proxy.health()["components"]["upstreams"]["api"]["status"],
        "down"
    );
    let r = get(proxy.addr, "/x").expect("request");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_healthy_upstream");
    assert_eq!(r.json()["message"], "No healthy backend in upstream api");

    a.restart();
    wait_until("the pool recovers", || {
        get(proxy.addr, "/x").is_ok_and(|r| r.status == 200)
    });
    assert_eq!(proxy.health()["status"], "ok");
}

#[test]
fn a_post_is_not_retried_after_the_upstream_received_it_but_a_get_is() {
    let a = TestUpstream::start(|_| Action::Close);
    let b = TestUpstream::fixed("b");
    // max_fails 0: keep A in rotation so both methods keep reaching it.
    let proxy = TollgateProcess::start(&config(&[&a, &b], "    max_fails: 0\n"));

    let mut saw_post_on_a = false;
    for _ in 0..200 {
        let (a_before, b_before) = (a.count(), b.count());
        let r = request(proxy.addr, "POST", "/orders", &[], b"{\"qty\":1}").expect("request");
        if a.count() > a_before {
            assert_eq!(r.status, 502, "a POST that reached A must not be replayed");
            assert_eq!(b.count(), b_before, "the POST was replayed on B");
            saw_post_on_a = true;
            break;
        }
        assert_eq!(r.status, 200);
    }
    assert!(saw_post_on_a, "no POST ever landed on A");

    for _ in 0..30 {
        let r = get(proxy.addr, "/x").expect("request");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "b"),
            "a reset GET is retried on B"
        );
    }
    assert!(
        a.recorded().iter().any(|r| r.method == "GET"),
        "no GET was tried on A first"
    );
    assert!(
        proxy
            .metric(r#"tollgate_upstream_retries_total{upstream="api"}"#)
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn a_tcp_check_takes_a_stopped_backend_out() {
    let (a, b) = (TestUpstream::fixed("a"), TestUpstream::fixed("b"));
    let proxy = TollgateProcess::start(&config(
        &[&a, &b],
        "    health_check: { type: tcp, interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1 }\n    max_fails: 0\n",
    ));
    a.stop();
    wait_until("A is marked down by the tcp check", || {
        !healthy(&proxy, a.addr)
    });
    assert_eq!(backend_json(&proxy, a.addr)["active_check"], "failing");
    assert!(healthy(&proxy, b.addr));
    a.restart();
    wait_until("A passes again", || healthy(&proxy, a.addr));
}

#[test]
fn a_reload_keeps_the_health_of_backends_that_stay() {
    let (a, b) = (TestUpstream::fixed("a"), TestUpstream::fixed("b"));
    let body = config(&[&a, &b], &format!("{ACTIVE_CHECK}    max_fails: 0\n"));
    let proxy = TollgateProcess::start(&body);
    a.stop();
    wait_until("A is marked down", || !healthy(&proxy, a.addr));

    // Same upstreams and check, one more route: A must stay down, not
    // start over as healthy.
    proxy.rewrite_config(&format!(
        "{body}  - {{ name: extra, upstream: api, match: {{ path_prefix: /extra/ }} }}\n"
    ));
    let r = proxy.admin_post("/config/reload", ADMIN_TOKEN, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(proxy.health()["components"]["config"]["routes"], 2);
    assert!(
        !healthy(&proxy, a.addr),
        "health state was reset by the reload"
    );
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/extra/x").expect("request").text(), "b");
    }
}

#[test]
fn slow_requests_are_logged_with_their_timings() {
    let up = TestUpstream::start(|_| Action::ReplyWhenReleased(Reply::ok("slow")));
    let proxy = TollgateProcess::start(&format!(
        "logging: {{ slow_request_threshold: 50ms }}\n{}",
        config(&[&up], "")
    ));
    let addr = proxy.addr;
    let started = std::time::Instant::now();
    let client = std::thread::spawn(move || get(addr, "/reports/42").expect("request"));
    wait_until("the request is parked upstream", || up.held() == 1);
    wait_until("the threshold has passed", || {
        started.elapsed() > std::time::Duration::from_millis(80)
    });
    up.release();
    assert_eq!(client.join().expect("client").status, 200);
    wait_until("the slow-request line is written", || {
        proxy
            .log_text()
            .contains("slow request: GET /reports/42 status=200")
    });
    let log = proxy.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("slow request: GET /reports/42"))
        .expect("line");
    for field in [
        "route=api",
        "upstream=api",
        "attempts=1",
        "connect_ms=",
        "ttfb_ms=",
        "total_ms=",
    ] {
        assert!(line.contains(field), "{field} missing in: {line}");
    }
    assert!(!line.contains("ttfb_ms=-"), "{line}");
    proxy.wait_metric(
        r#"tollgate_upstream_request_duration_seconds_count{upstream="api"}"#,
        1.0,
    );
}

/// A retried idempotent request carries its body: Pingora keeps the first
/// 64 KiB in its retry buffer.
#[test]
fn a_reset_put_is_retried_with_its_body() {
    let a = TestUpstream::start(|_| Action::Close);
    let b = TestUpstream::start(|req| {
        Action::Reply(Reply {
            status: 200,
            headers: Vec::new(),
            body: req.body.clone(),
        })
    });
    let proxy = TollgateProcess::start(&config(&[&a, &b], "    max_fails: 0\n"));
    let mut retried = false;
    for _ in 0..100 {
        let a_before = a.count();
        let r = request(proxy.addr, "PUT", "/items/7", &[], b"{\"name\":\"seven\"}").expect("put");
        assert_eq!((r.status, r.text().as_str()), (200, "{\"name\":\"seven\"}"));
        if a.count() > a_before {
            retried = true;
            break;
        }
    }
    assert!(retried, "no PUT ever landed on A first");
}
