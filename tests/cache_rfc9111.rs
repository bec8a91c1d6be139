//! RFC 9111 details, one test per rule, each citing its section: age and
//! dates, 304 updates, request directives, heuristic freshness. The
//! upstream's request counter says whether the cache answered.

mod common;
use common::*;
use std::time::{Duration, SystemTime};

fn reply(status: u16, headers: Vec<(String, String)>, body: &str) -> Action {
    Action::Reply(Reply {
        status,
        headers,
        body: body.as_bytes().to_vec(),
    })
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn http_date(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let at = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs((-offset_secs) as u64)
    };
    httpdate::fmt_http_date(at)
}

fn cached_route(up: &TestUpstream, cache: &str) -> TollgateProcess {
    TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"], max_fails: 0 }}\nroutes:\n  - {{ name: api, upstream: api, cache: {cache} }}\n",
        up.addr
    ))
}

/// §4.2.3: an upstream `Age` counts; `Age: 3600` with `max-age=3600` is
/// already stale on arrival, and so is `Age: 7200, 0` (§5.1: the first
/// member of a list).
#[test]
fn upstream_age_counts_toward_freshness() {
    let up = TestUpstream::start(|req| {
        let age = match req.path.as_str() {
            "/old" => "3600",
            // §5.1: a list is read by its first member.
            "/old-list" => "7200, 0",
            _ => "10",
        };
        reply(
            200,
            h(&[("Cache-Control", "max-age=3600"), ("Age", age)]),
            "x",
        )
    });
    let proxy = cached_route(&up, "{}");
    get(proxy.addr, "/old").expect("get");
    get(proxy.addr, "/old").expect("get");
    assert_eq!(up.count(), 2, "a response as old as its lifetime is stale");
    get(proxy.addr, "/old-list").expect("get");
    get(proxy.addr, "/old-list").expect("get");
    assert_eq!(up.count(), 4, "Age: 7200, 0 is 7200 seconds old");
    get(proxy.addr, "/young").expect("get");
    let hit = get(proxy.addr, "/young").expect("get");
    assert_eq!(up.count(), 5);
    let age: u64 = hit
        .header("age")
        .expect("Age on a hit")
        .parse()
        .expect("age");
    assert!(age >= 10, "the upstream's Age is kept and grows: {age}");
}

/// §4.2.3: a `Date` in the past makes the response older on arrival.
#[test]
fn a_date_in_the_past_makes_a_response_older() {
    let up = TestUpstream::start(|_| {
        reply(
            200,
            h(&[
                ("Cache-Control", "max-age=600"),
                ("Date", &http_date(-3600)),
            ]),
            "x",
        )
    });
    let proxy = cached_route(&up, "{}");
    get(proxy.addr, "/x").expect("get");
    get(proxy.addr, "/x").expect("get");
    assert_eq!(
        up.count(),
        2,
        "generated an hour ago, fresh for ten minutes: stale"
    );
}

/// §4, §5.1: every response from the cache carries `Age`, and it counts
/// from the upstream's `Date` (§4.2.3), which the hit keeps
/// (`pingora_patches::a_cached_response_keeps_the_origins_date`).
#[test]
fn age_is_sent_on_every_hit_and_counts_from_the_upstreams_date() {
    let up = TestUpstream::start(|_| {
        reply(
            200,
            h(&[("Cache-Control", "max-age=600"), ("Date", &http_date(-5))]),
            "x",
        )
    });
    let proxy = cached_route(&up, "{}");
    get(proxy.addr, "/x").expect("get");
    let hit = get(proxy.addr, "/x").expect("get");
    assert_eq!(up.count(), 1);
    let age: u64 = hit.header("age").expect("Age").parse().expect("age");
    assert!(age >= 5, "apparent age from the Date: {age}");
    // RFC 9211 §2.5: the freshness left, here at most 600 − 5 seconds.
    let ttl: i64 = hit
        .header("cache-status")
        .and_then(|s| s.split("; ttl=").nth(1))
        .and_then(|t| t.split(';').next())
        .expect("ttl= on a hit")
        .parse()
        .expect("ttl");
    assert!((0..=595).contains(&ttl), "{ttl}");
    let fresh = TestUpstream::start(|_| reply(200, h(&[("Cache-Control", "max-age=600")]), "x"));
    let proxy = cached_route(&fresh, "{}");
    get(proxy.addr, "/y").expect("get");
    let hit = get(proxy.addr, "/y").expect("get");
    assert!(hit.header("age").is_some(), "Age: 0 is sent too");
}

/// §4.3.4: a 304 updates the stored response's fields with its own.
#[test]
fn a_304_updates_the_stored_headers() {
    let up = TestUpstream::start(|req| {
        let version = req.header("x-test-version").unwrap_or("").to_owned();
        if req.header("if-none-match") == Some("\"v1\"") {
            let mut fields = h(&[("ETag", "\"v1\""), ("Cache-Control", "max-age=0")]);
            if !version.is_empty() {
                fields.push(("X-Version".into(), version));
            }
            reply(304, fields, "")
        } else {
            reply(
                200,
                h(&[
                    ("ETag", "\"v1\""),
                    ("Cache-Control", "max-age=0"),
                    ("X-Version", "1"),
                ]),
                "body",
            )
        }
    });
    let proxy = cached_route(&up, "{}");
    let first = get(proxy.addr, "/doc").expect("get");
    assert_eq!(first.header("x-version"), Some("1"));
    // Revalidated: the 304 brings X-Version 2 (the test asks for it).
    let second = request(proxy.addr, "GET", "/doc", &[("X-Test-Version", "2")], b"").expect("get");
    assert_eq!(second.text(), "body");
    assert_eq!(second.header("x-version"), Some("2"));
    // The next 304 carries no X-Version: the stored one is now 2.
    let third = get(proxy.addr, "/doc").expect("get");
    assert_eq!(third.header("x-version"), Some("2"));
    assert_eq!(up.count(), 3);
}

/// §5.2.1.1 and §5.2.1.3: a client's `max-age` and `min-fresh` make a
/// fresh stored response unusable without revalidation.
#[test]
fn request_max_age_and_min_fresh_force_revalidation() {
    let up = TestUpstream::start(|_| {
        reply(
            200,
            h(&[("Cache-Control", "max-age=300"), ("Age", "100")]),
            "x",
        )
    });
    let proxy = cached_route(&up, "{}");
    get(proxy.addr, "/x").expect("get");
    let ask = |cc: &str| {
        request(proxy.addr, "GET", "/x", &[("Cache-Control", cc)], b"").expect("get");
        up.count()
    };
    assert_eq!(ask("max-age=500"), 1, "100 s old is young enough");
    assert_eq!(ask("max-age=50"), 2, "100 s old is too old");
    assert_eq!(ask("min-fresh=100"), 2, "fresh for ~200 s more");
    assert_eq!(ask("min-fresh=250"), 3, "not fresh for 250 s more");
}

/// §4.2.2: without explicit freshness, a tenth of the time since
/// `Last-Modified`; off with `heuristic_freshness: false`.
#[test]
fn heuristic_freshness_from_last_modified() {
    let modified = http_date(-10 * 24 * 3600);
    let sent = modified.clone();
    let up = TestUpstream::start(move |_| reply(200, h(&[("Last-Modified", &sent)]), "x"));
    let proxy = cached_route(&up, "{}");
    get(proxy.addr, "/x").expect("get");
    let hit = get(proxy.addr, "/x").expect("get");
    assert_eq!(up.count(), 1, "ten days old: a day of heuristic freshness");
    assert!(hit
        .cache_status()
        .as_deref()
        .is_some_and(|s| s.contains("hit")));
    let plain = TestUpstream::start(move |_| reply(200, h(&[("Last-Modified", &modified)]), "x"));
    let strict = cached_route(&plain, "{ heuristic_freshness: false }");
    get(strict.addr, "/x").expect("get");
    get(strict.addr, "/x").expect("get");
    assert_eq!(plain.count(), 2);
}

/// §3: any final status with explicit freshness may be stored.
#[test]
fn redirects_and_unknown_statuses_with_explicit_freshness_are_stored() {
    let up = TestUpstream::start(|req| {
        let status = req.path.trim_start_matches('/').parse().unwrap_or(200);
        reply(
            status,
            h(&[("Cache-Control", "max-age=60"), ("Location", "/elsewhere")]),
            "x",
        )
    });
    let proxy = cached_route(&up, "{}");
    for status in [302, 307, 299, 599] {
        let path = format!("/{status}");
        let a = get(proxy.addr, &path).expect("get");
        let b = get(proxy.addr, &path).expect("get");
        assert_eq!((a.status, b.status), (status, status));
    }
    assert_eq!(up.count(), 4, "every second request was a hit");
}

/// RFC 9213: a targeted field replaces `Cache-Control` for tollgate's own
/// decisions, and reaches the client unless stripped by config.
#[test]
fn targeted_cache_control_wins_over_cache_control() {
    let up = TestUpstream::start(|req| {
        let fields = match req.path.as_str() {
            // The origin lets browsers keep it, but not the edge.
            "/edge-no-store" => h(&[
                ("Cache-Control", "max-age=600"),
                ("CDN-Cache-Control", "no-store"),
            ]),
            // The origin lets the edge keep it, but not browsers.
            _ => h(&[
                ("Cache-Control", "no-store"),
                ("Tollgate-Cache-Control", "max-age=600"),
            ]),
        };
        reply(200, fields, "x")
    });
    let proxy = cached_route(&up, "{}");
    get(proxy.addr, "/edge-no-store").expect("get");
    get(proxy.addr, "/edge-no-store").expect("get");
    assert_eq!(up.count(), 2, "CDN-Cache-Control: no-store wins");
    let first = get(proxy.addr, "/edge-only").expect("get");
    let hit = get(proxy.addr, "/edge-only").expect("get");
    assert_eq!(up.count(), 3, "Tollgate-Cache-Control: max-age=600 wins");
    assert_eq!(
        first.header("cache-control"),
        Some("no-store"),
        "Cache-Control reaches the client as sent"
    );
    assert_eq!(hit.header("tollgate-cache-control"), Some("max-age=600"));

    let stripping = cached_route(&up, "{ strip_targeted_fields: true }");
    let miss = get(stripping.addr, "/edge-only").expect("get");
    let hit = get(stripping.addr, "/edge-only").expect("get");
    assert_eq!(
        (
            miss.header("tollgate-cache-control"),
            hit.header("tollgate-cache-control")
        ),
        (None, None)
    );
}

/// RFC 9213 §2.1: a targeted field is a Dictionary structured field; one
/// that does not parse, or whose directive has the wrong type (`max-age`
/// as a string or a decimal), is ignored as a whole and `Cache-Control`
/// decides.
#[test]
fn a_targeted_field_with_an_invalid_structured_type_is_ignored_whole() {
    let up = TestUpstream::start(|req| {
        let cdn = match req.path.as_str() {
            "/string" => "max-age=\"600\"",
            "/decimal" => "max-age=600.0",
            "/half-valid" => "max-age=600, no-store=1",
            _ => "max-age=600",
        };
        reply(
            200,
            h(&[("Cache-Control", "no-store"), ("CDN-Cache-Control", cdn)]),
            "x",
        )
    });
    let proxy = cached_route(&up, "{}");
    for (path, stored) in [
        ("/string", false),
        ("/decimal", false),
        ("/half-valid", false),
        ("/valid", true),
    ] {
        let before = up.count();
        get(proxy.addr, path).expect("get");
        get(proxy.addr, path).expect("get");
        let fetched = up.count() - before;
        assert_eq!(fetched, if stored { 1 } else { 2 }, "{path}");
    }
}

/// §5.1: `Age` is delta-seconds and nothing else; a value with anything
/// after the digits (or before them) is invalid and ignored, not read as
/// its leading number. (A list, `3600, 0`, is read by its first member:
/// `upstream_age_counts_toward_freshness`.)
#[test]
fn an_age_with_trailing_garbage_is_ignored() {
    let up = TestUpstream::start(|req| {
        let age = match req.path.as_str() {
            "/suffix" => "3600abc",
            "/space" => "3600 s",
            _ => "3600",
        };
        reply(
            200,
            h(&[("Cache-Control", "max-age=3600"), ("Age", age)]),
            "x",
        )
    });
    let proxy = cached_route(&up, "{}");
    for path in ["/suffix", "/space"] {
        get(proxy.addr, path).expect("get");
        let hit = get(proxy.addr, path).expect("get");
        assert_eq!(
            hit.cache_status().as_deref(),
            Some("tollgate; hit"),
            "{path}"
        );
        let age: u64 = hit.header("age").expect("age").parse().expect("number");
        assert!(
            age < 3600,
            "{path}: the invalid Age was not read as 3600: {age}"
        );
    }
    get(proxy.addr, "/valid").expect("get");
    let stale = get(proxy.addr, "/valid").expect("get");
    assert_ne!(stale.cache_status().as_deref(), Some("tollgate; hit"));
}

/// RFC 9111 §7.3: a response that sets a cookie is not replayed to other
/// clients — not stored by default, stored without the cookie with
/// `set_cookie: strip`.
#[test]
fn set_cookie_responses_are_never_replayed_with_their_cookie() {
    let up = TestUpstream::start(|_| {
        reply(
            200,
            h(&[
                ("Cache-Control", "max-age=600"),
                ("Set-Cookie", "session=alice"),
            ]),
            "x",
        )
    });
    let never = cached_route(&up, "{}");
    get(never.addr, "/x").expect("get");
    get(never.addr, "/x").expect("get");
    assert_eq!(up.count(), 2);
    let strip = cached_route(&up, "{ set_cookie: strip }");
    let first = get(strip.addr, "/y").expect("get");
    assert_eq!(
        first.header("set-cookie"),
        Some("session=alice"),
        "the client that caused the fetch gets it"
    );
    let hit = get(strip.addr, "/y").expect("get");
    assert_eq!(up.count(), 3, "stored");
    assert_eq!(hit.header("set-cookie"), None, "nobody else does");
}

/// §4.3.2 and RFC 9110 §13.1.2: a client's `If-None-Match` is answered
/// 304 when it matches, on a miss (the cache fetches the full response to
/// store it) as on a hit; weak comparison, and a quoted and an unquoted tag
/// are not the same tag (RFC 9110 §8.8.3).
#[test]
fn a_clients_conditional_is_answered_on_a_miss_and_a_hit() {
    let up = TestUpstream::start(|_| {
        reply(
            200,
            h(&[("Cache-Control", "max-age=600"), ("ETag", "W/\"v7\"")]),
            "body",
        )
    });
    let proxy = cached_route(&up, "{}");
    let conditional = |tag: &str| {
        request(proxy.addr, "GET", "/doc", &[("If-None-Match", tag)], b"")
            .expect("get")
            .status
    };
    assert_eq!(
        conditional("\"v7\""),
        304,
        "miss: weak comparison matches W/\"v7\""
    );
    assert_eq!(
        up.recorded()[0].header("if-none-match"),
        None,
        "the cache fetched the full response"
    );
    assert_eq!(conditional("\"v7\""), 304, "hit");
    assert_eq!(conditional("v7"), 200, "an unquoted tag is another tag");
    assert_eq!(conditional("\"v8\", W/\"v7\""), 304, "any tag of the list");
    assert_eq!(up.count(), 1);
}

/// RFC 9211 §2.7: `key=` only when the route's cache says `expose_key`.
#[test]
fn cache_status_shows_the_key_only_when_asked() {
    let up = TestUpstream::start(|_| reply(200, h(&[("Cache-Control", "max-age=600")]), "x"));
    let hidden = cached_route(&up, "{}");
    get(hidden.addr, "/k?b=2&a=1").expect("get");
    let hit = get(hidden.addr, "/k?b=2&a=1").expect("get");
    assert!(!hit.header("cache-status").unwrap_or("").contains("key="));
    let shown = cached_route(&up, "{ expose_key: true }");
    let miss = get(shown.addr, "/k?b=2&a=1").expect("get");
    let hit = get(shown.addr, "/k?b=2&a=1").expect("get");
    let expected = "key=\"test.local/k?a=1&b=2 | http api api\"";
    for r in [&miss, &hit] {
        let status = r.header("cache-status").expect("Cache-Status");
        assert!(status.ends_with(expected), "{status}");
    }
}

/// §5.2.1.2 and §4.2.4: a client's `max-stale` takes a stale stored
/// response as it is, within its bound, unless the stored response says
/// `must-revalidate` (or `proxy-revalidate`, `s-maxage`, `no-cache`).
#[test]
fn max_stale_serves_stale_within_its_bound_unless_forbidden() {
    let up = TestUpstream::start(|req| {
        // Generated 100 s ago, fresh for 60: stored 40 s stale.
        let cc = if req.path.starts_with("/strict") {
            "max-age=60, must-revalidate"
        } else {
            "max-age=60"
        };
        reply(
            200,
            h(&[("Cache-Control", cc), ("Date", &http_date(-100))]),
            "x",
        )
    });
    let proxy = cached_route(&up, "{}");
    let with = |path: &str, cc: &str| {
        request(proxy.addr, "GET", path, &[("Cache-Control", cc)], b"").expect("get")
    };
    get(proxy.addr, "/doc").expect("fill");
    let stale = with("/doc", "max-stale");
    assert_eq!(stale.status, 200);
    assert_eq!(up.count(), 1, "max-stale without a bound takes it");
    let status = stale.cache_status().expect("Cache-Status");
    assert!(status.starts_with("tollgate; hit"), "{status}");
    let ttl = stale.header("cache-status").expect("status");
    assert!(
        ttl.contains("ttl=-"),
        "a negative ttl shows it stale: {ttl}"
    );
    with("/doc", "max-stale=3600");
    assert_eq!(up.count(), 1, "stale by 40 s, within 3600");
    with("/doc", "max-stale=10");
    assert_eq!(up.count(), 2, "stale by 40 s, beyond 10: fetched");
    with("/doc", "max-stale=abc");
    assert_eq!(up.count(), 3, "an invalid bound accepts nothing");

    get(proxy.addr, "/strict").expect("fill");
    let before = up.count();
    with("/strict", "max-stale");
    assert_eq!(
        up.count(),
        before + 1,
        "must-revalidate is never served stale"
    );
}

/// §4.3.5: a 200 to a HEAD that reached the upstream invalidates the
/// stored GET responses its validators contradict, and leaves the others.
#[test]
fn a_head_response_with_new_validators_invalidates_the_stored_get() {
    let version = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(1));
    let served = version.clone();
    let up = TestUpstream::start(move |req| {
        let v = served.load(std::sync::atomic::Ordering::SeqCst);
        // GETs are fresh for an hour; the client's `no-cache` sends each
        // HEAD upstream, and its `no-store` answer is never stored itself.
        let cc = if req.method == "HEAD" {
            "no-store"
        } else {
            "max-age=3600"
        };
        reply(
            200,
            h(&[("Cache-Control", cc), ("ETag", &format!("\"v{v}\""))]),
            &format!("body v{v}"),
        )
    });
    let proxy = cached_route(&up, "{}");
    let head = || {
        request(
            proxy.addr,
            "HEAD",
            "/doc",
            &[("Cache-Control", "no-cache")],
            b"",
        )
        .expect("head")
    };
    get(proxy.addr, "/doc").expect("fill");
    head();
    let hit = get(proxy.addr, "/doc").expect("get");
    assert_eq!(hit.text(), "body v1");
    assert_eq!(
        hit.cache_status().as_deref(),
        Some("tollgate; hit"),
        "same validators: the stored response stays"
    );
    version.store(2, std::sync::atomic::Ordering::SeqCst);
    head();
    let after = get(proxy.addr, "/doc").expect("get");
    assert_eq!(after.text(), "body v2", "the HEAD showed a new ETag");
}

/// §4.2.4 and RFC 5861 §4: when the upstream answers 500, 502, 503 or 504
/// (or cannot be reached), a stale response inside its `stale-if-error`
/// window is served instead; other statuses pass through, and a response
/// that says `must-revalidate` or `no-cache` is never served stale, even
/// with the route's own `stale_if_error`.
#[test]
fn stale_if_error_covers_error_statuses_but_never_must_revalidate() {
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(0));
    let answer = failing.clone();
    let up = TestUpstream::start(move |req| {
        let status = answer.load(std::sync::atomic::Ordering::SeqCst);
        if status != 0 {
            return reply(status, h(&[]), "upstream error");
        }
        let cc = match req.path.as_str() {
            "/strict" => "max-age=0, must-revalidate",
            "/no-cache" => "no-cache, max-age=600",
            _ => "max-age=0, stale-if-error=600",
        };
        reply(200, h(&[("Cache-Control", cc)]), "good old body")
    });
    let proxy = cached_route(&up, "{ stale_if_error: 10m }");
    for path in ["/doc", "/strict", "/no-cache"] {
        get(proxy.addr, path).expect("fill");
    }
    for status in [500u16, 502, 503, 504] {
        failing.store(status, std::sync::atomic::Ordering::SeqCst);
        let r = get(proxy.addr, "/doc").expect("get");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "good old body"),
            "{status}"
        );
        let cs = r.cache_status().expect("Cache-Status");
        assert!(cs.starts_with("tollgate; hit; fwd=stale"), "{status}: {cs}");
        for path in ["/strict", "/no-cache"] {
            let r = get(proxy.addr, path).expect("get");
            assert_eq!(r.status, status, "{path} may not be served stale");
        }
    }
    failing.store(501, std::sync::atomic::Ordering::SeqCst);
    let r = get(proxy.addr, "/doc").expect("get");
    assert_eq!(r.status, 501, "501 is an answer, not an error to hide");
}
