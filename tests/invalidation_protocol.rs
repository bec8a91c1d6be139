//! The invalidation protocol (`cache::invalidation`) against the faults it
//! is written for, end to end: Redis restarted empty between fills and a
//! purge, a hung Redis behind a stream of writes, writes that no caching
//! route serves, the same large purge repeated.

mod common;
use common::redis::RedisServer;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Answers every GET with a body naming its path and how many GETs came
/// before (`v1 /items/1`, `v2 /items/1`, …); unsafe methods with 204.
fn versioned() -> TestUpstream {
    let gets = Arc::new(AtomicUsize::new(0));
    TestUpstream::start(move |req| {
        if req.method != "GET" {
            return Action::Reply(Reply {
                status: 204,
                headers: vec![],
                body: Vec::new(),
            });
        }
        let n = gets.fetch_add(1, Ordering::SeqCst) + 1;
        Action::Reply(Reply {
            status: 200,
            headers: vec![("Cache-Control".into(), "max-age=300".into())],
            body: format!("v{n} {}", req.path).into_bytes(),
        })
    })
}

/// An instance on `redis` with `extra` YAML for `cache.redis`, one cached
/// route `/items/`, and `/rpc/` that nothing caches.
fn instance(up: &TestUpstream, redis: &RedisServer, extra: &str) -> TollgateProcess {
    TollgateProcess::start(&format!(
        "redis: {{ url: \"{}\", timeout: 200ms }}\n\
         cache: {{ redis: {{ lookup_timeout: 200ms{extra} }} }}\n\
         upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: items, upstream: api, match: {{ path_prefix: /items/ }}, cache: {{}} }}\n  \
         - {{ name: rpc, upstream: api, match: {{ path_prefix: /rpc/ }} }}\n",
        redis.url(),
        up.addr
    ))
}

const WRITES_OK: &str = r#"tollgate_cache_l2_writes_total{result="ok"}"#;
const SHARED_SENT: &str = r#"tollgate_cache_invalidations_shared_total{result="sent"}"#;

/// Waits until a counter reaches at least `value`.
fn wait_at_least(proxy: &TollgateProcess, series: &str, value: f64) {
    wait_until(&format!("{series} >= {value}"), || {
        proxy.metric(series).is_some_and(|v| v >= value)
    });
}

fn admin_purge(proxy: &TollgateProcess, body: &str) -> Response {
    proxy.admin_post("/cache/purge", ADMIN_TOKEN, body)
}

fn redis_cli_keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    redis
        .cli(&["--scan", "--pattern", pattern])
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// A purge after Redis lost everything (restart without persistence)
/// still hides what it names: its generation comes from Redis's clock,
/// so it is newer than what the instances stamped before the loss. Here
/// the entry's index members are taken away first, so only the marker can
/// hide it (the state of a drain that has not reached it yet); with the
/// generation a bare `INCR`, the marker (1) was older than the entry's
/// stamp (the instance had heard 3) and a fresh instance served it.
#[test]
fn a_purge_after_redis_restarts_empty_hides_what_it_names() {
    let mut redis = RedisServer::start();
    let up = versioned();
    let a = instance(&up, &redis, "");
    // A few purges: A has heard generation 3 (or the clock's) since.
    for _ in 0..3 {
        let purged = admin_purge(&a, r#"{"url": "http://test.local/items/0"}"#);
        assert_eq!(purged.status, 200, "{}", purged.text());
    }
    redis.restart();
    // A writes again once its connection is back.
    let mut n = 0;
    wait_until("A writes to the restarted Redis", || {
        n += 1;
        get(a.addr, &format!("/items/probe-{n}")).expect("get");
        !redis_cli_keys(&redis, "tollgate:cache:c:*").is_empty()
    });
    get(a.addr, "/items/1").expect("fill");
    let written = a.metric(WRITES_OK).unwrap_or(0.0);
    wait_until("A wrote /items/1 to Redis", || {
        !redis
            .cli(&["ZRANGE", "tollgate:cache:i:u:test.local/items/1", "0", "-1"])
            .trim()
            .is_empty()
    });
    assert!(written >= 1.0);
    // The drain will not find it: only the marker can hide it.
    let entry = redis.cli(&["ZRANGE", "tollgate:cache:i:u:test.local/items/1", "0", "-1"]);
    let entry = entry.trim();
    for index in [
        "tollgate:cache:i:u:test.local/items/1",
        "tollgate:cache:i:r:items",
    ] {
        redis.cli(&["ZREM", index, entry]);
    }
    let purged = admin_purge(&a, r#"{"url": "http://test.local/items/1"}"#);
    assert_eq!(purged.status, 200, "{}", purged.text());
    assert_eq!(
        redis.cli(&["EXISTS", entry]).trim(),
        "1",
        "the entry is still in Redis"
    );

    let c = instance(&up, &redis, "");
    let fetched = up
        .recorded()
        .iter()
        .filter(|r| r.path == "/items/1")
        .count();
    let again = get(c.addr, "/items/1").expect("get");
    assert_eq!(
        again.cache_status().as_deref(),
        Some("tollgate; fwd=uri-miss; stored"),
        "a fresh instance does not take the purged copy from Redis: {}",
        again.text()
    );
    assert_eq!(
        up.recorded()
            .iter()
            .filter(|r| r.path == "/items/1")
            .count(),
        fetched + 1
    );
    let generation: u64 = redis
        .cli(&["GET", "tollgate:cache:gen"])
        .trim()
        .parse()
        .expect("a generation");
    assert!(generation > 1_000_000, "from Redis's clock: {generation}");
}

/// A generation announced far ahead of the clock (a buggy or hostile
/// publisher) is not believed: otherwise every later marker would be
/// older than what the instance writes.
#[test]
fn an_announced_generation_far_ahead_of_the_clock_is_ignored() {
    let redis = RedisServer::start();
    let up = versioned();
    let a = instance(&up, &redis, "");
    wait_until("A listens on the purge channel", || {
        redis
            .cli(&["PUBSUB", "NUMSUB", "tollgate:cache:purge"])
            .contains('1')
    });
    let forged = r#"{"from":"evil","purge":{"target":{"uri":"x/none"},"soft":false},"generation":18446744073709551615}"#;
    redis.cli(&["PUBLISH", "tollgate:cache:purge", forged]);
    a.wait_metric("tollgate_cache_l2_implausible_generations_total", 1.0);
    // Its writes are still checked against later purges: a purge of /items/2
    // made after A wrote it hides it from another instance.
    get(a.addr, "/items/2").expect("fill");
    a.wait_metric(WRITES_OK, 1.0);
    let b = instance(&up, &redis, "");
    let l2 = get(b.addr, "/items/2").expect("get");
    assert!(
        l2.header("cache-status")
            .is_some_and(|s| s.ends_with("detail=l2")),
        "written with a believable stamp: {:?}",
        l2.header("cache-status")
    );
}

/// With Redis hung, writes are answered at their normal pace (their
/// invalidation's shared part waits in the outbox, feeding the breaker),
/// the writer reads its own write, and once Redis answers again the
/// invalidation reaches the other instances.
#[test]
fn writes_with_redis_hung_are_answered_at_once_and_shared_later() {
    let redis = RedisServer::start();
    let up = versioned();
    let a = instance(&up, &redis, ", purge_timeout: 30s");
    let b = instance(&up, &redis, ", purge_timeout: 30s");
    get(b.addr, "/items/9").expect("fill B");
    b.wait_metric(WRITES_OK, 1.0);
    let old = get(a.addr, "/items/9").expect("A from Redis");
    assert!(old.text().starts_with("v1 "), "{}", old.text());

    redis.hang();
    for i in 0..5 {
        let started = Instant::now();
        let post = request(a.addr, "POST", "/items/9", &[], b"{}").expect("post");
        assert_eq!(post.status, 204);
        // Not the 30 s purge_timeout, nor the 1 s write_timeout.
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "POST {i} waited {:?} on a hung Redis",
            started.elapsed()
        );
    }
    let read = get(a.addr, "/items/9").expect("read after write");
    assert!(
        !read.text().starts_with("v1 "),
        "A never serves what its write replaced: {}",
        read.text()
    );
    assert!(a.metric("tollgate_cache_invalidation_queue").unwrap_or(0.0) >= 1.0);

    redis.resume();
    wait_at_least(&a, SHARED_SENT, 1.0);
    wait_until("A's queue is empty", || {
        a.metric("tollgate_cache_invalidation_queue") == Some(0.0)
    });
    // B heard it: its copy is gone.
    wait_at_least(&b, r#"tollgate_cache_purges_total{reason="remote"}"#, 1.0);
    let after = get(b.addr, "/items/9").expect("get");
    assert!(!after.text().starts_with("v1 "), "{}", after.text());
}

/// A write to a URI no caching route serves does no Redis work at all.
#[test]
fn a_write_no_caching_route_serves_costs_no_redis_work() {
    let redis = RedisServer::start();
    let up = versioned();
    let a = instance(&up, &redis, "");
    get(a.addr, "/items/1").expect("fill");
    a.wait_metric(WRITES_OK, 1.0);
    let generation_before = redis.cli(&["GET", "tollgate:cache:gen"]);
    for _ in 0..20 {
        let post = request(a.addr, "POST", "/rpc/call", &[], b"{}").expect("post");
        assert_eq!(post.status, 204);
    }
    a.wait_metric(
        r#"tollgate_cache_invalidations_shared_total{result="local"}"#,
        20.0,
    );
    assert_eq!(a.metric(SHARED_SENT), Some(0.0));
    assert_eq!(redis.cli(&["GET", "tollgate:cache:gen"]), generation_before);
    // A write on the cached route is shared.
    let post = request(a.addr, "POST", "/items/1", &[], b"{}").expect("post");
    assert_eq!(post.status, 204);
    a.wait_metric(SHARED_SENT, 1.0);
}

/// Repeating a large purge while its entries are being freed raises the
/// pending ban instead of banning and queueing the same entries again:
/// the unreclaimed gauge never counts more than the entries that exist.
#[test]
fn a_repeated_large_purge_counts_its_entries_once() {
    let up = versioned();
    let a = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: items, upstream: api, match: {{ path_prefix: /items/ }}, cache: {{}} }}\n",
        up.addr
    ));
    for i in 0..1_100 {
        get(a.addr, &format!("/items/{i}")).expect("fill");
    }
    a.wait_metric("tollgate_cache_entries", 1_100.0);
    let mut most = 0.0f64;
    for _ in 0..10 {
        let purged = admin_purge(&a, r#"{"route": "items"}"#);
        assert_eq!(purged.status, 200, "{}", purged.text());
        most = most.max(
            a.metric("tollgate_cache_purged_unreclaimed_entries")
                .unwrap_or(0.0),
        );
    }
    assert!(most <= 1_100.0, "unreclaimed reached {most}");
    wait_until("the reclaimer freed the route", || {
        a.metric("tollgate_cache_purged_unreclaimed_entries") == Some(0.0)
            && a.metric("tollgate_cache_entries") == Some(0.0)
    });
}

/// The cross-tier window: a request that arrives after a purge's memory
/// part and before its Redis markers must not bring the purged copy back
/// into memory. Made deterministic by a relay that holds the replies on
/// the purge's connection once it asks for its generation: the purge
/// cannot set its markers, and Redis answers the request's lookup with
/// the old copy meanwhile. Before the fix that copy was promoted into
/// memory stamped as newer than the purge, and served after it answered.
#[test]
fn a_request_between_a_purges_memory_part_and_its_markers_does_not_bring_it_back() {
    use common::redis::ReplyGate;
    let redis = RedisServer::start();
    let next = ::redis::Script::new(tollgate::cache::l2::generation::NEXT_LUA)
        .get_hash()
        .as_bytes()
        .to_vec();
    let gate = ReplyGate::start_matching(redis.addr, vec![next]);
    let up = versioned();
    let through_gate = |redis_url: &str| {
        TollgateProcess::start(&format!(
            "redis: {{ url: \"{redis_url}\", timeout: 5s }}\n\
             cache: {{ redis: {{ lookup_timeout: 5s }} }}\n\
             upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
             routes:\n  - {{ name: items, upstream: api, match: {{ path_prefix: /items/ }}, cache: {{}} }}\n",
            up.addr
        ))
    };
    let a = through_gate(&gate.url());
    let b = instance(&up, &redis, "");
    get(b.addr, "/items/5").expect("fill B");
    b.wait_metric(WRITES_OK, 1.0);
    // A's worker and admin thread have their own Redis connections by now.
    for _ in 0..3 {
        assert_eq!(
            admin_purge(&a, r#"{"url": "http://test.local/items/0"}"#).status,
            200
        );
        get(a.addr, "/items/0").expect("warm A");
    }
    let old = get(a.addr, "/items/5").expect("A from Redis");
    assert!(old.text().starts_with("v1 "), "{}", old.text());
    let entries = a.metric("tollgate_cache_entries").unwrap_or(0.0);

    gate.hold();
    let purging = {
        let admin = a.admin;
        std::thread::spawn(move || {
            let auth = format!("Bearer {ADMIN_TOKEN}");
            request(
                admin,
                "POST",
                "/cache/purge",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                br#"{"url": "http://test.local/items/5"}"#,
            )
            .expect("purge")
        })
    };
    wait_until(
        "the purge took /items/5 from A's memory and waits for Redis",
        || gate.held() >= 1 && a.metric("tollgate_cache_entries") == Some(entries - 1.0),
    );
    // In the window: whatever this request is served, it must not put the
    // old copy back.
    let _during = get(a.addr, "/items/5").expect("get during the purge");
    gate.release();
    let purged = purging.join().expect("purge thread");
    assert_eq!(purged.status, 200, "{}", purged.text());
    let after = get(a.addr, "/items/5").expect("get after the purge");
    assert!(
        !after.text().starts_with("v1 "),
        "the purged copy came back: {} ({:?})",
        after.text(),
        after.header("cache-status")
    );
}
