//! WebSockets (RFC 6455) through tollgate: the upgrade is routed, limited
//! and never answered from the cache; then both directions stream until
//! the close handshake, or until the tunnel idles past `timeouts.idle`.

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A backend that echoes every WebSocket message, and answers a plain GET
/// (no upgrade) with a cacheable `plain`.
struct EchoBackend {
    addr: SocketAddr,
    upgrades: Arc<AtomicUsize>,
}

impl EchoBackend {
    fn start() -> Self {
        let upgrades = Arc::new(AtomicUsize::new(0));
        let counted = upgrades.clone();
        let addr = serve_connections(move |socket| serve(socket, counted.clone()));
        Self { addr, upgrades }
    }
}

async fn serve(mut socket: tokio::net::TcpStream, upgrades: Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    match accept_websocket(&mut socket).await {
        None => return,
        Some(Handshake::Plain(_)) => {
            let _ = socket
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\nplain",
                )
                .await;
            return;
        }
        Some(Handshake::Upgraded) => {
            upgrades.fetch_add(1, Ordering::SeqCst);
        }
    }
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        socket,
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        None,
    )
    .await;
    // Data frames are echoed. tungstenite answers a close frame itself:
    // it queues the reply, and the next read sends it and ends the stream.
    while let Some(Ok(message)) = ws.next().await {
        let data = matches!(message, Message::Text(_) | Message::Binary(_));
        if data && ws.send(message).await.is_err() {
            return;
        }
    }
}

fn edge(backend: &EchoBackend, idle: &str) -> TollgateProcess {
    TollgateProcess::start(&format!(
        "tiers:\n  open: {{ per_minute: 10000 }}\n\
         anonymous: {{ tier: open }}\n\
         upstreams:\n  ws: {{ backends: [\"{}\"] }}\n\
         routes:\n\
         \x20 - {{ name: limited, upstream: ws, match: {{ path_prefix: /limited }}, rate_limit: {{ per_minute: 1 }} }}\n\
         \x20 - {{ name: ws, upstream: ws, cache: {{ default_ttl: 60s }}, max_body_size: 1KiB, timeouts: {{ total: 1s, idle: {idle} }} }}\n",
        backend.addr
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_stream_both_ways_past_the_total_timeout_and_close_cleanly() {
    let backend = EchoBackend::start();
    let proxy = edge(&backend, "2s");
    // A cached plain GET at the same URL must never answer an upgrade.
    assert_eq!(get(proxy.addr, "/chat").expect("get").text(), "plain");
    let again = get(proxy.addr, "/chat").expect("get");
    assert_eq!(
        again.cache_status().as_deref(),
        Some("tollgate; hit"),
        "{again:?}"
    );

    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr))
        .await
        .expect("upgrade through tollgate");
    assert_eq!(response.status(), 101);
    let opened = Instant::now();
    for i in 0..1000 {
        ws.send(Message::text(format!("text-{i}")))
            .await
            .expect("send");
        ws.send(Message::binary(vec![(i % 251) as u8; 100]))
            .await
            .expect("send");
    }
    for i in 0..1000 {
        let text = ws.next().await.expect("message").expect("ok");
        assert_eq!(text, Message::text(format!("text-{i}")));
        let binary = ws.next().await.expect("message").expect("ok");
        assert_eq!(binary, Message::binary(vec![(i % 251) as u8; 100]));
    }
    // The route's total (1s) and body limit (1 KiB) bound requests, not
    // tunnels: keep talking past both.
    while opened.elapsed() < Duration::from_millis(1500) {
        ws.send(Message::text("still here")).await.expect("send");
        let echo = ws.next().await.expect("message").expect("ok");
        assert_eq!(echo, Message::text("still here"));
        // The client's pace, not a wait for a condition: the tunnel must
        // stay in use until time has passed the route's total.
        tokio::time::sleep(Duration::from_millis(100)).await; // pace
    }
    // Close handshake: our close, the backend's answer, then the end.
    ws.close(None).await.expect("close");
    let mut closed_by_peer = false;
    while let Some(message) = ws.next().await {
        if matches!(message, Ok(Message::Close(_))) {
            closed_by_peer = true;
        }
    }
    assert!(closed_by_peer, "the backend's close frame came through");
    assert_eq!(backend.upgrades.load(Ordering::SeqCst), 1);
    proxy.wait_metric("tollgate_tunnels_open", 0.0);
    assert_eq!(proxy.metric("tollgate_tunnels_total"), Some(1.0));
    for direction in ["to_backend", "from_backend"] {
        let bytes = proxy
            .metric(&format!(
                "tollgate_tunnel_bytes_total{{direction=\"{direction}\"}}"
            ))
            .unwrap_or(0.0);
        assert!(bytes > 100_000.0, "{direction}: {bytes}");
    }
    wait_until("the tunnel's access line", || {
        proxy
            .log_text()
            .contains("GET /chat status=101 route=ws upstream=ws")
    });
    assert!(
        proxy.log_text().contains("proto=websocket"),
        "{}",
        proxy.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_the_idle_timeout() {
    let backend = EchoBackend::start();
    let proxy = edge(&backend, "300ms");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/idle", proxy.addr))
        .await
        .expect("upgrade");
    ws.send(Message::text("one")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("message").expect("ok"),
        Message::text("one")
    );
    proxy.wait_metric("tollgate_tunnels_open", 1.0);
    // Nothing more is said: tollgate ends the tunnel.
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the idle tunnel was closed");
    proxy.wait_metric("tollgate_tunnels_open", 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_upgrade_is_refused_with_429_before_the_upgrade() {
    let backend = EchoBackend::start();
    let proxy = edge(&backend, "2s");
    let url = format!("ws://{}/limited", proxy.addr);
    let (mut first, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("first upgrade");
    first.send(Message::text("hi")).await.expect("send");
    assert_eq!(
        first.next().await.expect("message").expect("ok"),
        Message::text("hi")
    );
    let refused = tokio_tungstenite::connect_async(&url).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("expected a 429, got {other:?}"),
    }
    assert_eq!(
        backend.upgrades.load(Ordering::SeqCst),
        1,
        "the refused upgrade never reached the backend"
    );
    assert_eq!(proxy.metric("tollgate_tunnels_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_keeps_working_through_the_shutdown_grace_period() {
    let backend = EchoBackend::start();
    let mut proxy = edge(&backend, "30s");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/drain", proxy.addr))
        .await
        .expect("upgrade");
    proxy.wait_metric("tollgate_tunnels_open", 1.0);
    proxy.signal("TERM");
    wait_until("shutdown began", || {
        proxy.log_text().contains("shutting down")
    });
    // Inside the grace period (1 s in the tests) the tunnel still carries
    // messages both ways.
    ws.send(Message::text("during shutdown"))
        .await
        .expect("send");
    assert_eq!(
        ws.next().await.expect("message").expect("ok"),
        Message::text("during shutdown")
    );
    // When the grace period and the shutdown timeout are over, the process
    // is gone and so is the tunnel.
    proxy.wait_exit(); // asserts the exit comes within the deadline
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the tunnel ended with the process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_counts_against_the_connection_limits() {
    let backend = EchoBackend::start();
    let proxy = TollgateProcess::start(&format!(
        "limits: {{ max_connections_per_ip: 1 }}\n\
         upstreams:\n  ws: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: ws, upstream: ws }}\n",
        backend.addr
    ));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/one", proxy.addr))
        .await
        .expect("upgrade");
    // While the tunnel is open, this client has no second connection.
    let second = tokio_tungstenite::connect_async(format!("ws://{}/two", proxy.addr)).await;
    match second {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected the 503 of the connection limit, got {other:?}"),
    }
    proxy.wait_metric(
        r#"tollgate_connections_refused_total{reason="max_connections_per_ip"}"#,
        1.0,
    );
    // The tunnel itself is unaffected; once it closes, a new one opens.
    ws.send(Message::text("still mine")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("message").expect("ok"),
        Message::text("still mine")
    );
    ws.close(None).await.expect("close");
    while ws.next().await.is_some() {}
    proxy.wait_metric("tollgate_tunnels_open", 0.0);
    wait_until("the closed tunnel's connection is released", || {
        proxy.metric("tollgate_client_connections") == Some(0.0)
    });
    let (mut again, _) = tokio_tungstenite::connect_async(format!("ws://{}/three", proxy.addr))
        .await
        .expect("a new tunnel after the first closed");
    again.close(None).await.expect("close");
}
