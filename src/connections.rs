//! Limits on client connections, enforced where Pingora hands us each one:
//! how many may be open at once (per instance and per client IP), and how
//! long a request head may take to arrive.
//!
//! Written here because Pingora has neither: its HTTP/1 reader restarts an
//! idle timer on every byte (a client sending one byte every few seconds
//! holds a connection forever), and it accepts every connection. The gate
//! wraps the proxy's `ServerApp` (so a connection is counted for its whole
//! life, keep-alive requests included) and wraps each HTTP/1 stream in
//! [`HeadDeadline`].

use crate::metrics::Metrics;
use crate::state::AppState;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
    ALPN,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A `ServerApp` that admits connections within the configured limits and
/// times request heads, then hands the connection to `inner`.
pub struct ConnectionGate<A> {
    inner: Arc<A>,
    state: Arc<AppState>,
    open: Arc<OpenConnections>,
}

impl<A> ConnectionGate<A> {
    /// Gates `inner`'s connections with the limits of the live config.
    pub fn new(inner: A, state: Arc<AppState>) -> Self {
        Self {
            inner: Arc::new(inner),
            state,
            open: Arc::new(OpenConnections::default()),
        }
    }
}

/// Open connections, in all and per client IP (only counted per IP while
/// a per-IP limit is configured).
#[derive(Default)]
struct OpenConnections {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Total,
    PerIp,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

/// One admitted connection; leaving its counts when dropped.
struct Slot {
    open: Arc<OpenConnections>,
    ip: Option<IpAddr>,
}

impl OpenConnections {
    fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Slot, Refusal> {
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        let mut slot = Slot {
            open: self.clone(),
            ip: None,
        };
        if max_total != 0 && before >= max_total {
            return Err(Refusal::Total); // `slot` drops: the count goes back
        }
        if let (Some(ip), true) = (ip, max_per_ip != 0) {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= max_per_ip {
                return Err(Refusal::PerIp);
            }
            *n += 1;
            slot.ip = Some(ip);
        }
        Ok(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_ip = self.open.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// The 503 sent to a connection over the limit, before closing it.
fn refusal_response(reason: Refusal) -> Vec<u8> {
    let body = format!(
        "{{\"error\":\"too_many_connections\",\"message\":\"Too many open connections ({})\"}}",
        reason.label()
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionGate<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut io: pingora::protocols::Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<pingora::protocols::Stream> {
        let limits = self.state.gateway().config.limits;
        let ip = io
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let metrics = &self.state.metrics;
        let _slot = match self
            .open
            .admit(ip, limits.max_connections, limits.max_connections_per_ip)
        {
            Ok(slot) => slot,
            Err(reason) => {
                metrics
                    .connections_refused
                    .with_label_values(&[reason.label()])
                    .inc();
                refuse(&mut io, reason).await;
                return None;
            }
        };
        let _open = OpenGauge::new(metrics);
        // Pingora stops waiting for a request the moment a graceful
        // shutdown or upgrade begins, dropping a connection whose first
        // request is still on the wire; with its first bytes already
        // buffered it reads the request first. So wait for them here (the
        // bytes stay in the stream for Pingora). A peer that closes
        // without sending anything is done.
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(limits.header_timeout, io.try_peek(&mut first)).await;
        if let Ok(Err(_)) = peeked {
            return None;
        }
        let io: pingora::protocols::Stream = if io.selected_alpn_proto() == Some(ALPN::H2) {
            io // HTTP/2 frames its own headers; its streams are timed by h2
        } else {
            Box::new(HeadDeadline::new(
                io,
                limits.header_timeout,
                metrics.header_timeouts.clone(),
            ))
        };
        self.inner.process_new(io, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// `tollgate_client_connections` up for as long as the connection is served.
struct OpenGauge(prometheus::IntGauge);

impl OpenGauge {
    fn new(metrics: &Metrics) -> Self {
        metrics.client_connections.inc();
        Self(metrics.client_connections.clone())
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn refuse(io: &mut pingora::protocols::Stream, reason: Refusal) {
    if io.selected_alpn_proto() != Some(ALPN::H2) {
        let response = refusal_response(reason);
        let write = tokio::io::AsyncWriteExt::write_all(io, &response);
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }
    Shutdown::shutdown(io.as_mut()).await;
}

/// Where a connection is in its request/response cycle, as seen from the
/// bytes that pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head; its clock starts at its first byte.
    AwaitingHead,
    /// The head ended (`\r\n\r\n` seen): body bytes are not timed here.
    InMessage,
}

/// An HTTP/1 stream whose request heads must arrive within `limit` of their
/// first byte. The head's end is found by watching for the blank line; a
/// response written (other than an interim `1xx`) means the next bytes
/// read start the next head.
pub struct HeadDeadline {
    inner: pingora::protocols::Stream,
    clock: HeadClock,
}

/// The head-timing state of one connection.
struct HeadClock {
    limit: Duration,
    phase: Phase,
    /// The timer, made on a connection's first head and reset for each
    /// later one (no allocation per request).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the timer is running for the current head.
    armed: bool,
    /// The last bytes of the head so far, to find `\r\n\r\n` across reads.
    tail: [u8; 3],
    timeouts: prometheus::IntCounter,
}

impl HeadDeadline {
    /// Wraps `inner`.
    pub fn new(
        inner: pingora::protocols::Stream,
        limit: Duration,
        timeouts: prometheus::IntCounter,
    ) -> Self {
        Self {
            inner,
            clock: HeadClock {
                limit,
                phase: Phase::AwaitingHead,
                timer: None,
                armed: false,
                tail: [0; 3],
                timeouts,
            },
        }
    }
}

impl HeadClock {
    /// Notes bytes read while a head is expected: starts the clock at the
    /// first one, stops it at the blank line that ends the head.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // A head that arrives whole in one read (the common case) never
        // needs the timer: resetting it costs a timer-wheel removal and
        // insertion per request.
        if ends_head(&self.tail, bytes) {
            self.phase = Phase::InMessage;
            self.armed = false;
            self.tail = [0; 3];
            return;
        }
        if !self.armed {
            let at = tokio::time::Instant::now() + self.limit;
            match self.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        let mut joined = [0u8; 6];
        joined[..3].copy_from_slice(&self.tail);
        let k = bytes.len().min(3);
        joined[3..3 + k].copy_from_slice(&bytes[bytes.len() - k..]);
        self.tail.copy_from_slice(&joined[k..k + 3]);
    }

    /// Whether a final response starts with `data`: what is read next is
    /// the next request's head.
    fn wrote(&mut self, data: &[u8]) {
        if self.phase == Phase::InMessage && data.starts_with(b"HTTP/") && !is_interim(data) {
            self.phase = Phase::AwaitingHead;
            self.armed = false;
        }
    }

    /// An error once the head's time is up.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        if self.phase != Phase::AwaitingHead || !self.armed {
            return None;
        }
        let timer = self.timer.as_mut()?;
        if timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        self.timeouts.inc();
        Some(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("request head not received within {:?}", self.limit),
        ))
    }
}

/// Whether the blank line ending a head is in `tail` + `bytes`.
fn ends_head(tail: &[u8; 3], bytes: &[u8]) -> bool {
    let mut edge = [0u8; 6];
    edge[..3].copy_from_slice(tail);
    let k = bytes.len().min(3);
    edge[3..3 + k].copy_from_slice(&bytes[..k]);
    edge[..3 + k].windows(4).any(|w| w == b"\r\n\r\n")
        // A read usually ends where the head does.
        || bytes.ends_with(b"\r\n\r\n")
        || bytes.windows(4).any(|w| w == b"\r\n\r\n")
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        if let Some(expired) = me.clock.poll_expired(cx) {
            return Poll::Ready(Err(expired));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.inner).poll_read(cx, buf);
        if me.clock.phase == Phase::AwaitingHead && matches!(polled, Poll::Ready(Ok(()))) {
            me.clock.saw(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = &mut *self;
        me.clock.wrote(data);
        Pin::new(&mut me.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = &mut *self;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            me.clock.wrote(first);
        }
        Pin::new(&mut me.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// `HTTP/1.x 1xx` — an interim response.
fn is_interim(data: &[u8]) -> bool {
    data.get(9) == Some(&b'1')
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&pingora::tls::ssl::SslRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl std::fmt::Debug for HeadDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadDeadline")
            .field("inner", &self.inner)
            .field("phase", &self.clock.phase)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_over_either_limit_are_refused_and_slots_come_back() {
        let open = Arc::new(OpenConnections::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = open.admit(Some(a), 3, 2).expect("first");
        let second = open.admit(Some(a), 3, 2).expect("second");
        assert_eq!(open.admit(Some(a), 3, 2).err(), Some(Refusal::PerIp));
        let third = open.admit(Some(b), 3, 2).expect("another address");
        assert_eq!(open.admit(Some(b), 3, 2).err(), Some(Refusal::Total));
        drop(first);
        assert!(
            open.admit(Some(a), 3, 2).is_ok(),
            "a closed slot is free again"
        );
        drop((second, third));
        assert_eq!(open.total.load(Ordering::Relaxed), 0);
        assert!(open.per_ip.lock().expect("lock").is_empty());
        assert!(open.admit(None, 0, 0).is_ok(), "0 means no limit");
    }

    #[test]
    fn the_blank_line_is_found_across_reads() {
        assert!(ends_head(&[0; 3], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(ends_head(b"a\r\n", b"\r\nbody"));
        assert!(ends_head(b"\r\n\r", b"\n"));
        assert!(!ends_head(b"\r\nX", b"\r\n"));
        assert!(!ends_head(&[0; 3], b""));
    }

    #[tokio::test]
    async fn the_clock_runs_from_the_first_byte_to_the_blank_line() {
        let mut clock = HeadClock {
            limit: Duration::from_secs(60),
            phase: Phase::AwaitingHead,
            timer: None,
            armed: false,
            tail: [0; 3],
            timeouts: prometheus::IntCounter::new("t", "t").expect("counter"),
        };
        clock.saw(b"GET / HT");
        assert!(clock.armed, "armed by the first byte");
        clock.saw(b"TP/1.1\r\nHost: a\r");
        assert_eq!(clock.phase, Phase::AwaitingHead);
        clock.saw(b"\n\r");
        assert_eq!(clock.phase, Phase::AwaitingHead);
        clock.saw(b"\nbody");
        assert_eq!(clock.phase, Phase::InMessage);
        assert!(!clock.armed);
        clock.wrote(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(clock.phase, Phase::InMessage, "the body is still to come");
        clock.wrote(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(clock.phase, Phase::AwaitingHead);
        assert!(!clock.armed, "armed again by the next head's first byte");
        clock.saw(b"G");
        assert!(clock.armed);
    }

    #[test]
    fn interim_responses_are_told_from_final_ones() {
        assert!(is_interim(b"HTTP/1.1 100 Continue\r\n"));
        assert!(!is_interim(b"HTTP/1.1 200 OK\r\n"));
    }
}
