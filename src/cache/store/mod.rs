//! The memory tier behind Pingora's `Storage` trait.
//!
//! pingora-cache's `MemCache` is a test store (unbounded, copies bodies on
//! every write), so this is our own: entries are `Bytes` shared by every
//! hit, size is bounded by Pingora's LRU eviction manager (which tells
//! Pingora what to purge once the total weight passes `cache.max_size`),
//! and indexes by URI, route and tag support purges.
//!
//! Layout (built to stay flat at a million entries):
//! - **Shards.** Entries live in [`SHARDS`] shards chosen by their primary
//!   key's hash, each behind its own `RwLock` (`shard.rs`) with its own
//!   indexes. A hit takes one shard's read lock and nothing else; a fill
//!   takes one shard's write lock and no other lock of the store's.
//! - **Indexes** (`index.rs`, one per shard): primaries by URI, route and
//!   tag in hash sets, so removing an entry is O(1) in each; a purge of n
//!   entries is O(n), asks every shard, and removes in small batches that
//!   release the shard's lock between them (`removal.rs`).
//! - **Purges win over fills** (`purge_log.rs`): every purge is recorded with
//!   a generation before it selects anything; a fill carries the
//!   generation its request began at ([`FillTicket`]) and is dropped when
//!   a purge recorded since names it, checked by its own names in a keyed
//!   log. Lock order: purge log (broad list, then the fill's log shards)
//!   → store shard; a lookup reads the pending bans under its shard's
//!   lock.
//! - **Large purges take effect before they free** (`removal.rs`): they
//!   ban what they name (lookups treat an entry stored before the purge
//!   that it names as absent) and answer; a reclaimer thread frees the
//!   entries afterwards, paced.
//!
//! Memory: the eviction manager weighs what an entry really holds — its
//! body, its header as kept in memory, its tags, its encoded copies and a
//! fixed per-entry allowance for the indexes and the LRU node
//! ([`ENTRY_OVERHEAD`]) — so `cache.max_size` bounds resident memory, not
//! only body bytes. Bodies are copied to an exact-size buffer when the
//! collected one has spare capacity, and the stored header is rebuilt from
//! its serialized form, because the header Pingora parsed from the upstream
//! slices into the connection's 4 KiB+ read buffer and would keep all of it
//! alive. The book's Caching chapter has the numbers (`benches/load/memory.sh`).
//!
//! Fresh hits of entries without `Vary` can be served by [`MemoryStore::fresh`]
//! without Pingora's cache state machine; see `cache::fresh`.

mod entry;
mod index;
mod keyhash;
mod purge_log;
mod removal;
mod shard;
mod storage;
#[cfg(test)]
mod tests;

pub use entry::{FreshHit, StoredEntry, ENTRY_OVERHEAD};
pub use purge_log::FillTicket;
pub use storage::{hit_of, ticket_of};

use crate::cache::names::EntryNames;
use bytes::Bytes;
use entry::{Entry, ENCODED_CODINGS, ENCODED_OVERHEAD};
use pingora::cache::eviction::EvictionManager;
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::CacheEntryKeyRef;
use pingora::http::ResponseHeader;
use pingora::Result;
use purge_log::PurgeLog;
use removal::Reclamation;
use shard::Shard;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

/// Shards of the store: enough that two worker threads rarely meet on one,
/// few enough that a walk over all of them is cheap.
const SHARDS: usize = 64;

/// A response about to be stored, with what the indexes and the purge
/// check need to know of it.
struct Fill {
    combined: HashBinary,
    entry: Arc<Entry>,
    uri: Arc<str>,
    route: Arc<str>,
    tags: Arc<[Arc<str>]>,
    ticket: FillTicket,
}

/// The bounded memory store. One per process (Pingora needs `'static`).
pub struct MemoryStore {
    shards: Box<[RwLock<Shard>]>,
    purges: PurgeLog,
    /// Large purges' bans and their reclaimer (`removal`'s own state).
    reclamation: Reclamation,
    /// The newest shared (Redis) purge generation this instance has heard
    /// of, for the tickets' `shared` part.
    shared_generation: AtomicU64,
    /// The Redis epoch this instance knows (`l2::generation`),
    /// for the tickets' `epoch` part.
    redis_epoch: AtomicU64,
    bytes: AtomicU64,
    count: AtomicUsize,
    /// Told when a purge removes an entry, so it stops weighing it.
    eviction: OnceLock<&'static (dyn EvictionManager + Sync)>,
    /// Response fields that carry cache tags (`cache.tag_headers`).
    tag_headers: OnceLock<Vec<http::HeaderName>>,
}

/// Tags kept per response, and the longest tag: an upstream cannot grow
/// the index without bound.
const MAX_TAGS: usize = 64;
const MAX_TAG_LEN: usize = 256;

/// The cache tags in `header`'s `names` fields: separated by spaces (as
/// `Surrogate-Key` is) or commas (as `Cache-Tag` is); at most [`MAX_TAGS`],
/// each at most [`MAX_TAG_LEN`] bytes, without duplicates.
pub fn tags_in(header: &ResponseHeader, names: &[http::HeaderName]) -> Vec<Arc<str>> {
    let mut tags: Vec<Arc<str>> = Vec::new();
    for name in names {
        for value in header.headers.get_all(name) {
            let Ok(value) = value.to_str() else { continue };
            for tag in value
                .split([' ', ','])
                .map(str::trim)
                .filter(|t| !t.is_empty())
            {
                if tags.len() == MAX_TAGS {
                    return tags;
                }
                if tag.len() <= MAX_TAG_LEN && !tags.iter().any(|t| &**t == tag) {
                    tags.push(tag.into());
                }
            }
        }
    }
    tags
}

fn shard_of(primary: &HashBinary) -> usize {
    usize::from(primary[0]) % SHARDS
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            purges: PurgeLog::default(),
            reclamation: Reclamation::default(),
            shared_generation: AtomicU64::new(0),
            redis_epoch: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            count: AtomicUsize::new(0),
            eviction: OnceLock::new(),
            tag_headers: OnceLock::new(),
        }
    }

    /// Sets the fields cache tags are read from (once, at start).
    pub fn set_tag_headers(&self, names: Vec<http::HeaderName>) {
        let _ = self.tag_headers.set(names);
    }

    /// The cache tags a response carries.
    pub fn tags_of(&self, header: &ResponseHeader) -> Vec<Arc<str>> {
        self.tag_headers
            .get()
            .map_or_else(Vec::new, |names| tags_in(header, names))
    }

    /// Connects the eviction manager that purges must keep in step.
    pub fn set_eviction(&self, eviction: &'static (dyn EvictionManager + Sync)) {
        let _ = self.eviction.set(eviction);
    }

    /// The ticket of a request beginning now: set it on the request's cache
    /// key, so that what it fetches is dropped if a purge naming it is
    /// recorded before it is stored.
    pub fn ticket(&self) -> FillTicket {
        self.purges.ticket(
            self.shared_generation.load(Ordering::Acquire),
            self.redis_epoch.load(Ordering::Acquire),
        )
    }

    /// Learns that the shared purge generation has reached `generation`
    /// (a purge heard on the channel, or made here).
    pub fn heard_shared_generation(&self, generation: u64) {
        self.shared_generation
            .fetch_max(generation, Ordering::AcqRel);
    }

    /// Learns the Redis epoch (`l2::generation`); returns the
    /// one known before.
    pub fn learn_redis_epoch(&self, epoch: u64) -> u64 {
        self.redis_epoch.swap(epoch, Ordering::AcqRel)
    }

    /// The Redis epoch this instance knows (0: none yet).
    pub fn redis_epoch(&self) -> u64 {
        self.redis_epoch.load(Ordering::Acquire)
    }

    /// The newest shared purge generation this instance has heard of.
    pub fn shared_generation(&self) -> u64 {
        self.shared_generation.load(Ordering::Acquire)
    }

    /// Whether a purge recorded since `ticket` names this response (so it
    /// must not be stored anywhere, Redis included).
    pub fn overtaken(&self, ticket: FillTicket, uri: &str, route: &str, tags: &[Arc<str>]) -> bool {
        let names = EntryNames { uri, route, tags };
        self.purges.guard(&names).overtaken(ticket, &names)
    }

    /// Fills not stored because their request began before every purge
    /// the log still remembers (`tollgate_cache_fills_too_old_total`).
    pub fn fills_too_old(&self) -> usize {
        self.purges.too_old()
    }

    /// Bytes held (bodies, headers, tags, encoded copies, overheads).
    pub fn size_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Entries held (each variant counts), purged ones not yet reclaimed
    /// included.
    pub fn entries(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Entries a large purge took out of service whose memory the
    /// reclaimer has yet to free.
    pub fn unreclaimed(&self) -> usize {
        self.reclamation.unreclaimed()
    }

    fn read_shard(&self, primary: &HashBinary) -> RwLockReadGuard<'_, Shard> {
        read(&self.shards[shard_of(primary)])
    }

    fn write_shard(&self, primary: &HashBinary) -> RwLockWriteGuard<'_, Shard> {
        write(&self.shards[shard_of(primary)])
    }

    /// The entry stored under `combined` (of `primary`).
    fn get(&self, primary: &HashBinary, combined: &HashBinary) -> Option<Arc<Entry>> {
        self.read_shard(primary).entries.get(combined).cloned()
    }

    /// The entry stored under `combined` unless a pending purge names it
    /// (then it is as good as gone: the reclaimer has yet to remove it).
    fn get_live(&self, primary: &HashBinary, combined: &HashBinary) -> Option<Arc<Entry>> {
        let shard = self.read_shard(primary);
        let entry = shard.entries.get(combined)?;
        if self.reclamation.any_pending() {
            let p = shard.primaries.get(primary)?;
            let names = EntryNames {
                uri: &p.uri,
                route: &p.route,
                tags: &p.tags,
            };
            if self.reclamation.bans(entry.generation, &names) {
                return None;
            }
        }
        Some(entry.clone())
    }

    /// The entry stored under `key` if it can be served as it is: fresh at
    /// `now`, stored without variance (no `Vary`), so the key alone selects
    /// it, and framed by `Content-Length`. Tells the eviction manager about the access, as
    /// Pingora's hit path does. `None` means "let Pingora's cache decide",
    /// not "absent".
    pub fn fresh(&self, key: &HashBinary, now: SystemTime) -> Option<FreshHit> {
        let entry = self.get_live(key, key)?;
        let t = &entry.times;
        if t.variance.is_some() || t.fresh_until < now {
            return None;
        }
        let h = &entry.header.headers;
        if h.contains_key(http::header::VARY)
            || !h.contains_key(http::header::CONTENT_LENGTH)
            || h.contains_key(http::header::TRANSFER_ENCODING)
        {
            return None;
        }
        if let Some(eviction) = self.eviction.get() {
            let item = pingora::cache::CacheEntryKey::from_entry_id(entry.compact.clone(), None);
            eviction.access(&item, entry.weight(), t.fresh_until);
        }
        Some(FreshHit {
            header: entry.header.clone(),
            body: entry.body.clone(),
            age: now.duration_since(t.epoch).unwrap_or_default(),
            ttl: t.fresh_until.duration_since(now).unwrap_or_default(),
            entry: StoredEntry(entry.clone()),
        })
    }

    /// Stores a complete response unless a purge recorded since its
    /// request began names it. Returns the weight the eviction manager
    /// should hold for the key: the fill's when stored, otherwise what is
    /// stored there now (0 when nothing).
    fn store_fill(&self, fill: Fill) -> (bool, usize) {
        let primary = fill.entry.primary;
        let weight = fill.entry.weight();
        let (replaced, banned) = {
            let names = EntryNames {
                uri: &fill.uri,
                route: &fill.route,
                tags: &fill.tags,
            };
            let log = self.purges.guard(&names);
            if log.overtaken(fill.ticket, &names) {
                drop(log);
                let current = self.get(&primary, &fill.combined);
                return (false, current.map_or(0, |e| e.weight()));
            }
            let mut shard = self.write_shard(&primary);
            let banned = self.take_banned(&mut shard, &primary);
            let replaced = shard.insert(
                fill.combined,
                fill.entry,
                &fill.uri,
                &fill.route,
                &fill.tags,
            );
            (replaced, banned)
        };
        self.release(banned);
        self.bytes.fetch_add(weight as u64, Ordering::Relaxed);
        match replaced {
            Some(old) => self.forget(&old),
            None => {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
        }
        (true, weight)
    }

    /// Takes out the variants of `primary` that a pending purge bans, before
    /// a fill changes the primary: the fill may replace its tags, and the
    /// purge must still take what it named when it was made (the reclaimer
    /// finds primaries by their names at its own time).
    fn take_banned(&self, shard: &mut Shard, primary: &HashBinary) -> Vec<Arc<Entry>> {
        if !self.reclamation.any_pending() {
            return Vec::new();
        }
        let Some(p) = shard.primaries.get(primary) else {
            return Vec::new();
        };
        let (uri, route, tags) = (p.uri.clone(), p.route.clone(), p.tags.clone());
        let names = EntryNames {
            uri: &uri,
            route: &route,
            tags: &tags,
        };
        shard.remove_variants_where(primary, &|e: &Entry| {
            self.reclamation.bans(e.generation, &names)
        })
    }

    /// Replaces a stored entry's meta (a 304's revalidation) unless a purge
    /// recorded since `ticket` names it; the eviction manager learns the
    /// new weight. Returns whether it was replaced.
    fn replace_meta(
        &self,
        primary: &HashBinary,
        combined: &HashBinary,
        ticket: FillTicket,
        rebuild: impl FnOnce(&Entry) -> Entry,
    ) -> bool {
        // The names to lock the log by, read first: the log's locks come
        // before the shard's.
        let (uri, route, tags) = {
            let shard = self.read_shard(primary);
            let Some(p) = shard.primaries.get(primary) else {
                return false;
            };
            (p.uri.clone(), p.route.clone(), p.tags.clone())
        };
        let names = EntryNames {
            uri: &uri,
            route: &route,
            tags: &tags,
        };
        let (old, new) = {
            let log = self.purges.guard(&names);
            if log.overtaken(ticket, &names) {
                return false;
            }
            let mut shard = self.write_shard(primary);
            // Refilled with other tags meanwhile: not what was checked.
            if !shard
                .primaries
                .get(primary)
                .is_some_and(|p| Arc::ptr_eq(&p.tags, &tags))
            {
                return false;
            }
            let Some(old) = shard.entries.get(combined) else {
                return false;
            };
            let new = Arc::new(rebuild(old));
            let old = shard.entries.insert(*combined, new.clone());
            match old {
                Some(old) => (old, new),
                None => return false,
            }
        };
        let new_weight = new.weight();
        self.bytes.fetch_add(new_weight as u64, Ordering::Relaxed);
        self.forget(&old);
        self.reweigh(&new.compact, new_weight, new.times.fresh_until);
        true
    }

    /// Tells the eviction manager an entry's weight changed (a 304, a soft
    /// purge), and removes what it evicts to make room.
    fn reweigh(&self, compact: &CompactCacheKey, weight: usize, fresh_until: SystemTime) {
        if let Some(eviction) = self.eviction.get() {
            let item = pingora::cache::CacheEntryKey::from_entry_id(compact.clone(), None);
            self.remove_evicted(eviction.admit(item, weight, fresh_until));
        }
    }

    /// The shards, for the purge paths in `removal` (each takes one
    /// shard's lock at a time).
    fn shards(&self) -> &[RwLock<Shard>] {
        &self.shards
    }

    /// The purge log, which a purge records itself in before it selects.
    fn purge_log(&self) -> &PurgeLog {
        &self.purges
    }

    /// Counts an entry's weight as stored (a soft purge's replacement).
    fn hold(&self, entry: &Entry) {
        self.bytes
            .fetch_add(entry.weight() as u64, Ordering::Relaxed);
    }

    fn forget(&self, entry: &Entry) {
        self.bytes
            .fetch_sub(entry.weight() as u64, Ordering::Relaxed);
    }

    /// Accounts for entries a removal took out (outside every lock: the
    /// bodies are freed here) and tells the eviction manager.
    fn release(&self, removed: Vec<Arc<Entry>>) {
        self.count.fetch_sub(removed.len(), Ordering::Relaxed);
        for entry in &removed {
            self.forget(entry);
            if let Some(eviction) = self.eviction.get() {
                eviction.remove(CacheEntryKeyRef::from_entry_id(&entry.compact, None));
            }
        }
    }

    /// The body of a stored entry encoded as `coding` (a `Content-Encoding`
    /// token), made with `encode` by the first request that asks — others
    /// asking meanwhile wait for that copy instead of encoding it again —
    /// and then kept with the entry, weighed with it (the eviction manager
    /// is told, and whatever it evicts to make room is removed), and
    /// dropped with it. One copy per coding: after a reload changes the
    /// compression level, entries keep the copy they have (the content is
    /// the same) until they are refilled.
    pub async fn encoded_body(
        &self,
        entry: &StoredEntry,
        coding: &'static str,
        encode: impl FnOnce(&[u8]) -> Result<Bytes>,
    ) -> Result<Bytes> {
        let entry = &entry.0;
        let Some(slot) = ENCODED_CODINGS.iter().position(|c| *c == coding) else {
            return encode(&entry.body);
        };
        let mut made = false;
        let copy = entry.encoded[slot]
            .get_or_try_init(|| async {
                made = true;
                encode(&entry.body)
            })
            .await?;
        if made {
            self.account_encoded(entry, copy.len() + ENCODED_OVERHEAD);
        }
        Ok(copy.clone())
    }

    /// Adds an encoded copy's weight to its entry, if the entry is still
    /// the stored one (a replaced or purged entry is weighed by nobody).
    fn account_encoded(&self, entry: &Arc<Entry>, delta: usize) {
        let combined = entry.compact.combined_bin();
        let evicted = {
            let shard = self.read_shard(&entry.primary);
            if !shard
                .entries
                .get(&combined)
                .is_some_and(|current| Arc::ptr_eq(current, entry))
            {
                return;
            }
            entry.weight.fetch_add(delta, Ordering::Relaxed);
            self.bytes.fetch_add(delta as u64, Ordering::Relaxed);
            // Under the shard's lock, so a removal of the entry (which takes
            // the write lock first) tells the eviction manager after this.
            self.eviction.get().map(|eviction| {
                let item =
                    pingora::cache::CacheEntryKey::from_entry_id(entry.compact.clone(), None);
                eviction.increment_weight(&item, delta, None)
            })
        };
        if let Some(evicted) = evicted {
            self.remove_evicted(evicted);
        }
    }

    /// Removes what the eviction manager evicted to make room.
    fn remove_evicted(&self, evicted: Vec<pingora::cache::CacheEntryKey>) {
        for evicted in evicted {
            self.remove_key(evicted.key());
        }
    }

    /// Removes the entry stored under `key` (an eviction); whether there
    /// was one.
    fn remove_key(&self, key: &CompactCacheKey) -> bool {
        let primary = key.primary_bin();
        let combined = key.combined_bin();
        let Some(removed) = self.write_shard(&primary).remove(&combined) else {
            return false;
        };
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.forget(&removed);
        true
    }

    /// Tells the eviction manager about an entry stored outside Pingora's
    /// miss path (promoted from the Redis tier), as that path does, and
    /// removes what it evicts to make room.
    pub fn admit(&self, key: &CompactCacheKey, weight: usize, fresh_until: SystemTime) {
        if weight > 0 {
            self.reweigh(key, weight, fresh_until);
        }
    }

    /// The body stored under a combined key.
    pub fn body(&self, primary: &HashBinary, combined: &HashBinary) -> Option<Bytes> {
        self.get_live(primary, combined).map(|e| e.body.clone())
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
