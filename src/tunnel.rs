//! An upgraded connection (a WebSocket, RFC 6455) once the backend said
//! `101 Switching Protocols`: Pingora streams both directions from then
//! on; this counts the tunnel while it is open and the bytes it carries.

use crate::metrics::Metrics;
use bytes::Bytes;
use pingora::upstreams::peer::HttpPeer;
use prometheus::{IntCounter, IntGauge};
use std::time::Duration;

/// An upgrade's attempt: a tunnel lives past the route's total (the
/// deadline timer holds the wait for the 101 and is let go at it) and
/// ends when the backend stays silent for `idle`.
pub fn bound_by_idle(peer: &mut HttpPeer, idle: Duration) {
    peer.options.read_timeout = Some(idle);
    peer.options.write_timeout = Some(idle);
}

/// The client's side of a tunnel that just opened: its reads are bounded
/// by `idle`, as the backend's are, no longer by `limits.body_timeout`
/// (which is for request bodies). Pingora restarts the client's read
/// whenever the backend sends, so a client that only listens is kept
/// while the backend speaks (live feeds); a tunnel where nobody speaks
/// ends after `idle`.
pub fn bound_client_by_idle(session: &mut pingora::proxy::Session, idle: Duration) {
    session.as_mut().set_read_timeout(Some(idle));
}

/// Counts a chunk the client sent, if the connection is a tunnel; true
/// when it is (its bytes are then traffic, not a body to limit).
pub fn count_to_backend(tunnel: Option<&OpenTunnel>, chunk: Option<&Bytes>) -> bool {
    if let Some(tunnel) = tunnel {
        tunnel.to_backend(chunk.map_or(0, Bytes::len));
    }
    tunnel.is_some()
}

/// Counts a chunk the backend sent, if the connection is a tunnel; true
/// when it is (the route's total then no longer applies).
pub fn count_from_backend(tunnel: Option<&OpenTunnel>, chunk: Option<&Bytes>) -> bool {
    if let Some(tunnel) = tunnel {
        tunnel.from_backend(chunk.map_or(0, Bytes::len));
    }
    tunnel.is_some()
}

/// One open tunnel: `tollgate_tunnels_open` while it lives (RAII), and
/// its bytes in `tollgate_tunnel_bytes_total`.
pub struct OpenTunnel {
    open: IntGauge,
    to_backend: IntCounter,
    from_backend: IntCounter,
}

impl OpenTunnel {
    /// Counts a tunnel that just opened.
    pub fn open(metrics: &Metrics) -> Self {
        metrics.tunnels_total.inc();
        metrics.tunnels_open.inc();
        Self {
            open: metrics.tunnels_open.clone(),
            to_backend: metrics.tunnel_bytes.with_label_values(&["to_backend"]),
            from_backend: metrics.tunnel_bytes.with_label_values(&["from_backend"]),
        }
    }

    /// The client sent `n` bytes through the tunnel.
    pub fn to_backend(&self, n: usize) {
        self.to_backend.inc_by(n as u64);
    }

    /// The backend sent `n` bytes through the tunnel.
    pub fn from_backend(&self, n: usize) {
        self.from_backend.inc_by(n as u64);
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.open.dec();
    }
}
