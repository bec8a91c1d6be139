//! The store's invariants, under any sequence of fills, evictions, purges
//! and soft purges, and the purge-over-fill rule.

use super::removal::Reclaim;
use super::*;
use crate::cache::names::Selection;
use pingora::cache::key::CacheKey;
use pingora::cache::trace::Span;
use pingora::cache::{CacheMeta, Storage};
use proptest::prelude::*;
use std::collections::HashSet;
use std::time::Duration;

const URIS: [&str; 5] = ["h/a", "h/a?x=1", "h/ab", "g/a", "h/b/c"];
const ROUTES: [&str; 2] = ["api", "web"];
const TAGS: [&str; 4] = ["t1", "t2", "t3", "t4"];

fn leak() -> &'static MemoryStore {
    let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new()));
    store.set_tag_headers(vec![http::HeaderName::from_static("cache-tag")]);
    store
}

/// The key of `uri` on `route`, as `cache::key` builds one, with a
/// variance when `variant` is not 0, and the store's ticket from now.
fn key_of(store: &MemoryStore, uri: &str, route: &str, variant: u8) -> CacheKey {
    let primary = format!("{uri}\nhttp {route} up");
    let hash = pingora::cache::key::hash_key(&primary);
    let mut key = CacheKey::new(primary, "");
    key.set_primary_bin_override(hash);
    if variant != 0 {
        key.set_variance_key([variant; 16]);
    }
    key.extensions.insert(store.ticket());
    key
}

fn meta_of(key: &CacheKey, tags: &[&str]) -> CacheMeta {
    let mut resp = ResponseHeader::build(200, None).expect("resp");
    resp.insert_header("content-length", "2").expect("length");
    if !tags.is_empty() {
        resp.insert_header("cache-tag", tags.join(","))
            .expect("tags");
    }
    let now = SystemTime::now();
    let mut meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, resp);
    if let Some(variance) = key.variance_bin() {
        meta.set_variance(variance);
    }
    meta
}

/// Runs a miss for `key` to the end, as Pingora's miss path does.
async fn fill(store: &'static MemoryStore, key: &CacheKey, tags: &[&str]) -> usize {
    let span = Span::inactive().handle();
    let mut miss = store
        .get_miss_handler(key, &meta_of(key, tags), &span)
        .await
        .expect("miss handler");
    miss.write_body(Bytes::from_static(b"{}"), true)
        .await
        .expect("body");
    match miss.finish().await.expect("finish") {
        pingora::cache::storage::MissFinishType::Created(w) => w,
        pingora::cache::storage::MissFinishType::Appended(w, _) => w,
    }
}

async fn present(store: &'static MemoryStore, key: &CacheKey) -> bool {
    let span = Span::inactive().handle();
    store.lookup(key, &span).await.expect("lookup").is_some()
}

impl MemoryStore {
    /// Panics unless every index agrees with the entries and the counters
    /// with both.
    fn assert_consistent(&self) {
        let (mut count, mut bytes) = (0usize, 0u64);
        for (n, shard) in self.shards.iter().enumerate() {
            let shard = read(shard);
            let index = &shard.index;
            for (combined, entry) in &shard.entries {
                assert_eq!(shard_of(&entry.primary), n, "entry in its primary's shard");
                let p = shard
                    .primaries
                    .get(&entry.primary)
                    .expect("entry's primary");
                assert!(p.variants.contains(combined), "primary lists its entry");
                count += 1;
                bytes += entry.weight() as u64;
            }
            let mut primaries_seen = HashSet::new();
            for (hash, p) in &shard.primaries {
                assert!(!p.variants.is_empty(), "a primary has a variant");
                for v in &p.variants {
                    assert!(shard.entries.contains_key(v), "variant stored");
                }
                assert!(index.by_uri.get(&p.uri).is_some_and(|s| s.contains(hash)));
                assert!(index
                    .by_route
                    .get(&p.route)
                    .is_some_and(|s| s.contains(hash)));
                for tag in p.tags.iter() {
                    assert!(index.by_tag.get(tag).is_some_and(|s| s.contains(hash)));
                }
                primaries_seen.insert(*hash);
            }
            let primary = |hash: &HashBinary| {
                let p = shard
                    .primaries
                    .get(hash)
                    .expect("indexed primary exists in the index's shard");
                (p.uri.clone(), p.route.clone(), p.tags.clone())
            };
            for (uri, set) in &index.by_uri {
                assert!(!set.is_empty(), "no empty sets kept");
                for hash in set {
                    assert_eq!(primary(hash).0, *uri);
                }
            }
            for (route, set) in &index.by_route {
                assert!(!set.is_empty(), "no empty sets kept");
                for hash in set {
                    assert_eq!(primary(hash).1, *route);
                }
            }
            for (tag, set) in &index.by_tag {
                assert!(!set.is_empty(), "no empty sets kept");
                for hash in set {
                    assert!(primary(hash).2.contains(tag));
                }
            }
            let indexed: HashSet<HashBinary> = index.by_uri.values().flatten().copied().collect();
            assert_eq!(
                indexed, primaries_seen,
                "a shard's URI index holds exactly its primaries"
            );
        }
        assert_eq!(self.entries(), count, "entry count");
        assert_eq!(self.size_bytes(), bytes, "bytes");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Fill {
        uri: usize,
        route: usize,
        variant: u8,
        tags: Vec<usize>,
    },
    Evict {
        uri: usize,
        route: usize,
        variant: u8,
    },
    Purge(usize, usize),
    Expire(usize, usize),
    Everything,
    Encode {
        uri: usize,
        route: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..URIS.len(), 0..ROUTES.len(), 0u8..3, proptest::collection::vec(0..TAGS.len(), 0..4))
            .prop_map(|(uri, route, variant, tags)| Op::Fill { uri, route, variant, tags }),
        1 => (0..URIS.len(), 0..ROUTES.len(), 0u8..3)
            .prop_map(|(uri, route, variant)| Op::Evict { uri, route, variant }),
        2 => (0usize..5, 0usize..5).prop_map(|(kind, what)| Op::Purge(kind, what)),
        1 => (0usize..5, 0usize..5).prop_map(|(kind, what)| Op::Expire(kind, what)),
        1 => Just(Op::Everything),
        1 => (0..URIS.len(), 0..ROUTES.len()).prop_map(|(uri, route)| Op::Encode { uri, route }),
    ]
}

/// A selection of each kind, from small tables.
fn selection(kind: usize, what: usize) -> Selection {
    let prefix = |host: Option<&str>, prefix: &str| Selection::Prefix {
        prefix: prefix.into(),
        host: host.map(Into::into),
    };
    match kind {
        0 => Selection::Uri(URIS[what % URIS.len()].into()),
        1 => {
            let (host, path) = [("h", "/a"), ("h", "/"), ("g", "/"), ("h", "/b"), ("x", "/")][what];
            prefix(Some(host), path)
        }
        2 => prefix(None, ["/a", "/", "/b/", "/ab", "/z"][what]),
        3 => Selection::Route(ROUTES[what % ROUTES.len()].into()),
        _ => Selection::Tag(TAGS[what % TAGS.len()].into()),
    }
}

async fn apply(store: &'static MemoryStore, op: &Op) {
    match op {
        Op::Fill {
            uri,
            route,
            variant,
            tags,
        } => {
            let key = key_of(store, URIS[*uri], ROUTES[*route], *variant);
            let tags: Vec<&str> = tags.iter().map(|t| TAGS[*t]).collect();
            fill(store, &key, &tags).await;
        }
        Op::Evict {
            uri,
            route,
            variant,
        } => {
            let key = key_of(store, URIS[*uri], ROUTES[*route], *variant);
            store.remove_key(&key.to_compact());
        }
        Op::Purge(kind, what) => {
            store.purge_selection(&selection(*kind, *what));
        }
        Op::Expire(kind, what) => {
            store.expire_selection(&selection(*kind, *what), SystemTime::now());
        }
        Op::Everything => {
            store.purge_created_before(SystemTime::now() + Duration::from_secs(1));
        }
        Op::Encode { uri, route } => {
            let key = key_of(store, URIS[*uri], ROUTES[*route], 0);
            if let Some(hit) = store.fresh(&key.primary_bin(), SystemTime::now()) {
                store
                    .encoded_body(&hit.entry, "gzip", |b| Ok(Bytes::from(b.repeat(3))))
                    .await
                    .expect("encode");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_sequence_of_changes_keeps_every_index_consistent(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let store = leak();
        rt.block_on(async {
            for op in &ops {
                apply(store, op).await;
                store.assert_consistent();
            }
        });
    }
}

/// A store's changes, with large purges' bans and reclaims among them.
#[derive(Debug, Clone)]
enum Deferred {
    Op(Op),
    /// A purge as a large one runs: banned now, reclaimed later.
    Ban(usize, usize),
    /// The oldest ban's reclaim runs.
    Reclaim,
}

fn deferred() -> impl Strategy<Value = Deferred> {
    prop_oneof![
        6 => op().prop_map(Deferred::Op),
        2 => (0usize..5, 0usize..5).prop_map(|(kind, what)| Deferred::Ban(kind, what)),
        2 => Just(Deferred::Reclaim),
    ]
}

/// The entries (primary, combined key) stored before `generation` that
/// `record` names now: what a purge recorded at `generation` takes.
fn named_before(
    store: &MemoryStore,
    generation: u64,
    record: &Selection,
) -> Vec<(HashBinary, HashBinary)> {
    let mut named = Vec::new();
    for shard in store.shards.iter() {
        let shard = read(shard);
        for (combined, e) in &shard.entries {
            let p = shard.primaries.get(&e.primary).expect("primary");
            let names = EntryNames {
                uri: &p.uri,
                route: &p.route,
                tags: &p.tags,
            };
            if e.generation < generation && record.names(&names) {
                named.push((e.primary, *combined));
            }
        }
    }
    named
}

/// A ban held by the test: its generation and record, the entries it
/// took when it was set, and its reclaim.
type HeldBan = (
    u64,
    Selection,
    Vec<(HashBinary, HashBinary)>,
    Option<Reclaim>,
);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Bans hide what they took from every lookup until reclaimed —
    /// whatever fills (of other variants, with other tags) and evictions
    /// happen in between — every index stays consistent, and a reclaim
    /// leaves nothing its purge names that was stored before it.
    #[test]
    fn bans_and_reclaims_among_any_changes_keep_the_store_consistent(
        steps in proptest::collection::vec(deferred(), 1..60)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let store = leak();
        let mut held: std::collections::VecDeque<HeldBan> = Default::default();
        rt.block_on(async {
            for step in &steps {
                match step {
                    Deferred::Op(op) => apply(store, op).await,
                    Deferred::Ban(kind, what) => {
                        let record = selection(*kind, *what);
                        let generation = store.purges.record(&record);
                        let took = named_before(store, generation, &record);
                        let job = store.ban(generation, &record, store.count_named(&record));
                        held.push_back((generation, record, took, job));
                    }
                    Deferred::Reclaim => {
                        // A ban without a job was raised instead of added; its
                        // earlier reclaim took these too (checked then: names
                        // may change after a reclaim).
                        if let Some((generation, record, _, Some(job))) = held.pop_front() {
                            store.reclaim(job, false);
                            prop_assert!(named_before(store, generation, &record).is_empty());
                            for (raised, same, _, _) in &held {
                                if *same == record {
                                    prop_assert!(named_before(store, *raised, same).is_empty(), "a raised ban's entries");
                                }
                            }
                        }
                    }
                }
                store.assert_consistent();
                for (generation, _, took, _) in &held {
                    for (primary, combined) in took {
                        let Some(entry) = store.get(primary, combined) else {
                            continue;
                        };
                        if entry.generation >= *generation {
                            continue; // stored again since: not what the ban took
                        }
                        prop_assert!(store.get_live(primary, combined).is_none(), "a banned entry is served");
                        if primary == combined {
                            prop_assert!(store.fresh(primary, SystemTime::now()).is_none());
                        }
                    }
                }
            }
            while let Some((generation, record, _, job)) = held.pop_front() {
                if let Some(job) = job {
                    store.reclaim(job, false);
                    prop_assert!(named_before(store, generation, &record).is_empty());
                    for (raised, same, _, _) in &held {
                        if *same == record {
                            prop_assert!(named_before(store, *raised, same).is_empty(), "a raised ban's entries");
                        }
                    }
                }
            }
            prop_assert!(!store.reclamation.any_pending());
            prop_assert_eq!(store.unreclaimed(), 0);
            store.assert_consistent();
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_fill_that_began_before_a_purge_naming_it_is_dropped() {
    let store = leak();
    for selection in [
        Selection::Uri("h/a".into()),
        selection(1, 1),
        selection(2, 0),
        Selection::Route("api".into()),
        Selection::Tag("t1".into()),
    ] {
        let key = key_of(store, "h/a", "api", 0);
        store.purge_selection(&selection);
        fill(store, &key, &["t1"]).await;
        assert!(!present(store, &key).await, "{selection:?}");
        let later = key_of(store, "h/a", "api", 0);
        fill(store, &later, &["t1"]).await;
        assert!(
            present(store, &later).await,
            "a fill begun after it is stored"
        );
        store.purge_uri("h/a");
    }
    // A purge that names something else leaves the fill alone.
    let key = key_of(store, "h/a", "api", 0);
    store.purge_selection(&Selection::Tag("other".into()));
    store.purge_uri("h/b");
    fill(store, &key, &["t1"]).await;
    assert!(present(store, &key).await);
    // A soft purge and a purge of everything count too.
    let key = key_of(store, "h/c", "api", 0);
    store.expire_selection(&Selection::Route("api".into()), SystemTime::now());
    fill(store, &key, &[]).await;
    assert!(!present(store, &key).await, "soft purge");
    let key = key_of(store, "h/c", "api", 0);
    store.purge_created_before(SystemTime::now());
    fill(store, &key, &[]).await;
    assert!(!present(store, &key).await, "everything");
    store.assert_consistent();
}

#[tokio::test]
async fn a_revalidation_that_began_before_a_purge_does_not_resurrect() {
    let store = leak();
    let first = key_of(store, "h/a", "api", 0);
    fill(store, &first, &[]).await;
    let revalidating = key_of(store, "h/a", "api", 0);
    store.purge_uri("h/a");
    let refilled = key_of(store, "h/a", "api", 0);
    fill(store, &refilled, &[]).await;
    let span = Span::inactive().handle();
    let updated = store
        .update_meta(&revalidating, &meta_of(&revalidating, &[]), &span)
        .await
        .expect("update");
    assert!(
        !updated,
        "the old request's 304 is not applied to the new entry"
    );
    let later = key_of(store, "h/a", "api", 0);
    let updated = store
        .update_meta(&later, &meta_of(&later, &[]), &span)
        .await
        .expect("update");
    assert!(updated);
    store.assert_consistent();
}

#[tokio::test]
async fn a_refill_replaces_the_tags_and_weighs_them() {
    // The same response in a store that reads no tags weighs the tags less.
    let untagging: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new()));
    let key = key_of(untagging, "h/a", "api", 0);
    let untagged = fill(untagging, &key, &["t1", "t2"]).await;
    let store = leak();
    let key = key_of(store, "h/a", "api", 0);
    let tagged = fill(store, &key, &["t1", "t2"]).await;
    assert_eq!(tagged, untagged + 2 * (2 + entry::TAG_OVERHEAD));
    let key = key_of(store, "h/a", "api", 0);
    fill(store, &key, &["t3"]).await;
    assert_eq!(
        store.purge_selection(&Selection::Tag("t1".into())),
        0,
        "t1 replaced"
    );
    assert_eq!(store.purge_selection(&Selection::Tag("t3".into())), 1);
    store.assert_consistent();
}

#[tokio::test]
async fn concurrent_first_hits_encode_once() {
    let store = leak();
    let key = key_of(store, "h/a", "api", 0);
    let before = fill(store, &key, &[]).await;
    let encodings = std::sync::atomic::AtomicUsize::new(0);
    let hits: Vec<FreshHit> = (0..8)
        .map(|_| {
            store
                .fresh(&key.primary_bin(), SystemTime::now())
                .expect("fresh")
        })
        .collect();
    let encoded = futures::future::join_all(hits.iter().map(|hit| {
        store.encoded_body(&hit.entry, "gzip", |b| {
            encodings.fetch_add(1, Ordering::Relaxed);
            Ok(Bytes::from(b.repeat(4)))
        })
    }))
    .await;
    assert_eq!(encodings.load(Ordering::Relaxed), 1);
    assert!(encoded
        .iter()
        .all(|e| e.as_ref().is_ok_and(|b| b.len() == 8)));
    assert_eq!(
        store.size_bytes(),
        (before + 8 + ENCODED_OVERHEAD) as u64,
        "the copy is weighed once"
    );
    store.assert_consistent();
}

/// Waits (with a deadline) until the reclaimer has removed every banned
/// entry.
fn wait_reclaimed(store: &MemoryStore) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.reclamation.any_pending() {
        assert!(
            std::time::Instant::now() < deadline,
            "the reclaimer did not finish"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn fill_items(store: &'static MemoryStore, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for i in 0..n {
            let uri = format!("h/item/{i}");
            let key = key_of(store, &uri, "api", 0);
            let tags: &[&str] = if i % 2 == 0 { &["even"] } else { &["odd"] };
            fill(store, &key, tags).await;
        }
    });
}

#[test]
fn a_large_purge_removes_exactly_what_it_names() {
    let store = leak();
    fill_items(store, 20_000);
    assert_eq!(
        store.purge_selection(&Selection::Tag("even".into())),
        10_000
    );
    wait_reclaimed(store);
    assert_eq!(store.entries(), 10_000);
    store.assert_consistent();
    assert_eq!(
        store.purge_selection(&Selection::Route("api".into())),
        10_000
    );
    wait_reclaimed(store);
    assert_eq!(store.entries(), 0);
    assert_eq!(store.size_bytes(), 0);
    assert!(store.shards.iter().all(|s| read(s).index.by_tag.is_empty()));
}

#[test]
fn a_banned_purge_hides_its_entries_at_once_and_reclaims_only_them() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let store = leak();
    fill_items(store, 4_000);
    let purged_key = |i: usize| key_of(store, &format!("h/item/{i}"), "api", 0);
    let early = purged_key(0);
    let record = Selection::Tag("even".into());
    let generation = store.purges.record(&record);
    assert_eq!(store.count_named(&record), 2_000);
    let job = store.ban(generation, &record, 2_000).expect("a new ban");
    assert_eq!(store.unreclaimed(), 2_000);
    rt.block_on(async {
        for i in 0..4_000 {
            let key = purged_key(i);
            let banned = i % 2 == 0;
            assert_eq!(present(store, &key).await, !banned, "item {i}");
            assert_eq!(
                store.fresh(&key.primary_bin(), SystemTime::now()).is_some(),
                !banned,
                "item {i} on the fresh-hit path"
            );
        }
        // A request that began before the purge fetched item 0: dropped.
        // One that began after it stores item 2 again: kept, and served
        // although the old entries are still being reclaimed.
        fill(store, &early, &["even"]).await;
        assert!(!present(store, &purged_key(0)).await, "an overtaken fill");
        let refill = purged_key(2);
        fill(store, &refill, &["even"]).await;
        assert!(present(store, &refill).await, "a refill after the purge");
    });
    assert_eq!(store.entries(), 4_000, "nothing freed yet");
    store.reclaim(job, false);
    assert!(!store.reclamation.any_pending());
    assert_eq!(store.unreclaimed(), 0);
    assert_eq!(store.entries(), 2_001, "the odd items and the refill");
    store.assert_consistent();
    rt.block_on(async {
        assert!(present(store, &purged_key(2)).await);
        assert!(!present(store, &purged_key(4)).await);
        assert!(present(store, &purged_key(3)).await);
    });
}
