//! The background service that keeps local rate-limit state bounded by
//! the active requesters: refilled buckets are dropped every few seconds.

use super::RateStore;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntGauge;
use std::sync::Arc;
use std::time::Duration;

/// How often refilled local buckets are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Drops refilled local buckets every few seconds so memory follows the
/// number of active requesters, not every IP ever seen. Holds only the
/// bucket store and the gauge it reports to.
pub struct BucketSweeper {
    store: Arc<RateStore>,
    buckets_gauge: IntGauge,
}

impl BucketSweeper {
    /// A sweeper over `store`, reporting live buckets to `buckets_gauge`
    /// (`tollgate_ratelimit_buckets`).
    pub fn new(store: Arc<RateStore>, buckets_gauge: IntGauge) -> Self {
        Self {
            store,
            buckets_gauge,
        }
    }

    /// One sweep: drops refilled buckets, reports how many are left.
    pub fn sweep(&self) -> usize {
        let left = self.store.local.sweep();
        self.buckets_gauge
            .set(i64::try_from(left).unwrap_or(i64::MAX));
        left
    }
}

#[async_trait]
impl BackgroundService for BucketSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::gcra::Window;
    use crate::ratelimit::local::Check;
    use std::time::Instant;

    fn spend(store: &RateStore, key: &str, windows: &[Window]) {
        store.local.decide(&[Check {
            key,
            windows,
            cost: 1,
        }]);
    }

    #[test]
    fn refilled_buckets_are_dropped_and_spent_ones_kept() {
        let store = Arc::new(RateStore::new(None).expect("store"));
        let gauge = IntGauge::new("buckets", "buckets").expect("gauge");
        let sweeper = BucketSweeper::new(store.clone(), gauge.clone());
        // Refills within a millisecond: gone at the first sweep after that.
        spend(&store, "ip:192.0.2.1", &[Window::new(1000, 1, 1000)]);
        // Takes an hour to refill: kept.
        spend(&store, "t:acme", &[Window::new(10, 3600, 10)]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while sweeper.sweep() != 1 {
            assert!(
                Instant::now() < deadline,
                "the refilled bucket was never dropped"
            );
            std::thread::yield_now();
        }
        assert_eq!(gauge.get(), 1);
        assert_eq!(store.local.len(), 1);
    }

    #[tokio::test]
    async fn the_service_sweeps_at_start_and_stops_on_shutdown() {
        let store = Arc::new(RateStore::new(None).expect("store"));
        let gauge = IntGauge::new("buckets", "buckets").expect("gauge");
        gauge.set(-1);
        spend(&store, "t:acme", &[Window::new(10, 3600, 10)]);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let sweeper = BucketSweeper::new(store, gauge.clone());
        let service = tokio::spawn(async move { sweeper.start(rx).await });
        let deadline = Instant::now() + Duration::from_secs(5);
        while gauge.get() != 1 {
            assert!(Instant::now() < deadline, "no sweep ran");
            tokio::task::yield_now().await;
        }
        tx.send(true).expect("shutdown");
        tokio::time::timeout(Duration::from_secs(5), service)
            .await
            .expect("the service stops on shutdown")
            .expect("the service did not panic");
    }
}
