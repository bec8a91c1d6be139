//! Backends that move: names in `backends` re-resolved through DNS while
//! requests flow. A real DNS server (tests/common/dns.rs) on a loopback
//! port answers tollgate's questions; the tests change its records, make
//! it fail, and stop it, and watch where traffic goes. Loopback addresses
//! only (127.0.0.0/8).

mod common;

use common::dns::{DnsServer, Mode};
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Two upstreams on one port of two loopback addresses (an A record names
/// the address; the port comes from the config), answering their name.
fn pair(first: &str, second: &str) -> (TestUpstream, TestUpstream) {
    let a = TestUpstream::start_at(SocketAddr::new(first.parse().expect("ip"), 0), |_| {
        Action::Reply(Reply::ok("A"))
    });
    let b = TestUpstream::start_at(
        SocketAddr::new(second.parse().expect("ip"), a.addr.port()),
        |_| Action::Reply(Reply::ok("B")),
    );
    (a, b)
}

fn route(upstream_yaml: &str) -> String {
    format!("upstreams:\n  api:\n{upstream_yaml}routes:\n  - {{ name: api, upstream: api }}\n")
}

/// The addresses the pool has now, from `/health`.
fn members(p: &TollgateProcess) -> Vec<String> {
    let health = p.health();
    health["components"]["upstreams"]["api"]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["address"].as_str().map(str::to_owned))
        .collect()
}

/// The pool's name report from `/health`.
fn name_report(p: &TollgateProcess) -> serde_json::Value {
    p.health()["components"]["upstreams"]["api"]["dns"][0].clone()
}

fn body_of(p: &TollgateProcess) -> (u16, String) {
    let r = get(p.addr, "/").expect("request");
    (r.status, r.text())
}

#[test]
fn a_moved_a_record_takes_all_traffic_at_its_next_refresh_without_a_failed_request() {
    let dns = DnsServer::start();
    dns.set_a("api.test", &["127.0.0.2"]);
    let (a, b) = pair("127.0.0.2", "127.0.0.3");
    let port = a.addr.port();
    let p = TollgateProcess::start(&format!(
        "{}{}",
        dns.config(),
        route(&format!("    backends: [\"api.test:{port}\"]\n"))
    ));
    assert_eq!(
        body_of(&p),
        (200, "A".to_owned()),
        "resolved before serving"
    );

    // A steady stream of requests while the record moves.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stream = {
        let (stop, sent, failed, addr) = (stop.clone(), sent.clone(), failed.clone(), p.addr);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let ok = get(addr, "/").is_ok_and(|r| r.status == 200);
                sent.fetch_add(1, Ordering::SeqCst);
                if !ok {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    wait_until("the stream reaches A", || a.count() >= 20);
    let moved_at = Instant::now();
    dns.set_a("api.test", &["127.0.0.3"]);
    let new_member = format!("127.0.0.3:{port}");
    wait_until("the pool follows the record", || {
        members(&p) == [new_member.clone()]
    });
    eprintln!(
        "pool followed the record after {:?} (TTL 1 s)",
        moved_at.elapsed()
    );
    // From the refresh that saw the change on, nothing goes to A. (The one
    // request the stream may have had in flight on A then finishes there.)
    let started_before_the_change = sent.load(Ordering::SeqCst) + 1;
    wait_until("a request starts after the change", || {
        sent.load(Ordering::SeqCst) > started_before_the_change
    });
    let a_before = a.count();
    let b_before = b.count();
    wait_until("the stream reaches B", || b.count() >= b_before + 50);
    stop.store(true, Ordering::SeqCst);
    stream.join().expect("stream");
    assert_eq!(
        a.count(),
        a_before,
        "a request went to the old address after the change"
    );
    for _ in 0..20 {
        assert_eq!(body_of(&p), (200, "B".to_owned()));
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "of {} requests",
        sent.load(Ordering::SeqCst)
    );
    assert_eq!(
        p.metric("tollgate_upstream_backends{upstream=\"api\"}"),
        Some(1.0)
    );
    assert!(p
        .metric("tollgate_dns_resolutions_total{result=\"ok\",upstream=\"api\"}")
        .is_some_and(|n| n >= 2.0));
    let report = name_report(&p);
    assert_eq!(report["status"], "ok");
    assert!(report["addresses"][0]["since_unix"].as_u64().is_some());
}

#[test]
fn an_address_removed_while_a_slow_request_is_in_flight_lets_it_finish() {
    let dns = DnsServer::start();
    dns.set_a("api.test", &["127.0.0.2"]);
    let slow = TestUpstream::start_at("127.0.0.2:0".parse().expect("addr"), |_| {
        Action::ReplyWhenReleased(Reply::ok("slow"))
    });
    let port = slow.addr.port();
    let fresh = TestUpstream::start_at(SocketAddr::from(([127, 0, 0, 3], port)), |_| {
        Action::Reply(Reply::ok("fresh"))
    });
    let p = TollgateProcess::start(&format!(
        "{}{}",
        dns.config(),
        route(&format!("    backends: [\"api.test:{port}\"]\n"))
    ));
    let addr = p.addr;
    let in_flight = std::thread::spawn(move || get(addr, "/").expect("slow request"));
    wait_until("the slow request reaches its backend", || slow.held() == 1);

    dns.set_a("api.test", &["127.0.0.3"]);
    wait_until("the pool follows the record", || {
        members(&p) == [format!("127.0.0.3:{port}")]
    });
    assert_eq!(
        body_of(&p),
        (200, "fresh".to_owned()),
        "new requests go to the new address"
    );
    let draining =
        format!("tollgate_upstream_in_flight{{backend=\"127.0.0.2:{port}\",upstream=\"api\"}}");
    assert_eq!(
        p.metric(&draining),
        Some(1.0),
        "the removed backend still has its request"
    );

    slow.release();
    let done = in_flight.join().expect("join");
    assert_eq!((done.status, done.text()), (200, "slow".to_owned()));
    wait_until("the drained backend's state is dropped", || {
        p.metric(&draining).is_none()
    });
    assert_eq!(fresh.count(), 1);
}

#[test]
fn dns_failures_keep_the_last_good_addresses() {
    let dns = DnsServer::start();
    dns.set_a("api.test", &["127.0.0.2"]);
    let up = TestUpstream::start_at("127.0.0.2:0".parse().expect("addr"), |_| {
        Action::Reply(Reply::ok("up"))
    });
    let port = up.addr.port();
    let p = TollgateProcess::start(&format!(
        "{}{}",
        dns.config(),
        route(&format!("    backends: [\"api.test:{port}\"]\n"))
    ));
    assert_eq!(body_of(&p), (200, "up".to_owned()));

    // SERVFAIL, then NXDOMAIN, then no server at all: each is counted and
    // shown, and traffic keeps flowing to the last good address.
    type Cause<'a> = Box<dyn Fn() + 'a>;
    let cases: [(&str, Cause); 3] = [
        ("servfail", Box::new(|| dns.set_mode(Mode::ServFail))),
        (
            "nxdomain",
            Box::new(|| {
                dns.set_mode(Mode::Answer);
                dns.set_a("api.test", &[]);
            }),
        ),
        ("timeout", Box::new(|| dns.stop())),
    ];
    for (result, cause) in cases {
        let series =
            format!("tollgate_dns_resolutions_total{{result=\"{result}\",upstream=\"api\"}}");
        cause();
        let deadline = Instant::now() + DEADLINE;
        while !p.metric(&series).is_some_and(|n| n >= 1.0) {
            let counted: Vec<String> = p
                .metrics()
                .lines()
                .filter(|l| l.starts_with("tollgate_dns_resolutions_total"))
                .map(str::to_owned)
                .collect();
            assert!(
                Instant::now() < deadline,
                "no {result} counted: {counted:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20)); // poll interval
        }
        let report = name_report(&p);
        assert_eq!(report["status"], "stale", "{report}");
        assert_eq!(report["last_error"]["result"], result, "{report}");
        assert_eq!(
            report["addresses"][0]["address"],
            format!("127.0.0.2:{port}")
        );
        assert_eq!(p.health()["status"], "degraded");
        for _ in 0..10 {
            assert_eq!(body_of(&p), (200, "up".to_owned()), "after {result}");
        }
    }
    assert_eq!(members(&p), [format!("127.0.0.2:{port}")]);
}

#[test]
fn srv_weights_three_to_one_share_traffic_accordingly() {
    let dns = DnsServer::start();
    let heavy = TestUpstream::start_at("127.0.0.2:0".parse().expect("addr"), |_| {
        Action::Reply(Reply::ok("heavy"))
    });
    let light = TestUpstream::start_at("127.0.0.3:0".parse().expect("addr"), |_| {
        Action::Reply(Reply::ok("light"))
    });
    dns.set_a("heavy.users.test", &["127.0.0.2"]);
    dns.set_a("light.users.test", &["127.0.0.3"]);
    dns.set_srv(
        "_http._tcp.users.test",
        &[
            (10, 3, heavy.addr.port(), "heavy.users.test"),
            (10, 1, light.addr.port(), "light.users.test"),
        ],
    );
    let p = TollgateProcess::start(&format!(
        "{}{}",
        dns.config(),
        route("    backends: [{ srv: \"_http._tcp.users.test\" }]\n")
    ));
    for _ in 0..400 {
        let (status, text) = body_of(&p);
        assert_eq!(status, 200, "{text}\n{}\n{}", p.health(), p.log_text());
    }
    // Binomial(400, 0.75): mean 300, sd 8.7; the bounds are 7 sd away.
    let share = heavy.count();
    assert_eq!(share + light.count(), 400);
    assert!(
        (240..=360).contains(&share),
        "3:1 expected, heavy got {share} of 400"
    );
    let report = name_report(&p);
    assert_eq!(
        report["addresses"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
}

#[test]
fn srv_priority_fails_over_when_the_first_groups_targets_fail_their_active_check() {
    let dns = DnsServer::start();
    let sick = Arc::new(AtomicBool::new(false));
    let primary = {
        let sick = sick.clone();
        TestUpstream::start_at("127.0.0.2:0".parse().expect("addr"), move |req| {
            if req.path == "/health" && sick.load(Ordering::SeqCst) {
                Action::Reply(Reply {
                    status: 503,
                    headers: Vec::new(),
                    body: Vec::new(),
                })
            } else {
                Action::Reply(Reply::ok("primary"))
            }
        })
    };
    let backup = TestUpstream::start_at("127.0.0.3:0".parse().expect("addr"), |_| {
        Action::Reply(Reply::ok("backup"))
    });
    dns.set_a("primary.users.test", &["127.0.0.2"]);
    dns.set_a("backup.users.test", &["127.0.0.3"]);
    dns.set_srv(
        "_http._tcp.users.test",
        &[
            (10, 1, primary.addr.port(), "primary.users.test"),
            (20, 1, backup.addr.port(), "backup.users.test"),
        ],
    );
    let p = TollgateProcess::start(&format!(
        "{}{}",
        dns.config(),
        route(
            "    backends: [{ srv: \"_http._tcp.users.test\" }]\n    \
             health_check: { path: /health, interval: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }\n"
        )
    ));
    for _ in 0..20 {
        assert_eq!(
            body_of(&p),
            (200, "primary".to_owned()),
            "the lowest priority takes all"
        );
    }
    sick.store(true, Ordering::SeqCst);
    wait_until("the primary fails its check", || body_of(&p).1 == "backup");
    for _ in 0..20 {
        assert_eq!(
            body_of(&p),
            (200, "backup".to_owned()),
            "priority 20 while 10 is down"
        );
    }
    sick.store(false, Ordering::SeqCst);
    wait_until("the primary passes again", || body_of(&p).1 == "primary");
    for _ in 0..20 {
        assert_eq!(body_of(&p), (200, "primary".to_owned()));
    }
}

#[test]
fn a_name_that_never_resolved_starts_an_empty_pool_that_fills_when_it_resolves() {
    let dns = DnsServer::start();
    let up = TestUpstream::start_at("127.0.0.2:0".parse().expect("addr"), |_| {
        Action::Reply(Reply::ok("late"))
    });
    let port = up.addr.port();
    let body = format!(
        "{}{}",
        dns.config(),
        route(&format!("    backends: [\"late.test:{port}\"]\n"))
    );
    let p = TollgateProcess::start(&body);
    assert!(
        p.log_text().contains("backend late.test"),
        "a warning names the backend"
    );
    let (status, text) = body_of(&p);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("no_healthy_upstream"), "{text}");
    assert_eq!(name_report(&p)["status"], "unresolved");

    dns.set_a("late.test", &["127.0.0.2"]);
    wait_until("the name resolves and joins", || {
        body_of(&p) == (200, "late".to_owned())
    });

    // `check` warns; with require_at_start it refuses, as `run` would.
    let dir = scratch_dir("dns-check");
    let file = dir.join("t.yaml");
    let missing = body.replace("late.test", "missing.test");
    std::fs::write(&file, &missing).expect("write");
    let (ok, out, _) = run_cli(&["check", file.to_str().expect("path")]);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning") && out.contains("missing.test") && out.contains("nxdomain"),
        "{out}"
    );
    std::fs::write(
        &file,
        missing.replace("timeout: 300ms", "timeout: 300ms, require_at_start: true"),
    )
    .expect("write");
    let (ok, _, err) = run_cli(&["check", file.to_str().expect("path")]);
    assert!(!ok, "require_at_start refuses an unresolved name");
    assert!(err.contains("require_at_start"), "{err}");
}

#[test]
fn a_reload_keeps_a_names_addresses_and_resolves_new_names_before_serving_them() {
    let dns = DnsServer::start();
    dns.set_a("api.test", &["127.0.0.2"]);
    dns.set_a("more.test", &["127.0.0.3"]);
    let (a, b) = pair("127.0.0.2", "127.0.0.3");
    let port = a.addr.port();
    let p = TollgateProcess::start(&format!(
        "{}{}",
        dns.config(),
        route(&format!("    backends: [\"api.test:{port}\"]\n"))
    ));
    assert_eq!(body_of(&p), (200, "A".to_owned()));
    p.rewrite_config(&route(&format!(
        "    backends: [\"api.test:{port}\", \"more.test:{port}\"]\n"
    )));
    let reloaded = p.admin_post("/config/reload", ADMIN_TOKEN, "");
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    // No window with an empty pool: both names have addresses at once.
    assert_eq!(
        members(&p),
        [format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}")]
    );
    for _ in 0..40 {
        assert_eq!(body_of(&p).0, 200);
    }
    assert!(a.count() > 1 && b.count() > 0, "both names take traffic");
}

/// What a DNS answer may not do (issue 38): aim a pool at the cloud
/// metadata address, at multicast or the unspecified address, nor grow a
/// pool without bound (tollgate's own listeners are refused too:
/// `discovery/screen.rs`). The refused records are left out; the
/// answer's good addresses are used.
#[test]
fn an_answer_cannot_aim_a_pool_at_metadata_or_flood_it() {
    let dns = DnsServer::start();
    let up = TestUpstream::start_at(SocketAddr::new("127.0.0.2".parse().expect("ip"), 0), |_| {
        Action::Reply(Reply::ok("real"))
    });
    let port = up.addr.port();
    dns.set_a(
        "api.test",
        &["169.254.169.254", "0.0.0.0", "224.0.0.1", "127.0.0.2"],
    );
    // 200 addresses: ten SRV targets of twenty A records each (one UDP
    // answer of the test server holds a few dozen records).
    let targets: Vec<String> = (0..10).map(|t| format!("t{t}.flood.test")).collect();
    for (t, target) in targets.iter().enumerate() {
        let ips: Vec<String> = (1..=20).map(|i| format!("10.0.{t}.{i}")).collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        dns.set_a(target, &ips);
    }
    let records: Vec<(u16, u16, u16, &str)> =
        targets.iter().map(|t| (0, 1, 80, t.as_str())).collect();
    dns.set_srv("_http._tcp.flood.test", &records);
    let p = TollgateProcess::start(&format!(
        "{}upstreams:\n  api:\n    backends: [\"api.test:{port}\"]\n  \
         flood:\n    backends: [{{ srv: \"_http._tcp.flood.test\" }}]\n\
         routes:\n  - {{ name: api, upstream: api }}\n",
        dns.config(),
    ));
    assert_eq!(members(&p), [format!("127.0.0.2:{port}")]);
    assert_eq!(body_of(&p), (200, "real".to_owned()));
    let flooded = p.health()["components"]["upstreams"]["flood"]["backends"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(
        flooded,
        128,
        "an answer adds at most 128 backends: {}",
        p.log_text()
    );
}
