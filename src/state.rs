//! What the proxy and the admin listener share for the life of the process:
//! the current config generation, the metrics, and readiness.

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Process-wide state, created once at start-up.
pub struct AppState {
    gateway: ArcSwap<Gateway>,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
    /// When the process started.
    pub started: Instant,
}

impl AppState {
    /// Wraps the first config generation.
    pub fn new(gateway: Gateway, metrics: Arc<Metrics>) -> Self {
        Self {
            gateway: ArcSwap::from_pointee(gateway),
            metrics,
            ready: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// The current generation; requests keep the `Arc` they got.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.load_full()
    }

    /// Swaps in a new generation atomically (hot reload).
    pub fn replace_gateway(&self, gateway: Gateway) {
        self.gateway.store(Arc::new(gateway));
    }

    /// Whether `/ready` should say yes: listeners up and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Set by the lifecycle service at start-up and at shutdown.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}
