//! What a request holds of the metrics: a route's pre-resolved children
//! and the in-flight count it takes part in while it lives.

use super::labels::METHOD_LABELS;
use prometheus::{Histogram, HistogramVec, IntGauge};

/// A route's metric children. Each is looked up in its family once, on the
/// route's first request with that method, then kept: the request path
/// skips the label hashing, and a route costs histogram memory (~2 KiB
/// each) only for the methods it serves — creating all eight up front made
/// 1,000 routes cost 18 MiB (`benches/load/memory.sh`).
pub struct RouteMetrics {
    pub(super) route: Box<str>,
    pub(super) family: HistogramVec,
    pub(super) duration: [std::sync::OnceLock<Histogram>; METHOD_LABELS.len()],
}

impl RouteMetrics {
    /// The duration histogram for the method at `method` in [`METHOD_LABELS`].
    pub fn duration(&self, method: usize) -> &Histogram {
        let method = method.min(METHOD_LABELS.len() - 1);
        self.duration[method].get_or_init(|| {
            self.family
                .with_label_values(&[&self.route, METHOD_LABELS[method]])
        })
    }
}

/// Counts one request in `tollgate_requests_in_flight` for as long as it lives.
pub struct InFlightGuard(IntGauge);

impl InFlightGuard {
    /// Increments the gauge; the matching decrement happens on drop.
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
