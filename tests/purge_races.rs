//! Purges win over fills. Each race is made deterministic by an upstream
//! that holds the first response until the test releases it: the purge is
//! issued while the fill is in flight, and the fill must not be stored
//! (in memory, or in Redis) — the next request is a miss with the new body.

mod common;
use common::redis::RedisServer;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// An upstream whose first GET of `/items/7` answers `old` once released;
/// every other GET answers `new` at once. Unsafe methods answer 204.
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
        let first = req.path == "/items/7" && gets.fetch_add(1, Ordering::SeqCst) == 0;
        let reply = Reply {
            status: 200,
            headers: vec![
                ("Cache-Control".into(), "max-age=300".into()),
                ("Surrogate-Key".into(), "product-7 catalogue".into()),
            ],
            body: if first { "old" } else { "new" }.into(),
        };
        if first {
            Action::ReplyWhenReleased(reply)
        } else {
            Action::Reply(reply)
        }
    })
}

fn proxy_config(up: &TestUpstream, redis: Option<&RedisServer>) -> String {
    let tier = redis.map_or(String::new(), |r| {
        format!(
            "redis: {{ url: \"{}\", timeout: 200ms }}\ncache: {{ redis: {{ lookup_timeout: 200ms }} }}\n",
            r.url()
        )
    });
    format!(
        "{tier}upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: items, upstream: api, match: {{ path_prefix: /items/ }}, cache: {{}} }}\n",
        up.addr
    )
}

/// Starts a GET of `path` and waits until the upstream holds it.
fn get_in_flight(proxy: &TollgateProcess, up: &TestUpstream, path: &str) -> JoinHandle<Response> {
    let addr = proxy.addr;
    let path = path.to_owned();
    let client = std::thread::spawn(move || get(addr, &path).expect("get in flight"));
    wait_until("the upstream holds the fill", || up.held() == 1);
    client
}

/// Releases the held fill and checks its client got the old body (it
/// began before the purge), then that the next GET is a miss with the new.
fn finish_race(
    proxy: &TollgateProcess,
    up: &TestUpstream,
    client: JoinHandle<Response>,
    what: &str,
) {
    up.release();
    let first = client.join().expect("client");
    assert_eq!(first.text(), "old", "{what}: the request in flight");
    let next = get(proxy.addr, "/items/7").expect("next get");
    assert_eq!(next.text(), "new", "{what}: the purged fill was stored");
    assert_eq!(
        next.cache_status().as_deref(),
        Some("tollgate; fwd=uri-miss; stored"),
        "{what}"
    );
}

fn race(what: &str, purge: impl FnOnce(&TollgateProcess)) {
    let up = versioned();
    let proxy = TollgateProcess::start(&proxy_config(&up, None));
    let client = get_in_flight(&proxy, &up, "/items/7");
    purge(&proxy);
    finish_race(&proxy, &up, client, what);
}

fn admin_purge(proxy: &TollgateProcess, body: &str) {
    let r = proxy.admin_post("/cache/purge", ADMIN_TOKEN, body);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_get_in_flight_when_a_put_invalidates_its_url_is_not_stored() {
    race("PUT", |proxy| {
        let put = request(proxy.addr, "PUT", "/items/7", &[], b"{}").expect("put");
        assert_eq!(put.status, 204);
    });
}

#[test]
fn a_get_in_flight_when_an_admin_purge_names_it_is_not_stored() {
    race("purge by url", |proxy| {
        admin_purge(proxy, "{\"url\": \"http://test.local/items/7\"}")
    });
    race("purge by tag", |proxy| {
        admin_purge(proxy, "{\"tag\": \"product-7\"}")
    });
    race("purge by route", |proxy| {
        admin_purge(proxy, "{\"route\": \"items\"}")
    });
    race("purge by prefix", |proxy| {
        admin_purge(proxy, "{\"prefix\": \"/items/\"}")
    });
    race("soft purge", |proxy| {
        admin_purge(proxy, "{\"tag\": \"catalogue\", \"soft\": true}")
    });
}

/// The Redis entries (not indexes or markers) the tier holds.
fn redis_entries(redis: &RedisServer) -> usize {
    redis
        .cli(&["--scan", "--pattern", "tollgate:cache:c:*"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[test]
fn a_fill_in_flight_on_one_instance_loses_to_a_purge_on_another() {
    let redis = RedisServer::start();
    let up = versioned();
    let config = proxy_config(&up, Some(&redis));
    let (a, b) = (
        TollgateProcess::start(&config),
        TollgateProcess::start(&config),
    );
    // An entry of the same tag on A, so that A's hearing of the purge
    // shows in its metrics.
    get(a.addr, "/items/9").expect("fill");
    a.wait_metric(r#"tollgate_cache_l2_writes_total{result="ok"}"#, 1.0);
    let client = get_in_flight(&a, &up, "/items/7");
    admin_purge(&b, "{\"tag\": \"product-7\"}");
    a.wait_metric(r#"tollgate_cache_purges_total{reason="remote"}"#, 1.0);
    finish_race(&a, &up, client, "remote purge");
    // The fill reached neither A's memory nor Redis: only the new body is
    // there once A's refill is written.
    a.wait_metric(r#"tollgate_cache_l2_writes_total{result="ok"}"#, 2.0);
    let from_b = get(b.addr, "/items/7").expect("get on B");
    assert_eq!(from_b.text(), "new");
    assert_eq!(
        redis_entries(&redis),
        1,
        "/items/7 only (/items/9 was purged)"
    );
}

#[test]
fn a_redis_write_overtaken_by_a_purge_it_had_not_heard_of_is_dropped() {
    let redis = RedisServer::start();
    let up = versioned();
    let a = TollgateProcess::start(&proxy_config(&up, Some(&redis)));
    let client = get_in_flight(&a, &up, "/items/7");
    // Another instance's purge, as it reaches Redis before its message
    // reaches A: a new shared generation and the tag's marker.
    let generation = redis.cli(&["INCR", "tollgate:cache:gen"]);
    redis.cli(&[
        "SET",
        "tollgate:cache:x:t:product-7",
        generation.trim(),
        "PX",
        "60000",
    ]);
    up.release();
    assert_eq!(client.join().expect("client").text(), "old");
    a.wait_metric(r#"tollgate_cache_l2_writes_total{result="overtaken"}"#, 1.0);
    assert_eq!(
        redis_entries(&redis),
        0,
        "the overtaken write is not in Redis"
    );
    // A request that began after A heard of the generation writes again.
    admin_purge(&a, "{\"url\": \"http://unrelated.test/x\"}");
    let again = get(a.addr, "/items/8").expect("get");
    assert_eq!(again.text(), "new");
    a.wait_metric(r#"tollgate_cache_l2_writes_total{result="ok"}"#, 1.0);
    assert_eq!(redis_entries(&redis), 1);
}

#[test]
fn a_routes_redis_index_stays_near_its_live_entries() {
    let redis = RedisServer::start();
    let up = TestUpstream::start(|_| {
        Action::Reply(Reply {
            status: 200,
            headers: vec![("Cache-Control".into(), "max-age=1".into())],
            body: b"short-lived".to_vec(),
        })
    });
    let a = TollgateProcess::start(&proxy_config(&up, Some(&redis)));
    let index = "tollgate:cache:i:r:items";
    let card = |redis: &RedisServer| -> usize {
        redis
            .cli(&["ZCARD", index])
            .trim()
            .parse()
            .unwrap_or(usize::MAX)
    };
    for i in 0..200 {
        get(a.addr, &format!("/items/{i}")).expect("fill");
    }
    a.wait_metric(r#"tollgate_cache_l2_writes_total{result="ok"}"#, 200.0);
    // Every live entry is indexed, and nothing else is: on a slow machine
    // the first fills may already have expired and been trimmed by later
    // writes, so the count is bounded both ways rather than exact.
    let live = redis_entries(&redis);
    let indexed = card(&redis);
    assert!(
        (live..=200).contains(&indexed),
        "{indexed} indexed for {live} live entries of 200 written"
    );
    wait_until("the entries expired in Redis", || {
        redis_entries(&redis) == 0
    });
    get(a.addr, "/items/fresh").expect("fill");
    a.wait_metric(r#"tollgate_cache_l2_writes_total{result="ok"}"#, 201.0);
    assert_eq!(
        card(&redis),
        1,
        "expired members are trimmed by the next write"
    );
}

#[test]
fn a_redis_lookup_in_flight_during_a_remote_purge_is_not_promoted_into_memory() {
    use common::redis::ReplyGate;
    let redis = RedisServer::start();
    let gate = ReplyGate::start(redis.addr);
    // Every GET answers its own version, so a body tells which fill it is.
    let fills = Arc::new(AtomicUsize::new(0));
    let counted = fills.clone();
    let up = TestUpstream::start(move |_| {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        Action::Reply(Reply {
            status: 200,
            headers: vec![
                ("Cache-Control".into(), "max-age=300".into()),
                ("Surrogate-Key".into(), "product-7".into()),
            ],
            body: format!("v{n}").into(),
        })
    });
    let routes = format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: items, upstream: api, match: {{ path_prefix: /items/ }}, cache: {{}} }}\n",
        up.addr
    );
    // A reaches Redis through the gate, with a lookup bound long enough to
    // outlast the hold; B directly.
    let a = TollgateProcess::start(&format!(
        "redis: {{ url: \"{}\", timeout: 10s }}\ncache: {{ redis: {{ lookup_timeout: 10s }} }}\n{routes}",
        gate.url()
    ));
    let b = TollgateProcess::start(&format!(
        "redis: {{ url: \"{}\", timeout: 1s }}\ncache: {{ redis: {{}} }}\n{routes}",
        redis.url()
    ));
    // An entry of the same tag in A's memory (v1), so that A's hearing of
    // the purge shows in its metrics.
    assert_eq!(get(a.addr, "/items/9").expect("fill on A").text(), "v1");
    // B fills /items/7 (v2) into Redis; A's memory does not have it.
    assert_eq!(get(b.addr, "/items/7").expect("fill on B").text(), "v2");
    b.wait_metric(r#"tollgate_cache_l2_writes_total{result="ok"}"#, 1.0);
    // A's lookup of it is answered by Redis, and the answer held.
    gate.hold();
    let addr = a.addr;
    let client = std::thread::spawn(move || get(addr, "/items/7").expect("get on A"));
    wait_until("A's lookup reply is held", || gate.held() >= 1);
    // Meanwhile B purges the tag; A hears of it.
    admin_purge(&b, "{\"tag\": \"product-7\"}");
    a.wait_metric(r#"tollgate_cache_purges_total{reason="remote"}"#, 1.0);
    gate.release();
    // The request in flight began before the purge: whatever it got (the
    // copy Redis answered is refused once the purge is heard, so it asks
    // the upstream), the entry it found in Redis must not live on in A's
    // memory.
    let first = client.join().expect("client");
    assert_eq!(first.status, 200);
    let next = get(a.addr, "/items/7").expect("next get on A");
    assert_ne!(
        next.text(),
        "v2",
        "the purged entry was promoted into A's memory: {next:?}"
    );
    assert!(fills.load(Ordering::SeqCst) >= 3, "fetched again");
}

/// The members every index of the tier holds, by index key.
fn index_members(redis: &RedisServer) -> Vec<(String, usize)> {
    redis
        .cli(&["--scan", "--pattern", "tollgate:cache:i:*"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|index| {
            let n = redis
                .cli(&["ZCARD", index])
                .trim()
                .parse()
                .unwrap_or(usize::MAX);
            (index.to_owned(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn a_purge_takes_its_entries_out_of_their_other_indexes_too() {
    let redis = RedisServer::start();
    let up = versioned(); // every /items/N but the first /items/7: tags product-7, catalogue
    let a = TollgateProcess::start(&proxy_config(&up, Some(&redis)));
    for i in 0..30 {
        get(a.addr, &format!("/items/{}", 100 + i)).expect("fill");
    }
    a.wait_metric(r#"tollgate_cache_l2_writes_total{result="ok"}"#, 30.0);
    let before = index_members(&redis);
    assert!(
        before
            .iter()
            .any(|(i, n)| i == "tollgate:cache:i:r:items" && *n == 30),
        "{before:?}"
    );
    assert!(
        before
            .iter()
            .any(|(i, n)| i == "tollgate:cache:i:t:catalogue" && *n == 30),
        "{before:?}"
    );
    // Purging one tag removes the entries, and their members in the route,
    // URI and other tag indexes — not only in the index it drained.
    admin_purge(&a, "{\"tag\": \"product-7\"}");
    assert_eq!(redis_entries(&redis), 0);
    assert_eq!(index_members(&redis), Vec::new(), "members left behind");
}
