//! The shared parts of invalidations, queued off the answer path: the
//! tier's queue for purges, as its writer's queue is for fills.
//!
//! An unsafe request's invalidation takes effect in this instance's memory
//! before it is answered; its shared part (markers in Redis, the drain,
//! the announcement to the other instances, `invalidation::shared`) waits
//! here and is sent by a task of its own (`invalidation::sender`), so no
//! answer waits on Redis, and a hung Redis costs a request nothing.
//!
//! - **Coalesced**: a purge identical to one still waiting is not queued
//!   again (the waiting one's markers, set later, cover both). One already
//!   in flight is not a reason to skip: its markers may predate the new
//!   write.
//! - **Bounded in bytes** ([`Outbox::new`]'s limit, counted in
//!   `tollgate_cache_invalidation_queue_bytes`): past it, a purge's shared
//!   part is dropped and counted (`…_shared_total{result="dropped"}`);
//!   the other instances then keep their copy until it expires.
//! - **Hiding**: from the moment a purge is queued (or held by an admin
//!   purge) until its markers are set and memory has been purged a second
//!   time, this instance takes nothing it names from Redis
//!   ([`Outbox::hides`]: one atomic load when nothing is hidden, else one
//!   of 16 shards' locks): invariant 4 of `invalidation`.
//! - **Failures** feed the tier's circuit breaker; while it is open the
//!   queue waits (bounded) and the first purge after `open_for` is the
//!   breaker's probe. A failed purge goes back to the front and is tried
//!   again.
//!
//! Hand-written: Pingora has no queue of this kind (its background
//! services are whole tasks, not bounded, coalescing work queues).

use super::RedisTier;
use crate::breaker::Permit;
use crate::cache::names::{EntryNames, Purge, Selection};
use crate::metrics::Metrics;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long the sender lets a batch gather before sending it, when fewer
/// than a batch wait: a write load's invalidations then cost one script
/// and one announcement per batch, for 2 ms more propagation.
const LINGER: Duration = Duration::from_millis(2);

/// Bytes a queued purge is counted as beside its names (its place in the
/// queue, the coalescing set and the hiding counts).
const QUEUED_OVERHEAD: usize = 160;

/// The default bound of the queue's memory.
pub const DEFAULT_LIMIT_BYTES: usize = 8 << 20;

/// What is queued and in flight.
#[derive(Default)]
struct Queue {
    /// Waiting, oldest first.
    waiting: VecDeque<Purge>,
    /// The same, for coalescing.
    waiting_set: HashSet<Purge>,
    /// Bytes counted for the waiting and in-flight purges.
    bytes: usize,
    /// Waiting plus in flight.
    len: usize,
}

/// Shards of the hidden URIs: a lookup locks one.
const HIDDEN_SHARDS: usize = 16;

type Counts = HashMap<Box<str>, usize, ahash::RandomState>;

/// What purges whose shared part is not done name, as the lookup path
/// asks it: URIs in shards chosen by their hash (a lookup takes one
/// shard's lock, and none when nothing is hidden), other selections in a
/// short list.
struct Hidden {
    uris: Box<[Mutex<Counts>]>,
    other: Mutex<Vec<(Selection, usize)>>,
    /// Hidden purges in all (the lookup path's one atomic load).
    count: AtomicUsize,
    /// Hidden purges that are not of one URI.
    other_count: AtomicUsize,
    hasher: ahash::RandomState,
}

impl Default for Hidden {
    fn default() -> Self {
        Self {
            uris: (0..HIDDEN_SHARDS).map(|_| Mutex::default()).collect(),
            other: Mutex::default(),
            count: AtomicUsize::new(0),
            other_count: AtomicUsize::new(0),
            hasher: ahash::RandomState::new(),
        }
    }
}

impl Hidden {
    fn shard(&self, uri: &str) -> MutexGuard<'_, Counts> {
        let at = (self.hasher.hash_one(uri) as usize) % HIDDEN_SHARDS;
        lock(&self.uris[at])
    }

    fn hide(&self, target: &Selection) {
        self.count.fetch_add(1, Ordering::AcqRel);
        match target {
            Selection::Uri(uri) => *self.shard(uri).entry(uri.as_str().into()).or_default() += 1,
            other => {
                self.other_count.fetch_add(1, Ordering::AcqRel);
                let mut list = lock(&self.other);
                match list.iter_mut().find(|(t, _)| t == other) {
                    Some((_, n)) => *n += 1,
                    None => list.push((other.clone(), 1)),
                }
            }
        }
    }

    fn unhide(&self, target: &Selection) {
        match target {
            Selection::Uri(uri) => {
                let mut shard = self.shard(uri);
                if let Some(n) = shard.get_mut(uri.as_str()) {
                    *n -= 1;
                    if *n == 0 {
                        shard.remove(uri.as_str());
                    }
                }
            }
            other => {
                let mut list = lock(&self.other);
                if let Some(i) = list.iter().position(|(t, _)| t == other) {
                    list[i].1 -= 1;
                    if list[i].1 == 0 {
                        list.swap_remove(i);
                    }
                }
                self.other_count.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.count.fetch_sub(1, Ordering::AcqRel);
    }

    fn hides_uri(&self, uri: &str) -> bool {
        self.count.load(Ordering::Acquire) > 0 && self.shard(uri).contains_key(uri)
    }

    fn hides(&self, names: &EntryNames<'_>) -> bool {
        self.hides_uri(names.uri)
            || self.other_count.load(Ordering::Acquire) > 0
                && lock(&self.other)
                    .iter()
                    .any(|(target, _)| target.names(names))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The bytes a purge is counted as while queued.
fn weight(purge: &Purge) -> usize {
    QUEUED_OVERHEAD
        + match &purge.selection {
            Selection::Uri(s) | Selection::Route(s) | Selection::Tag(s) => 2 * s.len(),
            Selection::Prefix { prefix, host } => {
                2 * (prefix.len() + host.as_ref().map_or(0, String::len))
            }
        }
}

/// The queue of shared parts of one instance, and what it hides.
pub struct Outbox {
    queue: Mutex<Queue>,
    /// What purges waiting, in flight or held name.
    hidden: Hidden,
    wake: tokio::sync::Notify,
    limit_bytes: usize,
    metrics: Arc<Metrics>,
}

/// An admin purge's hold on what it names: hidden from Redis lookups
/// until dropped (after its shared part and second memory pass).
pub struct Hold<'a> {
    outbox: &'a Outbox,
    target: Selection,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.outbox.unhide(&self.target);
    }
}

impl Outbox {
    /// An empty outbox whose queue holds at most `limit_bytes`.
    pub fn new(limit_bytes: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            hidden: Hidden::default(),
            wake: tokio::sync::Notify::new(),
            limit_bytes,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        lock(&self.queue)
    }

    /// Queues `purge`'s shared part (its memory part is done); never
    /// waits. Returns false when it was dropped (the queue is full).
    pub fn push(&self, purge: Purge) -> bool {
        let mut queue = self.lock();
        if queue.waiting_set.contains(&purge) {
            drop(queue);
            self.count("coalesced");
            return true;
        }
        let bytes = weight(&purge);
        if queue.bytes + bytes > self.limit_bytes {
            drop(queue);
            self.count("dropped");
            log::warn!("cache: the invalidation queue is full ({} bytes); a purge is not shared with Redis and the other instances", self.limit_bytes);
            return false;
        }
        self.hidden.hide(&purge.selection);
        queue.waiting_set.insert(purge.clone());
        queue.waiting.push_back(purge);
        queue.bytes += bytes;
        queue.len += 1;
        self.publish_gauges(&queue);
        drop(queue);
        self.wake.notify_one();
        true
    }

    /// Hides what `target` names from Redis lookups until the hold is
    /// dropped (an admin purge, which sends its shared part itself).
    pub fn hold(&self, target: &Selection) -> Hold<'_> {
        self.hidden.hide(target);
        Hold {
            outbox: self,
            target: target.clone(),
        }
    }

    fn unhide(&self, target: &Selection) {
        self.hidden.unhide(target);
    }

    /// Whether a purge whose shared part is not done names this URI (the
    /// check before a Redis lookup; one atomic load when nothing waits).
    pub fn hides_uri(&self, uri: &str) -> bool {
        self.hidden.hides_uri(uri)
    }

    /// Whether a purge whose shared part is not done names an entry (the
    /// check of what a Redis lookup returned, before it is served or
    /// promoted).
    pub fn hides(&self, names: &EntryNames<'_>) -> bool {
        self.hidden.hides(names)
    }

    /// Shared parts waiting or in flight.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether nothing waits or is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes the sender: something is waiting again.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn count(&self, result: &str) {
        self.metrics
            .cache_invalidations_shared
            .with_label_values(&[result])
            .inc();
    }

    fn publish_gauges(&self, queue: &Queue) {
        self.metrics
            .cache_invalidation_queue
            .set(i64::try_from(queue.len).unwrap_or(i64::MAX));
        self.metrics
            .cache_invalidation_queue_bytes
            .set(i64::try_from(queue.bytes).unwrap_or(i64::MAX));
    }

    /// The oldest waiting purges, now in flight (still hidden and
    /// counted): up to `most` hard URI invalidations in a row, or one purge
    /// of another kind.
    fn take(&self, most: usize) -> Vec<Purge> {
        let mut queue = self.lock();
        let mut taken = Vec::new();
        while taken.len() < most {
            let Some(front) = queue.waiting.front() else {
                break;
            };
            let batchable = !front.soft && matches!(front.selection, Selection::Uri(_));
            if !taken.is_empty() && !batchable {
                break;
            }
            let Some(purge) = queue.waiting.pop_front() else {
                break;
            };
            queue.waiting_set.remove(&purge);
            taken.push(purge);
            if !batchable {
                break;
            }
        }
        taken
    }

    /// A purge whose shared part failed, back at the front (unless an
    /// identical one is waiting: it covers this one).
    pub(crate) fn retry(&self, purge: Purge) {
        let mut queue = self.lock();
        if queue.waiting_set.contains(&purge) {
            drop(queue);
            self.finish(&purge);
            return;
        }
        queue.waiting_set.insert(purge.clone());
        queue.waiting.push_front(purge);
    }

    /// A purge whose shared part is done: no longer hidden or counted.
    pub(crate) fn finish(&self, purge: &Purge) {
        self.hidden.unhide(&purge.selection);
        let mut queue = self.lock();
        queue.bytes = queue.bytes.saturating_sub(weight(purge));
        queue.len = queue.len.saturating_sub(1);
        self.publish_gauges(&queue);
    }

    /// Waits for purges that may be sent now: some are waiting and the
    /// tier's breaker lets them through (or wants them as its probe).
    pub(crate) async fn next_sendable(&self, tier: &RedisTier, most: usize) -> Vec<Purge> {
        loop {
            let notified = self.wake.notified();
            let waiting = self.lock().waiting.len();
            if waiting > 0 {
                match tier.permit() {
                    Permit::Ask | Permit::SkipAndProbe => {
                        if waiting < most && most > 1 {
                            tokio::time::sleep(LINGER).await;
                        }
                        return self.take(most);
                    }
                    Permit::Skip => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch as large as the sender's.
    const BATCH: usize = 64;

    fn uri(u: &str) -> Purge {
        Purge {
            selection: Selection::Uri(u.into()),
            soft: false,
        }
    }

    fn names<'a>(uri: &'a str, route: &'a str, tags: &'a [Arc<str>]) -> EntryNames<'a> {
        EntryNames { uri, route, tags }
    }

    #[test]
    fn waiting_purges_coalesce_hide_what_they_name_and_are_bounded_in_bytes() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let outbox = Outbox::new(4 * weight(&uri("h/a")), metrics.clone());
        assert!(!outbox.hides_uri("h/a"));
        assert!(outbox.push(uri("h/a")));
        assert!(outbox.push(uri("h/a")), "coalesced");
        assert_eq!(outbox.len(), 1);
        assert!(outbox.hides_uri("h/a"));
        assert!(outbox.hides(&names("h/a", "api", &[])));
        assert!(!outbox.hides(&names("h/b", "api", &[])));
        let tag = Purge {
            selection: Selection::Tag("t1".into()),
            soft: false,
        };
        assert!(outbox.push(tag.clone()));
        let tags: Vec<Arc<str>> = vec!["t1".into()];
        assert!(outbox.hides(&names("h/c", "api", &tags)));
        assert!(outbox.push(uri("h/b")));
        assert!(!outbox.push(uri("h/long-enough-to-pass-the-bound")), "full");
        assert!(!outbox.hides_uri("h/long-enough-to-pass-the-bound"));
        let shared = |r: &str| {
            metrics
                .cache_invalidations_shared
                .with_label_values(&[r])
                .get()
        };
        assert_eq!((shared("coalesced"), shared("dropped")), (1, 1));

        // In flight: still hidden, no longer coalescing.
        let first = outbox.take(1).pop().expect("waiting");
        assert_eq!(first, uri("h/a"));
        assert!(outbox.hides_uri("h/a"));
        assert!(
            outbox.push(uri("h/a")),
            "queued again behind the one in flight"
        );
        outbox.finish(&first);
        assert!(outbox.hides_uri("h/a"), "the second one still hides it");
        // A failed one goes back, unless an identical one waits.
        let tag_sent = outbox.take(1).pop().expect("tag");
        assert_eq!(tag_sent, tag);
        outbox.retry(tag_sent);
        assert_eq!(outbox.take(1), vec![tag.clone()], "at the front again");
        outbox.finish(&tag);
        assert!(!outbox.hides(&names("h/c", "api", &tags)));
        loop {
            let batch = outbox.take(BATCH);
            if batch.is_empty() {
                break;
            }
            batch.iter().for_each(|p| outbox.finish(p));
        }
        assert!(outbox.is_empty());
        assert!(!outbox.hides_uri("h/a"));
        assert_eq!(metrics.cache_invalidation_queue_bytes.get(), 0);
    }

    #[test]
    fn uri_invalidations_are_taken_in_batches_and_others_alone() {
        let outbox = Outbox::new(DEFAULT_LIMIT_BYTES, Arc::new(Metrics::new().expect("m")));
        let tag = Purge {
            selection: Selection::Tag("t".into()),
            soft: false,
        };
        for purge in [uri("h/a"), uri("h/b"), tag.clone(), uri("h/c")] {
            outbox.push(purge);
        }
        assert_eq!(outbox.take(BATCH), vec![uri("h/a"), uri("h/b")]);
        assert_eq!(outbox.take(BATCH), vec![tag]);
        assert_eq!(outbox.take(1), vec![uri("h/c")]);
        assert!(outbox.take(BATCH).is_empty());
    }

    #[test]
    fn a_hold_hides_until_dropped() {
        let outbox = Outbox::new(DEFAULT_LIMIT_BYTES, Arc::new(Metrics::new().expect("m")));
        let route = Selection::Route("api".into());
        let hold = outbox.hold(&route);
        assert!(outbox.hides(&names("h/x", "api", &[])));
        assert!(!outbox.hides(&names("h/x", "other", &[])));
        drop(hold);
        assert!(!outbox.hides(&names("h/x", "api", &[])));
    }
}
