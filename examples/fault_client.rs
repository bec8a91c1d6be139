//! The load client of `benches/faults/run.sh`: a paced HTTP/1.1 keep-alive
//! load that records every request (when it started, how long it took,
//! which status or which I/O error), so the fault benchmark can say what a
//! client saw while a fault was injected and how long it took to recover.
//! wrk reports neither errors by status nor a time series.
//!
//! ```text
//! fault_client ADDR PATH SECONDS CONNECTIONS RATE FAULT_FROM FAULT_TO [HEADER ...]
//! ```
//! RATE is requests per second across all connections; FAULT_FROM and
//! FAULT_TO are seconds since start. Prints one JSON object.
//!
//! Like every HTTP client library (RFC 9112 §9.3.1), it sends a request
//! again, once, on a new connection when a *reused* connection was closed
//! before any byte of the answer came back (the server closed it while
//! idle); those are counted as `client_retries`, not as failures.

#[path = "support/http1.rs"]
mod http1;

use http1::{exchange, kind};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::BufReader;
use tokio::net::TcpStream;

/// What one request ended as.
#[derive(Clone, Debug)]
struct Sample {
    start: Duration,
    latency: Duration,
    /// Status, or 0 for an I/O failure (`error` says which).
    status: u16,
    error: Option<&'static str>,
}

struct Args {
    addr: String,
    path: String,
    seconds: u64,
    connections: usize,
    rate: f64,
    fault_from: f64,
    fault_to: f64,
    headers: Vec<String>,
}

fn args() -> Result<Args, String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 7 {
        return Err("usage: fault_client ADDR PATH SECONDS CONNECTIONS RATE FAULT_FROM FAULT_TO [HEADER ...]".into());
    }
    let num = |i: usize| {
        a[i].parse::<f64>()
            .map_err(|e| format!("argument {i} ({}): {e}", a[i]))
    };
    Ok(Args {
        addr: a[0].clone(),
        path: a[1].clone(),
        seconds: num(2)? as u64,
        connections: num(3)?.max(1.0) as usize,
        rate: num(4)?.max(1.0),
        fault_from: num(5)?,
        fault_to: num(6)?,
        headers: a[7..].to_vec(),
    })
}

async fn connection(
    args: std::sync::Arc<Args>,
    index: usize,
    started: Instant,
) -> (Vec<Sample>, u64) {
    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate);
    let end = Duration::from_secs(args.seconds);
    // Spread the connections' first requests over one interval.
    let mut next = interval.mul_f64(index as f64 / args.connections as f64);
    let mut request = format!("GET {} HTTP/1.1\r\nHost: faults.test\r\n", args.path);
    for h in &args.headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut samples = Vec::new();
    let mut retries = 0u64;
    let mut conn: Option<BufReader<TcpStream>> = None;
    while next < end {
        tokio::time::sleep_until((started + next).into()).await;
        let start = started.elapsed();
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            let mut retried = false;
            loop {
                let reused = conn.is_some();
                if conn.is_none() {
                    let stream = TcpStream::connect(&args.addr).await?;
                    stream.set_nodelay(true)?;
                    conn = Some(BufReader::new(stream));
                }
                let reader = conn.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
                match exchange(reader, request.as_bytes()).await {
                    Ok(answer) => return Ok(answer),
                    Err(f) if reused && !f.answer_started && !retried => {
                        conn = None;
                        retried = true;
                        retries += 1;
                    }
                    Err(f) => return Err(f.error),
                }
            }
        })
        .await;
        let latency = started.elapsed() - start;
        let sample = match outcome {
            Ok(Ok((status, close))) => {
                if close {
                    conn = None;
                }
                Sample {
                    start,
                    latency,
                    status,
                    error: None,
                }
            }
            Ok(Err(e)) => {
                conn = None;
                Sample {
                    start,
                    latency,
                    status: 0,
                    error: Some(kind(&e)),
                }
            }
            Err(_) => {
                conn = None;
                Sample {
                    start,
                    latency,
                    status: 0,
                    error: Some("timeout"),
                }
            }
        };
        samples.push(sample);
        next += interval;
    }
    (samples, retries)
}

fn p99(mut latencies: Vec<Duration>) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort_unstable();
    let i = ((latencies.len() as f64) * 0.99).ceil() as usize;
    latencies[i.clamp(1, latencies.len()) - 1].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args = match args() {
        Ok(a) => std::sync::Arc::new(a),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| tokio::spawn(connection(args.clone(), i, started)))
        .collect();
    let mut samples = Vec::new();
    let mut client_retries = 0;
    for t in tasks {
        if let Ok((s, r)) = t.await {
            samples.extend(s);
            client_retries += r;
        }
    }
    let failed = |s: &Sample| s.status == 0 || s.status >= 500;
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for s in &samples {
        let key = match s.error {
            Some(e) => e.to_owned(),
            None => s.status.to_string(),
        };
        *by_status.entry(key).or_default() += 1;
    }
    let from = Duration::from_secs_f64(args.fault_from);
    let to = Duration::from_secs_f64(args.fault_to);
    let during: Vec<Duration> = samples
        .iter()
        .filter(|s| s.start >= from && s.start < to + Duration::from_secs(1))
        .map(|s| s.latency)
        .collect();
    let last_failure = samples
        .iter()
        .filter(|s| failed(s))
        .map(|s| s.start + s.latency)
        .max();
    // Recovery: from the end of the fault to the last failed request (0 when
    // nothing failed after the fault ended).
    let recovery_ms = last_failure.map_or(0.0, |t| t.saturating_sub(to).as_secs_f64() * 1000.0);
    let failures = samples.iter().filter(|s| failed(s)).count();
    let client_5xx = samples.iter().filter(|s| s.status >= 500).count();
    let io_errors = samples.iter().filter(|s| s.status == 0).count();
    let json = serde_json::json!({
        "requests": samples.len(),
        "failures": failures,
        "client_5xx": client_5xx,
        "io_errors": io_errors,
        "client_retries": client_retries,
        "by_status": by_status,
        "p99_ms": p99(samples.iter().map(|s| s.latency).collect()),
        "p99_during_fault_ms": p99(during),
        "recovery_ms": recovery_ms,
    });
    println!("{json}");
}
