//! Purges win over fills. Every purge (by URL, prefix, route, tag, an
//! unsafe method's invalidation, another instance's purge, a soft purge)
//! gets the next generation and is remembered for a while; every fill —
//! a miss's response, a revalidation, an entry promoted from Redis —
//! carries the generation current when its request began (a
//! [`FillTicket`], set on the cache key). When the fill is about to be
//! stored, a purge recorded since its ticket that names it wins: the fill
//! is dropped.
//!
//! The log is keyed, so a fill's check costs its own names, never a scan:
//! purges of one URI, route or tag keep only their newest generation, in
//! one of [`LOG_SHARDS`] shards chosen by the name's hash; the few purges
//! that name no single key (prefixes, "everything") are a short list
//! beside them.
//!
//! Invariant (kept with `MemoryStore::store_fill`): a fill takes a
//! [`Guard`] — the broad list's read lock and the locks of the shards its
//! names hash to, in ascending order — checks, and inserts into the store
//! while holding it; a purge is recorded under the one lock its name needs
//! before it selects what to remove, and holds no other lock meanwhile. So
//! a purge recorded before a fill's check is seen by the check, and one
//! recorded after the fill released its guard selects the stored fill.
//! Lock order: broad list → log shards (ascending) → store shard.

use smallvec::SmallVec;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

/// Shards of the keyed log: fills of different names rarely meet on one.
const LOG_SHARDS: usize = 16;

/// Records kept per shard (and of broad purges). A fill whose ticket is
/// older than a forgotten record is dropped: what it would need to be
/// checked against is gone. 64 Ki names in all: at 10,000 invalidations a
/// second of distinct URIs, fills slower than ~6 s are not stored.
const RECORDS_PER_SHARD: usize = 4096;

/// When a fill's request began, in the purge generations it can be
/// checked against, carried in the cache key's extensions from the moment
/// the key is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillTicket {
    /// This instance's purge generation ([`PurgeLog`]).
    pub local: u64,
    /// The shared (Redis) purge generation this instance had heard of:
    /// the Redis tier's write script drops a write that a purge marker
    /// newer than this names (`cache::invalidation`).
    pub shared: u64,
    /// The Redis epoch this instance knew (0: none yet): a write stamped
    /// in another epoch is dropped, as the markers it should be checked
    /// against may have been lost with Redis's data.
    pub epoch: u64,
    /// When the request began: a Redis write older than the markers live
    /// is dropped, as it can no longer be checked.
    pub began: std::time::Instant,
}

/// What one purge named, as its fills are matched against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeRecord {
    /// Every variant of one URI (`host/path?query`).
    Uri(Arc<str>),
    /// URIs starting with this (`host/path-prefix`).
    Prefix(Arc<str>),
    /// URIs whose path, on any host, starts with this.
    PathPrefix(Arc<str>),
    /// What one route stored.
    Route(Arc<str>),
    /// Entries carrying this tag.
    Tag(Arc<str>),
    /// Everything (entries stored before the purges could be heard again).
    Everything,
}

/// What a fill is, for matching against purges.
pub struct FillNames<'a> {
    /// Its URI (`host/path?query`).
    pub uri: &'a str,
    /// The route that fetched it.
    pub route: &'a str,
    /// Its cache tags.
    pub tags: &'a [Arc<str>],
}

impl PurgeRecord {
    /// Whether this purge names a fill or entry with these names.
    pub(super) fn names(&self, fill: &FillNames<'_>) -> bool {
        match self {
            PurgeRecord::Uri(uri) => **uri == *fill.uri,
            PurgeRecord::Prefix(prefix) => fill.uri.starts_with(&**prefix),
            PurgeRecord::PathPrefix(prefix) => {
                let split = fill.uri.find('/').unwrap_or(fill.uri.len());
                fill.uri[split..].starts_with(&**prefix)
            }
            PurgeRecord::Route(route) => **route == *fill.route,
            PurgeRecord::Tag(tag) => fill.tags.iter().any(|t| t == tag),
            PurgeRecord::Everything => true,
        }
    }

    /// The one name it is keyed by, if it has one.
    fn key(&self) -> Option<(Kind, &Arc<str>)> {
        match self {
            PurgeRecord::Uri(name) => Some((Kind::Uri, name)),
            PurgeRecord::Route(name) => Some((Kind::Route, name)),
            PurgeRecord::Tag(name) => Some((Kind::Tag, name)),
            _ => None,
        }
    }
}

/// Which map of a shard a name lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Uri,
    Route,
    Tag,
}

type Latest = HashMap<Arc<str>, u64, ahash::RandomState>;

/// One shard of the keyed log: the newest generation that purged each
/// name, and the order they came in (to forget the oldest).
#[derive(Default)]
struct Named {
    uris: Latest,
    routes: Latest,
    tags: Latest,
    order: VecDeque<(u64, Kind, Arc<str>)>,
}

impl Named {
    fn map(&self, kind: Kind) -> &Latest {
        match kind {
            Kind::Uri => &self.uris,
            Kind::Route => &self.routes,
            Kind::Tag => &self.tags,
        }
    }

    fn map_mut(&mut self, kind: Kind) -> &mut Latest {
        match kind {
            Kind::Uri => &mut self.uris,
            Kind::Route => &mut self.routes,
            Kind::Tag => &mut self.tags,
        }
    }

    /// Whether a purge of `name` newer than `since` is recorded.
    fn newer(&self, kind: Kind, name: &str, since: u64) -> bool {
        self.map(kind).get(name).is_some_and(|g| *g > since)
    }
}

/// The recent purges and the current generation.
pub struct PurgeLog {
    generation: AtomicU64,
    /// Fills with a ticket below this cannot be checked (a record that
    /// might name them was forgotten).
    floor: AtomicU64,
    named: Box<[Mutex<Named>]>,
    /// Purges that name no single key, oldest first.
    broad: RwLock<VecDeque<(u64, PurgeRecord)>>,
    hasher: ahash::RandomState,
    /// Fills dropped because their ticket was below the floor.
    too_old: AtomicUsize,
}

impl Default for PurgeLog {
    fn default() -> Self {
        Self {
            generation: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            named: (0..LOG_SHARDS).map(|_| Mutex::default()).collect(),
            broad: RwLock::default(),
            hasher: ahash::RandomState::new(),
            too_old: AtomicUsize::new(0),
        }
    }
}

/// A fill's hold on the log while it is checked and stored.
pub struct Guard<'a> {
    log: &'a PurgeLog,
    broad: RwLockReadGuard<'a, VecDeque<(u64, PurgeRecord)>>,
    named: SmallVec<[(usize, MutexGuard<'a, Named>); 4]>,
}

impl Guard<'_> {
    /// Whether a purge recorded after `ticket` names `fill` (or the
    /// records it would need are gone): then the fill must not be stored.
    /// Costs the fill's own names, and the broad purges since its ticket.
    pub fn overtaken(&self, ticket: FillTicket, fill: &FillNames<'_>) -> bool {
        if ticket.local < self.log.floor.load(Ordering::Acquire) {
            self.log.too_old.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let since = ticket.local;
        let named = |kind: Kind, name: &str| {
            let at = self.log.shard_of(kind, name);
            self.named
                .iter()
                .find(|(i, _)| *i == at)
                .is_some_and(|(_, shard)| shard.newer(kind, name, since))
        };
        named(Kind::Uri, fill.uri)
            || named(Kind::Route, fill.route)
            || fill.tags.iter().any(|t| named(Kind::Tag, t))
            || self
                .broad
                .iter()
                .rev()
                .take_while(|(g, _)| *g > since)
                .any(|(_, record)| record.names(fill))
    }
}

impl PurgeLog {
    /// The ticket of a fill beginning now, with the shared generation
    /// this instance has heard of.
    pub fn ticket(&self, shared: u64, epoch: u64) -> FillTicket {
        FillTicket {
            local: self.generation.load(Ordering::Acquire),
            shared,
            epoch,
            began: std::time::Instant::now(),
        }
    }

    fn shard_of(&self, kind: Kind, name: &str) -> usize {
        (self.hasher.hash_one((kind as u8, name)) as usize) % LOG_SHARDS
    }

    /// Records a purge before it removes anything; returns its generation.
    /// The generation is taken under the lock it is recorded under, so a
    /// fill holding that lock sees the purge whole or not at all.
    pub fn record(&self, record: PurgeRecord) -> u64 {
        let Some((kind, name)) = record.key() else {
            let mut broad = self.broad.write().unwrap_or_else(|p| p.into_inner());
            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            broad.push_back((generation, record));
            while broad.len() > RECORDS_PER_SHARD {
                if let Some((forgotten, _)) = broad.pop_front() {
                    self.floor.fetch_max(forgotten, Ordering::AcqRel);
                }
            }
            return generation;
        };
        let mut shard = lock(&self.named[self.shard_of(kind, name)]);
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        shard.map_mut(kind).insert(name.clone(), generation);
        shard.order.push_back((generation, kind, name.clone()));
        while shard.order.len() > RECORDS_PER_SHARD {
            let Some((forgotten, kind, name)) = shard.order.pop_front() else {
                break;
            };
            // Only the newest record of a name is live; an older one of the
            // same name is covered by it and forgetting it loses nothing.
            let map = shard.map_mut(kind);
            if map.get(&name) == Some(&forgotten) {
                map.remove(&name);
                self.floor.fetch_max(forgotten, Ordering::AcqRel);
            }
        }
        generation
    }

    /// The log held for a fill with these names: its check, then its
    /// insert, under the guard.
    pub fn guard(&self, fill: &FillNames<'_>) -> Guard<'_> {
        let mut shards: SmallVec<[usize; 8]> = SmallVec::new();
        shards.push(self.shard_of(Kind::Uri, fill.uri));
        shards.push(self.shard_of(Kind::Route, fill.route));
        shards.extend(fill.tags.iter().map(|t| self.shard_of(Kind::Tag, t)));
        shards.sort_unstable();
        shards.dedup();
        let broad = self.broad.read().unwrap_or_else(|p| p.into_inner());
        let named = shards
            .into_iter()
            .map(|i| (i, lock(&self.named[i])))
            .collect();
        Guard {
            log: self,
            broad,
            named,
        }
    }

    /// Fills dropped so far because they were older than every record
    /// kept (`tollgate_cache_fills_too_old_total`).
    pub fn too_old(&self) -> usize {
        self.too_old.load(Ordering::Relaxed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Purges whose entries are still being removed in the background (a
/// large purge answers once it is recorded and its entries are selected;
/// `MemoryStore` reclaims them afterwards, paced). Until its removal ends,
/// a lookup treats an entry stored before such a purge that the purge
/// names as absent — Varnish's bans, with the "lurker" bounded to the
/// entries the purge selected. Empty almost always: a hit pays one atomic
/// load for it.
///
/// One ban per distinct target: a purge identical to a pending one raises
/// that ban's generation instead of adding another (and, if its reclaim
/// is under way, asks for one more pass once it ends), so repeating a
/// large purge neither grows this list nor queues the same entries again.
#[derive(Default)]
pub struct PendingPurges {
    count: AtomicUsize,
    bans: std::sync::RwLock<Vec<Ban>>,
}

/// One pending purge.
struct Ban {
    record: PurgeRecord,
    /// Entries stored before this that `record` names are banned.
    generation: u64,
    /// Its reclaim is under way.
    running: bool,
    /// Raised while its reclaim ran: one more pass is needed.
    again: bool,
    /// Primaries counted as unreclaimed for it.
    banned: usize,
}

/// What the reclaimer does after a pass over a ban's entries.
pub enum AfterPass {
    /// The ban was raised meanwhile: another pass, below this generation.
    Again(u64),
    /// Lifted; this many primaries are no longer unreclaimed.
    Lifted(usize),
}

impl PendingPurges {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Ban>> {
        self.bans.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Bans what `record` names below `generation` (before the purge
    /// answers), `named` primaries. Returns how many more primaries are
    /// unreclaimed now, and whether a reclaim must be queued (false when
    /// an identical ban was pending and was raised instead).
    pub fn add(&self, generation: u64, record: PurgeRecord, named: usize) -> (usize, bool) {
        let mut bans = self.write();
        if let Some(ban) = bans.iter_mut().find(|b| b.record == record) {
            ban.generation = ban.generation.max(generation);
            ban.again |= ban.running;
            let more = named.saturating_sub(ban.banned);
            ban.banned += more;
            return (more, false);
        }
        bans.push(Ban {
            record,
            generation,
            running: false,
            again: false,
            banned: named,
        });
        self.count.store(bans.len(), Ordering::Release);
        (named, true)
    }

    /// The reclaimer starts on `record`'s ban: the generation to reclaim
    /// below (`None` if there is no such ban).
    pub fn start(&self, record: &PurgeRecord) -> Option<u64> {
        let mut bans = self.write();
        let ban = bans.iter_mut().find(|b| b.record == *record)?;
        ban.running = true;
        ban.again = false;
        Some(ban.generation)
    }

    /// The reclaimer finished a pass over `record`'s entries.
    pub fn after_pass(&self, record: &PurgeRecord) -> AfterPass {
        let mut bans = self.write();
        let Some(at) = bans.iter().position(|b| b.record == *record) else {
            return AfterPass::Lifted(0);
        };
        if bans[at].again {
            bans[at].again = false;
            return AfterPass::Again(bans[at].generation);
        }
        let ban = bans.swap_remove(at);
        self.count.store(bans.len(), Ordering::Release);
        AfterPass::Lifted(ban.banned)
    }

    /// Whether any purge is pending (the hit path's fast check).
    pub fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// How many bans are pending.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Whether a pending purge recorded after an entry stored at
    /// `generation` names it.
    pub fn bans(&self, generation: u64, entry: &FillNames<'_>) -> bool {
        self.bans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|b| b.generation > generation && b.record.names(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill<'a>(uri: &'a str, route: &'a str, tags: &'a [Arc<str>]) -> FillNames<'a> {
        FillNames { uri, route, tags }
    }

    #[test]
    fn a_purge_after_the_ticket_that_names_the_fill_wins() {
        let log = PurgeLog::default();
        let ticket = log.ticket(0, 0);
        let tags: Vec<Arc<str>> = vec!["product-1".into()];
        let f = fill("h/a?x=1", "api", &tags);
        assert!(!log.guard(&f).overtaken(ticket, &f));
        log.record(PurgeRecord::Uri("h/other".into()));
        assert!(!log.guard(&f).overtaken(ticket, &f), "another URI");
        log.record(PurgeRecord::Tag("product-1".into()));
        assert!(log.guard(&f).overtaken(ticket, &f));
        let later = log.ticket(0, 0);
        assert!(
            !log.guard(&f).overtaken(later, &f),
            "a fill that began after it"
        );
        for record in [
            PurgeRecord::Uri("h/a?x=1".into()),
            PurgeRecord::Prefix("h/a".into()),
            PurgeRecord::PathPrefix("/a".into()),
            PurgeRecord::Route("api".into()),
            PurgeRecord::Everything,
        ] {
            let t = log.ticket(0, 0);
            log.record(record.clone());
            assert!(log.guard(&f).overtaken(t, &f), "{record:?}");
        }
    }

    #[test]
    fn a_fill_older_than_what_is_remembered_is_dropped() {
        let log = PurgeLog::default();
        let ticket = log.ticket(0, 0);
        // Repeating one name forgets nothing: only its newest record lives.
        for _ in 0..LOG_SHARDS * RECORDS_PER_SHARD * 2 {
            log.record(PurgeRecord::Uri("h/hot".into()));
        }
        let f = fill("h/unrelated", "api", &[]);
        assert!(
            !log.guard(&f).overtaken(ticket, &f),
            "nothing live forgotten"
        );
        for i in 0..LOG_SHARDS * RECORDS_PER_SHARD * 2 {
            log.record(PurgeRecord::Uri(format!("h/{i}").into()));
        }
        assert!(log.guard(&f).overtaken(ticket, &f));
        assert_eq!(log.too_old(), 1);
        assert!(!log.guard(&f).overtaken(log.ticket(0, 0), &f));
    }

    #[test]
    fn a_fill_checks_only_its_own_names_and_the_broad_purges() {
        let log = PurgeLog::default();
        let tags: Vec<Arc<str>> = vec!["t1".into(), "t2".into()];
        let f = fill("h/a", "api", &tags);
        let ticket = log.ticket(0, 0);
        for i in 0..1000 {
            log.record(PurgeRecord::Uri(format!("h/other-{i}").into()));
        }
        assert!(!log.guard(&f).overtaken(ticket, &f));
        log.record(PurgeRecord::Tag("t2".into()));
        assert!(log.guard(&f).overtaken(ticket, &f), "its second tag");
        let later = log.ticket(0, 0);
        log.record(PurgeRecord::PathPrefix("/b".into()));
        assert!(!log.guard(&f).overtaken(later, &f), "another prefix");
        log.record(PurgeRecord::Prefix("h/".into()));
        assert!(log.guard(&f).overtaken(later, &f), "its host");
    }

    #[test]
    fn a_repeated_ban_raises_the_pending_one_instead_of_adding_another() {
        let pending = PendingPurges::default();
        let tag = || PurgeRecord::Tag("t".into());
        assert_eq!(pending.add(5, tag(), 100), (100, true));
        assert_eq!(pending.add(9, tag(), 100), (0, false), "raised, not queued");
        assert_eq!(pending.len(), 1);
        let tags: Vec<Arc<str>> = vec!["t".into()];
        let entry = fill("h/a", "api", &tags);
        assert!(pending.bans(7, &entry), "stored between the two purges");
        assert_eq!(pending.start(&tag()), Some(9));
        assert_eq!(pending.add(12, tag(), 150), (50, false), "50 more named");
        assert!(matches!(pending.after_pass(&tag()), AfterPass::Again(12)));
        assert!(matches!(pending.after_pass(&tag()), AfterPass::Lifted(150)));
        assert!(!pending.any());
        assert!(!pending.bans(7, &entry));
    }
}
