//! OpenTelemetry traces: W3C Trace Context in and out, the span tree a
//! request leaves at a real OTLP/HTTP receiver (decoded with the
//! protocol's own generated types), parent-based ratio sampling, and a
//! collector that hangs or is gone costing no request.

mod common;
use common::otlp::{OtlpReceiver, Received};
use common::*;

/// A client's trace: its span is the parent of tollgate's server span.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn client_traceparent(flags: &str) -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-{flags}")
}

/// A backend whose `/big` answers are long enough to compress.
fn backend() -> TestUpstream {
    TestUpstream::start(|r| {
        let body = if r.path.starts_with("/big") {
            "{\"items\": \"".to_owned() + &"abcdefgh".repeat(400) + "\"}"
        } else {
            "{\"ok\": true}".to_owned()
        };
        reply(
            200,
            &[
                ("content-type", "application/json"),
                ("cache-control", "public, max-age=60"),
            ],
            &body,
        )
    })
}

/// Tenant `acme` (key `acme-key`) on tier `gold`; `/items` cached.
fn proxy_with(tracing: &str, backends: &str) -> TollgateProcess {
    TollgateProcess::start(&format!(
        "{tracing}\
         compression: {{ min_size: 100 }}\n\
         tiers: {{ gold: {{ per_second: 1000 }}, free: {{ per_second: 1000 }} }}\n\
         tenants:\n  acme: {{ tier: gold, api_keys: [\"sha256:afacab3575137afa4e00d9cbcafcb14c9ae25f779d964eb0ea5b2c4eb5dfd163\"] }}\n\
         anonymous: {{ tier: free }}\n\
         upstreams:\n  api: {{ backends: [{backends}], retries: 1 }}\n\
         routes:\n  - {{ name: items, upstream: api, match: {{ path_prefix: /items }}, cache: {{}} }}\n  \
         - {{ name: other, upstream: api }}\n",
    ))
}

/// A receiver, a backend, and a proxy in front of it tracing with the
/// `tracing` entries `more` (sample ratio, whose parent is accepted).
fn traced(more: &str) -> (OtlpReceiver, TestUpstream, TollgateProcess) {
    let receiver = OtlpReceiver::start();
    let up = backend();
    let proxy = proxy_with(&receiver.config(more), &format!("\"{}\"", up.addr));
    (receiver, up, proxy)
}

/// `GET /x` carrying the client's sampled trace context and a
/// `tracestate`; answered 200. Returns the `traceparent` sent.
fn get_with_client_context(proxy: &TollgateProcess) -> String {
    let parent = client_traceparent("01");
    let headers = [
        ("traceparent", parent.as_str()),
        ("tracestate", "vendor=abc"),
    ];
    let r = request(proxy.addr, "GET", "/x", &headers, b"").expect("request");
    assert_eq!(r.status, 200);
    parent
}

/// Waits until the receiver holds `n` spans of trace `trace_id`.
fn wait_spans(receiver: &OtlpReceiver, trace_id: &str, n: usize) -> Vec<Received> {
    wait_until(&format!("{n} spans of trace {trace_id} arrive"), || {
        receiver.trace(trace_id).len() >= n
    });
    receiver.trace(trace_id)
}

fn named<'a>(spans: &'a [Received], name: &str) -> Vec<&'a Received> {
    spans.iter().filter(|s| s.span.name == name).collect()
}

fn one<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "one {name:?} span in {spans:#?}");
    found[0]
}

/// The `traceparent` the backend received on its `i`-th request.
fn forwarded_traceparent(up: &TestUpstream, i: usize) -> (String, String, String) {
    let recorded = up.recorded();
    let value = recorded[i]
        .header("traceparent")
        .expect("traceparent forwarded");
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[test]
fn a_request_leaves_its_span_tree_and_its_trace_continues_upstream() {
    let (receiver, up, proxy) =
        traced("sample_ratio: 0.0, accept_parent: all, service_name: edge-test");
    let parent = client_traceparent("01");
    let headers = [
        ("traceparent", parent.as_str()),
        ("tracestate", "vendor=abc"),
        ("X-API-Key", "acme-key"),
    ];
    let r = request(proxy.addr, "GET", "/items/1", &headers, b"").expect("request");
    assert_eq!(r.status, 200);

    // The backend continues the client's trace, under the attempt's span.
    let (trace, parent_span, flags) = forwarded_traceparent(&up, 0);
    assert_eq!((trace.as_str(), flags.as_str()), (CLIENT_TRACE, "01"));
    assert_eq!(up.recorded()[0].header("tracestate"), Some("vendor=abc"));

    // Server span + identity + rate limit + fresh lookup + storage lookup + attempt.
    let spans = wait_spans(&receiver, CLIENT_TRACE, 6);
    let server = one(&spans, "GET items");
    assert_eq!(server.span.kind, 2, "SERVER");
    assert_eq!(server.parent_id(), CLIENT_SPAN);
    assert_eq!(server.service, "edge-test");
    assert_eq!(server.span.trace_state, "vendor=abc");
    assert_eq!(server.attr("http.route").as_deref(), Some("items"));
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(server.attr("tollgate.tenant").as_deref(), Some("acme"));
    let cache_status = server.attr("tollgate.cache_status");
    assert!(
        cache_status.as_deref().is_some_and(|s| s.contains("fwd=")),
        "{cache_status:?} is the Cache-Status the client got"
    );
    assert_eq!(server.span.flags & 0x301, 0x301, "sampled, remote parent");
    for child in spans.iter().filter(|s| s.span_id() != server.span_id()) {
        assert_eq!(child.parent_id(), server.span_id(), "{child:?}");
        assert!(child.span.start_time_unix_nano >= server.span.start_time_unix_nano);
        assert!(child.span.end_time_unix_nano <= server.span.end_time_unix_nano);
    }
    let identity = one(&spans, "identity");
    assert_eq!(
        identity.attr("tollgate.identity").as_deref(),
        Some("api_key")
    );
    let limit = one(&spans, "rate limit");
    assert_eq!(
        limit.attr("tollgate.ratelimit.store").as_deref(),
        Some("local")
    );
    assert_eq!(
        limit.attr("tollgate.ratelimit.decision").as_deref(),
        Some("allowed")
    );
    assert_eq!(
        limit.attr("tollgate.ratelimit.tier").as_deref(),
        Some("gold")
    );
    let lookups = named(&spans, "cache lookup");
    assert!(lookups.iter().all(
        |l| l.attr("tollgate.cache.tier").as_deref() == Some("memory")
            && l.attr("tollgate.cache.result").as_deref() == Some("miss")
    ));
    assert_eq!(
        lookups.len(),
        2,
        "the fresh-hit path and the storage: {lookups:#?}"
    );
    let attempt = one(&spans, "upstream attempt");
    assert_eq!(attempt.span.kind, 3, "CLIENT");
    assert_eq!(
        attempt.span_id(),
        parent_span,
        "the backend's parent is the attempt"
    );
    assert_eq!(
        attempt.attr("server.port"),
        Some(up.addr.port().to_string())
    );
    assert_eq!(attempt.events(), ["connected", "first_byte"]);

    // The access line names the trace.
    wait_until("the access line names the trace", || {
        proxy
            .log_text()
            .contains(&format!("trace_id={CLIENT_TRACE}"))
    });

    // A hit: the fresh-hit lookup finds it; nothing goes upstream.
    let again = request(proxy.addr, "GET", "/items/1", &headers, b"").expect("request");
    assert_eq!(again.status, 200);
    wait_until("the hit's server span arrives", || {
        named(&receiver.trace(CLIENT_TRACE), "GET items").len() == 2
    });
    let spans = receiver.trace(CLIENT_TRACE);
    let hit_server = named(&spans, "GET items")
        .into_iter()
        .find(|s| s.span_id() != server.span_id())
        .expect("second server span");
    let children: Vec<&Received> = spans
        .iter()
        .filter(|s| s.parent_id() == hit_server.span_id())
        .collect();
    assert!(children.iter().any(|s| s.span.name == "cache lookup"
        && s.attr("tollgate.cache.result").as_deref() == Some("hit")));
    assert!(!children.iter().any(|s| s.span.name == "upstream attempt"));
    assert_eq!(up.count(), 1);
}

#[test]
fn retries_and_compression_are_spans_of_their_own() {
    let receiver = OtlpReceiver::start();
    let up = backend();
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tracing = receiver.config("sample_ratio: 1.0");
    // Least-connections starts with the first backend: the dead one.
    let proxy = proxy_with(&tracing, &format!("\"{dead}\", \"{}\"", up.addr));
    let mut retried = None;
    // The first attempt of some request goes to the dead backend; find it.
    for i in 0..10 {
        let path = format!("/big/{i}");
        let r = request(
            proxy.addr,
            "GET",
            &path,
            &[("Accept-Encoding", "gzip")],
            b"",
        )
        .expect("request");
        assert_eq!(r.status, 200);
        let trace = forwarded_traceparent(&up, up.count() - 1).0;
        let spans = wait_spans(&receiver, &trace, 1);
        if named(&spans, "upstream attempt").len() == 2 {
            retried = Some(trace);
            break;
        }
    }
    let trace = retried.expect("a request tried the dead backend first");
    let spans = receiver.trace(&trace);
    let attempts = named(&spans, "upstream attempt");
    let (failed, served): (Vec<&Received>, Vec<&Received>) = attempts
        .into_iter()
        .partition(|a| a.span.status.as_ref().is_some_and(|s| s.code == 2));
    assert_eq!((failed.len(), served.len()), (1, 1), "{spans:#?}");
    assert_eq!(failed[0].attr("tollgate.retry").as_deref(), Some("true"));
    assert_eq!(failed[0].attr("server.port"), Some(dead.port().to_string()));
    assert!(failed[0].attr("error.type").is_some());
    assert_eq!(served[0].attr("tollgate.attempt").as_deref(), Some("2"));
    let compression = one(&spans, "compression");
    assert_eq!(
        compression.attr("tollgate.compression.coding").as_deref(),
        Some("gzip")
    );
    let bytes_in: u64 = compression
        .attr("tollgate.compression.bytes_in")
        .and_then(|v| v.parse().ok())
        .expect("bytes_in");
    let bytes_out: u64 = compression
        .attr("tollgate.compression.bytes_out")
        .and_then(|v| v.parse().ok())
        .expect("bytes_out");
    assert!(bytes_out < bytes_in, "{bytes_out} < {bytes_in}");
    let server = one(&spans, "GET other");
    assert_eq!(
        server.parent_id(),
        "",
        "a new trace: the server span is its root"
    );
    assert_eq!(
        server.span.flags & 0x300,
        0x100,
        "known not to have a remote parent"
    );
}

#[test]
fn an_untrusted_callers_context_is_not_continued() {
    // Default accept_parent: trusted_proxies, and none are configured.
    let (receiver, up, proxy) = traced("sample_ratio: 0.0");
    get_with_client_context(&proxy);
    let (trace, span, flags) = forwarded_traceparent(&up, 0);
    assert_ne!(trace, CLIENT_TRACE, "a new trace, not the client's");
    assert_ne!(span, CLIENT_SPAN);
    assert_eq!(flags, "00", "ratio 0: not sampled, and the backend is told");
    assert_eq!(up.recorded()[0].header("tracestate"), None);
    // A malformed one from a trusted caller would not be continued either
    // (unit tests in trace::context cover the grammar); an unsampled
    // request exports nothing.
    assert_eq!(
        proxy.metric("tollgate_trace_spans_exported_total"),
        Some(0.0)
    );
    assert!(receiver.spans().is_empty());
}

#[test]
fn sampling_follows_the_ratio_and_the_parent() {
    let (receiver, up, proxy) = traced("sample_ratio: 0.25, accept_parent: all");
    let n = 1000;
    let mut client = KeptAlive::open(proxy.addr).expect("connect");
    for _ in 0..n {
        assert_eq!(
            client.send("GET", "/x", &[], b"").expect("request").status,
            200
        );
    }
    let sampled: Vec<String> = (0..n)
        .map(|i| forwarded_traceparent(&up, i))
        .filter(|(_, _, flags)| flags == "01")
        .map(|(trace, _, _)| trace)
        .collect();
    let expected = 0.25 * n as f64;
    let sigma = (n as f64 * 0.25 * 0.75).sqrt();
    let got = sampled.len() as f64;
    assert!(
        (got - expected).abs() <= 5.0 * sigma,
        "{got} of {n} sampled at 0.25 (5σ = {:.0})",
        5.0 * sigma
    );
    // Exactly the sampled requests were exported, each as its own trace.
    wait_until("every sampled request's server span arrives", || {
        receiver.spans().iter().filter(|s| s.span.kind == 2).count() == sampled.len()
    });
    let exported: std::collections::HashSet<String> = receiver
        .spans()
        .iter()
        .filter(|s| s.span.kind == 2)
        .map(Received::trace_id)
        .collect();
    assert_eq!(exported, sampled.into_iter().collect());

    // A caller's decision wins over the ratio, both ways.
    let before = up.count();
    let unsampled = client_traceparent("00");
    client
        .send("GET", "/x", &[("traceparent", unsampled.as_str())], b"")
        .expect("request");
    let sampled_parent = format!("00-{}-{CLIENT_SPAN}-01", "ab".repeat(16));
    client
        .send(
            "GET",
            "/x",
            &[("traceparent", sampled_parent.as_str())],
            b"",
        )
        .expect("request");
    assert_eq!(forwarded_traceparent(&up, before).2, "00");
    assert_eq!(forwarded_traceparent(&up, before + 1).2, "01");
    wait_spans(&receiver, &"ab".repeat(16), 2);
    assert!(receiver.trace(CLIENT_TRACE).is_empty());
}

#[test]
fn a_hung_or_absent_collector_costs_no_request() {
    let hung = OtlpReceiver::hung();
    let up = backend();
    let tracing =
        hung.config("sample_ratio: 1.0, queue_size: 4, batch_size: 1, export_timeout: 60s");
    let proxy = proxy_with(&tracing, &format!("\"{}\"", up.addr));
    let mut client = KeptAlive::open(proxy.addr).expect("connect");
    for _ in 0..200 {
        assert_eq!(
            client.send("GET", "/x", &[], b"").expect("request").status,
            200
        );
    }
    // The exporter holds one batch at the collector; the queue filled and
    // the rest were dropped and counted.
    wait_until("the hung collector holds an export", || {
        hung.server.held() >= 1
    });
    wait_until("spans are dropped as the queue is full", || {
        proxy.metric_sum(
            "tollgate_trace_spans_dropped_total",
            "reason=\"queue_full\"",
        ) > 0.0
    });
    hung.server.release();

    // Nothing listens at all: the exports fail, are counted, and requests
    // are served as before.
    let gone = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let up2 = backend();
    let proxy = TollgateProcess::start(&format!(
        "tracing: {{ endpoint: \"http://{gone}\", sample_ratio: 1.0, batch_interval: 50ms }}\n{}",
        one_route(up2.addr)
    ));
    for _ in 0..20 {
        assert_eq!(get(proxy.addr, "/x").expect("request").status, 200);
    }
    wait_until("failed exports are counted", || {
        proxy.metric_sum(
            "tollgate_trace_spans_dropped_total",
            "reason=\"export_failed\"",
        ) > 0.0
    });
    assert!(proxy
        .log_text()
        .contains(&format!("trace export to http://{gone}/v1/traces failed")));
}

#[test]
fn tracing_off_leaves_the_trace_fields_as_the_client_sent_them() {
    let up = backend();
    let proxy = TollgateProcess::start(&one_route(up.addr));
    let parent = get_with_client_context(&proxy);
    let recorded = &up.recorded()[0];
    assert_eq!(recorded.header("traceparent"), Some(parent.as_str()));
    assert_eq!(recorded.header("tracestate"), Some("vendor=abc"));
    wait_until("the access line is written", || {
        proxy.log_text().contains("GET /x")
    });
    assert!(!proxy.log_text().contains("trace_id="));
}

#[test]
fn check_refuses_a_bad_tracing_section_with_its_line() {
    let dir = scratch_dir("tracing-check");
    for (body, expect) in [
        ("tracing: { endpoint: \"otel:4318\" }\n", "tracing.endpoint"),
        (
            "tracing: { endpoint: \"http://otel:4318\", sample_ratio: 1.5 }\n",
            "tracing.sample_ratio",
        ),
        (
            "tracing: { endpoint: \"http://otel:4318\", headers: { content-type: x } }\n",
            "tracing.headers.content-type",
        ),
        (
            "tracing: { endpoint: \"http://otel:4318\", queue_size: 0 }\n",
            "tracing.queue_size",
        ),
    ] {
        let file = dir.join("t.yaml");
        std::fs::write(
            &file,
            format!("{body}{}", one_route(([127, 0, 0, 1], 9).into())),
        )
        .expect("write");
        let out = std::process::Command::new(binary())
            .arg("check")
            .arg(&file)
            .output()
            .expect("run check");
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{body} accepted");
        assert!(text.contains("t.yaml:1:"), "{text}");
        assert!(text.contains(expect), "{expect} in {text}");
    }
}

#[test]
fn the_redis_tier_is_a_span_of_its_own() {
    let redis = common::redis::RedisServer::start();
    let receiver = OtlpReceiver::start();
    let up = backend();
    let instance = || {
        TollgateProcess::start(&format!(
            "{}redis: {{ url: \"{}\", timeout: 500ms }}\n\
             cache: {{ redis: {{ lookup_timeout: 500ms }} }}\n\
             upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
             routes:\n  - {{ name: items, upstream: api, cache: {{}} }}\n",
            receiver.config("sample_ratio: 1.0"),
            redis.url(),
            up.addr
        ))
    };
    let (a, b) = (instance(), instance());
    assert_eq!(get(a.addr, "/items/7").expect("request").status, 200);
    a.wait_metric(r#"tollgate_cache_l2_writes_total{result="ok"}"#, 1.0);
    // On the other instance: not in its memory, found in Redis.
    let r = get(b.addr, "/items/7").expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1, "served from Redis");
    wait_until("the second instance's trace arrives", || {
        receiver.spans().iter().filter(|s| s.span.kind == 2).count() == 2
    });
    let spans = receiver.spans();
    let first_trace = forwarded_traceparent(&up, 0).0;
    let server = spans
        .iter()
        .find(|s| s.span.kind == 2 && s.trace_id() != first_trace)
        .expect("the second request's server span");
    let lookups: Vec<(String, String)> = spans
        .iter()
        .filter(|s| s.parent_id() == server.span_id() && s.span.name == "cache lookup")
        .map(|s| {
            (
                s.attr("tollgate.cache.tier").unwrap_or_default(),
                s.attr("tollgate.cache.result").unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        lookups,
        [
            ("memory".into(), "miss".into()),
            ("memory".into(), "miss".into()),
            ("redis".into(), "hit".into())
        ],
        "the fresh-hit path, then the storage: memory, then Redis"
    );
    let redis_span = spans
        .iter()
        .find(|s| {
            s.parent_id() == server.span_id()
                && s.attr("tollgate.cache.tier").as_deref() == Some("redis")
        })
        .expect("redis lookup");
    assert_eq!(redis_span.span.kind, 3, "CLIENT: a request to Redis");
}
