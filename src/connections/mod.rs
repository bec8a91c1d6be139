//! Limits on client connections, enforced where Pingora hands us each one:
//! how many may be open at once (per instance and per client IP), and how
//! long a request head may take to arrive — from the accept, on every
//! protocol.
//!
//! Written here because Pingora has neither: its HTTP/1 reader restarts an
//! idle timer on every byte (a client sending one byte every few seconds
//! holds a connection forever), its HTTP/2 server waits for a request as
//! long as the client likes, and it accepts every connection. The gate
//! wraps the proxy's `ServerApp` (so a connection is counted for its whole
//! life, keep-alive requests included) and each stream in [`TimedHeads`];
//! before a TLS handshake, [`tls::ClientHelloDeadline`] holds a connection
//! to the same limits until its ClientHello has arrived.

mod deadline;
mod http1;
mod http2;
mod stream;
pub mod tls;

pub use stream::TimedHeads;

use crate::metrics::Metrics;
use crate::state::AppState;
use async_trait::async_trait;
use pingora::apps::{peek_h2c_preface, ServerApp};
use pingora::protocols::{Shutdown, ALPN};
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A `ServerApp` that admits connections within the configured limits and
/// times request heads, then hands the connection to `inner`.
pub struct ConnectionGate<A> {
    inner: Arc<A>,
    state: Arc<AppState>,
    open: Arc<OpenConnections>,
    /// Whether connections count toward the client connection limits
    /// (not on the admin listener, which only gets the head deadline).
    counted: bool,
    /// Cleartext connections may open with the HTTP/2 preface (an `h2c`
    /// listener): the head deadline then times HTTP/2 streams.
    h2c: bool,
}

impl<A> ConnectionGate<A> {
    /// Gates `inner`'s connections with the limits of the live config.
    pub fn new(inner: A, state: Arc<AppState>) -> Self {
        Self {
            inner: Arc::new(inner),
            state,
            open: Arc::new(OpenConnections::default()),
            counted: true,
            h2c: false,
        }
    }

    /// A gate for the `h2c` listeners' service (`inner` set up for
    /// cleartext HTTP/2), counting against the same limits as this one:
    /// the connection limits are per instance, whatever the listener.
    pub fn h2c_sibling<B>(&self, inner: B) -> ConnectionGate<B> {
        ConnectionGate {
            inner: Arc::new(inner),
            state: self.state.clone(),
            open: self.open.clone(),
            counted: self.counted,
            h2c: true,
        }
    }

    /// Times request heads on `inner`'s connections without counting them
    /// toward the client limits: the admin listener.
    pub fn heads_only(inner: A, state: Arc<AppState>) -> Self {
        Self {
            counted: false,
            ..Self::new(inner, state)
        }
    }

    /// The pre-TLS hook for this gate's TLS listeners, counting against
    /// the same limits.
    pub fn client_hello_deadline(&self) -> tls::ClientHelloDeadline {
        tls::ClientHelloDeadline {
            state: self.state.clone(),
            open: self.open.clone(),
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
        let (max_total, max_per_ip) = match self.counted {
            true => (limits.max_connections, limits.max_connections_per_ip),
            false => (0, 0),
        };
        let _slot = match self.open.admit(ip, max_total, max_per_ip) {
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
        let _open = self.counted.then(|| OpenGauge::new(metrics));
        // Pingora stops waiting for a request the moment a graceful
        // shutdown or upgrade begins, dropping a connection whose first
        // request is still on the wire; with its first bytes already
        // buffered it reads the request first. So wait for them here (the
        // bytes stay in the stream for Pingora). A peer that closes
        // without sending anything is done; one that sends nothing within
        // the head deadline is closed.
        let accepted = tokio::time::Instant::now();
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(limits.header_timeout, io.try_peek(&mut first)).await;
        settle_peek(&mut io, peeked, metrics).await?;
        // What is left of the first head's time, counted from the accept.
        let left = limits.header_timeout.saturating_sub(accepted.elapsed());
        let mut http2 = io.selected_alpn_proto() == Some(ALPN::H2);
        if self.h2c && io.get_ssl_digest().is_none() {
            // Pingora peeks the same bytes next (they stay in the stream)
            // to choose HTTP/2 or HTTP/1.1, with the same helper (Pingora
            // patch 0005): it stops at the first byte that is not the
            // preface's, so only a client sending the preface slowly waits
            // here, within the head deadline. A stream that cannot be
            // peeked is taken for HTTP/2, as Pingora takes it.
            let peeked = tokio::time::timeout(left, peek_h2c_preface(&mut io)).await;
            http2 = settle_peek(&mut io, peeked, metrics).await?.unwrap_or(true);
        }
        let left = limits.header_timeout.saturating_sub(accepted.elapsed());
        let io: pingora::protocols::Stream = Box::new(TimedHeads::new(
            io,
            http2,
            left.max(Duration::from_millis(1)),
            limits.header_timeout,
            metrics.header_timeouts.clone(),
        ));
        self.inner.process_new(io, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// What a peek bounded by the head deadline came to: its value; `None`
/// when the peer closed (or failed), or — counted as a head timeout, the
/// connection shut down — when the bytes did not come in time.
async fn settle_peek<T>(
    io: &mut pingora::protocols::Stream,
    peeked: Result<std::io::Result<T>, tokio::time::error::Elapsed>,
    metrics: &Metrics,
) -> Option<T> {
    match peeked {
        Ok(Ok(value)) => Some(value),
        Ok(Err(_)) => None,
        Err(_) => {
            metrics.header_timeouts.inc();
            Shutdown::shutdown(io.as_mut()).await;
            None
        }
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
}
