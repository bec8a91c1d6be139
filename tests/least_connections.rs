//! Weighted least-connections across real backends, and in-flight counts
//! that always return to zero.

mod common;
use common::*;
use std::thread;

fn pool_config(backends: &[&TestUpstream]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        "upstreams:\n  api: {{ backends: [{}] }}\nroutes:\n  - {{ name: api, upstream: api }}\n",
        list.join(", ")
    )
}

fn in_flight(proxy: &TollgateProcess) -> Vec<i64> {
    proxy.health()["components"]["upstreams"]["api"]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["in_flight"].as_i64().expect("in_flight"))
        .collect()
}

#[test]
fn a_backend_with_parked_requests_gets_no_new_ones_while_another_is_free() {
    let slow = TestUpstream::start(|_| Action::ReplyWhenReleased(Reply::ok("slow")));
    let fast = TestUpstream::fixed("fast");
    let proxy = TollgateProcess::start(&pool_config(&[&slow, &fast]));

    // Send requests until one is parked on the slow backend. Idle backends
    // tie, so each request has an even chance of landing there.
    let mut parked = Vec::new();
    for i in 0.. {
        assert!(i < 200, "no request ever reached the slow backend");
        let addr = proxy.addr;
        parked.push(thread::spawn(move || get(addr, "/x").expect("request")));
        let sent = i + 1;
        wait_until("the request reached a backend", || {
            slow.count() + fast.count() == sent
        });
        if slow.count() == 1 {
            break;
        }
    }
    wait_until("the slow backend holds the request", || slow.held() == 1);

    // While one request is parked, every new one goes to the free backend.
    let fast_before = fast.count();
    for _ in 0..30 {
        wait_until("only the parked request is in flight", || {
            in_flight(&proxy) == vec![1, 0]
        });
        let r = get(proxy.addr, "/x").expect("request");
        assert_eq!(r.text(), "fast");
    }
    assert_eq!(slow.count(), 1);
    assert_eq!(fast.count(), fast_before + 30);

    slow.release();
    for handle in parked {
        assert_eq!(handle.join().expect("thread").status, 200);
    }
    wait_until("in-flight counts return to zero", || {
        in_flight(&proxy) == vec![0, 0]
    });
}

#[test]
fn equal_idle_backends_share_load_evenly() {
    let (a, b) = (TestUpstream::fixed("a"), TestUpstream::fixed("b"));
    let proxy = TollgateProcess::start(&pool_config(&[&a, &b]));
    for _ in 0..200 {
        assert_eq!(get(proxy.addr, "/x").expect("request").status, 200);
    }
    // Binomial(200, 0.5): 60..140 is more than five standard deviations.
    assert!(
        (60..=140).contains(&a.count()),
        "a={} b={}",
        a.count(),
        b.count()
    );
    assert_eq!(a.count() + b.count(), 200);
}

#[test]
fn in_flight_returns_to_zero_after_errors_and_client_disconnects() {
    let held = TestUpstream::start(|req| {
        if req.path == "/close" {
            Action::Close
        } else {
            Action::ReplyWhenReleased(Reply::ok("late"))
        }
    });
    let proxy = TollgateProcess::start(&pool_config(&[&held]));

    // An upstream error.
    assert_eq!(get(proxy.addr, "/close").expect("request").status, 502);

    // A client that leaves while its request is parked upstream.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(proxy.addr).expect("connect");
        s.write_all(&client::raw_request("GET", "/held", &[], b""))
            .expect("send");
        wait_until("the request is parked upstream", || held.held() == 1);
        assert_eq!(in_flight(&proxy), vec![1]);
        proxy.wait_metric("tollgate_requests_in_flight", 1.0);
    } // socket dropped: the client is gone
    held.release();
    wait_until("in-flight returns to zero", || in_flight(&proxy) == vec![0]);
    proxy.wait_metric("tollgate_requests_in_flight", 0.0);
    let backend_gauge = format!(
        "tollgate_upstream_in_flight{{backend=\"{}\",upstream=\"api\"}}",
        held.addr
    );
    proxy.wait_metric(&backend_gauge, 0.0);
}
