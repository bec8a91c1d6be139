//! Budgets shared through Redis: one redis-server of the test's own, two
//! proxies. And what happens when Redis goes away and comes back.

mod common;
use common::redis::{RedisCluster, RedisServer};
use common::*;

const BIGCO: &str = "bigco-key"; // tier hourly: 10 per hour

fn config(upstream: &TestUpstream, redis: &RedisServer) -> String {
    config_for(upstream, &format!("url: \"{}\"", redis.url()))
}

/// The config with `redis: { <target>, timeout: 200ms }`.
fn config_for(upstream: &TestUpstream, target: &str) -> String {
    format!(
        "tiers:
  hourly: {{ per_hour: 10 }}
tenants:
  bigco: {{ tier: hourly, api_keys: [\"sha256:4af43ec152b50d5d08bdffd2883cb31743b36f6f1c63744040f84dbd73bd20a9\"] }}
anonymous: {{ reject: true }}
redis: {{ {target}, timeout: 200ms }}
upstreams:
  api: {{ backends: [\"{}\"] }}
routes:
  - {{ name: api, upstream: api }}
",
        upstream.addr
    )
}

fn call(proxy: &TollgateProcess) -> u16 {
    request(
        proxy.addr,
        "GET",
        "/x",
        &[("Authorization", &format!("Bearer {BIGCO}"))],
        b"",
    )
    .expect("request")
    .status
}

fn redis_status(proxy: &TollgateProcess) -> serde_json::Value {
    proxy.health()["components"]["redis"]["status"].clone()
}

#[test]
fn two_instances_sharing_redis_enforce_one_budget() {
    let redis = RedisServer::start();
    let up = TestUpstream::fixed("ok");
    one_budget_across(&up, &config(&up, &redis));
}

/// The same on a three-node Redis Cluster: a decision's keys share a hash
/// tag, so the script runs in one slot.
#[test]
fn two_instances_sharing_a_redis_cluster_enforce_one_budget() {
    let cluster = RedisCluster::start();
    let up = TestUpstream::fixed("ok");
    one_budget_across(
        &up,
        &config_for(&up, &format!("cluster: {}", cluster.nodes_yaml())),
    );
}

fn one_budget_across(up: &TestUpstream, config: &str) {
    let (a, b) = (
        TollgateProcess::start(config),
        TollgateProcess::start(config),
    );
    wait_until("both instances are connected to redis", || {
        redis_status(&a) == "ok" && redis_status(&b) == "ok"
    });
    let mut allowed = 0;
    for i in 0..30 {
        let proxy = if i % 2 == 0 { &a } else { &b };
        if call(proxy) == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10, "10 per hour across both instances, not 20");
    assert_eq!(up.count(), 10);
    assert_eq!(redis_status(&a), "ok");
    assert_eq!(
        a.metric(r#"tollgate_redis_errors_total{kind="error"}"#),
        Some(0.0)
    );
}

#[test]
fn redis_going_away_degrades_to_local_limits_and_sharing_resumes() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&config(&up, &redis));
    wait_until("the proxy uses redis", || {
        let status = call(&proxy);
        assert_eq!(status, 200);
        redis_status(&proxy) == "ok"
    });

    redis.kill();
    // Requests keep flowing, now under the instance's own buckets.
    let statuses: Vec<u16> = (0..5).map(|_| call(&proxy)).collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&200),
        "requests must keep flowing: {statuses:?}"
    );
    assert_eq!(redis_status(&proxy), "degraded");
    assert_eq!(proxy.health()["status"], "degraded");
    assert!(
        proxy
            .metric(r#"tollgate_ratelimit_fallback_total{tier="hourly"}"#)
            .unwrap_or(0.0)
            >= 1.0
    );
    let errors = proxy
        .metric(r#"tollgate_redis_errors_total{kind="error"}"#)
        .unwrap_or(0.0)
        + proxy
            .metric(r#"tollgate_redis_errors_total{kind="timeout"}"#)
            .unwrap_or(0.0);
    assert!(errors >= 1.0);

    redis.restart();
    wait_until("shared limiting resumes", || {
        call(&proxy);
        redis_status(&proxy) == "ok"
    });
    // The restarted Redis is empty: it counts from zero, one budget for everyone.
    let allowed = (0..15).filter(|_| call(&proxy) == 200).count();
    assert!(allowed <= 10, "{allowed} allowed after Redis came back");
}

#[test]
fn hung_redis_opens_the_breaker() {
    let redis = RedisServer::start();
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&format!(
        "tiers:
  hourly: {{ per_hour: 100000 }}
tenants:
  bigco: {{ tier: hourly, api_keys: [\"sha256:4af43ec152b50d5d08bdffd2883cb31743b36f6f1c63744040f84dbd73bd20a9\"] }}
anonymous: {{ reject: true }}
redis:
  url: \"{}\"
  timeout: 100ms
  circuit_breaker: {{ failures: 3, open_for: 500ms }}
upstreams:
  api: {{ backends: [\"{}\"] }}
routes:
  - {{ name: api, upstream: api }}
",
        redis.url(),
        up.addr
    ));
    wait_until("the proxy uses redis", || {
        assert_eq!(call(&proxy), 200);
        redis_status(&proxy) == "ok"
    });
    assert_eq!(proxy.health()["components"]["redis"]["breaker"], "closed");

    redis.hang();
    // Every request is answered while Redis hangs: the first few wait for
    // the timeout, then the breaker stops asking.
    wait_until("the breaker opens", || {
        assert_eq!(call(&proxy), 200, "a hung Redis must not fail requests");
        proxy.metric("tollgate_redis_breaker_open") == Some(1.0)
    });
    assert_eq!(
        proxy.metric("tollgate_redis_breaker_opens_total"),
        Some(1.0)
    );
    assert_eq!(proxy.health()["components"]["redis"]["breaker"], "open");
    assert_eq!(redis_status(&proxy), "degraded");
    let timeouts = r#"tollgate_redis_errors_total{kind="timeout"}"#;
    let fallback = r#"tollgate_ratelimit_fallback_total{tier="hourly"}"#;
    let timeouts_when_opened = proxy.metric(timeouts).unwrap_or(0.0);
    assert!(timeouts_when_opened >= 1.0, "{timeouts_when_opened}");
    let fallback_before = proxy.metric(fallback).unwrap_or(0.0);
    // While it stays hung, requests are decided locally without asking
    // Redis at all, across several probe periods (probes fail quietly).
    for _ in 0..20 {
        assert_eq!(call(&proxy), 200);
    }
    proxy.wait_metric(fallback, fallback_before + 20.0);
    assert_eq!(
        proxy.metric(timeouts),
        Some(timeouts_when_opened),
        "requests asked the hung Redis although the breaker was open"
    );
    assert_eq!(proxy.metric("tollgate_redis_breaker_open"), Some(1.0));

    redis.resume();
    wait_until("a probe closes the breaker and sharing resumes", || {
        assert_eq!(call(&proxy), 200);
        proxy.health()["components"]["redis"]["breaker"] == "closed" && redis_status(&proxy) == "ok"
    });
    assert_eq!(proxy.metric("tollgate_redis_breaker_open"), Some(0.0));
}
