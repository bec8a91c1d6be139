//! Purges win over fills. Every purge (by URL, prefix, route, tag, an
//! unsafe method's invalidation, another instance's purge, a soft purge)
//! gets the next generation and is remembered for a while; every fill —
//! a miss's response, a revalidation, an entry promoted from Redis —
//! carries the generation current when its request began (a
//! [`FillTicket`], set on the cache key). When the fill is about to be
//! stored, a purge recorded since its ticket that names it wins: the fill
//! is dropped.
//!
//! Invariant (the store keeps it, `MemoryStore::store_fill`): the check
//! and the insert happen under this log's lock, and a purge is recorded
//! under the same lock before it selects what to remove. So a purge
//! recorded before a fill's check is seen by the check, and one recorded
//! after it selects (and removes) the stored fill.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Purges remembered. A fill whose ticket is older than the oldest one
/// kept is dropped: what it would need to be checked against is gone.
const MAX_RECORDS: usize = 16 * 1024;

/// When a fill's request began, in the purge generations it can be
/// checked against, carried in the cache key's extensions from the moment
/// the key is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillTicket {
    /// This instance's purge generation ([`PurgeLog`]).
    pub local: u64,
    /// The shared (Redis) purge generation this instance had heard of:
    /// the Redis tier's write script drops a write that a purge marker
    /// newer than this names (`cache::l2`).
    pub shared: u64,
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
}

struct Records {
    /// (generation, what it purged), oldest first.
    recent: VecDeque<(u64, PurgeRecord)>,
    /// Fills with a ticket below this cannot be checked (records dropped).
    floor: u64,
}

/// The recent purges and the current generation.
pub struct PurgeLog {
    generation: AtomicU64,
    records: Mutex<Records>,
}

impl Default for PurgeLog {
    fn default() -> Self {
        Self {
            generation: AtomicU64::new(0),
            records: Mutex::new(Records {
                recent: VecDeque::new(),
                floor: 0,
            }),
        }
    }
}

/// The log held locked: fills are checked and stored while holding it.
pub struct Locked<'a>(MutexGuard<'a, Records>);

impl Locked<'_> {
    /// Whether a purge recorded after `ticket` names `fill` (or the
    /// records it would need are gone): then the fill must not be stored.
    pub fn overtaken(&self, ticket: FillTicket, fill: &FillNames<'_>) -> bool {
        if ticket.local < self.0.floor {
            return true;
        }
        self.0
            .recent
            .iter()
            .rev()
            .take_while(|(generation, _)| *generation > ticket.local)
            .any(|(_, record)| record.names(fill))
    }
}

impl PurgeLog {
    /// The ticket of a fill beginning now, with the shared generation
    /// this instance has heard of.
    pub fn ticket(&self, shared: u64) -> FillTicket {
        FillTicket {
            local: self.generation.load(Ordering::Acquire),
            shared,
            began: std::time::Instant::now(),
        }
    }

    /// Records a purge before it removes anything; returns its generation.
    pub fn record(&self, record: PurgeRecord) -> u64 {
        let mut records = self.lock_records();
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        records.recent.push_back((generation, record));
        while records.recent.len() > MAX_RECORDS {
            if let Some((dropped, _)) = records.recent.pop_front() {
                records.floor = dropped;
            }
        }
        generation
    }

    /// The log, locked for a fill's check and insert.
    pub fn lock(&self) -> Locked<'_> {
        Locked(self.lock_records())
    }

    fn lock_records(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
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
        let ticket = log.ticket(0);
        let tags: Vec<Arc<str>> = vec!["product-1".into()];
        let f = fill("h/a?x=1", "api", &tags);
        assert!(!log.lock().overtaken(ticket, &f));
        log.record(PurgeRecord::Uri("h/other".into()));
        assert!(!log.lock().overtaken(ticket, &f), "another URI");
        log.record(PurgeRecord::Tag("product-1".into()));
        assert!(log.lock().overtaken(ticket, &f));
        let later = log.ticket(0);
        assert!(
            !log.lock().overtaken(later, &f),
            "a fill that began after it"
        );
        for record in [
            PurgeRecord::Uri("h/a?x=1".into()),
            PurgeRecord::Prefix("h/a".into()),
            PurgeRecord::PathPrefix("/a".into()),
            PurgeRecord::Route("api".into()),
            PurgeRecord::Everything,
        ] {
            let t = log.ticket(0);
            log.record(record.clone());
            assert!(log.lock().overtaken(t, &f), "{record:?}");
        }
    }

    #[test]
    fn a_fill_older_than_what_is_remembered_is_dropped() {
        let log = PurgeLog::default();
        let ticket = log.ticket(0);
        for i in 0..MAX_RECORDS + 1 {
            log.record(PurgeRecord::Uri(format!("h/{i}").into()));
        }
        let f = fill("h/unrelated", "api", &[]);
        assert!(log.lock().overtaken(ticket, &f));
        assert!(!log.lock().overtaken(log.ticket(0), &f));
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
