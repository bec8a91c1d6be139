//! Sends the outbox (`cache::l2::outbox`): the shared parts of
//! invalidations, [`IN_FLIGHT`] batches at a time, off the answer path;
//! then memory is purged a second time (invariant 4) and the purges stop
//! being hidden.

use super::{purge_memory, purge_memory_off_runtime, shared, Purge, Selection};
use crate::cache::l2::outbox::Outbox;
use crate::cache::l2::RedisTier;
use crate::cache::store::MemoryStore;
use std::sync::Arc;

/// Batches sent at once: several overlap on the multiplexed connection,
/// few enough that under load the queue gathers the next batch. Measured
/// in the book's benchmark history, "Tuned constants".
const IN_FLIGHT: usize = 4;

/// Hard URI invalidations sent in one script (`shared::invalidate_uris`).
const BATCH: usize = 64;

/// Sends the queued shared parts, [`IN_FLIGHT`] at a time, for as long
/// as the process lives, each within `write_timeout`: hard URI
/// invalidations up to [`BATCH`] in one script (standalone Redis),
/// anything else through `shared::purge_shared`'s steps; then memory is
/// purged again (invariant 4) and the purges stop being hidden.
pub(super) async fn run(
    outbox: Arc<Outbox>,
    tier: Arc<RedisTier>,
    store: &'static MemoryStore,
    instance: String,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let batch = if tier.link().is_cluster() { 1 } else { BATCH };
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let purges = outbox.next_sendable(&tier, batch).await;
        let (outbox, tier, instance) = (outbox.clone(), tier.clone(), instance.clone());
        tokio::spawn(async move {
            send(&outbox, &tier, store, &instance, purges).await;
            drop(slot);
        });
    }
}

/// Sends one batch (see [`run`]).
async fn send(
    outbox: &Outbox,
    tier: &RedisTier,
    store: &'static MemoryStore,
    instance: &str,
    purges: Vec<Purge>,
) {
    let bound = tier.settings().write_timeout;
    let uris_only = !tier.link().is_cluster()
        && purges
            .iter()
            .all(|p| !p.soft && matches!(p.selection, Selection::Uri(_)));
    let sent = tokio::time::timeout(bound, async {
        match (uris_only, purges.first()) {
            (true, _) => shared::invalidate_uris(tier, store, instance, &purges).await,
            (false, Some(purge)) => shared::purge_shared_within(tier, store, instance, purge)
                .await
                .map(|_| ()),
            (false, None) => Ok(()),
        }
    })
    .await;
    let ok = matches!(sent, Ok(Ok(())));
    tier.record_answer(ok);
    if !ok {
        let why = match sent {
            Ok(Err(e)) => e,
            _ => format!("no answer within write_timeout ({bound:?})"),
        };
        log::debug!("cache: sharing an invalidation failed ({why}); tried again");
        for purge in purges.into_iter().rev() {
            outbox.count("failed");
            outbox.retry(purge);
        }
        outbox.wake();
        return;
    }
    for purge in &purges {
        // Invariant 4's second pass: a URI inline (a few microseconds),
        // anything larger off the runtime.
        match purge.selection {
            Selection::Uri(_) => {
                purge_memory(store, purge);
            }
            _ => {
                purge_memory_off_runtime(store, purge).await;
            }
        }
        outbox.count("sent");
        outbox.finish(purge);
    }
}

/// Sends an instance's outbox as a background service of the server.
pub struct OutboxSender {
    tier: Arc<RedisTier>,
    store: &'static MemoryStore,
    instance: String,
}

impl OutboxSender {
    /// The sender of `tier`'s outbox, for this instance.
    pub fn new(tier: Arc<RedisTier>, store: &'static MemoryStore, instance: String) -> Self {
        Self {
            tier,
            store,
            instance,
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for OutboxSender {
    /// Sends on a single-threaded runtime of its own (like the tier's
    /// writer): its Redis connection is driven on that thread, so a shared
    /// part's dozen round trips cost no hop between threads each (on a
    /// multi-threaded runtime they went through the shared connection's
    /// thread: POSTs with the tier on were 0.29× of off, measured).
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let outbox = self.tier.outbox().clone();
        let (tier, store, instance) = (self.tier.clone(), self.store, self.instance.clone());
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let started = crate::redis_link::spawn_runtime_thread(
            "tollgate-cache-outbox".into(),
            move || async move {
                tokio::select! {
                    () = run(outbox, tier, store, instance) => {}
                    _ = stopped.changed() => {}
                }
            },
        );
        if let Err(e) = started {
            log::error!(
                "cache: cannot start the invalidation outbox ({e}); invalidations stay local"
            );
            return;
        }
        let _ = shutdown.changed().await;
        let _ = stop.send(true);
    }
}
