//! The origin and the clients of the performance budget
//! (`benches/budget/check.sh`), so the check needs no other server or load
//! tool: an HTTP/1.1 origin, a gRPC (h2c) origin, and clients that send
//! requests one after another on one keep-alive connection, as the
//! budget's per-request counts assume.
//!
//! ```text
//! budget_peers origin HTTP1_ADDR H2C_ADDR      serve until killed
//! budget_peers http1 ADDR PATH COUNT [NAME:VALUE]...
//! budget_peers grpc ADDR PATH COUNT
//! ```
//! The HTTP/1.1 origin answers every path with the same 1 KiB JSON
//! document: paths starting `/cached` with `Cache-Control: public,
//! max-age=300` and an ETag, every other path with `no-store`. The gRPC
//! origin answers every call with the message it got. The clients exit
//! non-zero on the first answer that is not a success.

#[path = "support/http1.rs"]
#[allow(dead_code)] // the shared client has more than this one uses
mod http1;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The document every HTTP/1.1 answer carries: 1 KiB of JSON.
fn document() -> Vec<u8> {
    let mut doc = String::from("{\"items\":[");
    let mut i = 0;
    while doc.len() < 960 {
        if i > 0 {
            doc.push(',');
        }
        doc.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item-{i:03}\",\"price_cents\":{}}}",
            1000 + i
        ));
        i += 1;
    }
    doc.push_str("]}");
    let mut bytes = doc.into_bytes();
    bytes.resize(1024, b' ');
    bytes
}

/// One HTTP/1.1 answer, head and body, for a path.
fn answer(path: &str, doc: &[u8]) -> Vec<u8> {
    let policy = if path.starts_with("/cached") {
        "Cache-Control: public, max-age=300\r\nETag: \"v1\"\r\n"
    } else {
        "Cache-Control: no-store\r\n"
    };
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{policy}Content-Length: {}\r\n\r\n",
        doc.len()
    )
    .into_bytes();
    out.extend_from_slice(doc);
    out
}

/// Serves keep-alive HTTP/1.1 GETs (no request bodies) on one connection.
async fn serve_http1(mut socket: TcpStream, doc: &'static [u8]) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf.split_to(end + 4);
            let path = head[..]
                .split(|&b| b == b' ')
                .nth(1)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            if socket.write_all(&answer(&path, doc)).await.is_err() {
                return;
            }
        }
        match socket.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Answers every gRPC call on one h2c connection with the message it got.
async fn serve_grpc(socket: TcpStream) {
    let Ok(mut conn) = h2::server::handshake(socket).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        tokio::spawn(async move {
            let mut body = req.into_body();
            let mut message = BytesMut::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                message.extend_from_slice(&chunk);
            }
            let response = http::Response::builder()
                .header("content-type", "application/grpc")
                .body(())
                .unwrap_or_default();
            let Ok(mut send) = respond.send_response(response, false) else {
                return;
            };
            let _ = send.send_data(message.freeze(), false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = send.send_trailers(trailers);
        });
    }
}

async fn origin(http1_addr: &str, h2c_addr: &str) -> Result<(), String> {
    let doc: &'static [u8] = Box::leak(document().into_boxed_slice());
    let http1 = TcpListener::bind(http1_addr)
        .await
        .map_err(|e| format!("bind {http1_addr}: {e}"))?;
    let h2c = TcpListener::bind(h2c_addr)
        .await
        .map_err(|e| format!("bind {h2c_addr}: {e}"))?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = h2c.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(serve_grpc(socket));
        }
    });
    loop {
        let (socket, _) = http1.accept().await.map_err(|e| e.to_string())?;
        let _ = socket.set_nodelay(true);
        tokio::spawn(serve_http1(socket, doc));
    }
}

/// COUNT GETs of PATH on one keep-alive connection.
async fn http1_client(
    addr: &str,
    path: &str,
    count: usize,
    fields: &[String],
) -> Result<(), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut reader = BufReader::new(tcp);
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: budget\r\n");
    for field in fields {
        let (name, value) = field
            .split_once(':')
            .ok_or_else(|| format!("header {field:?} is not NAME:VALUE"))?;
        request.push_str(&format!("{name}: {}\r\n", value.trim()));
    }
    request.push_str("\r\n");
    for i in 0..count {
        let (status, closes) = http1::exchange(&mut reader, request.as_bytes())
            .await
            .map_err(|f| format!("request {i} of {path}: {}", f.error))?;
        if !(200..300).contains(&status) || closes {
            return Err(format!(
                "request {i} of {path}: status {status}, server closes: {closes}"
            ));
        }
    }
    Ok(())
}

/// COUNT unary gRPC calls of PATH on one h2c connection, one at a time.
async fn grpc_client(addr: &str, path: &str, count: usize) -> Result<(), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut send, conn) = h2::client::handshake(tcp)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut message = BytesMut::with_capacity(5 + 64);
    message.put_u8(0);
    message.put_u32(64);
    message.put_slice(&[b'm'; 64]);
    let message = message.freeze();
    for i in 0..count {
        send = send.ready().await.map_err(|e| format!("h2 ready: {e}"))?;
        let request = http::Request::post(format!("http://budget{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| e.to_string())?;
        let (response, mut body) = send
            .send_request(request, false)
            .map_err(|e| format!("call {i}: {e}"))?;
        body.send_data(message.clone(), true)
            .map_err(|e| format!("call {i}: {e}"))?;
        let response = response.await.map_err(|e| format!("call {i}: {e}"))?;
        let mut body = response.into_body();
        let mut got = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("call {i}: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        let status = body
            .trailers()
            .await
            .map_err(|e| format!("call {i}: {e}"))?
            .and_then(|t| t.get("grpc-status").cloned());
        if status.as_ref().map(|s| s.as_bytes()) != Some(b"0") || got.len() != message.len() {
            return Err(format!(
                "call {i}: grpc-status {status:?}, {} bytes back",
                got.remaining()
            ));
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let count = |s: &str| s.parse::<usize>().map_err(|e| format!("COUNT {s}: {e}"));
    match args.get(1).map(String::as_str) {
        Some("origin") if args.len() == 4 => origin(&args[2], &args[3]).await,
        Some("http1") if args.len() >= 5 => {
            http1_client(&args[2], &args[3], count(&args[4])?, &args[5..]).await
        }
        Some("grpc") if args.len() == 5 => grpc_client(&args[2], &args[3], count(&args[4])?).await,
        _ => Err("usage: budget_peers origin HTTP1_ADDR H2C_ADDR | http1 ADDR PATH COUNT [NAME:VALUE]... | grpc ADDR PATH COUNT".into()),
    }
}
