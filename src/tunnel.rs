//! An upgraded connection (a WebSocket, RFC 6455) once the backend said
//! `101 Switching Protocols`: Pingora streams both directions from then
//! on; this counts the tunnel while it is open and the bytes it carries.

use crate::metrics::Metrics;
use prometheus::{IntCounter, IntGauge};

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
