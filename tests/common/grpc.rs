//! A gRPC service and client for the tests, on the `h2` crate (the HTTP/2
//! implementation Pingora itself uses), speaking gRPC's wire format
//! (`PROTOCOL-HTTP2.md`): length-prefixed messages, `grpc-status` and
//! `grpc-message` in trailers, or in the header of a trailers-only answer.
//! Messages are opaque bytes: tollgate never reads them, so no protobuf
//! schema is needed to test what it does with them.
//!
//! The service `test.Echo`:
//! - `Unary`: answers the message it got; metadata `x-sleep-ms` waits
//!   first, `x-trailer` comes back as trailing metadata `x-echo-trailer`.
//! - `ServerStream`: the message is a decimal count N; answers N messages
//!   `message-<i>`.
//! - `ClientStream`: answers one message `count=<n> bytes=<total>`.
//! - `Chat` (bidirectional): echoes each message as soon as it has
//!   arrived whole, before the client's stream has ended.
//! - `grpc.health.v1.Health/Check`: `SERVING` (1) or, after
//!   [`GrpcServer::set_serving`]`(false)`, `NOT_SERVING` (2).
//! - `Fail`: no message, `grpc-status: 5` (NOT_FOUND), `grpc-message:
//!   no such thing`, trailing metadata `x-detail: kept`.

#![allow(dead_code)]

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One gRPC message with its 5-byte prefix (uncompressed).
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// Splits whole messages off the front of `buf`.
fn unframe(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).freeze());
    }
    out
}

/// Reads a whole HTTP/2 body, releasing flow-control capacity as it goes.
async fn read_all(body: &mut h2::RecvStream) -> Result<BytesMut, h2::Error> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The `test.Echo` service on a cleartext HTTP/2 (h2c) port.
pub struct GrpcServer {
    /// Where it listens.
    pub addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    serving: Arc<AtomicBool>,
}

impl GrpcServer {
    /// Starts the service on its own thread and runtime.
    pub fn start() -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let serving = Arc::new(AtomicBool::new(true));
        let health = serving.clone();
        let addr = super::serve_connections(move |socket| {
            let calls = counted.clone();
            let health = health.clone();
            async move {
                // Like gRPC servers (grpc-go, grpc-java), no budget on
                // small DATA frames waiting unread (see `client_builder`):
                // a client stream of 200 small messages arrives in one burst.
                let mut builder = h2::server::Builder::new();
                builder.data_frame_budget(usize::MAX / 2);
                let Ok(mut conn) = builder.handshake(socket).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    let serving = health.load(Ordering::SeqCst);
                    if req.uri().path() != "/grpc.health.v1.Health/Check" {
                        calls.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::spawn(serve(req, respond, serving));
                }
            }
        });
        Self {
            addr,
            calls,
            serving,
        }
    }

    /// Calls that reached the service (health checks not counted).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// What the health service answers from now on.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }
}

async fn serve(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    serving: bool,
) {
    if req.uri().path() == "/test.Echo/Chat" {
        return chat(req, respond).await;
    }
    let (parts, mut body) = req.into_parts();
    let meta = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Ok(mut buf) = read_all(&mut body).await else {
        return;
    };
    let messages = unframe(&mut buf);
    if let Some(ms) = meta("x-sleep-ms").and_then(|v| v.parse::<u64>().ok()) {
        // A slow service (the deadline tests' subject), not a wait.
        tokio::time::sleep(Duration::from_millis(ms)).await; // pace: the slow service
    }
    let method = parts.uri.path().to_owned();
    let mut trailers = http::HeaderMap::new();
    let mut out: Vec<Bytes> = Vec::new();
    match method.as_str() {
        "/test.Echo/Unary" | "/test.Echo/Limited" => {
            out.extend(messages.first().cloned());
            if let Some(v) = meta("x-trailer") {
                trailers.insert("x-echo-trailer", v.parse().expect("value"));
            }
        }
        "/test.Echo/ServerStream" => {
            let n: usize = messages
                .first()
                .and_then(|m| std::str::from_utf8(m).ok()?.parse().ok())
                .unwrap_or(0);
            out.extend((0..n).map(|i| Bytes::from(format!("message-{i}"))));
        }
        "/test.Echo/ClientStream" => {
            let total: usize = messages.iter().map(Bytes::len).sum();
            out.push(Bytes::from(format!(
                "count={} bytes={total}",
                messages.len()
            )));
        }
        "/grpc.health.v1.Health/Check" => {
            // HealthCheckResponse { status: SERVING (1) | NOT_SERVING (2) }
            out.push(Bytes::from_static(if serving {
                &[0x08, 1]
            } else {
                &[0x08, 2]
            }));
        }
        "/test.Echo/Fail" => {
            trailers.insert("grpc-status", "5".parse().expect("value"));
            trailers.insert("grpc-message", "no such thing".parse().expect("value"));
            trailers.insert("x-detail", "kept".parse().expect("value"));
        }
        _ => {
            trailers.insert("grpc-status", "12".parse().expect("value"));
        }
    }
    trailers
        .entry("grpc-status")
        .or_insert_with(|| "0".parse().expect("value"));
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("response");
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    for message in out {
        if send.send_data(frame(&message), false).is_err() {
            return;
        }
    }
    let _ = send.send_trailers(trailers);
}

/// `Chat`: the answer's header at once, then every message echoed as it
/// completes, then `grpc-status: 0` once the client's stream ends.
async fn chat(req: http::Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let mut body = req.into_body();
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("response");
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    let mut buf = BytesMut::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        for message in unframe(&mut buf) {
            if send.send_data(frame(&message), false).is_err() {
                return;
            }
        }
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().expect("value"));
    let _ = send.send_trailers(trailers);
}

/// One message of an open call, as [`GrpcClient::open`] streams it.
pub struct OpenCall {
    send: h2::SendStream<Bytes>,
    body: h2::RecvStream,
    buf: BytesMut,
}

impl OpenCall {
    /// Sends one message, the stream staying open.
    pub fn send(&mut self, message: &[u8]) {
        self.send
            .send_data(frame(message), false)
            .expect("send message");
    }

    /// The next whole message of the answer.
    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(message) = unframe(&mut self.buf).into_iter().next() {
                return Some(message);
            }
            let chunk = self.body.data().await?.expect("answer data");
            let _ = self.body.flow_control().release_capacity(chunk.len());
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// Ends the client's stream and returns the call's `grpc-status`.
    pub async fn finish(mut self) -> Option<u16> {
        self.send
            .send_data(Bytes::new(), true)
            .expect("end of stream");
        while let Some(chunk) = self.body.data().await {
            let chunk = chunk.expect("answer data");
            let _ = self.body.flow_control().release_capacity(chunk.len());
        }
        let trailers = self.body.trailers().await.expect("trailers")?;
        trailers.get("grpc-status")?.to_str().ok()?.parse().ok()
    }
}

/// What a call came back with.
#[derive(Debug)]
pub struct GrpcReply {
    /// HTTP status of the response.
    pub http_status: u16,
    /// `grpc-status`, from the trailers or a trailers-only header.
    pub status: Option<u16>,
    /// `grpc-message`.
    pub message: Option<String>,
    /// The response header.
    pub headers: http::HeaderMap,
    /// The messages received.
    pub messages: Vec<Bytes>,
    /// The trailers (empty for a trailers-only answer).
    pub trailers: http::HeaderMap,
    /// Whether the status came in the header (trailers-only).
    pub trailers_only: bool,
}

/// The client's HTTP/2 settings. The h2 crate GOAWAYs a peer whose small
/// DATA frames pile up unread beyond a framing-overhead budget (half the
/// connection window); a server stream of 1,000 tiny messages, each its
/// own frame as gRPC servers send them, arrives faster than this test
/// reads it. gRPC clients (grpc-go, grpc-java) have no such budget, so
/// this one is raised to theirs: unlimited in practice.
fn client_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder.data_frame_budget(usize::MAX / 2);
    builder
}

/// An HTTP/2 connection to call over: cleartext (h2c) or TLS with ALPN h2.
pub struct GrpcClient {
    send: h2::client::SendRequest<Bytes>,
    scheme: &'static str,
}

impl GrpcClient {
    /// Connects with HTTP/2 prior knowledge (h2c).
    pub async fn cleartext(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = client_builder().handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(conn);
        Self {
            send,
            scheme: "http",
        }
    }

    /// Connects over TLS, offering only `h2` (certificate not verified:
    /// the tests' listeners use throwaway ones).
    pub async fn tls(addr: SocketAddr) -> Self {
        use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
        let mut builder = SslConnector::builder(SslMethod::tls()).expect("tls");
        builder.set_verify(SslVerifyMode::NONE);
        builder.set_alpn_protos(b"\x02h2").expect("alpn");
        let ssl = builder
            .build()
            .configure()
            .expect("configure")
            .into_ssl("localhost")
            .expect("ssl");
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut stream = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
        std::pin::Pin::new(&mut stream)
            .connect()
            .await
            .expect("TLS handshake");
        assert_eq!(
            stream.ssl().selected_alpn_protocol(),
            Some(&b"h2"[..]),
            "the listener agreed to HTTP/2"
        );
        let (send, conn) = client_builder()
            .handshake(stream)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        Self {
            send,
            scheme: "https",
        }
    }

    /// Sends a call's header (a gRPC POST with `metadata`) on a new stream.
    async fn start_call(
        &mut self,
        path: &str,
        metadata: &[(&str, &str)],
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("{}://localhost{path}", self.scheme))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in metadata {
            req = req.header(*name, *value);
        }
        let req = req.body(()).expect("request");
        let mut ready = self.send.clone().ready().await.expect("connection ready");
        ready.send_request(req, false).expect("send request")
    }

    /// Opens a call to `path` whose messages are sent and read one by one
    /// (bidirectional streaming); the answer's header has arrived.
    pub async fn open(&mut self, path: &str) -> OpenCall {
        let (response, send) = self.start_call(path, &[]).await;
        let response = response.await.expect("response header");
        assert_eq!(response.status(), 200);
        OpenCall {
            send,
            body: response.into_body(),
            buf: BytesMut::new(),
        }
    }

    /// Calls `path` with `messages` (a stream of them for client
    /// streaming) and `metadata`, and reads the whole answer.
    pub async fn call(
        &mut self,
        path: &str,
        messages: &[&[u8]],
        metadata: &[(&str, &str)],
    ) -> GrpcReply {
        let (response, mut body) = self.start_call(path, metadata).await;
        for message in messages {
            body.send_data(frame(message), false).expect("send message");
        }
        body.send_data(Bytes::new(), true).expect("end of stream");
        let response = response.await.expect("response header");
        let (parts, mut stream) = response.into_parts();
        let mut buf = read_all(&mut stream).await.expect("response body");
        let messages = unframe(&mut buf);
        let trailers = stream
            .trailers()
            .await
            .expect("trailers")
            .unwrap_or_default();
        let trailers_only = parts.headers.contains_key("grpc-status");
        let source = if trailers_only {
            &parts.headers
        } else {
            &trailers
        };
        let text = |name: &str| {
            source
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        GrpcReply {
            http_status: parts.status.as_u16(),
            status: text("grpc-status").and_then(|s| s.parse().ok()),
            message: text("grpc-message"),
            headers: parts.headers,
            messages,
            trailers,
            trailers_only,
        }
    }
}
