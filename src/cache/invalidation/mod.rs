//! Cache invalidation: the one protocol by which purges win over fills —
//! in this instance's memory, in the Redis tier and on every other
//! instance. Memory store, Redis tier, admin API and purge channel call
//! into it; none of them re-derives its rules.
//!
//! # Words
//! - A **purge** ([`Purge`]) names entries by a [`Selection`] (a URI, a
//!   path prefix, a route, a tag) and removes them, or marks them stale
//!   (`soft`). Admin purges, invalidations by unsafe methods (RFC 9111
//!   §4.4, `answered`) and purges heard from other instances are all
//!   purges.
//! - A **fill** stores an entry: a miss's response, a 304's new meta, an
//!   entry promoted from Redis into memory, a write to Redis.
//! - A fill carries a **ticket** (`store::FillTicket`) taken when its
//!   request began: the local generation and the shared generation this
//!   instance had heard of by then.
//!
//! # Generations
//! - The **local generation** (`store::purges`) counts this process's
//!   purges of memory; a purge takes the next one before it selects
//!   anything. It lives and dies with the process.
//! - The **shared generation** (`l2::generation`) is taken in Redis by every
//!   shared purge, in one script: the larger of the stored counter + 1 and
//!   Redis's clock in microseconds. It never goes backwards: when the
//!   counter is lost (a restart without persistence, `FLUSHALL`, an
//!   eviction, a failover to a replica that missed it) the clock carries
//!   the next generation past every one handed out before. Instances learn
//!   generations from the purge channel and from the counter when they
//!   subscribe, only ever raise what they heard, and ignore a generation
//!   more than [`generation::MAX_AHEAD`] ahead of their own clock; the
//!   write script refuses a write stamped that far ahead of Redis's clock.
//!   A buggy or hostile publisher therefore cannot freeze the generation.
//! - The **epoch** ([`generation::epoch`]) names one life of Redis's data.
//!   Tickets carry the epoch their instance knew; the write script refuses
//!   a write of another epoch, whose markers may have been lost with the
//!   data.
//!
//! # Invariants
//! 1. **Memory.** A purge is recorded (local generation `g`) before it
//!    selects; a fill is checked against the purges recorded since its
//!    ticket and inserted under the same lock. Once a purge has selected,
//!    no fill that began before it is stored: the check saw the purge or
//!    the selection saw the fill.
//! 2. **Redis writes.** A write stamped with shared generation `s` is
//!    stored only if no purge marker newer than `s` names it, checked in
//!    the script that stores it (`markers::WRITE_LUA`). A shared purge sets
//!    its markers before it drains anything.
//! 3. **Redis lookups.** An entry is returned only if no marker newer than
//!    its stamp names it (`markers::LOOKUP_LUA`), so a purge takes effect
//!    in Redis when its markers are set, however long its drain takes.
//! 4. **Across the tiers.** A purge is applied to this instance's memory
//!    before its shared part and again once its markers are set
//!    (`l2::outbox`, sent by [`sender`]). While its shared part is queued or in flight, this
//!    instance takes no Redis entry it names (`Outbox::hides`);
//!    a promotion whose lookup raced the markers began before the second
//!    pass and is dropped by (1).
//! 5. **The answer path never waits on Redis.** An unsafe request's memory
//!    part is done before it is answered; its shared part is queued in the
//!    outbox (`l2::outbox`: coalesced per target, bounded in bytes, sent off the
//!    request path, failures feeding the tier's breaker). A write whose URI
//!    no caching route serves queues nothing. What a client reads on this
//!    instance after its write is answered is never a copy the write
//!    replaced (4); on other instances, once the outbox has sent it plus
//!    one channel round trip.
//! 6. **Other instances** apply a heard purge to memory, then raise their
//!    shared generation. An instance that cannot hear the channel keeps no
//!    memory entry longer than [`listener::DEAF_GRACE`], and drops all it
//!    stored before once it hears again.
//! 7. **Large purges** ban what they name (lookups treat it as absent)
//!    and answer; one ban per distinct target — repeating a purge raises
//!    its ban's generation instead of queueing the same entries again —
//!    freed by the reclaimer afterwards (`store::purging`).
//!
//! # What survives what
//! | event | what happens |
//! |---|---|
//! | Redis restarts empty, `FLUSHALL`, the counter evicted | entries and markers go with it; the next generation comes from Redis's clock, above every stamp; a new epoch refuses writes stamped before; memory is unaffected |
//! | failover to a replica that missed writes | markers it missed are lost, so entries it still holds that those purges named can be found again (memory was purged over the channel); the bound is the replication lag at the failover; generations stay ahead as long as the servers' clocks agree within the failover's duration |
//! | an instance cut off from Redis | the breaker opens; lookups are misses; shared parts wait in the outbox (bounded) and go once it closes; its memory lives at most [`listener::DEAF_GRACE`] |
//! | a Redis older than 7.0 (`PEXPIRE … GT`, `ZADD GT`) | found on connect, reported (log, `/health`, `tollgate_cache_l2_redis_too_old`), and the tier stays off |
//!
//! # Files
//! Here, the processes: `shared.rs` (one purge of the Redis tier:
//! markers, drain, publish), `drain.rs` (taking entries out of Redis),
//! `sender.rs` (sends the outbox), `listener.rs` (other instances'
//! purges), `answered.rs` (what an answered request invalidates). What
//! Redis holds for the protocol is the tier's, in `cache/l2/`, because its
//! every lookup and write runs it: `generation.rs` (the shared generation
//! and the epoch), `markers.rs` (the Redis scripts: write, lookup,
//! markers), `outbox.rs` (shared parts queued off the answer path, hidden
//! from lookups). The memory side is `store::purge_log` (the purge log,
//! bans) and `store::removal` (selection, reclaimer). The words — `Purge`,
//! `Selection`, `EntryNames` — are `cache::names`, below all of them.

pub mod answered;
pub mod drain;
pub mod listener;
pub mod sender;
pub mod shared;

use super::l2::RedisTier;
pub use super::names::{Purge, Selection};
use super::store::MemoryStore;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// A purge as published on the channel.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Announcement {
    /// The instance that purged (it does not apply its own twice).
    pub(crate) from: String,
    /// What it purged.
    pub(crate) purge: Purge,
    /// More purges sent with it, under the same generation (a batch of a
    /// write load's invalidations). Absent from earlier versions, which
    /// read only `purge`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) purges: Vec<Purge>,
    /// The purge's shared generation (`l2::generation`); absent from
    /// instances of earlier versions.
    #[serde(default)]
    pub(crate) generation: Option<u64>,
}

/// Applies `purge` to this instance's memory off the async runtime (a
/// purge of a million entries takes seconds of CPU, which must not stall
/// the admin endpoints or the purge channel's heartbeat); how many entries
/// it removed (or marked stale).
pub async fn purge_memory_off_runtime(store: &'static MemoryStore, purge: &Purge) -> usize {
    let purge = purge.clone();
    match tokio::task::spawn_blocking(move || purge_memory(store, &purge)).await {
        Ok(removed) => removed,
        Err(e) => {
            log::error!("cache: a memory purge failed: {e}");
            0
        }
    }
}

/// What a purge made here for every instance did.
pub struct Everywhere {
    /// Entries removed from (or marked stale in) this instance's memory.
    pub memory: usize,
    /// The shared part's outcome: Redis entries it took; `None` without a
    /// Redis tier.
    pub shared: Option<Result<usize, String>>,
}

/// A purge for every instance (the admin API's): this instance's memory
/// and the shared part (`shared::purge_shared`) at once, what it names
/// hidden from this instance's Redis lookups meanwhile, and memory purged
/// again once the markers are set (invariant 4). With a failed shared
/// part, only this instance's memory is purged, and a later Redis lookup
/// here can find the old copy again: the caller must say so.
pub async fn purge_everywhere(
    store: &'static MemoryStore,
    tier: Option<&RedisTier>,
    instance: &str,
    purge: &Purge,
) -> Everywhere {
    let memory = purge_memory_off_runtime(store, purge);
    let Some(tier) = tier else {
        return Everywhere {
            memory: memory.await,
            shared: None,
        };
    };
    let hold = tier.outbox().hold(&purge.selection);
    // Memory (on a blocking thread) and Redis (Redis's own work) at once.
    let shared = shared::purge_shared(tier, store, instance, purge);
    let (removed, shared) = tokio::join!(memory, shared);
    // What a lookup under way took from Redis before the markers.
    purge_memory_off_runtime(store, purge).await;
    drop(hold);
    Everywhere {
        memory: removed,
        shared: Some(shared),
    }
}

/// Applies `purge` to this instance's memory; how many entries it
/// removed (or marked stale).
pub fn purge_memory(store: &'static MemoryStore, purge: &Purge) -> usize {
    if purge.soft {
        store.expire_selection(&purge.selection, SystemTime::now())
    } else {
        store.purge_selection(&purge.selection)
    }
}
