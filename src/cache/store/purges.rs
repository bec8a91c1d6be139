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
#[derive(Debug, Clone)]
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
#[derive(Default)]
pub struct PendingPurges {
    count: AtomicUsize,
    purges: std::sync::RwLock<Vec<(u64, PurgeRecord)>>,
}

impl PendingPurges {
    /// Adds a purge (before it answers).
    pub fn add(&self, generation: u64, record: PurgeRecord) {
        let mut purges = self.purges.write().unwrap_or_else(|p| p.into_inner());
        purges.push((generation, record));
        self.count.store(purges.len(), Ordering::Release);
    }

    /// A purge whose entries are all removed.
    pub fn done(&self, generation: u64) {
        let mut purges = self.purges.write().unwrap_or_else(|p| p.into_inner());
        purges.retain(|(g, _)| *g != generation);
        self.count.store(purges.len(), Ordering::Release);
    }

    /// Whether any purge is pending (the hit path's fast check).
    pub fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Whether a pending purge recorded after an entry stored at
    /// `generation` names it.
    pub fn bans(&self, generation: u64, entry: &FillNames<'_>) -> bool {
        self.purges
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(g, record)| *g > generation && record.names(entry))
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
}
