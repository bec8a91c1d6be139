//! Response caching, one test per rule, against a counting upstream whose
//! answers depend on the path. The upstream's counters prove what was and
//! was not forwarded.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// The API behind the cache: each path shows one caching rule.
fn origin(failing: Arc<AtomicBool>) -> TestUpstream {
    TestUpstream::start(move |req| {
        let path = req.path.split('?').next().unwrap_or("");
        if failing.load(Ordering::SeqCst) && path.starts_with("/flaky") {
            return Action::Close;
        }
        match path {
            "/max-age" | "/items" | "/a/1" | "/a/2" | "/b/1" => {
                reply(200, &[("Cache-Control", "max-age=60")], &req.path)
            }
            "/s-maxage" => reply(
                200,
                &[("Cache-Control", "max-age=0, s-maxage=60")],
                "shared",
            ),
            "/no-store" => reply(200, &[("Cache-Control", "no-store")], "secret"),
            "/private" => reply(200, &[("Cache-Control", "private, max-age=60")], "mine"),
            "/silent" => reply(200, &[], "silent"),
            "/vary" => {
                let lang = req.header("accept-language").unwrap_or("none").to_owned();
                reply(
                    200,
                    &[("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
                    &lang,
                )
            }
            "/etag" => {
                if req.header("if-none-match") == Some("\"v1\"") {
                    reply(
                        304,
                        &[("ETag", "\"v1\""), ("Cache-Control", "max-age=0")],
                        "",
                    )
                } else {
                    reply(
                        200,
                        &[("ETag", "\"v1\""), ("Cache-Control", "max-age=0")],
                        "etag body",
                    )
                }
            }
            "/fresh-etag" => reply(
                200,
                &[("ETag", "\"v7\""), ("Cache-Control", "max-age=60")],
                "tagged",
            ),
            "/flaky" => reply(
                200,
                &[("Cache-Control", "max-age=0, stale-if-error=60")],
                "good old body",
            ),
            "/swr" => reply(
                200,
                &[("Cache-Control", "max-age=0, stale-while-revalidate=60")],
                "swr body",
            ),
            "/slow" => Action::ReplyWhenReleased(Reply {
                status: 200,
                headers: vec![("Cache-Control".into(), "max-age=60".into())],
                body: b"slow body".to_vec(),
            }),
            "/big" => reply(200, &[("Cache-Control", "max-age=60")], &"x".repeat(4096)),
            _ => reply(404, &[], "no such path"),
        }
    })
}

struct Setup {
    proxy: TollgateProcess,
    up: TestUpstream,
    failing: Arc<AtomicBool>,
}

fn setup_with(cache_block: &str, route_cache: &str) -> Setup {
    let failing = Arc::new(AtomicBool::new(false));
    let up = origin(failing.clone());
    let proxy = TollgateProcess::start(&format!(
        "{cache_block}upstreams:\n  api: {{ backends: [\"{}\"], max_fails: 0 }}\n\
         routes:\n  - {{ name: api, upstream: api, cache: {route_cache} }}\n  \
         - {{ name: nocache, upstream: api, match: {{ path_prefix: /nocache/ }} }}\n",
        up.addr
    ));
    Setup { proxy, up, failing }
}

fn setup() -> Setup {
    setup_with("", "{ default_ttl: 60s }")
}

fn path_count(up: &TestUpstream, path: &str) -> usize {
    up.recorded().iter().filter(|r| r.path == path).count()
}

fn fetch(s: &Setup, path: &str, headers: &[(&str, &str)]) -> Response {
    request(s.proxy.addr, "GET", path, headers, b"").expect("request")
}

fn admin_post(s: &Setup, path: &str, body: &str) -> Response {
    s.proxy.admin_post(path, ADMIN_TOKEN, body)
}

#[test]
fn a_fresh_response_is_served_from_the_cache_with_age_and_cache_status() {
    let s = setup();
    let first = fetch(&s, "/max-age", &[]);
    assert_eq!(
        first.cache_status().as_deref(),
        Some("tollgate; fwd=uri-miss; stored")
    );
    let second = fetch(&s, "/max-age", &[]);
    assert_eq!(second.text(), "/max-age");
    assert_eq!(second.cache_status().as_deref(), Some("tollgate; hit"));
    assert!(second.header("age").is_some());
    assert_eq!(path_count(&s.up, "/max-age"), 1);
    s.proxy.wait_metric(
        r#"tollgate_cache_requests_total{result="hit",route="api"}"#,
        1.0,
    );
    s.proxy.wait_metric(
        r#"tollgate_cache_requests_total{result="miss",route="api"}"#,
        1.0,
    );
}

/// Fresh hits of plain GET/HEAD requests are answered straight from the
/// store (`serve_fresh_hit`); they must carry everything a response from
/// Pingora's cache path carries.
#[test]
fn fresh_hits_carry_the_headers_of_any_other_response() {
    let s = setup();
    let miss = fetch(&s, "/b/1", &[]);
    assert_eq!(miss.text(), "/b/1");
    let hit = fetch(&s, "/b/1", &[("X-Request-Id", "trace-42")]);
    assert_eq!((hit.status, hit.text().as_str()), (200, "/b/1"));
    assert_eq!(hit.cache_status().as_deref(), Some("tollgate; hit"));
    assert_eq!(hit.header("x-request-id"), Some("trace-42"));
    assert_eq!(hit.header("content-length"), Some("4"));
    assert_eq!(hit.header("cache-control"), Some("max-age=60"));
    assert!(hit
        .header("via")
        .is_some_and(|v| v.contains("1.1 tollgate")));
    assert!(hit.header("x-response-time").is_some());
    let age: u64 = hit
        .header("age")
        .and_then(|a| a.parse().ok())
        .expect("a numeric Age");
    assert!(age <= 60, "age {age}");

    let head = request(s.proxy.addr, "HEAD", "/b/1", &[], b"").expect("head");
    assert_eq!(head.status, 200);
    assert_eq!(head.cache_status().as_deref(), Some("tollgate; hit"));
    assert_eq!(head.header("content-length"), Some("4"));
    assert!(head.body.is_empty());
    assert_eq!(path_count(&s.up, "/b/1"), 1);
    s.proxy.wait_metric(
        r#"tollgate_cache_requests_total{result="hit",route="api"}"#,
        2.0,
    );
    // The client connection stays usable after a fresh hit (keep-alive).
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(s.proxy.addr).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    for _ in 0..2 {
        conn.write_all(b"GET /b/1 HTTP/1.1\r\nHost: test.local\r\n\r\n")
            .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // One response: headers, then the 4-byte body.
        let complete = |got: &[u8]| {
            got.windows(4)
                .position(|w| w == b"\r\n\r\n")
                .is_some_and(|end| got.len() >= end + 4 + 4)
        };
        while !complete(&got) {
            let n = conn.read(&mut buf).expect("read");
            assert!(n > 0, "connection closed after {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(text.contains("cache-status: tollgate; hit"), "{text}");
        assert!(text.ends_with("/b/1"), "{text}");
    }
}

#[test]
fn s_maxage_overrides_max_age() {
    let s = setup();
    fetch(&s, "/s-maxage", &[]);
    assert_eq!(
        fetch(&s, "/s-maxage", &[]).cache_status().as_deref(),
        Some("tollgate; hit")
    );
    assert_eq!(path_count(&s.up, "/s-maxage"), 1);
}

#[test]
fn no_store_is_never_stored() {
    let s = setup();
    for _ in 0..3 {
        let r = fetch(&s, "/no-store", &[]);
        assert_eq!(
            r.cache_status().as_deref(),
            Some("tollgate; fwd=uri-miss; detail=no-store-or-private")
        );
    }
    assert_eq!(path_count(&s.up, "/no-store"), 3);
}

#[test]
fn private_responses_and_authorized_requests_are_not_shared() {
    let s = setup();
    fetch(&s, "/private", &[]);
    fetch(&s, "/private", &[]);
    assert_eq!(path_count(&s.up, "/private"), 2);
    // max-age alone does not allow storing a response to an authorized request.
    fetch(&s, "/max-age", &[("Authorization", "Bearer a")]);
    let r = fetch(&s, "/max-age", &[("Authorization", "Bearer b")]);
    assert_eq!(
        r.cache_status().as_deref(),
        Some("tollgate; fwd=uri-miss; detail=authorization")
    );
    assert_eq!(path_count(&s.up, "/max-age"), 2);
}

#[test]
fn default_ttl_applies_only_when_the_upstream_is_silent() {
    let s = setup();
    fetch(&s, "/silent", &[]);
    assert_eq!(
        fetch(&s, "/silent", &[]).cache_status().as_deref(),
        Some("tollgate; hit")
    );
    assert_eq!(path_count(&s.up, "/silent"), 1);
    // max-age=0 is information: the 60s default must not override it.
    fetch(&s, "/etag", &[]);
    fetch(&s, "/etag", &[]);
    assert_eq!(path_count(&s.up, "/etag"), 2);
}

#[test]
fn vary_separates_variants() {
    let s = setup();
    assert_eq!(
        fetch(&s, "/vary", &[("Accept-Language", "en")]).text(),
        "en"
    );
    assert_eq!(
        fetch(&s, "/vary", &[("Accept-Language", "fr")]).text(),
        "fr"
    );
    let en = fetch(&s, "/vary", &[("Accept-Language", "en")]);
    assert_eq!(
        (en.text().as_str(), en.cache_status().as_deref()),
        ("en", Some("tollgate; hit"))
    );
    let fr = fetch(&s, "/vary", &[("Accept-Language", "fr")]);
    assert_eq!(
        (fr.text().as_str(), fr.cache_status().as_deref()),
        ("fr", Some("tollgate; hit"))
    );
    assert_eq!(path_count(&s.up, "/vary"), 2);
}

#[test]
fn etag_revalidation_refreshes_without_body() {
    let s = setup();
    assert_eq!(fetch(&s, "/etag", &[]).text(), "etag body");
    let r = fetch(&s, "/etag", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "etag body"));
    assert_eq!(
        r.cache_status().as_deref(),
        Some("tollgate; fwd=stale; fwd-status=304")
    );
    let conditional: Vec<_> =
        s.up.recorded()
            .into_iter()
            .filter(|r| r.path == "/etag")
            .collect();
    assert_eq!(conditional.len(), 2);
    assert_eq!(conditional[1].header("if-none-match"), Some("\"v1\""));
}

#[test]
fn a_client_if_none_match_gets_304_from_the_cache() {
    let s = setup();
    fetch(&s, "/fresh-etag", &[]);
    let r = fetch(&s, "/fresh-etag", &[("If-None-Match", "\"v7\"")]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(path_count(&s.up, "/fresh-etag"), 1);
}

#[test]
fn request_no_cache_forces_revalidation() {
    let s = setup();
    fetch(&s, "/max-age", &[]);
    let r = fetch(&s, "/max-age", &[("Cache-Control", "no-cache")]);
    assert_ne!(r.cache_status().as_deref(), Some("tollgate; hit"));
    assert_eq!(path_count(&s.up, "/max-age"), 2);
}

#[test]
fn only_if_cached_is_a_504_on_a_miss_and_a_hit_otherwise() {
    let s = setup();
    let miss = fetch(&s, "/max-age", &[("Cache-Control", "only-if-cached")]);
    assert_eq!(miss.status, 504);
    assert_eq!(miss.json()["error"], "not_cached");
    assert_eq!(path_count(&s.up, "/max-age"), 0);
    fetch(&s, "/max-age", &[]);
    let hit = fetch(&s, "/max-age", &[("Cache-Control", "only-if-cached")]);
    assert_eq!(hit.cache_status().as_deref(), Some("tollgate; hit"));
}

/// Issue 24: a HEAD miss fills the cache the way nginx's
/// `proxy_cache_convert_head` does — one upstream GET, stored, the HEAD
/// answered from it — and never marks the key uncacheable for later GETs.
#[test]
fn a_head_miss_fills_the_cache_with_one_get_for_later_requests() {
    let s = setup();
    let head_first = request(s.proxy.addr, "HEAD", "/a/1", &[], b"").expect("head");
    assert_eq!(head_first.status, 200);
    assert!(head_first.body.is_empty());
    let seen = s.up.recorded();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET", "the fill went upstream as a GET");
    let get = fetch(&s, "/a/1", &[]);
    assert_eq!(get.text(), "/a/1");
    assert_eq!(get.cache_status().as_deref(), Some("tollgate; hit"));
    let head = request(s.proxy.addr, "HEAD", "/a/1", &[], b"").expect("head");
    assert_eq!(head.cache_status().as_deref(), Some("tollgate; hit"));
    assert!(head.body.is_empty());
    assert_eq!(path_count(&s.up, "/a/1"), 1);
}

#[test]
fn concurrent_misses_reach_upstream_once() {
    let s = setup();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let addr = s.proxy.addr;
            thread::spawn(move || get(addr, "/slow").expect("request"))
        })
        .collect();
    wait_until("one request reached the upstream", || s.up.held() == 1);
    s.proxy.wait_metric("tollgate_requests_in_flight", 8.0);
    s.up.release();
    for c in clients {
        let r = c.join().expect("client");
        assert_eq!((r.status, r.text().as_str()), (200, "slow body"));
    }
    assert_eq!(path_count(&s.up, "/slow"), 1);
}

#[test]
fn post_invalidates_cached_get() {
    let s = setup();
    fetch(&s, "/items", &[]);
    assert_eq!(
        fetch(&s, "/items", &[]).cache_status().as_deref(),
        Some("tollgate; hit")
    );
    let post = request(s.proxy.addr, "POST", "/items", &[], b"{}").expect("post");
    assert_eq!(post.cache_status().as_deref(), Some("tollgate; fwd=method"));
    s.proxy
        .wait_metric(r#"tollgate_cache_purges_total{reason="invalidation"}"#, 1.0);
    assert_eq!(
        fetch(&s, "/items", &[]).cache_status().as_deref(),
        Some("tollgate; fwd=uri-miss; stored")
    );
    assert_eq!(path_count(&s.up, "/items"), 3);
}

#[test]
fn purge_by_prefix_removes_only_matching() {
    let s = setup();
    for p in ["/a/1", "/a/2", "/b/1"] {
        fetch(&s, p, &[]);
    }
    let r = admin_post(&s, "/cache/purge", r#"{"prefix": "/a/"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["purged"], 2);
    assert_eq!(
        fetch(&s, "/b/1", &[]).cache_status().as_deref(),
        Some("tollgate; hit")
    );
    assert_eq!(
        fetch(&s, "/a/1", &[]).cache_status().as_deref(),
        Some("tollgate; fwd=uri-miss; stored")
    );
    s.proxy
        .wait_metric(r#"tollgate_cache_purges_total{reason="admin"}"#, 2.0);
}

#[test]
fn purge_by_url_and_by_route_and_refusals() {
    let s = setup();
    fetch(&s, "/a/1", &[]);
    fetch(&s, "/b/1", &[]);
    let r = admin_post(&s, "/cache/purge", r#"{"url": "http://test.local/a/1"}"#);
    assert_eq!(r.json()["purged"], 1);
    assert_eq!(
        admin_post(&s, "/cache/purge", r#"{"route": "api"}"#).json()["purged"],
        1
    );
    assert_eq!(
        admin_post(&s, "/cache/purge", r#"{"route": "nope"}"#).status,
        404
    );
    assert_eq!(
        admin_post(&s, "/cache/purge", r#"{"prefix": "/a/", "url": "x"}"#).status,
        400
    );
    let unauthorized = request(
        s.proxy.admin,
        "POST",
        "/cache/purge",
        &[("Content-Type", "application/json")],
        br#"{"prefix": "/"}"#,
    )
    .expect("post");
    assert_eq!(unauthorized.status, 401);
}

#[test]
fn stale_if_error_serves_stale_on_upstream_failure() {
    let s = setup();
    assert_eq!(fetch(&s, "/flaky", &[]).text(), "good old body");
    s.failing.store(true, Ordering::SeqCst);
    let r = fetch(&s, "/flaky", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "good old body"));
    assert_eq!(
        r.cache_status().as_deref(),
        Some("tollgate; hit; fwd=stale")
    );
}

#[test]
fn routes_without_cache_settings_are_not_cached() {
    let s = setup();
    let r = fetch(&s, "/nocache/x", &[]);
    assert_eq!(r.cache_status().as_deref(), None);
    fetch(&s, "/nocache/x", &[]);
    assert_eq!(path_count(&s.up, "/nocache/x"), 2);
}

#[test]
fn oversized_objects_are_streamed_through_uncached() {
    let s = setup_with(
        "cache: { max_size: 1MiB, max_object_size: 1KiB }\n",
        "{ default_ttl: 60s }",
    );
    for _ in 0..2 {
        let r = fetch(&s, "/big", &[]);
        assert_eq!(r.body.len(), 4096);
        assert_eq!(
            r.cache_status().as_deref(),
            Some("tollgate; fwd=uri-miss; detail=too-large")
        );
    }
    assert_eq!(
        path_count(&s.up, "/big"),
        2,
        "a 4 KiB body was served from a 1 KiB-object cache"
    );
    s.proxy.wait_metric("tollgate_cache_entries", 0.0);
}

#[test]
fn memory_stays_within_max_size() {
    let s = setup_with(
        "cache: { max_size: 64KiB, max_object_size: 8KiB }\n",
        "{ default_ttl: 60s }",
    );
    for i in 0..100 {
        let r = fetch(&s, &format!("/big?n={i}"), &[]);
        assert_eq!(r.body.len(), 4096);
    }
    wait_until("evictions bring the cache within max_size", || {
        s.proxy
            .metric("tollgate_cache_size_bytes")
            .is_some_and(|b| b <= 64.0 * 1024.0)
    });
    assert!(
        s.proxy
            .metric("tollgate_cache_evictions_total")
            .unwrap_or(0.0)
            > 0.0
    );
    let entries = s.proxy.metric("tollgate_cache_entries").unwrap_or(0.0);
    assert!((1.0..=16.0).contains(&entries), "entries: {entries}");
}

#[test]
fn stale_while_revalidate_serves_stale_and_refreshes_in_the_background() {
    let s = setup();
    fetch(&s, "/swr", &[]);
    let r = fetch(&s, "/swr", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "swr body"));
    assert_eq!(
        r.cache_status().as_deref(),
        Some("tollgate; hit; fwd=stale")
    );
    wait_until("the background revalidation reached the upstream", || {
        path_count(&s.up, "/swr") == 2
    });
}
