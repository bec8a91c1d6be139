//! The load client of `benches/load/connections.sh`: opens many keep-alive
//! connections, sends one request on each, reads the whole answer, and then
//! holds every connection open and idle until its standard input closes.
//! What the proxy keeps per idle connection is then its resident memory
//! growth divided by the count.
//!
//! ```text
//! idle_clients ADDR COUNT http1|h2c PATH
//! ```
//! Prints `ready N` once N connections are open and answered (a failed one
//! aborts the run), then waits for standard input to close.

#[path = "support/http1.rs"]
#[allow(dead_code)] // the shared client has more than this one uses
mod http1;

use bytes::Bytes;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Connections being opened at once: enough to be quick, few enough not
/// to overflow the proxy's accept queue.
const OPENING_AT_ONCE: usize = 64;

/// What one held connection keeps alive on the client side.
enum Held {
    Http1(#[allow(dead_code)] BufReader<TcpStream>),
    H2(#[allow(dead_code)] h2::client::SendRequest<Bytes>),
}

async fn open_http1(addr: String, path: String) -> Result<Held, String> {
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut reader = BufReader::new(tcp);
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let (status, closes) = http1::exchange(&mut reader, request.as_bytes())
        .await
        .map_err(|f| format!("GET {path}: {}", f.error))?;
    if !(200..300).contains(&status) || closes {
        return Err(format!(
            "GET {path}: status {status}, server closes: {closes}"
        ));
    }
    Ok(Held::Http1(reader))
}

async fn open_h2c(addr: String, path: String) -> Result<Held, String> {
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (send, conn) = h2::client::handshake(tcp)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.map_err(|e| format!("h2 ready: {e}"))?;
    let request = http::Request::get(format!("http://bench{path}"))
        .body(())
        .map_err(|e| e.to_string())?;
    let (response, _) = send
        .send_request(request, true)
        .map_err(|e| format!("h2 send: {e}"))?;
    let response = response.await.map_err(|e| format!("h2 response: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {path}: status {}", response.status()));
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("h2 body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(Held::H2(send))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        return Err("usage: idle_clients ADDR COUNT http1|h2c PATH".into());
    }
    let (addr, path) = (args[1].clone(), args[4].clone());
    let count: usize = args[2].parse().map_err(|e| format!("COUNT: {e}"))?;
    let h2 = match args[3].as_str() {
        "http1" => false,
        "h2c" => true,
        other => return Err(format!("unknown protocol {other}")),
    };
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (addr, path, opening) = (addr.clone(), path.clone(), opening.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = opening.acquire_owned().await.map_err(|e| e.to_string())?;
            if h2 {
                open_h2c(addr, path).await
            } else {
                open_http1(addr, path).await
            }
        }));
    }
    let mut held = Vec::with_capacity(count);
    for task in tasks {
        held.push(task.await.map_err(|e| e.to_string())??);
    }
    println!("ready {}", held.len());
    let mut rest = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut rest).await;
    drop(held);
    Ok(())
}
