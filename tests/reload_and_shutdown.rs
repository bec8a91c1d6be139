//! Hot reload (SIGHUP and the admin API) and graceful shutdown.

mod common;
use common::*;
use std::thread;

fn reload_via_api(proxy: &TollgateProcess, token: &str) -> Response {
    proxy.admin_post("/config/reload", token, "")
}

#[test]
fn sighup_applies_a_new_route_table_and_refuses_a_broken_file() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&prefix_route(up.addr, "/old/"));
    assert_eq!(status_of(&proxy, "/old/x"), 200);
    assert_eq!(status_of(&proxy, "/new/x"), 404);

    proxy.rewrite_config(&prefix_route(up.addr, "/new/"));
    proxy.signal("HUP");
    proxy.wait_metric(r#"tollgate_config_reloads_total{result="ok"}"#, 1.0);
    assert_eq!(status_of(&proxy, "/new/x"), 200);
    assert_eq!(status_of(&proxy, "/old/x"), 404);

    proxy.rewrite_config(
        "upstreams:\n  api: { backends: [] }\nroutes:\n  - { name: r, upstream: nope }\n",
    );
    proxy.signal("HUP");
    proxy.wait_metric(r#"tollgate_config_reloads_total{result="error"}"#, 1.0);
    assert_eq!(
        status_of(&proxy, "/new/x"),
        200,
        "the old config must keep serving"
    );
    let log = proxy.log_text();
    assert!(log.contains("config reload refused"), "{log}");
    assert!(
        log.contains("tollgate.yaml:12:16: routes[0].upstream: unknown upstream \"nope\""),
        "{log}"
    );
    assert_eq!(
        proxy.metric(r#"tollgate_config_reloads_total{result="ok"}"#),
        Some(1.0)
    );
}

#[test]
fn admin_reload_needs_the_token_and_reports_errors() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&prefix_route(up.addr, "/old/"));
    proxy.rewrite_config(&prefix_route(up.addr, "/new/"));

    let denied = reload_via_api(&proxy, "wrong");
    assert_eq!(denied.status, 401);
    assert_eq!(
        status_of(&proxy, "/new/x"),
        404,
        "an unauthorised reload changed the config"
    );

    let ok = reload_via_api(&proxy, ADMIN_TOKEN);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["loaded"]["routes"], 1);
    assert_eq!(status_of(&proxy, "/new/x"), 200);

    proxy.rewrite_config(
        &prefix_route(up.addr, "/new/").replace("path_prefix: /new/", "path_prefx: /new/"),
    );
    let refused = reload_via_api(&proxy, ADMIN_TOKEN);
    assert_eq!(refused.status, 422);
    assert_eq!(refused.json()["error"], "reload_refused");
    assert!(refused.json()["message"]
        .as_str()
        .is_some_and(|m| m.contains("unknown field `path_prefx`")));
    assert_eq!(status_of(&proxy, "/new/x"), 200);
}

#[test]
fn in_flight_requests_finish_on_their_config_and_counts_survive_a_reload() {
    let up = TestUpstream::start(|_| Action::ReplyWhenReleased(Reply::ok("done")));
    let proxy = TollgateProcess::start(&prefix_route(up.addr, "/old/"));
    let addr = proxy.addr;
    let parked = thread::spawn(move || get(addr, "/old/slow").expect("request"));
    wait_until("the request is parked upstream", || up.held() == 1);

    proxy.rewrite_config(&prefix_route(up.addr, "/new/"));
    assert_eq!(reload_via_api(&proxy, ADMIN_TOKEN).status, 200);
    // The backend stayed: its in-flight count carried over to the new pool.
    let in_flight =
        || proxy.health()["components"]["upstreams"]["api"]["backends"][0]["in_flight"].as_i64();
    assert_eq!(in_flight(), Some(1));

    up.release();
    let r = parked.join().expect("thread");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "done"),
        "the old route's request finished"
    );
    wait_until("the count returns to zero", || in_flight() == Some(0));
    assert_eq!(status_of(&proxy, "/old/x"), 404);
}

#[test]
fn sigterm_lets_in_flight_requests_complete() {
    let up = TestUpstream::start(|_| Action::ReplyWhenReleased(Reply::ok("finished")));
    let mut proxy = TollgateProcess::start(&prefix_route(up.addr, "/"));
    let addr = proxy.addr;
    let parked = thread::spawn(move || get(addr, "/slow").expect("request"));
    wait_until("the request is parked upstream", || up.held() == 1);

    proxy.signal("TERM");
    wait_until("shutdown has started", || {
        proxy.log_text().contains("SIGTERM received")
    });
    up.release();
    let r = parked.join().expect("thread");
    assert_eq!((r.status, r.text().as_str()), (200, "finished"));
    assert!(proxy.wait_exit().success());
}

#[test]
fn graceful_upgrade_hands_the_sockets_over_without_failing_a_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let up = TestUpstream::fixed("ok");
    let mut old = TollgateProcess::start(&prefix_route(up.addr, "/"));
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, served, failed, addr) = (stop.clone(), served.clone(), failed.clone(), old.addr);
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match get(addr, "/x") {
                    Ok(r) if r.status == 200 => served.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    wait_until("traffic flows", || served.load(Ordering::SeqCst) > 10);

    let mut new = old.spawn_upgrade();
    wait_until("the new process waits on the upgrade socket", || {
        old.upgrade_socket().exists()
    });
    old.signal("QUIT");
    wait_until("the new process is ready", || {
        new.log_text().contains("tollgate is ready")
    });
    assert!(old.wait_exit().success(), "old process: {}", old.log_text());
    let served_by_old = served.load(Ordering::SeqCst);
    wait_until("the new process serves traffic", || {
        served.load(Ordering::SeqCst) > served_by_old + 10
    });
    stop.store(true, Ordering::SeqCst);
    load.join().expect("load thread");

    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the upgrade"
    );
    assert!(!new.has_exited(), "new process: {}", new.log_text());
    assert_eq!(get(new.admin, "/ready").expect("ready").status, 200);
}
