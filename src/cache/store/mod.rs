//! The memory tier behind Pingora's `Storage` trait.
//!
//! pingora-cache's `MemCache` is a test store (unbounded, copies bodies on
//! every write), so this is our own: entries are `Bytes` shared by every
//! hit, size is bounded by Pingora's LRU eviction manager (which tells
//! Pingora what to purge once the total weight passes `cache.max_size`), and
//! an index by request URI supports purge by exact URL and by prefix.
//! A Redis tier can sit behind the same trait later.
//!
//! Memory: the eviction manager weighs what an entry really holds — its
//! body, its header as kept in memory, and a fixed per-entry allowance for
//! the index and the LRU node ([`ENTRY_OVERHEAD`]) — so `cache.max_size`
//! bounds resident memory, not only body bytes. Two things keep an entry
//! from holding more than that: bodies are copied to an exact-size buffer
//! when the collected one has spare capacity, and the stored header is
//! rebuilt from its serialized form, because the header Pingora parsed from
//! the upstream slices into the connection's 4 KiB+ read buffer and would
//! keep all of it alive (`benches/load/memory.sh` measured 8 KiB per 1 KiB
//! entry before). README, Caching, has the numbers.
//!
//! Fresh hits of entries without `Vary` can be served by [`MemoryStore::fresh`]
//! without Pingora's cache state machine; see `cache::fresh`.

mod entry;
mod index;
mod storage;

pub use entry::{FreshHit, StoredEntry, ENTRY_OVERHEAD};
pub use storage::hit_of;

use bytes::Bytes;
use entry::{EncodedBody, Entry, ENCODED_OVERHEAD};
use index::Index;
use pingora::cache::eviction::EvictionManager;
use pingora::cache::key::HashBinary;
use pingora::cache::CacheEntryKeyRef;
use pingora::Result;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::SystemTime;

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

/// The bounded memory store. One per process (Pingora needs `'static`).
pub struct MemoryStore {
    index: RwLock<Index>,
    bytes: AtomicU64,
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
/// `Surrogate-Key` is) or commas (as `Cache-Tag` is).
pub fn tags_in(
    header: &pingora::http::ResponseHeader,
    names: &[http::HeaderName],
) -> Vec<Arc<str>> {
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

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            index: RwLock::new(Index::default()),
            bytes: AtomicU64::new(0),
            eviction: OnceLock::new(),
            tag_headers: OnceLock::new(),
        }
    }

    /// Sets the fields cache tags are read from (once, at start).
    pub fn set_tag_headers(&self, names: Vec<http::HeaderName>) {
        let _ = self.tag_headers.set(names);
    }

    /// The cache tags a response carries.
    pub fn tags_of(&self, header: &pingora::http::ResponseHeader) -> Vec<Arc<str>> {
        self.tag_headers
            .get()
            .map_or_else(Vec::new, |names| tags_in(header, names))
    }

    /// Marks every variant of these primaries stale now instead of
    /// removing it (a soft purge): the next request revalidates, and the
    /// response's stale windows still apply. Returns how many.
    fn expire_primaries(&self, primaries: &[HashBinary], now: SystemTime) -> usize {
        let mut index = self.write();
        let mut expired = 0;
        for primary in primaries {
            for combined in index.variants_of(primary) {
                let Some(old) = index.entries.get(&combined).cloned() else {
                    continue;
                };
                let Some(replacement) = old.expired_at(now) else {
                    continue;
                };
                self.bytes
                    .fetch_add(replacement.weight() as u64, Ordering::Relaxed);
                self.forget(&old);
                index.entries.insert(combined, Arc::new(replacement));
                expired += 1;
            }
        }
        expired
    }

    /// Connects the eviction manager that purges must keep in step.
    pub fn set_eviction(&self, eviction: &'static (dyn EvictionManager + Sync)) {
        let _ = self.eviction.set(eviction);
    }

    /// Bytes held (bodies + serialized headers).
    pub fn size_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Entries held (each variant counts).
    pub fn entries(&self) -> usize {
        self.read().entries.len()
    }

    /// The entry stored under `key` if it can be served as it is: fresh at
    /// `now`, stored without variance (no `Vary`), so the key alone selects
    /// it, and framed by `Content-Length`. Tells the eviction manager about the access, as
    /// Pingora's hit path does. `None` means "let Pingora's cache decide",
    /// not "absent".
    pub fn fresh(&self, key: &HashBinary, now: SystemTime) -> Option<FreshHit> {
        let entry = self.read().entries.get(key).cloned()?;
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, entry: &Entry) {
        self.bytes
            .fetch_sub(entry.weight() as u64, Ordering::Relaxed);
    }

    /// The body of a stored entry encoded as `coding` (a `Content-Encoding` token) at
    /// `level`: made with `encode` the first time and then kept with the
    /// entry, weighed with it (the eviction manager is told, and whatever it
    /// evicts to make room is removed), and dropped with it. One copy per
    /// coding: a different level (after a reload) replaces it. An entry
    /// purged or replaced meanwhile gets nothing stored.
    pub fn encoded_body(
        &self,
        entry: &StoredEntry,
        coding: &'static str,
        level: u32,
        encode: impl FnOnce(&[u8]) -> Result<Bytes>,
    ) -> Result<Bytes> {
        let entry = &entry.0;
        if let Some(e) = entry
            .encoded()
            .iter()
            .find(|e| e.coding == coding && e.level == level)
        {
            return Ok(e.body.clone());
        }
        let body = encode(&entry.body)?;
        let delta = body.len() + ENCODED_OVERHEAD;
        {
            let index = self.write();
            let combined = pingora::cache::key::CacheHashKey::combined_bin(&entry.compact);
            if !index
                .entries
                .get(&combined)
                .is_some_and(|current| Arc::ptr_eq(current, entry))
            {
                return Ok(body);
            }
            let mut encoded = entry.encoded();
            if let Some(e) = encoded
                .iter()
                .find(|e| e.coding == coding && e.level == level)
            {
                return Ok(e.body.clone()); // another request was faster
            }
            if let Some(pos) = encoded.iter().position(|e| e.coding == coding) {
                let old = encoded.swap_remove(pos);
                let old_delta = old.body.len() + ENCODED_OVERHEAD;
                entry.weight.fetch_sub(old_delta, Ordering::Relaxed);
                self.bytes.fetch_sub(old_delta as u64, Ordering::Relaxed);
            }
            encoded.push(EncodedBody {
                coding,
                level,
                body: body.clone(),
            });
            entry.weight.fetch_add(delta, Ordering::Relaxed);
            self.bytes.fetch_add(delta as u64, Ordering::Relaxed);
        }
        if let Some(eviction) = self.eviction.get() {
            let item = pingora::cache::CacheEntryKey::from_entry_id(entry.compact.clone(), None);
            self.remove_evicted(eviction.increment_weight(&item, delta, None));
        }
        Ok(body)
    }

    /// Removes what the eviction manager evicted to make room.
    fn remove_evicted(&self, evicted: Vec<pingora::cache::CacheEntryKey>) {
        for evicted in evicted {
            let combined = pingora::cache::key::CacheHashKey::combined_bin(evicted.key());
            let removed = self.write().remove_entry(&combined);
            if let Some(removed) = removed {
                self.forget(&removed);
            }
        }
    }

    /// Tells the eviction manager about an entry stored outside Pingora's
    /// miss path (promoted from the Redis tier), as that path does, and
    /// removes what it evicts to make room.
    pub fn admit(
        &self,
        key: &pingora::cache::key::CompactCacheKey,
        weight: usize,
        fresh_until: SystemTime,
    ) {
        if let Some(eviction) = self.eviction.get() {
            let item = pingora::cache::CacheEntryKey::from_entry_id(key.clone(), None);
            self.remove_evicted(eviction.admit(item, weight, fresh_until));
        }
    }

    /// The body stored under a combined key.
    pub fn body(&self, combined: &HashBinary) -> Option<Bytes> {
        self.read().entries.get(combined).map(|e| e.body.clone())
    }

    /// Removes every variant stored for these primaries; returns how many.
    fn remove_primaries(&self, primaries: &[HashBinary]) -> usize {
        self.remove_variants_where(primaries, |_| true)
    }

    /// Removes the variants of these primaries whose stored header
    /// `matches`; returns how many.
    fn remove_variants_where(
        &self,
        primaries: &[HashBinary],
        matches: impl Fn(&pingora::http::ResponseHeader) -> bool,
    ) -> usize {
        let mut removed = Vec::new();
        {
            let mut index = self.write();
            for primary in primaries {
                for combined in index.variants_of(primary) {
                    if !index
                        .entries
                        .get(&combined)
                        .is_some_and(|entry| matches(&entry.header))
                    {
                        continue;
                    }
                    if let Some(entry) = index.remove_entry(&combined) {
                        removed.push((combined, entry));
                    }
                }
            }
        }
        for (_, entry) in &removed {
            self.forget(entry);
            if let Some(eviction) = self.eviction.get() {
                eviction.remove(CacheEntryKeyRef::from_entry_id(&entry.compact, None));
            }
        }
        removed.len()
    }

    /// The primaries a purge names (all their variants go, or are marked
    /// stale, together).
    pub fn select(&self, selection: Selection<'_>) -> Vec<HashBinary> {
        let index = self.read();
        match selection {
            Selection::Uri(uri) => index.by_uri.get(uri).cloned().unwrap_or_default(),
            Selection::Prefix(prefix) => index
                .by_uri
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(uri, _)| uri.starts_with(prefix))
                .flat_map(|(_, p)| p.iter().copied())
                .collect(),
            // Walks the whole index: an admin operation, not a request's.
            Selection::PathPrefix(path_prefix) => index
                .by_uri
                .iter()
                .filter(|(uri, _)| {
                    let split = uri.find('/').unwrap_or(uri.len());
                    uri[split..].starts_with(path_prefix)
                })
                .flat_map(|(_, p)| p.iter().copied())
                .collect(),
            Selection::Route(route) => index
                .primaries
                .iter()
                .filter(|(_, p)| &*p.route == route)
                .map(|(hash, _)| *hash)
                .collect(),
            Selection::Tag(tag) => index.by_tag.get(tag).cloned().unwrap_or_default(),
        }
    }

    /// Removes every entry `selection` names; returns how many.
    pub fn purge_selection(&self, selection: Selection<'_>) -> usize {
        let primaries = self.select(selection);
        self.remove_primaries(&primaries)
    }

    /// Marks every entry `selection` names stale from `now` on (a soft
    /// purge); returns how many.
    pub fn expire_selection(&self, selection: Selection<'_>, now: SystemTime) -> usize {
        let primaries = self.select(selection);
        self.expire_primaries(&primaries, now)
    }

    /// Removes every stored variant of exactly this URI (as built by
    /// [`crate::cache::key`]); returns how many entries went.
    pub fn purge_uri(&self, uri: &str) -> usize {
        self.purge_selection(Selection::Uri(uri))
    }

    /// Removes the stored variants of exactly this URI whose header
    /// `matches` (RFC 9111 §4.3.5: those a HEAD response shows changed).
    pub fn purge_uri_where(
        &self,
        uri: &str,
        matches: impl Fn(&pingora::http::ResponseHeader) -> bool,
    ) -> usize {
        let primaries = self.select(Selection::Uri(uri));
        self.remove_variants_where(&primaries, matches)
    }

    /// Removes every entry stored (created) before `cutoff`; returns how
    /// many. Walks the whole index.
    pub fn purge_created_before(&self, cutoff: SystemTime) -> usize {
        let primaries: Vec<HashBinary> = {
            let index = self.read();
            index
                .primaries
                .iter()
                .filter(|(_, p)| {
                    p.variants.iter().any(|v| {
                        index
                            .entries
                            .get(v)
                            .is_some_and(|e| e.times.created < cutoff)
                    })
                })
                .map(|(hash, _)| *hash)
                .collect()
        };
        self.remove_variants_where(&primaries, |_| true)
    }
}
