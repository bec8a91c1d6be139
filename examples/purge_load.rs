//! The load client of `benches/load/purge.sh`: fills the cache with many
//! distinct entries, then runs cache hits at full load (closed loop, one
//! request in flight per connection) while an admin purge runs, and
//! reports the hits' latency during the purge against before it. wrk
//! reports one distribution for a whole run, which hides a stall of a
//! fraction of a second; this keeps every request's start and latency.
//!
//! ```text
//! purge_load fill ADDR PREFIX COUNT CONNECTIONS
//! purge_load hits ADDR PREFIX KEYS CONNECTIONS SECONDS [ADMIN TOKEN PURGE_JSON PURGE_AT]
//! ```
//! `fill` GETs PREFIX0 … PREFIX{COUNT-1} once each. `hits` GETs
//! PREFIX{i mod KEYS} for SECONDS; with a purge, it POSTs PURGE_JSON to
//! ADMIN's `/cache/purge` at PURGE_AT seconds and keeps loading for a
//! second after it answers. Prints one JSON object.

#[path = "support/http1.rs"]
mod http1;

use http1::{exchange, kind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::BufReader;
use tokio::net::TcpStream;

/// One request: when it started (since the run began), how long it took.
#[derive(Clone, Copy)]
struct Sample {
    start: Duration,
    latency: Duration,
    status: u16,
}

/// A keep-alive connection that reconnects when the server closes it.
struct Client {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    async fn send(&mut self, request: &[u8]) -> Result<u16, &'static str> {
        for _ in 0..2 {
            if self.conn.is_none() {
                let stream = TcpStream::connect(&self.addr).await.map_err(|e| kind(&e))?;
                stream.set_nodelay(true).map_err(|e| kind(&e))?;
                self.conn = Some(BufReader::new(stream));
            }
            let Some(reader) = self.conn.as_mut() else {
                continue;
            };
            match exchange(reader, request).await {
                Ok((status, close)) => {
                    if close {
                        self.conn = None;
                    }
                    return Ok(status);
                }
                Err(f) if !f.answer_started => self.conn = None,
                Err(f) => {
                    self.conn = None;
                    return Err(kind(&f.error));
                }
            }
        }
        Err("closed")
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: bench.test\r\n\r\n").into_bytes()
}

/// GETs `prefix{i}` for every i below `count`, over `connections`.
async fn fill(addr: String, prefix: String, count: usize, connections: usize) -> serde_json::Value {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (addr, prefix, next) = (addr.clone(), prefix.clone(), next.clone());
            tokio::spawn(async move {
                let mut client = Client { addr, conn: None };
                let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return statuses;
                    }
                    let key = match client.send(&get(&format!("{prefix}{i}"))).await {
                        Ok(status) => status.to_string(),
                        Err(e) => e.to_owned(),
                    };
                    *statuses.entry(key).or_default() += 1;
                }
            })
        })
        .collect();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        if let Ok(s) = t.await {
            for (k, v) in s {
                *statuses.entry(k).or_default() += v;
            }
        }
    }
    serde_json::json!({
        "requests": count,
        "seconds": started.elapsed().as_secs_f64(),
        "statuses": statuses,
    })
}

/// The purge to run during `hits`.
#[derive(Clone)]
struct PurgeAt {
    admin: String,
    token: String,
    body: String,
    at: Duration,
}

/// Sends one request on a connection of its own and reads the answer to
/// the end (`Connection: close`).
async fn admin_exchange(addr: &str, request: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Sends the purge; when it started and ended (since `started`), and what
/// it answered.
async fn purge(p: &PurgeAt, started: Instant) -> (Duration, Duration, String) {
    tokio::time::sleep_until((started + p.at).into()).await;
    purge_now(p, started).await
}

/// Sends the purge now; when it started and ended, and what it answered.
async fn purge_now(p: &PurgeAt, started: Instant) -> (Duration, Duration, String) {
    let request = format!(
        "POST /cache/purge HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        p.admin,
        p.token,
        p.body.len(),
        p.body
    );
    let from = started.elapsed();
    let answer = admin_exchange(&p.admin, &request)
        .await
        .unwrap_or_else(|e| format!("error: {e}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(answer.as_str(), |(_, b)| b)
        .trim()
        .to_owned();
    (from, started.elapsed(), body)
}

/// Polls the admin metrics until the purge's entries are freed, in
/// memory and Redis (`tollgate_cache_purged_unreclaimed_entries` and
/// `tollgate_cache_l2_purge_drains` back at 0, at most five minutes) and
/// the repeated purges (`again`) are sent; when that was, since
/// `started`, and the most unreclaimed entries seen.
async fn reclaimed(
    p: &PurgeAt,
    started: Instant,
    mut again: Option<tokio::task::JoinHandle<()>>,
) -> (Duration, f64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut most = 0.0f64;
    // The admin listener answers to its address (DNS-rebinding guard).
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        p.admin
    );
    while Instant::now() < deadline {
        let text = admin_exchange(&p.admin, &request).await.unwrap_or_default();
        let gauge = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        let memory = gauge("tollgate_cache_purged_unreclaimed_entries");
        most = most.max(memory.unwrap_or(0.0));
        let redis = gauge("tollgate_cache_l2_purge_drains").unwrap_or(0.0);
        if again.as_ref().is_some_and(|a| a.is_finished()) {
            again = None;
        }
        let done = memory == Some(0.0) && redis == 0.0 || memory.is_none() && !text.is_empty();
        if done && again.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (started.elapsed(), most)
}

/// `PURGE_REPEAT` − 1 more sends of the purge, `PURGE_EVERY` seconds
/// apart (defaults 1 and 1 s): a purge repeated while its entries are
/// still being freed.
fn repeat_purge(p: &PurgeAt, started: Instant) -> Option<tokio::task::JoinHandle<()>> {
    let env = |name: &str, default: f64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(default)
    };
    let (repeat, every) = (env("PURGE_REPEAT", 1.0) as usize, env("PURGE_EVERY", 1.0));
    let p = p.clone();
    (repeat > 1).then(|| {
        tokio::spawn(async move {
            for _ in 1..repeat {
                tokio::time::sleep(Duration::from_secs_f64(every)).await;
                purge_now(&p, started).await;
            }
        })
    })
}

fn stats(mut latencies: Vec<Duration>) -> serde_json::Value {
    if latencies.is_empty() {
        return serde_json::json!({"requests": 0});
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64) * q).ceil() as usize;
        latencies[i.clamp(1, latencies.len()) - 1].as_secs_f64() * 1000.0
    };
    serde_json::json!({
        "requests": latencies.len(),
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": at(1.0),
    })
}

async fn hits(
    addr: String,
    prefix: String,
    keys: usize,
    connections: usize,
    seconds: f64,
    purge_at: Option<PurgeAt>,
) -> serde_json::Value {
    let started = Instant::now();
    let stop = Arc::new(std::sync::Mutex::new(
        started + Duration::from_secs_f64(seconds),
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (addr, prefix, next, stop) =
                (addr.clone(), prefix.clone(), next.clone(), stop.clone());
            tokio::spawn(async move {
                let mut client = Client { addr, conn: None };
                let mut samples = Vec::new();
                loop {
                    let until = *stop.lock().unwrap_or_else(|p| p.into_inner());
                    if Instant::now() >= until {
                        return samples;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed) % keys;
                    let request = get(&format!("{prefix}{i}"));
                    let start = started.elapsed();
                    let status = client.send(&request).await.unwrap_or(0);
                    samples.push(Sample {
                        start,
                        latency: started.elapsed() - start,
                        status,
                    });
                }
            })
        })
        .collect();
    let purged = match &purge_at {
        Some(p) => {
            let (from, to, answer) = purge(p, started).await;
            let again = repeat_purge(p, started);
            let (freed, most) = reclaimed(p, started, again).await;
            // Keep loading for a second after the purge's memory is freed.
            *stop.lock().unwrap_or_else(|p| p.into_inner()) =
                started + freed + Duration::from_secs(1);
            Some((from, to, answer, freed, most))
        }
        None => None,
    };
    let mut samples: Vec<Sample> = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            samples.extend(s);
        }
    }
    let not_ok = samples.iter().filter(|s| s.status != 200).count();
    let mut report = serde_json::json!({
        "all": stats(samples.iter().map(|s| s.latency).collect()),
        "not_200": not_ok,
    });
    if let Some((from, to, answer, freed, most)) = purged {
        report["unreclaimed_max"] = serde_json::json!(most);
        let before: Vec<Duration> = samples
            .iter()
            .filter(|s| s.start + s.latency < from)
            .map(|s| s.latency)
            .collect();
        let during: Vec<Duration> = samples
            .iter()
            .filter(|s| s.start < to && s.start + s.latency > from)
            .map(|s| s.latency)
            .collect();
        let reclaiming: Vec<Duration> = samples
            .iter()
            .filter(|s| s.start < freed && s.start + s.latency > to)
            .map(|s| s.latency)
            .collect();
        report["before_purge"] = stats(before);
        report["during_purge"] = stats(during);
        report["during_reclaim"] = stats(reclaiming);
        report["reclaim_ms"] = serde_json::json!((freed - to).as_secs_f64() * 1000.0);
        report["purge_ms"] = serde_json::json!((to - from).as_secs_f64() * 1000.0);
        report["purge_answer"] =
            serde_json::from_str(&answer).unwrap_or(serde_json::Value::String(answer));
    }
    report
}

fn usage() -> ! {
    eprintln!(
        "usage: purge_load fill ADDR PREFIX COUNT CONNECTIONS\n       \
         purge_load hits ADDR PREFIX KEYS CONNECTIONS SECONDS [ADMIN TOKEN PURGE_JSON PURGE_AT]"
    );
    std::process::exit(2);
}

fn number(a: &[String], i: usize) -> f64 {
    a.get(i)
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| usage())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let text = |i: usize| a.get(i).cloned().unwrap_or_else(|| usage());
    let report = match a.first().map(String::as_str) {
        Some("fill") => {
            fill(
                text(1),
                text(2),
                number(&a, 3) as usize,
                number(&a, 4) as usize,
            )
            .await
        }
        Some("hits") => {
            let purge_at = (a.len() >= 10).then(|| PurgeAt {
                admin: text(6),
                token: text(7),
                body: text(8),
                at: Duration::from_secs_f64(number(&a, 9)),
            });
            let keys = (number(&a, 3) as usize).max(1);
            hits(
                text(1),
                text(2),
                keys,
                number(&a, 4) as usize,
                number(&a, 5),
                purge_at,
            )
            .await
        }
        _ => usage(),
    };
    println!("{report}");
}
