//! gRPC through tollgate, end to end: a gRPC service behind an h2c
//! upstream and behind an `h2` (TLS) upstream, called through an h2c
//! listener and through a TLS listener. Trailers, streaming both ways,
//! deadlines, and tollgate's own answers as gRPC statuses.

mod common;
use common::grpc::{GrpcClient, GrpcReply, GrpcServer};
use common::*;

/// Routes for the service; `/test.Echo/Slow*` has a short total timeout,
/// `/test.Echo/Limited` one call per minute per client, `/test.Echo/Private`
/// refuses the test's loopback network.
fn routes(upstream: &str) -> String {
    format!(
        "tiers:\n  open: {{ per_minute: 10000 }}\n\
         anonymous: {{ tier: open }}\n\
         routes:\n\
         \x20 - {{ name: limited, upstream: {upstream}, match: {{ path_prefix: /test.Echo/Limited }}, rate_limit: {{ per_minute: 1 }} }}\n\
         \x20 - {{ name: private, upstream: {upstream}, match: {{ path_prefix: /test.Echo/Private }}, addresses: {{ deny: [127.0.0.0/8, \"::1/128\"] }} }}\n\
         \x20 - {{ name: slow, upstream: {upstream}, match: {{ path_prefix: /test.Echo/Slow }}, timeouts: {{ total: 300ms }} }}\n\
         \x20 - {{ name: echo, upstream: {upstream}, match: {{ path_prefix: /test.Echo/ }}, compression: {{ min_size: 1 }} }}\n"
    )
}

/// tollgate with an h2c listener in front of the service over h2c.
fn h2c_edge(service: &GrpcServer) -> TollgateProcess {
    TollgateProcess::start_with_listener(
        |port| format!("{{ address: \"127.0.0.1:{port}\", h2c: true }}"),
        &format!(
            "compression: {{ min_size: 1, content_types: [\"application/*\"] }}\n\
             upstreams:\n  grpc: {{ backends: [\"{}\"], protocol: h2c, max_streams: 50 }}\n{}",
            service.addr,
            routes("grpc")
        ),
    )
}

fn assert_ok(reply: &GrpcReply) {
    assert_eq!(reply.http_status, 200, "{reply:?}");
    assert_eq!(reply.status, Some(0), "{reply:?}");
}

/// The calls every path must carry the same way.
async fn the_calls_pass_through(client: &mut GrpcClient) {
    // Unary, with trailing metadata.
    let reply = client
        .call("/test.Echo/Unary", &[b"hello"], &[("x-trailer", "custom")])
        .await;
    assert_ok(&reply);
    assert_eq!(reply.messages, vec![bytes::Bytes::from_static(b"hello")]);
    assert_eq!(
        reply.trailers.get("x-echo-trailer").map(|v| v.as_bytes()),
        Some(&b"custom"[..]),
        "custom trailing metadata passes: {reply:?}"
    );
    assert!(
        reply.headers.get("content-encoding").is_none(),
        "gRPC bodies are never compressed: {reply:?}"
    );
    // Server streaming of 1,000 messages.
    let reply = client
        .call("/test.Echo/ServerStream", &[b"1000"], &[])
        .await;
    assert_ok(&reply);
    assert_eq!(reply.messages.len(), 1000);
    assert_eq!(&reply.messages[999][..], b"message-999");
    // Client streaming.
    let many: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("part-{i:04}").into_bytes())
        .collect();
    let parts: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    let reply = client.call("/test.Echo/ClientStream", &parts, &[]).await;
    assert_ok(&reply);
    assert_eq!(&reply.messages[0][..], b"count=200 bytes=1800");
    // Bidirectional streaming, message by message: each answer arrives
    // while the call is still open (nothing waits for the end of a stream).
    let mut chat = client.open("/test.Echo/Chat").await;
    for i in 0..100 {
        let message = format!("turn-{i}");
        chat.send(message.as_bytes());
        let echo = chat.next().await.expect("an echo while the stream is open");
        assert_eq!(&echo[..], message.as_bytes());
    }
    assert_eq!(chat.finish().await, Some(0));
    // An error status from the service, with its message and metadata.
    let reply = client.call("/test.Echo/Fail", &[b""], &[]).await;
    assert_eq!(reply.status, Some(5), "{reply:?}");
    assert_eq!(reply.message.as_deref(), Some("no such thing"));
    assert_eq!(
        reply.trailers.get("x-detail").map(|v| v.as_bytes()),
        Some(&b"kept"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_pass_through_an_h2c_listener_to_an_h2c_upstream() {
    let service = GrpcServer::start();
    let edge = h2c_edge(&service);
    let mut client = GrpcClient::cleartext(edge.addr).await;
    the_calls_pass_through(&mut client).await;
    // Many calls share one connection to the backend (streams, not
    // connections): 50 concurrent calls.
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let c = GrpcClient::cleartext(edge.addr);
            tokio::spawn(async move {
                let mut c = c.await;
                let m = format!("m{i}");
                c.call("/test.Echo/Unary", &[m.as_bytes()], &[]).await
            })
        })
        .collect();
    for call in calls {
        let reply = call.await.expect("join");
        assert_ok(&reply);
    }
    // Access lines are written off the worker thread: wait for them.
    wait_until("access lines with protocol and grpc-status", || {
        let log = edge.log_text();
        log.contains("POST /test.Echo/Unary status=200 route=echo")
            && log.contains("proto=h2 grpc_status=0")
            && log.contains("POST /test.Echo/Fail status=200 route=echo")
            && log.contains("grpc_status=5")
    });
    // 5 calls above and 50 concurrent ones; all but `Fail` end with 0.
    edge.wait_metric(
        r#"tollgate_grpc_calls_total{grpc_status="0",route="echo"}"#,
        54.0,
    );
    edge.wait_metric(
        r#"tollgate_grpc_calls_total{grpc_status="5",route="echo"}"#,
        1.0,
    );
    assert_eq!(
        edge.metric(r#"tollgate_requests_by_protocol_total{protocol="h2"}"#),
        Some(55.0)
    );
    // HTTP/1.1 is still served on the h2c listener (the service answers
    // any request), and sent upstream as HTTP/2 all the same.
    let plain = get(edge.addr, "/test.Echo/Unary").expect("http/1.1 on the h2c port");
    assert_eq!(plain.status, 200, "{plain:?}");
    assert_eq!(
        edge.metric(r#"tollgate_requests_by_protocol_total{protocol="http1"}"#),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_pass_through_a_tls_listener_to_an_h2_tls_upstream() {
    let service = GrpcServer::start();
    // The TLS (h2) upstream is a second tollgate with a TLS listener in
    // front of the h2c service.
    let tls_front = TollgateProcess::start_with_listener(
        tls_listener("grpc-tls-front"),
        &format!(
            "upstreams:\n  grpc: {{ backends: [\"{}\"], protocol: h2c }}\n\
             routes:\n  - {{ name: all, upstream: grpc }}\n",
            service.addr
        ),
    );
    let edge = TollgateProcess::start_with_listener(
        tls_listener("grpc-tls-edge"),
        &format!(
            "upstreams:\n  grpc: {{ backends: [\"{}\"], protocol: h2, tls: {{ sni: localhost, verify: false }} }}\n{}",
            tls_front.addr,
            routes("grpc")
        ),
    );
    let mut client = GrpcClient::tls(edge.addr).await;
    the_calls_pass_through(&mut client).await;
    wait_until("the edge reached its upstream over HTTP/2", || {
        let front_log = tls_front.log_text();
        front_log.contains("POST /test.Echo/Unary status=200 route=all")
            && front_log.contains("proto=h2")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_auto_lets_alpn_choose_http2_over_tls() {
    let service = GrpcServer::start();
    let tls_front = TollgateProcess::start_with_listener(
        tls_listener("grpc-auto-front"),
        &format!(
            "upstreams:\n  grpc: {{ backends: [\"{}\"], protocol: h2c }}\n\
             routes:\n  - {{ name: all, upstream: grpc }}\n",
            service.addr
        ),
    );
    let edge = TollgateProcess::start_with_listener(
        |port| format!("{{ address: \"127.0.0.1:{port}\", h2c: true }}"),
        &format!(
            "upstreams:\n  grpc: {{ backends: [\"{}\"], protocol: auto, tls: {{ sni: localhost, verify: false }} }}\n\
             routes:\n  - {{ name: echo, upstream: grpc }}\n",
            tls_front.addr
        ),
    );
    let mut client = GrpcClient::cleartext(edge.addr).await;
    let reply = client
        .call("/test.Echo/Unary", &[b"over alpn"], &[("x-trailer", "t")])
        .await;
    assert_ok(&reply);
    assert_eq!(
        reply.trailers.get("x-echo-trailer").map(|v| v.as_bytes()),
        Some(&b"t"[..])
    );
    wait_until("the TLS front saw HTTP/2 (ALPN chose h2)", || {
        tls_front
            .log_text()
            .contains("POST /test.Echo/Unary status=200 route=all")
            && tls_front.log_text().contains("proto=h2")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgates_own_answers_are_grpc_statuses() {
    let service = GrpcServer::start();
    let edge = h2c_edge(&service);
    let mut client = GrpcClient::cleartext(edge.addr).await;

    // No route: UNIMPLEMENTED, trailers-only.
    let reply = client.call("/other.Service/Method", &[b"x"], &[]).await;
    assert_eq!(
        (reply.http_status, reply.status),
        (200, Some(12)),
        "{reply:?}"
    );
    assert!(
        reply.trailers_only && reply.messages.is_empty(),
        "{reply:?}"
    );
    assert_eq!(
        reply.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/grpc"[..])
    );
    assert!(reply.message.as_deref().is_some_and(|m| !m.is_empty()));

    // A client deadline shorter than the call: DEADLINE_EXCEEDED from
    // tollgate once the client's grpc-timeout passes.
    let reply = client
        .call(
            "/test.Echo/Unary",
            &[b"late"],
            &[("grpc-timeout", "200m"), ("x-sleep-ms", "3000")],
        )
        .await;
    assert_eq!(reply.status, Some(4), "{reply:?}");

    // The route's own total timeout: DEADLINE_EXCEEDED.
    let reply = client
        .call(
            "/test.Echo/SlowUnary",
            &[b"late"],
            &[("x-sleep-ms", "3000")],
        )
        .await;
    assert_eq!(reply.status, Some(4), "{reply:?}");

    // A call from a refused network: PERMISSION_DENIED, before the service
    // sees it or any budget is spent.
    let before = service.calls();
    let reply = client.call("/test.Echo/PrivateUnary", &[b"x"], &[]).await;
    assert_eq!(
        (reply.http_status, reply.status),
        (200, Some(7)),
        "{reply:?}"
    );
    assert!(reply.trailers_only, "{reply:?}");
    assert_eq!(
        service.calls(),
        before,
        "the refused call never reached the service"
    );

    // A rate-limited call: RESOURCE_EXHAUSTED, before the service sees it.
    let first = client.call("/test.Echo/Limited", &[b"1"], &[]).await;
    assert_ok(&first);
    let before = service.calls();
    let second = client.call("/test.Echo/Limited", &[b"2"], &[]).await;
    assert_eq!(second.status, Some(8), "{second:?}");
    assert!(second.headers.contains_key("ratelimit"), "{second:?}");
    assert_eq!(
        service.calls(),
        before,
        "the refused call never reached the service"
    );

    wait_until("grpc_calls metric", || {
        edge.metric(r#"tollgate_grpc_calls_total{grpc_status="8",route="limited"}"#) == Some(1.0)
            && edge.metric(r#"tollgate_grpc_calls_total{grpc_status="12",route="(none)"}"#)
                == Some(1.0)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_health_check_takes_a_backend_out_when_it_is_not_serving() {
    let (a, b) = (GrpcServer::start(), GrpcServer::start());
    let edge = TollgateProcess::start_with_listener(
        |port| format!("{{ address: \"127.0.0.1:{port}\", h2c: true }}"),
        &format!(
            "upstreams:\n  grpc:\n    backends: [\"{}\", \"{}\"]\n    protocol: h2c\n    \
             health_check: {{ type: grpc, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1 }}\n\
             routes:\n  - {{ name: echo, upstream: grpc }}\n",
            a.addr, b.addr
        ),
    );
    let check = |addr: std::net::SocketAddr| {
        edge.health()["components"]["upstreams"]["grpc"]["backends"]
            .as_array()
            .and_then(|all| {
                all.iter()
                    .find(|x| x["address"] == addr.to_string())
                    .cloned()
            })
            .map_or(serde_json::Value::Null, |b| b["active_check"].clone())
    };
    wait_until("both backends pass the gRPC check", || {
        check(a.addr) == "passing" && check(b.addr) == "passing"
    });
    b.set_serving(false);
    wait_until("the NOT_SERVING backend fails its check", || {
        check(b.addr) == "failing"
    });
    let before = b.calls();
    let mut client = GrpcClient::cleartext(edge.addr).await;
    for _ in 0..20 {
        assert_ok(&client.call("/test.Echo/Unary", &[b"x"], &[]).await);
    }
    assert_eq!(
        b.calls(),
        before,
        "no call went to the backend out of rotation"
    );
    b.set_serving(true);
    wait_until("it comes back", || check(b.addr) == "passing");
}

#[test]
fn protocols_that_cannot_work_are_refused_by_check() {
    let dir = scratch_dir("grpc-check");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "listen:\n  - { address: \"127.0.0.1:9\", h2c: true, tls: { cert: /etc/hostname, key: /etc/hostname } }\n\
         upstreams:\n  a: { backends: [\"127.0.0.1:1\"], protocol: h2 }\n\
         \x20 b: { backends: [\"127.0.0.1:2\"], protocol: h2c, tls: { sni: x } }\n\
         \x20 c: { backends: [\"127.0.0.1:3\"], protocol: h2c, max_streams: 0 }\n\
         \x20 d: { backends: [\"127.0.0.1:4\"], health_check: { type: grpc } }\n\
         routes:\n  - { name: r, upstream: a }\n",
    )
    .expect("write");
    let (ok, _, err) = run_cli(&["check", &file.display().to_string()]);
    assert!(!ok, "{err}");
    for expected in [
        "bad.yaml:2:",
        "listen[0].h2c: h2c is cleartext HTTP/2",
        "upstreams.a.protocol: protocol h2 negotiates HTTP/2 through TLS",
        "upstreams.b.protocol: protocol h2c is cleartext HTTP/2",
        "upstreams.c.max_streams: max_streams must be at least 1",
        "upstreams.d.health_check.type: a grpc health check speaks HTTP/2",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}
