//! 502 / 504 bodies, and the route's timeouts.

mod common;
use common::*;

fn closed_port_addr() -> String {
    // Bound and dropped at once: connecting is refused.
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn refused_connection_is_a_json_502() {
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: api, upstream: api }}\n",
        closed_port_addr()
    ));
    let r = get(proxy.addr, "/x").expect("request");
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"], "bad_gateway");
    assert_eq!(r.json()["message"], "Upstream api failed to answer");
    assert!(r.header("x-request-id").is_some());
}

#[test]
fn upstream_closing_without_a_reply_is_a_json_502() {
    let upstream = TestUpstream::start(|_| Action::Close);
    let proxy = TollgateProcess::start(&one_route(upstream.addr));
    let r = get(proxy.addr, "/x").expect("request");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "bad_gateway");
    assert!(upstream.count() >= 1);
}

#[test]
fn total_timeout_is_a_504_that_quotes_the_route_number() {
    let upstream = TestUpstream::start(|_| Action::ReplyWhenReleased(Reply::ok("late")));
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: api, upstream: api, timeouts: {{ total: 1s }} }}\n",
        upstream.addr
    ));
    let r = get(proxy.addr, "/slow").expect("request");
    assert_eq!(r.status, 504);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.text(),
        r#"{"error":"request_timeout","message":"Request exceeded 1.0s timeout"}"#
    );
    upstream.release();
}

#[test]
fn read_timeout_shorter_than_total_is_an_upstream_timeout() {
    let upstream = TestUpstream::start(|_| Action::ReplyWhenReleased(Reply::ok("late")));
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: api, upstream: api, timeouts: {{ read: 500ms, total: 20s }} }}\n",
        upstream.addr
    ));
    let r = get(proxy.addr, "/slow").expect("request");
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert_eq!(
        r.json()["message"],
        "Upstream api did not respond within 0.5s"
    );
    upstream.release();
}

#[test]
fn upstream_error_statuses_pass_through_unchanged() {
    let upstream = TestUpstream::start(|_| {
        Action::Reply(Reply {
            status: 503,
            headers: vec![("Retry-After".into(), "7".into())],
            body: b"busy".to_vec(),
        })
    });
    let proxy = TollgateProcess::start(&one_route(upstream.addr));
    let r = get(proxy.addr, "/x").expect("request");
    assert_eq!((r.status, r.text().as_str()), (503, "busy"));
    assert_eq!(r.header("retry-after"), Some("7"));
}
