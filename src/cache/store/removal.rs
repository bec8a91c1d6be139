//! Purges of the memory store: selecting what a purge names through the
//! indexes, removing it in batches that release the locks, soft purges,
//! and large purges' bans and their reclaimer thread (a purge naming
//! more than [`INLINE_PURGE`] cached URLs answers once banned; see
//! `purge_log::PendingPurges`).

use super::entry::Entry;
use super::index::Indexes;
use super::keyhash::KeyHashSet;
use super::purge_log::{AfterPass, PendingPurges};
use super::{read, write, MemoryStore};
use crate::cache::names::{EntryNames, Selection};
use pingora::cache::key::HashBinary;
use pingora::http::ResponseHeader;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// Primaries removed under one taking of a shard's lock during a purge
/// (the purging thread yields between batches): bounds how long a hit
/// waits behind a purge, about one batch. Measured in the book's benchmark
/// history, "Tuned constants".
const PURGE_BATCH: usize = 16;

/// Primaries a purge removes before it answers. A larger purge answers
/// once its entries are banned (recorded as pending: lookups treat them as
/// absent, `purge_log::PendingPurges`) and leaves their removal to the
/// reclaimer thread, so a purge of a million entries takes effect in the
/// time it takes to count them (O(1) for a URL, route or tag), not to
/// free them.
const INLINE_PURGE: usize = 1024;

/// The reclaimer removes this many primaries at a time and then rests
/// [`RECLAIM_REST`] times as long as the batch took: bounds it to a fifth
/// of a core beside the workers. Measured in the book's benchmark history,
/// "Tuned constants".
const RECLAIM_BATCH: usize = 8;
const RECLAIM_REST: u32 = 4;

/// Large purges' removal state, owned by the store and reached only
/// here: the bans lookups check until the reclaimer has removed what they
/// name, how many banned entries are not freed yet, and the reclaimer
/// thread's queue (started by the first large purge).
#[derive(Default)]
pub(super) struct Reclamation {
    pending: PendingPurges,
    unreclaimed: AtomicUsize,
    reclaimer: OnceLock<Option<std::sync::mpsc::Sender<Reclaim>>>,
}

impl Reclamation {
    /// Whether a large purge is pending (one lock-free check when none is).
    pub(super) fn any_pending(&self) -> bool {
        self.pending.any()
    }

    /// Whether a pending purge bans an entry stored at `generation` and
    /// found by `names`.
    pub(super) fn bans(&self, generation: u64, names: &EntryNames<'_>) -> bool {
        self.pending.bans(generation, names)
    }

    /// Entries banned by pending purges and not yet removed.
    pub(super) fn unreclaimed(&self) -> usize {
        self.unreclaimed.load(Ordering::Relaxed)
    }
}

/// A large purge's removal, for the reclaimer: the entries `selection`
/// names stored before its ban's generation (read when it starts, as a
/// repeated purge may have raised it).
pub(super) struct Reclaim {
    selection: Selection,
}

impl MemoryStore {
    /// The primaries a purge names (all their variants go, or are marked
    /// stale, together), by shard.
    pub(super) fn select(&self, selection: &Selection) -> Vec<Vec<HashBinary>> {
        self.per_shard(selection, |sets| {
            sets.flat_map(|set| set.iter().copied()).collect()
        })
    }

    /// How many primaries a purge names now (without collecting them).
    pub(super) fn count_named(&self, selection: &Selection) -> usize {
        self.per_shard(selection, |sets| sets.map(|set| set.len()).sum::<usize>())
            .into_iter()
            .sum()
    }

    /// `f` of each shard's index sets that `selection` names, each shard's
    /// index read under its own lock, one shard at a time.
    fn per_shard<T>(
        &self,
        selection: &Selection,
        f: impl Fn(&mut dyn Iterator<Item = &KeyHashSet>) -> T,
    ) -> Vec<T> {
        let scope = Scope::of(selection);
        self.shards()
            .iter()
            .map(|shard| {
                let shard = read(shard);
                let mut sets = named_sets(&shard.index, &scope);
                f(&mut sets)
            })
            .collect()
    }

    /// Removes the variants of `primaries` (grouped by shard) that
    /// `matches`, in batches of [`PURGE_BATCH`] that release the locks
    /// between them, yielding the CPU after each; returns how many.
    /// `paced` (the reclaimer): batches of [`RECLAIM_BATCH`], each followed
    /// by a rest of [`RECLAIM_REST`] times as long as it took.
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
                    let mut shard = write(&self.shards()[shard]);
                    for primary in batch {
                        removed.extend(shard.remove_variants_where(primary, &matches));
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

    /// Bans what `selection` names among the entries stored before
    /// `generation` (lookups no longer see them) and counts `named`
    /// primaries as unreclaimed; returns the job that removes them, or
    /// `None` when an identical ban was pending and was raised instead
    /// (its reclaim takes these too).
    pub(super) fn ban(
        &self,
        generation: u64,
        selection: &Selection,
        named: usize,
    ) -> Option<Reclaim> {
        let (more, new) = self.reclamation.pending.add(generation, selection, named);
        self.reclamation
            .unreclaimed
            .fetch_add(more, Ordering::Relaxed);
        new.then(|| Reclaim {
            selection: selection.clone(),
        })
    }

    /// Removes a banned purge's entries (again, if the ban was raised
    /// meanwhile), then lifts the ban.
    pub(super) fn reclaim(&self, job: Reclaim, paced: bool) {
        let Some(mut generation) = self.reclamation.pending.start(&job.selection) else {
            return;
        };
        let banned = loop {
            let primaries = self.select(&job.selection);
            self.remove_primaries_where(&primaries, |e| e.generation < generation, paced);
            match self.reclamation.pending.after_pass(&job.selection) {
                AfterPass::Again(raised) => generation = raised,
                AfterPass::Lifted(banned) => break banned,
            }
        };
        // Entries evicted or replaced meanwhile were banned but not removed
        // here: the whole count goes.
        let _ =
            self.reclamation
                .unreclaimed
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(banned))
                });
    }

    /// The reclaimer's queue, its thread started on first use; `None` when
    /// the thread cannot start (purges then remove everything at once).
    fn reclaimer(&'static self) -> Option<&'static std::sync::mpsc::Sender<Reclaim>> {
        self.reclamation.reclaimer
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
    fn expire_primaries(&self, primaries: Vec<Vec<HashBinary>>, now: SystemTime) -> usize {
        let mut expired = 0;
        for (shard, primaries) in primaries.iter().enumerate() {
            for batch in primaries.chunks(PURGE_BATCH) {
                let mut changed = Vec::new();
                {
                    let mut shard = write(&self.shards()[shard]);
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
                    self.hold(&new);
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
    pub fn purge_selection(&'static self, selection: &Selection) -> usize {
        let generation = self.purge_log().record(selection);
        let named = self.count_named(selection);
        if named > INLINE_PURGE {
            if let Some(reclaimer) = self.reclaimer() {
                if let Some(job) = self.ban(generation, selection, named) {
                    if let Err(std::sync::mpsc::SendError(job)) = reclaimer.send(job) {
                        self.reclaim(job, false);
                    }
                }
                return named;
            }
        }
        let primaries = self.select(selection);
        self.remove_primaries_where(&primaries, |e| e.generation < generation, false)
    }

    /// Marks every entry `selection` names stale from `now` on (a soft
    /// purge), after recording it like a purge; returns how many.
    pub fn expire_selection(&self, selection: &Selection, now: SystemTime) -> usize {
        self.purge_log().record(selection);
        let primaries = self.select(selection);
        self.expire_primaries(primaries, now)
    }

    /// Removes every stored variant of exactly this URI (as built by
    /// [`crate::cache::key`]); returns how many entries went.
    pub fn purge_uri(&'static self, uri: &str) -> usize {
        self.purge_selection(&Selection::Uri(uri.to_owned()))
    }

    /// Removes the stored variants of exactly this URI whose header
    /// `matches` (RFC 9111 §4.3.5: those a HEAD response shows changed).
    /// Fills in flight for the URI are dropped whichever variant they are.
    pub fn purge_uri_where(&self, uri: &str, matches: impl Fn(&ResponseHeader) -> bool) -> usize {
        let selection = Selection::Uri(uri.to_owned());
        let generation = self.purge_log().record(&selection);
        let primaries = self.select(&selection);
        let matches = |e: &Entry| e.generation < generation && matches(&e.header);
        self.remove_primaries_where(&primaries, matches, false)
    }

    /// Removes every entry stored (created) before `cutoff`, and drops
    /// every fill in flight; returns how many. Walks every shard, one
    /// batch at a time.
    pub fn purge_created_before(&self, cutoff: SystemTime) -> usize {
        self.purge_log().record_everything();
        let primaries: Vec<Vec<HashBinary>> = self
            .shards
            .iter()
            .map(|shard| {
                let shard = read(shard);
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
                    .map(|(hash, _)| *hash)
                    .collect()
            })
            .collect();
        self.remove_primaries_where(&primaries, |_| true, false)
    }
}

/// A selection as the indexes are searched for it (a host prefix
/// joined once, not per shard).
enum Scope<'a> {
    Uri(&'a str),
    /// URIs starting with this (`host` + path prefix).
    UriPrefix(String),
    /// URIs whose path (any host) starts with this.
    PathPrefix(&'a str),
    Route(&'a str),
    Tag(&'a str),
}

impl<'a> Scope<'a> {
    fn of(selection: &'a Selection) -> Self {
        match selection {
            Selection::Uri(uri) => Scope::Uri(uri),
            Selection::Prefix {
                prefix,
                host: Some(host),
            } => Scope::UriPrefix(format!("{host}{prefix}")),
            Selection::Prefix { prefix, host: None } => Scope::PathPrefix(prefix),
            Selection::Route(route) => Scope::Route(route),
            Selection::Tag(tag) => Scope::Tag(tag),
        }
    }
}

/// The index sets whose primaries `scope` names.
fn named_sets<'a>(
    index: &'a Indexes,
    scope: &'a Scope<'a>,
) -> Box<dyn Iterator<Item = &'a KeyHashSet> + 'a> {
    match scope {
        Scope::Uri(uri) => Box::new(index.by_uri.get(*uri).into_iter()),
        Scope::UriPrefix(prefix) => Box::new(
            index
                .by_uri
                .range::<str, _>((
                    std::ops::Bound::Included(prefix.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(move |(uri, _)| uri.starts_with(prefix.as_str()))
                .map(|(_, set)| set),
        ),
        // Walks the shard's URI index: an admin operation, not a request's.
        Scope::PathPrefix(path_prefix) => Box::new(
            index
                .by_uri
                .iter()
                .filter(move |(uri, _)| {
                    let split = uri.find('/').unwrap_or(uri.len());
                    uri[split..].starts_with(*path_prefix)
                })
                .map(|(_, set)| set),
        ),
        Scope::Route(route) => Box::new(index.by_route.get(*route).into_iter()),
        Scope::Tag(tag) => Box::new(index.by_tag.get(*tag).into_iter()),
    }
}
