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
//!   key's hash, each behind its own `RwLock` (`shard.rs`). A hit takes one
//!   shard's read lock and nothing else, so a write on one shard never
//!   blocks hits on another.
//! - **Indexes** (`index.rs`): primaries by URI, route and tag in hash
//!   sets, so removing an entry is O(1) in each; a purge of n entries is
//!   O(n), removed in batches of [`PURGE_BATCH`] primaries that release
//!   the shard and index locks between them.
//! - **Purges win over fills** (`purges.rs`): every purge is recorded with
//!   a generation before it selects anything; a fill carries the
//!   generation its request began at ([`FillTicket`]) and is dropped when
//!   a purge recorded since names it. Lock order: purge log → shard →
//!   indexes.
//!
//! Memory: the eviction manager weighs what an entry really holds — its
//! body, its header as kept in memory, its tags, its encoded copies and a
//! fixed per-entry allowance for the indexes and the LRU node
//! ([`ENTRY_OVERHEAD`]) — so `cache.max_size` bounds resident memory, not
//! only body bytes. Bodies are copied to an exact-size buffer when the
//! collected one has spare capacity, and the stored header is rebuilt from
//! its serialized form, because the header Pingora parsed from the upstream
//! slices into the connection's 4 KiB+ read buffer and would keep all of it
//! alive. README, Caching, has the numbers (`benches/load/memory.sh`).
//!
//! Fresh hits of entries without `Vary` can be served by [`MemoryStore::fresh`]
//! without Pingora's cache state machine; see `cache::fresh`.

mod entry;
mod index;
mod keyhash;
mod purges;
mod shard;
mod storage;
#[cfg(test)]
mod tests;

pub use entry::{FreshHit, StoredEntry, ENTRY_OVERHEAD};
pub use purges::FillTicket;
pub use storage::{hit_of, ticket_of};

use bytes::Bytes;
use entry::{Entry, ENCODED_CODINGS, ENCODED_OVERHEAD};
use index::Indexes;
use pingora::cache::eviction::EvictionManager;
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::CacheEntryKeyRef;
use pingora::http::ResponseHeader;
use pingora::Result;
use purges::{FillNames, PendingPurges, PurgeLog, PurgeRecord};
use shard::{Gone, Shard};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

/// Shards of the store: enough that two worker threads rarely meet on one,
/// few enough that a walk over all of them is cheap.
const SHARDS: usize = 64;

/// Primaries removed under one taking of a shard's lock during a purge;
/// between batches the purging thread yields the CPU, so on a core shared
/// with a busy worker a hit waits about one batch (~100 µs), and the purge
/// takes the CPU the workers leave. Larger batches purge faster on a
/// saturated core and cost hits more (`benches/load/purge.sh`, pinned to
/// one core: with 64, hits' p99 was 3.5–11× of without during purges;
/// with 16, 1.5–1.8× for 100,000 entries; docs/BENCHMARKS.md).
const PURGE_BATCH: usize = 16;

/// Primaries a purge removes before it answers. A larger purge answers
/// once its entries are banned (recorded as pending: lookups treat them as
/// absent, `purges::PendingPurges`) and leaves their removal to the
/// reclaimer thread, so a purge of a million entries takes effect in the
/// time it takes to count them (O(1) for a URL, route or tag), not to
/// free them.
const INLINE_PURGE: usize = 1024;

/// The reclaimer removes this many primaries at a time (a hit on a core
/// it shares waits at most about one batch, ~50 µs) and then rests
/// [`RECLAIM_REST`] times as long as the batch took, so it takes at most
/// a fifth of a core from the workers while freeing a large purge's
/// entries (`benches/load/purge.sh`, 1,000,000 entries on a core
/// saturated by hits: with 16 and 3, their p99 was 2.0–2.4× of without;
/// docs/BENCHMARKS.md).
const RECLAIM_BATCH: usize = 8;
const RECLAIM_REST: u32 = 4;

/// Which stored entries a purge names.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    /// Every variant of one URI (`host/path?query`).
    Uri(&'a str),
    /// URIs starting with this (`host` + path prefix).
    Prefix(&'a str),
    /// URIs whose path (any host) starts with this.
    PathPrefix(&'a str),
    /// What one route stored.
    Route(&'a str),
    /// Entries whose response carried this cache tag.
    Tag(&'a str),
}

impl Selection<'_> {
    fn record(&self) -> PurgeRecord {
        match *self {
            Selection::Uri(uri) => PurgeRecord::Uri(uri.into()),
            Selection::Prefix(prefix) => PurgeRecord::Prefix(prefix.into()),
            Selection::PathPrefix(prefix) => PurgeRecord::PathPrefix(prefix.into()),
            Selection::Route(route) => PurgeRecord::Route(route.into()),
            Selection::Tag(tag) => PurgeRecord::Tag(tag.into()),
        }
    }
}

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

/// A large purge's removal, for the reclaimer: the entries `record`
/// names stored before `generation`.
struct Reclaim {
    generation: u64,
    record: PurgeRecord,
    /// How many primaries it banned (counted in `unreclaimed` until done).
    banned: usize,
}

/// The bounded memory store. One per process (Pingora needs `'static`).
pub struct MemoryStore {
    shards: Box<[RwLock<Shard>]>,
    indexes: RwLock<Indexes>,
    purges: PurgeLog,
    /// Large purges whose entries the reclaimer is still removing.
    pending: PendingPurges,
    /// Entries banned by pending purges and not yet removed.
    unreclaimed: AtomicUsize,
    /// The reclaimer thread's queue (started by the first large purge).
    reclaimer: OnceLock<Option<std::sync::mpsc::Sender<Reclaim>>>,
    /// The newest shared (Redis) purge generation this instance has heard
    /// of, for the tickets' `shared` part.
    shared_generation: AtomicU64,
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
            indexes: RwLock::default(),
            purges: PurgeLog::default(),
            pending: PendingPurges::default(),
            unreclaimed: AtomicUsize::new(0),
            reclaimer: OnceLock::new(),
            shared_generation: AtomicU64::new(0),
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
        self.purges
            .ticket(self.shared_generation.load(Ordering::Acquire))
    }

    /// Learns that the shared purge generation has reached `generation`
    /// (a purge heard on the channel, or made here).
    pub fn heard_shared_generation(&self, generation: u64) {
        self.shared_generation
            .fetch_max(generation, Ordering::AcqRel);
    }

    /// Whether a purge recorded since `ticket` names this response (so it
    /// must not be stored anywhere, Redis included).
    pub fn overtaken(&self, ticket: FillTicket, uri: &str, route: &str, tags: &[Arc<str>]) -> bool {
        self.purges
            .lock()
            .overtaken(ticket, &FillNames { uri, route, tags })
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
        self.unreclaimed.load(Ordering::Relaxed)
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
        if self.pending.any() {
            let p = shard.primaries.get(primary)?;
            let names = FillNames {
                uri: &p.uri,
                route: &p.route,
                tags: &p.tags,
            };
            if self.pending.bans(entry.generation, &names) {
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
            let log = self.purges.lock();
            let names = FillNames {
                uri: &fill.uri,
                route: &fill.route,
                tags: &fill.tags,
            };
            if log.overtaken(fill.ticket, &names) {
                drop(log);
                let current = self.get(&primary, &fill.combined);
                return (false, current.map_or(0, |e| e.weight()));
            }
            let mut shard = self.write_shard(&primary);
            let (banned, banned_gone) = self.take_banned(&mut shard, &primary);
            let (replaced, change) = shard.insert(
                fill.combined,
                fill.entry,
                &fill.uri,
                &fill.route,
                &fill.tags,
            );
            let mut index = write(&self.indexes);
            if let Some(gone) = &banned_gone {
                index.forget(gone);
            }
            index.learn(primary, &change, &fill.uri, &fill.route, &fill.tags);
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
    fn take_banned(
        &self,
        shard: &mut Shard,
        primary: &HashBinary,
    ) -> (Vec<Arc<Entry>>, Option<Gone>) {
        if !self.pending.any() {
            return (Vec::new(), None);
        }
        let Some(p) = shard.primaries.get(primary) else {
            return (Vec::new(), None);
        };
        let (uri, route, tags) = (p.uri.clone(), p.route.clone(), p.tags.clone());
        let names = FillNames {
            uri: &uri,
            route: &route,
            tags: &tags,
        };
        shard.remove_variants_where(primary, &|e: &Entry| {
            self.pending.bans(e.generation, &names)
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
        let (old, new) = {
            let log = self.purges.lock();
            let mut shard = self.write_shard(primary);
            let (Some(old), Some(p)) = (shard.entries.get(combined), shard.primaries.get(primary))
            else {
                return false;
            };
            let names = FillNames {
                uri: &p.uri,
                route: &p.route,
                tags: &p.tags,
            };
            if log.overtaken(ticket, &names) {
                return false;
            }
            drop(log);
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
        let removed = {
            let mut shard = self.write_shard(&primary);
            let Some((entry, gone)) = shard.remove(&combined) else {
                return false;
            };
            if let Some(gone) = gone {
                write(&self.indexes).forget(&gone);
            }
            entry
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

    /// The primaries a purge names (all their variants go, or are marked
    /// stale, together).
    fn select(&self, selection: Selection<'_>) -> Vec<HashBinary> {
        let index = read(&self.indexes);
        named_sets(&index, selection)
            .flat_map(|set| set.iter().copied())
            .collect()
    }

    /// How many primaries a purge names now (without collecting them).
    fn count_named(&self, selection: Selection<'_>) -> usize {
        let index = read(&self.indexes);
        named_sets(&index, selection).map(|set| set.len()).sum()
    }

    /// Removes the variants of `primaries` (grouped by shard) that
    /// `matches`, in batches of [`PURGE_BATCH`] (paced: [`RECLAIM_BATCH`]) that release the locks
    /// between them; returns how many. Between batches the thread yields
    /// the CPU, or, `paced` (the reclaimer), rests [`RECLAIM_REST`] times as
    /// long as the batch took.
    fn remove_primaries_where(
        &self,
        by_shard: &[Vec<HashBinary>],
        matches: impl Fn(&Entry) -> bool,
        paced: bool,
    ) -> usize {
        let mut removed_total = 0;
        for (shard, primaries) in by_shard.iter().enumerate() {
            for batch in primaries.chunks(if paced { RECLAIM_BATCH } else { PURGE_BATCH }) {
                let started = std::time::Instant::now();
                let mut removed = Vec::new();
                {
                    let mut shard = write(&self.shards[shard]);
                    let mut gone: Vec<Gone> = Vec::new();
                    for primary in batch {
                        let (r, g) = shard.remove_variants_where(primary, &matches);
                        removed.extend(r);
                        gone.extend(g);
                    }
                    if !gone.is_empty() {
                        let mut index = write(&self.indexes);
                        for g in &gone {
                            index.forget(g);
                        }
                    }
                }
                removed_total += removed.len();
                self.release(removed);
                if paced {
                    std::thread::sleep(started.elapsed() * RECLAIM_REST);
                } else {
                    std::thread::yield_now();
                }
            }
        }
        removed_total
    }

    /// Bans what `record` names among the entries stored before
    /// `generation` (lookups no longer see them) and counts `named`
    /// primaries as unreclaimed; returns the job that removes them.
    fn ban(&self, generation: u64, record: PurgeRecord, named: usize) -> Reclaim {
        self.pending.add(generation, record.clone());
        self.unreclaimed.fetch_add(named, Ordering::Relaxed);
        Reclaim {
            generation,
            record,
            banned: named,
        }
    }

    /// Removes a banned purge's entries, then lifts the ban.
    fn reclaim(&self, job: Reclaim, paced: bool) {
        let generation = job.generation;
        if let Some(selection) = selection_of(&job.record) {
            let primaries = by_shard(self.select(selection));
            self.remove_primaries_where(&primaries, |e| e.generation < generation, paced);
        }
        self.pending.done(generation);
        // Entries evicted or replaced meanwhile were banned but not removed
        // here: the whole count goes.
        let _ = self
            .unreclaimed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(job.banned))
            });
    }

    /// The reclaimer's queue, its thread started on first use; `None` when
    /// the thread cannot start (purges then remove everything at once).
    fn reclaimer(&'static self) -> Option<&'static std::sync::mpsc::Sender<Reclaim>> {
        self.reclaimer
            .get_or_init(|| {
                let (jobs, queue) = std::sync::mpsc::channel::<Reclaim>();
                let started = std::thread::Builder::new()
                    .name("tollgate-purge-reclaim".into())
                    .spawn(move || {
                        for job in queue {
                            self.reclaim(job, true);
                        }
                    });
                match started {
                    Ok(_) => Some(jobs),
                    Err(e) => {
                        log::error!("cache: cannot start the purge reclaimer ({e}); purges remove their entries before answering");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Marks every variant of these primaries stale now instead of
    /// removing it (a soft purge): the next request revalidates, and the
    /// response's stale windows still apply. Batched like removals; the
    /// eviction manager learns the new weights. Returns how many.
    fn expire_primaries(&self, primaries: Vec<HashBinary>, now: SystemTime) -> usize {
        let mut expired = 0;
        for (shard, primaries) in by_shard(primaries).iter().enumerate() {
            for batch in primaries.chunks(PURGE_BATCH) {
                let mut changed = Vec::new();
                {
                    let mut shard = write(&self.shards[shard]);
                    for primary in batch {
                        let variants = shard
                            .primaries
                            .get(primary)
                            .map(|p| p.variants.clone())
                            .unwrap_or_default();
                        for combined in variants {
                            let Some(old) = shard.entries.get(&combined) else {
                                continue;
                            };
                            let Some(replacement) = old.expired_at(now) else {
                                continue;
                            };
                            let replacement = Arc::new(replacement);
                            if let Some(old) = shard.entries.insert(combined, replacement.clone()) {
                                changed.push((old, replacement));
                            }
                        }
                    }
                }
                expired += changed.len();
                for (old, new) in changed {
                    self.bytes.fetch_add(new.weight() as u64, Ordering::Relaxed);
                    self.forget(&old);
                    self.reweigh(&new.compact, new.weight(), new.times.fresh_until);
                }
                std::thread::yield_now();
            }
        }
        expired
    }

    /// Removes every entry `selection` names, after recording the purge so
    /// that fills in flight for them are dropped; returns how many.
    ///
    /// A purge naming more than [`INLINE_PURGE`] primaries answers once
    /// they are banned (lookups treat them as absent) and counts primaries
    /// (a URL stored in several variants counts once); the reclaimer thread
    /// frees them afterwards.
    pub fn purge_selection(&'static self, selection: Selection<'_>) -> usize {
        let record = selection.record();
        let generation = self.purges.record(record.clone());
        let named = self.count_named(selection);
        if named > INLINE_PURGE {
            if let Some(reclaimer) = self.reclaimer() {
                let job = self.ban(generation, record, named);
                if let Err(std::sync::mpsc::SendError(job)) = reclaimer.send(job) {
                    self.reclaim(job, false);
                }
                return named;
            }
        }
        let primaries = by_shard(self.select(selection));
        self.remove_primaries_where(&primaries, |e| e.generation < generation, false)
    }

    /// Marks every entry `selection` names stale from `now` on (a soft
    /// purge), after recording it like a purge; returns how many.
    pub fn expire_selection(&self, selection: Selection<'_>, now: SystemTime) -> usize {
        self.purges.record(selection.record());
        let primaries = self.select(selection);
        self.expire_primaries(primaries, now)
    }

    /// Removes every stored variant of exactly this URI (as built by
    /// [`crate::cache::key`]); returns how many entries went.
    pub fn purge_uri(&'static self, uri: &str) -> usize {
        self.purge_selection(Selection::Uri(uri))
    }

    /// Removes the stored variants of exactly this URI whose header
    /// `matches` (RFC 9111 §4.3.5: those a HEAD response shows changed).
    /// Fills in flight for the URI are dropped whichever variant they are.
    pub fn purge_uri_where(&self, uri: &str, matches: impl Fn(&ResponseHeader) -> bool) -> usize {
        let selection = Selection::Uri(uri);
        let generation = self.purges.record(selection.record());
        let primaries = self.select(selection);
        let matches = |e: &Entry| e.generation < generation && matches(&e.header);
        self.remove_primaries_where(&by_shard(primaries), matches, false)
    }

    /// Removes every entry stored (created) before `cutoff`, and drops
    /// every fill in flight; returns how many. Walks every shard, one
    /// batch at a time.
    pub fn purge_created_before(&self, cutoff: SystemTime) -> usize {
        self.purges.record(PurgeRecord::Everything);
        let mut primaries = Vec::new();
        for shard in self.shards.iter() {
            let shard = read(shard);
            primaries.extend(
                shard
                    .primaries
                    .iter()
                    .filter(|(_, p)| {
                        p.variants.iter().any(|v| {
                            shard
                                .entries
                                .get(v)
                                .is_some_and(|e| e.times.created < cutoff)
                        })
                    })
                    .map(|(hash, _)| *hash),
            );
        }
        self.remove_primaries_where(&by_shard(primaries), |_| true, false)
    }
}

/// The index sets whose primaries `selection` names.
fn named_sets<'a>(
    index: &'a Indexes,
    selection: Selection<'a>,
) -> Box<dyn Iterator<Item = &'a keyhash::KeySet> + 'a> {
    match selection {
        Selection::Uri(uri) => Box::new(index.by_uri.get(uri).into_iter()),
        Selection::Prefix(prefix) => Box::new(
            index
                .by_uri
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(move |(uri, _)| uri.starts_with(prefix))
                .map(|(_, set)| set),
        ),
        // Walks the URI index: an admin operation, not a request's.
        Selection::PathPrefix(path_prefix) => Box::new(
            index
                .by_uri
                .iter()
                .filter(move |(uri, _)| {
                    let split = uri.find('/').unwrap_or(uri.len());
                    uri[split..].starts_with(path_prefix)
                })
                .map(|(_, set)| set),
        ),
        Selection::Route(route) => Box::new(index.by_route.get(route).into_iter()),
        Selection::Tag(tag) => Box::new(index.by_tag.get(tag).into_iter()),
    }
}

/// What a recorded purge selects (`None` for "everything").
fn selection_of(record: &PurgeRecord) -> Option<Selection<'_>> {
    Some(match record {
        PurgeRecord::Uri(uri) => Selection::Uri(uri),
        PurgeRecord::Prefix(prefix) => Selection::Prefix(prefix),
        PurgeRecord::PathPrefix(prefix) => Selection::PathPrefix(prefix),
        PurgeRecord::Route(route) => Selection::Route(route),
        PurgeRecord::Tag(tag) => Selection::Tag(tag),
        PurgeRecord::Everything => return None,
    })
}

/// `primaries` grouped by the shard they live in.
fn by_shard(primaries: Vec<HashBinary>) -> Vec<Vec<HashBinary>> {
    let mut grouped = vec![Vec::new(); SHARDS];
    for primary in primaries {
        grouped[shard_of(&primary)].push(primary);
    }
    grouped
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
