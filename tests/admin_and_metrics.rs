//! The admin listener: /metrics with route labels, /health, /ready.

mod common;
use common::*;

fn setup() -> (TollgateProcess, TestUpstream) {
    let upstream = TestUpstream::fixed("hello");
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: users, upstream: api, match: {{ path_prefix: /users/ }} }}\n",
        upstream.addr
    ));
    (proxy, upstream)
}

#[test]
fn metrics_are_labelled_by_route_name_never_by_path() {
    let (proxy, _up) = setup();
    for id in 0..3 {
        assert_eq!(
            get(proxy.addr, &format!("/users/{id}"))
                .expect("request")
                .status,
            200
        );
    }
    assert_eq!(
        request(proxy.addr, "POST", "/users/9", &[], b"{}")
            .expect("request")
            .status,
        200
    );
    assert_eq!(get(proxy.addr, "/nope").expect("request").status, 404);
    proxy.wait_metric(
        r#"tollgate_requests_total{method="GET",route="users",status="200"}"#,
        3.0,
    );
    proxy.wait_metric(
        r#"tollgate_requests_total{method="POST",route="users",status="200"}"#,
        1.0,
    );
    proxy.wait_metric(
        r#"tollgate_requests_total{method="GET",route="(none)",status="404"}"#,
        1.0,
    );
    proxy.wait_metric(
        r#"tollgate_request_duration_seconds_count{method="GET",route="users"}"#,
        3.0,
    );
    assert_eq!(
        proxy.metric(r#"tollgate_build_info{version="0.1.0"}"#),
        Some(1.0)
    );
    let text = proxy.metrics();
    assert!(text.contains("tollgate_requests_in_flight "), "{text}");
    assert!(text.contains("tollgate_upstream_in_flight{"), "{text}");
    assert!(
        !text.contains("/users/"),
        "a raw path leaked into a label:\n{text}"
    );
}

#[test]
fn extension_methods_are_folded_into_one_label() {
    let (proxy, _up) = setup();
    assert_eq!(
        request(proxy.addr, "PURGE", "/users/1", &[], b"")
            .expect("request")
            .status,
        200
    );
    proxy.wait_metric(
        r#"tollgate_requests_total{method="OTHER",route="users",status="200"}"#,
        1.0,
    );
}

#[test]
fn health_reports_config_and_each_pool() {
    let (proxy, up) = setup();
    let h = proxy.health();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["components"]["config"]["status"], "ok");
    assert_eq!(h["components"]["config"]["routes"], 1);
    let pool = &h["components"]["upstreams"]["api"];
    assert_eq!(
        (
            pool["status"].as_str(),
            pool["healthy"].as_u64(),
            pool["total"].as_u64()
        ),
        (Some("ok"), Some(1), Some(1))
    );
    assert_eq!(pool["backends"][0]["address"], up.addr.to_string());
}

#[test]
fn ready_answers_and_unknown_admin_paths_are_json_404() {
    let (proxy, _up) = setup();
    let r = get(proxy.admin, "/ready").expect("ready");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["ready"], true);
    let r = get(proxy.admin, "/users/1").expect("admin 404");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
}

#[test]
fn admin_paths_are_not_served_on_the_proxy_port() {
    let (proxy, up) = setup();
    assert_eq!(get(proxy.addr, "/metrics").expect("request").status, 404);
    assert_eq!(up.count(), 0);
}

#[test]
fn the_access_log_can_be_one_json_object_per_line() {
    let upstream = TestUpstream::fixed("hello");
    let proxy = TollgateProcess::start(&format!(
        "logging: {{ access_log_format: json }}\nupstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: users, upstream: api, match: {{ path_prefix: /users/ }} }}\n",
        upstream.addr
    ));
    let r = request(
        proxy.addr,
        "GET",
        "/users/7",
        &[("X-Request-Id", "json-log-1")],
        b"",
    )
    .expect("request");
    assert_eq!(r.status, 200);
    wait_until("the access line is written", || {
        proxy.log_text().contains("json-log-1")
    });
    let log = proxy.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("json-log-1"))
        .expect("line");
    let entry: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/users/7");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["route"], "users");
    assert_eq!(entry["upstream"], "api");
    assert_eq!(entry["backend"], upstream.addr.to_string());
    assert!(entry["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
    assert!(entry["ts_ms"].as_u64().is_some_and(|t| t > 0));
}

/// `logging.access_log_path`: lines go to the file, buffered off the worker
/// threads but never later than 100 ms; after logrotate moves the file,
/// SIGUSR1 makes tollgate write to a new one at the path.
#[test]
fn the_access_log_file_is_reopened_on_sigusr1() {
    let upstream = TestUpstream::fixed("hello");
    let dir = scratch_dir("access-log");
    let path = dir.join("access.log");
    let proxy = TollgateProcess::start(&format!(
        "logging: {{ access_log_path: \"{}\" }}\nupstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: users, upstream: api }}\n",
        path.display(),
        upstream.addr
    ));
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let send = |id: &str| {
        let r = request(proxy.addr, "GET", "/users/1", &[("X-Request-Id", id)], b"").expect("get");
        assert_eq!(r.status, 200);
    };
    send("before-rotation");
    wait_until("the line reaches the file", || {
        read(&path).contains("before-rotation")
    });
    let line = read(&path);
    assert!(
        line.starts_with('[')
            && line.contains(" INFO  tollgate::access] GET /users/1 status=200 route=users"),
        "{line}"
    );
    assert!(
        !proxy.log_text().contains("before-rotation"),
        "not on stderr too"
    );
    let rotated = dir.join("access.log.1");
    std::fs::rename(&path, &rotated).expect("rotate");
    proxy.signal("USR1");
    // Until the writer has reopened, lines may still land in the moved file.
    wait_until("lines reach the reopened file", || {
        send("after-rotation");
        read(&path).contains("after-rotation")
    });
    assert!(read(&rotated).contains("before-rotation"));
    assert_eq!(proxy.metric("tollgate_access_log_dropped_total"), Some(0.0));
}

/// DNS rebinding: a page on `attacker.example`, re-pointed at the admin
/// listener, reads nothing — every path answers 421 to a `Host` that is
/// not an address, `localhost` or a name in `admin.hosts` (the harness
/// lists `test.local`), and the same paths answer by address.
#[test]
fn the_admin_listener_answers_only_to_its_own_names() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&one_route(up.addr));
    for path in ["/", "/status.json", "/metrics", "/health", "/ready"] {
        for host in [
            "attacker.example",
            "attacker.example:9090",
            "127.0.0.1.nip.io",
        ] {
            let r = request(proxy.admin, "GET", path, &[("Host", host)], b"").expect("request");
            assert_eq!(r.status, 421, "{host} {path}");
            assert!(
                !r.text().contains("tollgate_"),
                "{host} {path}: {}",
                r.text()
            );
        }
        for host in ["127.0.0.1", "localhost:9090", "test.local"] {
            let r = request(proxy.admin, "GET", path, &[("Host", host)], b"").expect("request");
            assert_eq!(r.status, 200, "{host} {path}");
        }
    }
    let purge = request(
        proxy.admin,
        "POST",
        "/cache/purge",
        &[
            ("Host", "attacker.example"),
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {ADMIN_TOKEN}")),
        ],
        br#"{"route": "default"}"#,
    )
    .expect("purge");
    assert_eq!(purge.status, 421);
}
