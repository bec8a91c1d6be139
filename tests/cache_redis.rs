//! The cache's Redis tier: several tollgate instances sharing one
//! redis-server in front of a counting upstream. What one instance fetched
//! the others serve from Redis; purges and invalidations reach every
//! instance; Redis going away costs no request.

mod common;
use common::redis::{RedisCluster, RedisServer};
use common::*;

fn upstream() -> TestUpstream {
    TestUpstream::start(|req| {
        Action::Reply(Reply {
            status: 200,
            headers: vec![("Cache-Control".into(), "max-age=300".into())],
            body: format!("body of {}", req.path).into_bytes(),
        })
    })
}

fn instance(up: &TestUpstream, redis: &RedisServer) -> TollgateProcess {
    instance_on(up, &format!("url: \"{}\"", redis.url()))
}

/// An instance on `redis: { <target>, timeout: 200ms }`.
fn instance_on(up: &TestUpstream, target: &str) -> TollgateProcess {
    TollgateProcess::start(&format!(
        "redis: {{ {target}, timeout: 200ms }}\n\
         cache: {{ redis: {{ lookup_timeout: 200ms }} }}\n\
         upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: items, upstream: api, match: {{ path_prefix: /items/ }}, cache: {{}} }}\n  \
         - {{ name: other, upstream: api, cache: {{}} }}\n",
        up.addr
    ))
}

fn count(up: &TestUpstream, path: &str) -> usize {
    up.recorded().iter().filter(|r| r.path == path).count()
}

/// Waits until `proxy` has written `n` entries to Redis.
/// The Redis-tier writes `proxy` has completed.
const WRITES_OK: &str = r#"tollgate_cache_l2_writes_total{result="ok"}"#;

fn wait_written(proxy: &TollgateProcess, n: f64) {
    proxy.wait_metric(WRITES_OK, n);
}

fn written(proxy: &TollgateProcess) -> f64 {
    proxy.metric(WRITES_OK).unwrap_or(0.0)
}

fn admin_purge(proxy: &TollgateProcess, body: &str) -> Response {
    proxy.admin_post("/cache/purge", ADMIN_TOKEN, body)
}

#[test]
fn a_miss_on_one_instance_is_a_redis_hit_on_another() {
    let redis = RedisServer::start();
    let up = upstream();
    let (a, b) = (instance(&up, &redis), instance(&up, &redis));
    let miss = get(a.addr, "/items/1").expect("get");
    assert_eq!(
        miss.cache_status().as_deref(),
        Some("tollgate; fwd=uri-miss; stored")
    );
    wait_written(&a, 1.0);
    let l2 = get(b.addr, "/items/1").expect("get");
    assert_eq!(l2.text(), "body of /items/1");
    let status = l2.header("cache-status").expect("Cache-Status");
    assert!(
        status.starts_with("tollgate; hit") && status.ends_with("detail=l2"),
        "{status}"
    );
    assert_eq!(count(&up, "/items/1"), 1, "B asked Redis, not the upstream");
    let l1 = get(b.addr, "/items/1").expect("get");
    assert_eq!(
        l1.cache_status().as_deref(),
        Some("tollgate; hit"),
        "now in B's memory"
    );
    assert_eq!(
        b.metric(r#"tollgate_cache_l2_requests_total{result="hit"}"#),
        Some(1.0)
    );
}

#[test]
fn purges_and_invalidations_reach_every_instance() {
    let redis = RedisServer::start();
    let up = upstream();
    let nodes = [
        instance(&up, &redis),
        instance(&up, &redis),
        instance(&up, &redis),
    ];
    let [a, b, c] = &nodes;
    for path in ["/items/1", "/items/2", "/other/x"] {
        get(a.addr, path).expect("fill A");
    }
    wait_written(a, 3.0);
    for node in [b, c] {
        for path in ["/items/1", "/items/2", "/other/x"] {
            get(node.addr, path).expect("fill from Redis");
        }
    }
    assert_eq!(count(&up, "/items/1"), 1);

    // By URL, on A: B and C drop it from memory, and Redis too. (The test
    // client sends `Host: test.local`.)
    let purged = admin_purge(a, "{\"url\": \"http://test.local/items/1\"}");
    assert_eq!(purged.status, 200, "{}", purged.text());
    assert_eq!(purged.json()["published"], true);
    assert_eq!(purged.json()["purged"], 1, "A's own copy");
    assert_eq!(purged.json()["redis_purged"], 1, "Redis's copy");
    for node in [b, c] {
        node.wait_metric(r#"tollgate_cache_purges_total{reason="remote"}"#, 1.0);
    }
    get(b.addr, "/items/1").expect("refetch");
    assert_eq!(
        count(&up, "/items/1"),
        2,
        "B found it nowhere and fetched it"
    );
    // Written before the next purge: one that began before a purge naming
    // it would be dropped (tests/purge_races.rs).
    wait_written(b, 1.0);

    // By route, on C: the other route's entry stays.
    assert_eq!(admin_purge(c, "{\"route\": \"items\"}").status, 200);
    b.wait_metric(r#"tollgate_cache_purges_total{reason="remote"}"#, 3.0);
    get(b.addr, "/items/2").expect("refetch");
    assert_eq!(count(&up, "/items/2"), 2);
    let kept = get(b.addr, "/other/x").expect("get");
    assert_eq!(kept.cache_status().as_deref(), Some("tollgate; hit"));

    // By prefix, on B: what is below it goes from A, the rest stays.
    get(a.addr, "/items/7").expect("fill A");
    wait_written(a, 4.0);
    let before = a
        .metric(r#"tollgate_cache_purges_total{reason="remote"}"#)
        .unwrap_or(0.0);
    let prefix = admin_purge(b, "{\"prefix\": \"/items/\", \"host\": \"test.local\"}");
    assert_eq!(prefix.status, 200, "{}", prefix.text());
    wait_until("A applied B's prefix purge", || {
        a.metric(r#"tollgate_cache_purges_total{reason="remote"}"#)
            .is_some_and(|n| n > before)
    });
    let again = get(a.addr, "/items/7").expect("refetch");
    assert_eq!(
        again.cache_status().as_deref(),
        Some("tollgate; fwd=uri-miss; stored")
    );
    let kept = get(a.addr, "/other/x").expect("get");
    assert_eq!(kept.cache_status().as_deref(), Some("tollgate; hit"));

    // A write through A invalidates the URL on B as well.
    get(b.addr, "/other/y").expect("fill B");
    wait_written(b, 3.0);
    get(a.addr, "/other/y").expect("fill A from Redis");
    let post = request(a.addr, "POST", "/other/y", &[], b"{}").expect("post");
    assert_eq!(post.status, 200);
    b.wait_metric(r#"tollgate_cache_purges_total{reason="remote"}"#, 4.0);
    let before = count(&up, "/other/y");
    let after_write = get(b.addr, "/other/y").expect("get");
    assert_eq!(
        after_write.cache_status().as_deref(),
        Some("tollgate; fwd=uri-miss; stored")
    );
    assert_eq!(count(&up, "/other/y"), before + 1);
}

#[test]
fn a_corrupt_redis_entry_is_a_miss_never_served() {
    let redis = RedisServer::start();
    let up = upstream();
    let a = instance(&up, &redis);
    get(a.addr, "/items/9").expect("fill");
    wait_written(&a, 1.0);
    let keys = redis.cli(&["--scan", "--pattern", "tollgate:cache:c:*"]);
    let key = keys.lines().next().expect("an entry key").trim().to_owned();
    redis.cli(&["SET", &key, "TGC1 not what you think"]);
    let b = instance(&up, &redis);
    let r = get(b.addr, "/items/9").expect("get");
    assert_eq!(r.text(), "body of /items/9");
    assert_eq!(
        r.cache_status().as_deref(),
        Some("tollgate; fwd=uri-miss; stored")
    );
    assert_eq!(count(&up, "/items/9"), 2);
    assert_eq!(
        b.metric(r#"tollgate_cache_l2_requests_total{result="error"}"#),
        Some(1.0)
    );
}

#[test]
fn redis_going_away_costs_no_request() {
    let mut redis = RedisServer::start();
    let up = upstream();
    let (a, b) = (instance(&up, &redis), instance(&up, &redis));
    get(a.addr, "/items/1").expect("fill");
    wait_written(&a, 1.0);
    redis.kill();
    for i in 0..30 {
        for node in [&a, &b] {
            let r = get(node.addr, &format!("/items/{}", i % 3)).expect("get");
            assert_eq!(r.status, 200, "request {i} while Redis is gone");
        }
    }
    let health = a.health();
    assert_eq!(health["components"]["cache_redis"]["status"], "degraded");
    redis.restart();
    wait_until("the tier writes again", || {
        get(a.addr, &format!("/items/new-{}", rand_suffix())).is_ok_and(|r| r.status == 200)
            && a.metric(WRITES_OK).is_some_and(|n| n >= 2.0)
    });
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// An instance that cannot hear purges (Redis gone) could serve an entry
/// another instance purged meanwhile: its memory keeps nothing longer than
/// `DEAF_GRACE` (5 s) while deaf, and drops what it stored meanwhile once
/// it hears again.
#[test]
fn memory_entries_are_bounded_while_purges_cannot_be_heard() {
    let mut redis = RedisServer::start();
    let up = upstream();
    let a = instance(&up, &redis);
    get(a.addr, "/items/1").expect("fill");
    a.wait_metric("tollgate_cache_entries", 1.0);
    redis.kill();
    // No request needed: the listener's sweep empties memory by itself.
    a.wait_metric("tollgate_cache_entries", 0.0);
    let r = get(a.addr, "/items/1").expect("get");
    assert_eq!(r.status, 200);
    assert_eq!(
        count(&up, "/items/1"),
        2,
        "fetched again, not served from before"
    );
}

/// Upstreams tag responses (`Surrogate-Key`); a purge by tag on one
/// instance removes every tagged entry everywhere, a soft purge only marks
/// them stale, and an upstream's `X-Invalidate-Tags` on a successful write
/// purges its tags cluster-wide. Clients never see the tag fields.
#[test]
fn tags_purge_everywhere_softly_or_from_the_upstream() {
    let redis = RedisServer::start();
    let up = TestUpstream::start(|req| {
        let tags = match req.path.as_str() {
            "/items/1" => "product-1 catalogue",
            "/items/2" => "product-2 catalogue",
            _ => "other",
        };
        let mut headers = vec![
            ("Cache-Control".to_string(), "max-age=300".to_string()),
            ("Surrogate-Key".to_string(), tags.to_string()),
            ("ETag".to_string(), "\"v1\"".to_string()),
        ];
        if req.method == "POST" {
            headers.push(("X-Invalidate-Tags".into(), "product-2".into()));
        }
        Action::Reply(Reply {
            status: 200,
            headers,
            body: format!("body of {}", req.path).into_bytes(),
        })
    });
    let (a, b) = (instance(&up, &redis), instance(&up, &redis));
    for path in ["/items/1", "/items/2", "/other/1"] {
        let r = get(a.addr, path).expect("fill");
        assert_eq!(
            r.header("surrogate-key"),
            None,
            "tags are not shown to clients"
        );
    }
    wait_written(&a, 3.0);
    for path in ["/items/1", "/items/2", "/other/1"] {
        get(b.addr, path).expect("fill B from Redis");
    }

    // Hard purge by tag on B: both tagged entries go from A, B and Redis.
    let purged = admin_purge(&b, "{\"tag\": \"product-1\"}");
    assert_eq!(purged.json()["redis_purged"], 1, "{}", purged.text());
    a.wait_metric(r#"tollgate_cache_purges_total{reason="remote"}"#, 1.0);
    get(a.addr, "/items/1").expect("refetch");
    assert_eq!(count(&up, "/items/1"), 2);

    // Soft purge of the catalogue: entries stay, but the next request
    // revalidates instead of being a plain hit.
    let soft = admin_purge(&a, "{\"tag\": \"catalogue\", \"soft\": true}");
    assert_eq!(soft.status, 200, "{}", soft.text());
    // B holds /items/2 of the catalogue (it purged /items/1 itself).
    b.wait_metric(r#"tollgate_cache_purges_total{reason="remote"}"#, 1.0);
    let b_written = written(&b);
    let r = get(b.addr, "/items/2").expect("get");
    assert_ne!(
        r.cache_status().as_deref(),
        Some("tollgate; hit"),
        "stale now"
    );
    assert_eq!(r.text(), "body of /items/2");
    wait_written(&b, b_written + 1.0); // the revalidated copy, before the next purge
    let untouched = get(b.addr, "/other/1").expect("get");
    assert_eq!(untouched.cache_status().as_deref(), Some("tollgate; hit"));

    // A write whose answer names product-2 invalidates it everywhere,
    // including A's refill in Redis (a write still queued when another
    // instance purges is dropped by the purge markers: tests/purge_races.rs).
    let a_written = written(&a);
    get(a.addr, "/items/2").expect("fill again");
    wait_written(&a, a_written + 1.0);
    let before = count(&up, "/items/2");
    let post = request(b.addr, "POST", "/orders", &[], b"{}").expect("post");
    assert_eq!(post.status, 200);
    assert_eq!(
        post.header("x-invalidate-tags"),
        None,
        "an upstream-to-proxy field"
    );
    wait_until("A dropped product-2", || {
        get(a.addr, "/items/2").is_ok_and(|r| r.cache_status().as_deref() != Some("tollgate; hit"))
    });
    assert!(count(&up, "/items/2") > before);
}

/// An entry memory cannot keep (evicted as it is promoted) is still served
/// from what Redis returned, every time, without the upstream.
#[test]
fn a_memory_too_small_for_an_entry_still_serves_it_from_redis() {
    let redis = RedisServer::start();
    // 2000 bytes: with its header and the per-entry allowance, more than
    // the 3 KiB memory tier.
    let up = TestUpstream::start(|_| {
        Action::Reply(Reply {
            status: 200,
            headers: vec![("Cache-Control".into(), "max-age=300".into())],
            body: vec![b'x'; 2000],
        })
    });
    let tiny = TollgateProcess::start(&format!(
        "redis: {{ url: \"{}\", timeout: 200ms }}\n\
         cache: {{ max_size: 3KiB, max_object_size: 2KiB, redis: {{ lookup_timeout: 200ms }} }}\n\
         upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: items, upstream: api, cache: {{}} }}\n",
        redis.url(),
        up.addr
    ));
    get(tiny.addr, "/items/1").expect("fill");
    wait_written(&tiny, 1.0);
    // The fill's own entry leaves memory when Pingora tells the eviction
    // manager about it, which may come after the answer was sent.
    tiny.wait_metric("tollgate_cache_entries", 0.0);
    for _ in 0..3 {
        let r = get(tiny.addr, "/items/1").expect("get");
        assert_eq!(r.body, vec![b'x'; 2000]);
        let status = r.header("cache-status").expect("Cache-Status");
        assert!(status.ends_with("detail=l2"), "{status}");
    }
    assert_eq!(count(&up, "/items/1"), 1);
}

/// On a three-node Redis Cluster: a miss on A is a Redis hit on B, and a
/// purge by URL on A reaches B (prefix purges are refused there: the tier
/// cannot scan a cluster's index keys).
#[test]
fn the_redis_tier_works_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let up = upstream();
    let target = format!("cluster: {}", cluster.nodes_yaml());
    let (a, b) = (instance_on(&up, &target), instance_on(&up, &target));
    for path in ["/items/1", "/items/2", "/items/3"] {
        get(a.addr, path).expect("fill");
    }
    wait_written(&a, 3.0);
    for path in ["/items/1", "/items/2", "/items/3"] {
        let r = get(b.addr, path).expect("get");
        let status = r.header("cache-status").expect("Cache-Status");
        assert!(status.ends_with("detail=l2"), "{path}: {status}");
    }
    assert_eq!(up.count(), 3);
    let purged = admin_purge(&a, "{\"url\": \"http://test.local/items/2\"}");
    assert_eq!(purged.json()["redis_purged"], 1, "{}", purged.text());
    b.wait_metric(r#"tollgate_cache_purges_total{reason="remote"}"#, 1.0);
    get(b.addr, "/items/2").expect("refetch");
    assert_eq!(count(&up, "/items/2"), 2);
    let prefix = admin_purge(&a, "{\"prefix\": \"/items/\"}");
    assert_eq!(prefix.status, 502, "{}", prefix.text());
    assert_eq!(prefix.json()["error"], "purge_incomplete");
}

/// A purge takes effect in Redis when its marker is set, before its
/// entries are deleted: an entry a marker newer than its write names is
/// never served from Redis, while it is still there.
#[test]
fn a_purge_marker_hides_a_redis_entry_that_is_still_there() {
    let redis = RedisServer::start();
    let up = upstream();
    let a = instance(&up, &redis);
    for path in ["/items/1", "/other/x"] {
        get(a.addr, path).expect("fill A");
    }
    wait_written(&a, 2.0);
    let keys = redis.cli(&["--scan", "--pattern", "tollgate:cache:c:*"]);
    assert_eq!(keys.lines().count(), 2, "{keys}");
    // As another instance's purge of the route would, before its drain:
    // a marker far newer than every write.
    redis.cli(&["SET", "tollgate:cache:x:r:items", "1000000", "PX", "60000"]);
    let b = instance(&up, &redis);
    let hidden = get(b.addr, "/items/1").expect("get");
    assert_eq!(
        hidden.cache_status().as_deref(),
        Some("tollgate; fwd=uri-miss; stored"),
        "the marked entry was served from Redis"
    );
    assert_eq!(count(&up, "/items/1"), 2);
    let kept = get(b.addr, "/other/x").expect("get");
    let status = kept.header("cache-status").expect("Cache-Status");
    assert!(
        status.ends_with("detail=l2"),
        "another route's entry: {status}"
    );
    for key in keys.lines() {
        assert_eq!(redis.cli(&["EXISTS", key.trim()]).trim(), "1", "{key}");
    }
}

/// A large purge answers once its markers are set and published, and
/// deletes its Redis entries afterwards; memory and Redis both end empty
/// of them, and nothing purged is served in between.
#[test]
fn a_large_purge_answers_first_and_empties_redis_after() {
    const N: usize = 1_100; // above the batch a purge drains before answering
    let redis = RedisServer::start();
    let up = upstream();
    let a = instance(&up, &redis);
    let b = instance(&up, &redis);
    for i in 0..N {
        get(a.addr, &format!("/items/{i}")).expect("fill A");
    }
    get(a.addr, "/other/x").expect("fill A");
    wait_written(&a, (N + 1) as f64);
    let purged = admin_purge(&a, "{\"route\": \"items\"}");
    assert_eq!(purged.status, 200, "{}", purged.text());
    assert_eq!(purged.json()["purged"], N, "{}", purged.text());
    assert_eq!(purged.json()["redis_purged"], N, "{}", purged.text());
    // The route's marker outlives the longest-lived entry it hides (they
    // live 300 s; markers alone, purge_marker_ttl, 60 s).
    let marker_ms: u64 = redis
        .cli(&["PTTL", "tollgate:cache:x:r:items"])
        .trim()
        .parse()
        .expect("marker TTL");
    assert!(marker_ms > 290_000, "marker lives {marker_ms} ms");
    // (Each instance asks for other URLs: what one fetches after the purge
    // the other may rightly find in Redis.)
    for (node, path) in [
        (&b, "/items/0"),
        (&b, "/items/1099"),
        (&a, "/items/1"),
        (&a, "/items/1098"),
    ] {
        let r = get(node.addr, path).expect("get");
        assert_eq!(
            r.cache_status().as_deref(),
            Some("tollgate; fwd=uri-miss; stored"),
            "{path} was served after its purge"
        );
    }
    // Only what was fetched after the purge is left: in Redis at most the
    // four refetched and /other/x, in the route's index at most the four.
    wait_until("Redis drained the route", || {
        let members: usize = redis
            .cli(&["ZCARD", "tollgate:cache:i:r:items"])
            .trim()
            .parse()
            .unwrap_or(usize::MAX);
        let entries = redis
            .cli(&["--scan", "--pattern", "tollgate:cache:c:*"])
            .lines()
            .count();
        members <= 4 && entries <= 5
    });
    wait_until("A freed the purged entries", || {
        a.metric("tollgate_cache_purged_unreclaimed_entries") == Some(0.0)
            && a.metric("tollgate_cache_entries") == Some(3.0)
    });
    let kept = get(a.addr, "/other/x").expect("get");
    assert_eq!(kept.cache_status().as_deref(), Some("tollgate; hit"));
}
