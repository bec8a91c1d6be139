//! `tollgate run --daemon`: Pingora builds everything, then forks, and a
//! thread started before the fork does not exist in the process that
//! serves. Every background thread must run in the daemon: the access-log
//! writer, the trace export, the Redis connections (rate-limit buckets,
//! the cache tier) and the cache tier's writer.

mod common;
use common::otlp::OtlpReceiver;
use common::redis::RedisServer;
use common::*;
use std::path::PathBuf;

/// Stops the daemon (by its pid file) when the test ends, passed or not.
struct Daemon {
    pid_file: PathBuf,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// Starts `tollgate run --daemon` on `body` below generated listeners;
/// returns once the parent has exited and the daemon answers `/ready`.
fn daemon(dir: &std::path::Path, body: &str) -> Daemon {
    let (port, admin) = (free_port(), free_port());
    let config = dir.join("tollgate.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: [\"127.0.0.1:{port}\"]\n\
             admin: {{ listen: \"127.0.0.1:{admin}\", hosts: [test.local] }}\n\
             server: {{ pid_file: {d}/tollgate.pid, upgrade_sock: {d}/upgrade.sock, grace_period: 1s, graceful_shutdown_timeout: 1s }}\n\
             {body}",
            d = dir.display(),
        ),
    )
    .expect("write config");
    // Its output to a file: the daemon keeps the descriptors it inherits.
    let log = std::fs::File::create(dir.join("tollgate.log")).expect("log file");
    let started = std::process::Command::new(binary())
        .args(["run", "--daemon", "-c"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .status()
        .expect("run --daemon");
    assert!(started.success(), "{started:?}");
    let daemon = Daemon {
        pid_file: dir.join("tollgate.pid"),
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        admin: std::net::SocketAddr::from(([127, 0, 0, 1], admin)),
    };
    wait_until("the daemon is ready", || {
        get(daemon.admin, "/ready").is_ok_and(|r| r.status == 200)
    });
    daemon
}

#[test]
fn a_daemon_runs_every_background_thread() {
    let receiver = OtlpReceiver::start();
    let redis = RedisServer::start();
    let up = TestUpstream::start(|_| reply(200, &[("cache-control", "public, max-age=60")], "{}"));
    let dir = scratch_dir("daemon");
    let access = dir.join("access.log");
    let d = daemon(
        &dir,
        &format!(
            "logging: {{ access_log_path: {access} }}\n\
             {tracing}\
             redis: {{ url: \"{redis}\", timeout: 500ms }}\n\
             cache: {{ redis: {{ lookup_timeout: 500ms }} }}\n\
             tiers: {{ free: {{ per_minute: 100 }} }}\n\
             anonymous: {{ tier: free }}\n\
             upstreams:\n  api: {{ backends: [\"{up}\"] }}\n\
             routes:\n  - {{ name: items, upstream: api, cache: {{}} }}\n",
            access = access.display(),
            tracing = receiver.config("sample_ratio: 1.0"),
            redis = redis.url(),
            up = up.addr,
        ),
    );
    let r = get(d.addr, "/items/1").expect("request");
    assert_eq!(r.status, 200);
    let trace = up.recorded()[0]
        .header("traceparent")
        .expect("traceparent")
        .split('-')
        .nth(1)
        .expect("trace id")
        .to_owned();
    // The trace export thread.
    wait_until("the daemon's spans arrive", || {
        !receiver.trace(&trace).is_empty()
    });
    // The access-log writer.
    wait_until("the daemon's access log has the request", || {
        std::fs::read_to_string(&access).is_ok_and(|log| log.contains(&format!("trace_id={trace}")))
    });
    // The Redis connection of the rate limiter: its bucket is in Redis,
    // not in the local fallback.
    wait_until("the rate-limit bucket is in Redis", || {
        !redis
            .cli(&["--scan", "--pattern", "tollgate:rl:*"])
            .trim()
            .is_empty()
    });
    // The cache tier's writer: the response reached Redis.
    let metrics = || get(d.admin, "/metrics").expect("metrics").text();
    wait_until("the cache tier wrote the response", || {
        metrics().lines().any(|l| {
            l.starts_with(r#"tollgate_cache_l2_writes_total{result="ok"}"#) && !l.ends_with(" 0")
        })
    });
    assert!(!metrics()
        .lines()
        .any(|l| l.starts_with("tollgate_ratelimit_fallback_total") && !l.ends_with(" 0")));
}
