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

use crate::cache::names::{EntryNames, NameKind, Selection};
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

/// A recorded purge that names no single key.
#[derive(Debug, Clone)]
enum Broad {
    /// A prefix selection.
    Prefix(Selection),
    /// Everything (entries stored before the purges could be heard again).
    Everything,
}

impl Broad {
    fn names(&self, entry: &EntryNames<'_>) -> bool {
        match self {
            Broad::Prefix(selection) => selection.names(entry),
            Broad::Everything => true,
        }
    }
}

type Latest = HashMap<Arc<str>, u64, ahash::RandomState>;

/// One shard of the keyed log: the newest generation that purged each
/// name, and the order they came in (to forget the oldest).
#[derive(Default)]
struct Named {
    uris: Latest,
    routes: Latest,
    tags: Latest,
    order: VecDeque<(u64, NameKind, Arc<str>)>,
}

impl Named {
    fn map(&self, kind: NameKind) -> &Latest {
        match kind {
            NameKind::Uri => &self.uris,
            NameKind::Route => &self.routes,
            NameKind::Tag => &self.tags,
        }
    }

    fn map_mut(&mut self, kind: NameKind) -> &mut Latest {
        match kind {
            NameKind::Uri => &mut self.uris,
            NameKind::Route => &mut self.routes,
            NameKind::Tag => &mut self.tags,
        }
    }

    /// Whether a purge of `name` newer than `since` is recorded.
    fn newer(&self, kind: NameKind, name: &str, since: u64) -> bool {
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
    broad: RwLock<VecDeque<(u64, Broad)>>,
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
    broad: RwLockReadGuard<'a, VecDeque<(u64, Broad)>>,
    named: SmallVec<[(usize, MutexGuard<'a, Named>); 4]>,
}

impl Guard<'_> {
    /// Whether a purge recorded after `ticket` names `fill` (or the
    /// records it would need are gone): then the fill must not be stored.
    /// Costs the fill's own names, and the broad purges since its ticket.
    pub fn overtaken(&self, ticket: FillTicket, fill: &EntryNames<'_>) -> bool {
        if ticket.local < self.log.floor.load(Ordering::Acquire) {
            self.log.too_old.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let since = ticket.local;
        let named = |kind: NameKind, name: &str| {
            let at = self.log.shard_of(kind, name);
            self.named
                .iter()
                .find(|(i, _)| *i == at)
                .is_some_and(|(_, shard)| shard.newer(kind, name, since))
        };
        named(NameKind::Uri, fill.uri)
            || named(NameKind::Route, fill.route)
            || fill.tags.iter().any(|t| named(NameKind::Tag, t))
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

    fn shard_of(&self, kind: NameKind, name: &str) -> usize {
        (self.hasher.hash_one((kind as u8, name)) as usize) % LOG_SHARDS
    }

    /// Records a purge before it removes anything; returns its generation.
    /// The generation is taken under the lock it is recorded under, so a
    /// fill holding that lock sees the purge whole or not at all.
    pub fn record(&self, selection: &Selection) -> u64 {
        let Some((kind, name)) = selection.key() else {
            return self.record_broad(Broad::Prefix(selection.clone()));
        };
        let mut shard = lock(&self.named[self.shard_of(kind, name)]);
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let name: Arc<str> = name.into();
        shard.map_mut(kind).insert(name.clone(), generation);
        shard.order.push_back((generation, kind, name));
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

    /// Records a purge of everything (entries stored before the purges
    /// could be heard again); returns its generation.
    pub fn record_everything(&self) -> u64 {
        self.record_broad(Broad::Everything)
    }

    fn record_broad(&self, record: Broad) -> u64 {
        let mut broad = self.broad.write().unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        broad.push_back((generation, record));
        while broad.len() > RECORDS_PER_SHARD {
            if let Some((forgotten, _)) = broad.pop_front() {
                self.floor.fetch_max(forgotten, Ordering::AcqRel);
            }
        }
        generation
    }

    /// The log held for a fill with these names: its check, then its
    /// insert, under the guard.
    pub fn guard(&self, fill: &EntryNames<'_>) -> Guard<'_> {
        let mut shards: SmallVec<[usize; 8]> = SmallVec::new();
        shards.push(self.shard_of(NameKind::Uri, fill.uri));
        shards.push(self.shard_of(NameKind::Route, fill.route));
        shards.extend(fill.tags.iter().map(|t| self.shard_of(NameKind::Tag, t)));
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
    selection: Selection,
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
    pub fn add(&self, generation: u64, selection: &Selection, named: usize) -> (usize, bool) {
        let mut bans = self.write();
        if let Some(ban) = bans.iter_mut().find(|b| b.selection == *selection) {
            ban.generation = ban.generation.max(generation);
            ban.again |= ban.running;
            let more = named.saturating_sub(ban.banned);
            ban.banned += more;
            return (more, false);
        }
        bans.push(Ban {
            selection: selection.clone(),
            generation,
            running: false,
            again: false,
            banned: named,
        });
        self.count.store(bans.len(), Ordering::Release);
        (named, true)
    }

    /// The reclaimer starts on `selection`'s ban: the generation to
    /// reclaim below (`None` if there is no such ban).
    pub fn start(&self, selection: &Selection) -> Option<u64> {
        let mut bans = self.write();
        let ban = bans.iter_mut().find(|b| b.selection == *selection)?;
        ban.running = true;
        ban.again = false;
        Some(ban.generation)
    }

    /// The reclaimer finished a pass over `selection`'s entries.
    pub fn after_pass(&self, selection: &Selection) -> AfterPass {
        let mut bans = self.write();
        let Some(at) = bans.iter().position(|b| b.selection == *selection) else {
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
    pub fn bans(&self, generation: u64, entry: &EntryNames<'_>) -> bool {
        self.bans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|b| b.generation > generation && b.selection.names(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill<'a>(uri: &'a str, route: &'a str, tags: &'a [Arc<str>]) -> EntryNames<'a> {
        EntryNames { uri, route, tags }
    }

    fn uri(u: &str) -> Selection {
        Selection::Uri(u.into())
    }

    fn tag(t: &str) -> Selection {
        Selection::Tag(t.into())
    }

    fn prefix(p: &str, host: Option<&str>) -> Selection {
        Selection::Prefix {
            prefix: p.into(),
            host: host.map(Into::into),
        }
    }

    #[test]
    fn a_purge_after_the_ticket_that_names_the_fill_wins() {
        let log = PurgeLog::default();
        let ticket = log.ticket(0, 0);
        let tags: Vec<Arc<str>> = vec!["product-1".into()];
        let f = fill("h/a?x=1", "api", &tags);
        assert!(!log.guard(&f).overtaken(ticket, &f));
        log.record(&uri("h/other"));
        assert!(!log.guard(&f).overtaken(ticket, &f), "another URI");
        log.record(&tag("product-1"));
        assert!(log.guard(&f).overtaken(ticket, &f));
        let later = log.ticket(0, 0);
        assert!(
            !log.guard(&f).overtaken(later, &f),
            "a fill that began after it"
        );
        for record in [
            uri("h/a?x=1"),
            prefix("/a", Some("h")),
            prefix("/a", None),
            Selection::Route("api".into()),
        ] {
            let t = log.ticket(0, 0);
            log.record(&record);
            assert!(log.guard(&f).overtaken(t, &f), "{record:?}");
        }
        let t = log.ticket(0, 0);
        log.record_everything();
        assert!(log.guard(&f).overtaken(t, &f), "everything");
    }

    #[test]
    fn a_fill_older_than_what_is_remembered_is_dropped() {
        let log = PurgeLog::default();
        let ticket = log.ticket(0, 0);
        // Repeating one name forgets nothing: only its newest record lives.
        for _ in 0..LOG_SHARDS * RECORDS_PER_SHARD * 2 {
            log.record(&uri("h/hot"));
        }
        let f = fill("h/unrelated", "api", &[]);
        assert!(
            !log.guard(&f).overtaken(ticket, &f),
            "nothing live forgotten"
        );
        for i in 0..LOG_SHARDS * RECORDS_PER_SHARD * 2 {
            log.record(&uri(&format!("h/{i}")));
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
            log.record(&uri(&format!("h/other-{i}")));
        }
        assert!(!log.guard(&f).overtaken(ticket, &f));
        log.record(&tag("t2"));
        assert!(log.guard(&f).overtaken(ticket, &f), "its second tag");
        let later = log.ticket(0, 0);
        log.record(&prefix("/b", None));
        assert!(!log.guard(&f).overtaken(later, &f), "another prefix");
        log.record(&prefix("/", Some("h")));
        assert!(log.guard(&f).overtaken(later, &f), "its host");
    }

    #[test]
    fn a_repeated_ban_raises_the_pending_one_instead_of_adding_another() {
        let pending = PendingPurges::default();
        let tag = || tag("t");
        assert_eq!(pending.add(5, &tag(), 100), (100, true));
        assert_eq!(
            pending.add(9, &tag(), 100),
            (0, false),
            "raised, not queued"
        );
        assert_eq!(pending.len(), 1);
        let tags: Vec<Arc<str>> = vec!["t".into()];
        let entry = fill("h/a", "api", &tags);
        assert!(pending.bans(7, &entry), "stored between the two purges");
        assert_eq!(pending.start(&tag()), Some(9));
        assert_eq!(pending.add(12, &tag(), 150), (50, false), "50 more named");
        assert!(matches!(pending.after_pass(&tag()), AfterPass::Again(12)));
        assert!(matches!(pending.after_pass(&tag()), AfterPass::Lifted(150)));
        assert!(!pending.any());
        assert!(!pending.bans(7, &entry));
    }
}
