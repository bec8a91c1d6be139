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
//! without Pingora's cache state machine; see `proxy.rs`.

use crate::cache::key::uri_of;
use crate::router::HostPattern;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::eviction::EvictionManager;
use pingora::cache::key::{CacheHashKey, CacheKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheEntryKeyRef, CacheMeta, HitHandler, MissHandler, PurgeType, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

/// Memory an entry costs beyond its body and header: the `Entry` and its
/// `Arc`, three index slots (hash maps and the URI B-tree), the URI string
/// and the LRU node. Calibrated with `benches/load/memory.sh`.
pub const ENTRY_OVERHEAD: usize = 1024;

/// Memory a parsed header costs per field beyond its name and value bytes
/// (the `HeaderMap` slot, the case-preserving name map, `Bytes` handles).
const HEADER_FIELD_OVERHEAD: usize = 288;

/// The meta fields of a stored entry, read once when it is stored, so a
/// hit needs neither Pingora's msgpack decoding nor a header decompression.
#[derive(Debug, Clone, Copy)]
struct StoredTimes {
    fresh_until: SystemTime,
    created: SystemTime,
    /// What `Age` counts from (`CacheMeta::epoch`).
    epoch: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    /// `CacheMeta::new` + variance rebuilds the meta exactly: never
    /// revalidated, no epoch override, provenance at creation. Otherwise a
    /// hit deserializes the stored internal meta as before.
    rebuildable: bool,
}

impl StoredTimes {
    fn of(meta: &CacheMeta) -> Self {
        Self {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            epoch: meta.epoch(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance(),
            rebuildable: meta.updated() == meta.created()
                && meta.epoch_override().is_none()
                && meta.provenance() == meta.created(),
        }
    }
}

/// A fresh stored response, for serving without Pingora's cache machinery.
pub struct FreshHit {
    /// The stored header (a clone: the caller adds `Age` and its own fields).
    pub header: ResponseHeader,
    /// The body, shared with the store.
    pub body: Bytes,
    /// Time since the response was stored or last revalidated.
    pub age: Duration,
    /// The entry itself, for [`MemoryStore::encoded_body`].
    pub entry: StoredEntry,
}

/// A handle on a stored entry (opaque outside the store).
pub struct StoredEntry(Arc<Entry>);

/// An encoded copy of a stored body (`Content-Encoding` token and level).
struct EncodedBody {
    coding: &'static str,
    level: u32,
    body: Bytes,
}

/// What an encoded copy weighs beyond its bytes.
const ENCODED_OVERHEAD: usize = 64;

/// Rebuilds `header` from its serialized form so that it owns compact
/// buffers instead of slices of the upstream connection's read buffer.
fn compact_header(internal: &[u8], header_bytes: &[u8]) -> Result<ResponseHeader> {
    Ok(CacheMeta::deserialize(internal, header_bytes)?.response_header_copy())
}

/// What a parsed header holds in memory, for the entry's weight.
fn header_weight(header: &ResponseHeader) -> usize {
    header
        .headers
        .iter()
        .map(|(name, value)| 2 * name.as_str().len() + value.len() + HEADER_FIELD_OVERHEAD)
        .sum()
}

/// Weight of an entry: body, header and internal meta as held, plus the
/// fixed overhead.
fn entry_weight(body: &Bytes, header: &ResponseHeader, internal: &[u8]) -> usize {
    body.len() + header_weight(header) + internal.len() + ENTRY_OVERHEAD
}

struct Entry {
    /// Pingora's serialized internal meta (freshness, variance): small msgpack.
    internal: Vec<u8>,
    /// The stored response header, kept parsed: a hit clones it instead of
    /// zstd-decompressing a serialized copy (that showed as ~8 % of a hit).
    header: ResponseHeader,
    body: Bytes,
    primary: HashBinary,
    /// The key the eviction manager tracks this entry under.
    compact: CompactCacheKey,
    times: StoredTimes,
    /// Grows when an encoded copy is added.
    weight: AtomicUsize,
    /// Encoded copies of `body`, at most one per coding, made on demand by
    /// [`MemoryStore::encoded_body`].
    encoded: Mutex<Vec<EncodedBody>>,
}

impl Entry {
    /// An entry without encoded copies, weighed by what it holds.
    fn new(
        internal: Vec<u8>,
        header: ResponseHeader,
        body: Bytes,
        primary: HashBinary,
        compact: CompactCacheKey,
        times: StoredTimes,
    ) -> Self {
        let weight = entry_weight(&body, &header, &internal);
        Self {
            internal,
            header,
            body,
            primary,
            compact,
            times,
            weight: AtomicUsize::new(weight),
            encoded: Mutex::new(Vec::new()),
        }
    }

    fn weight(&self) -> usize {
        self.weight.load(Ordering::Relaxed)
    }

    fn encoded(&self) -> std::sync::MutexGuard<'_, Vec<EncodedBody>> {
        self.encoded.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// All variants stored for one request URI.
struct Primary {
    uri: Arc<str>,
    /// Combined keys (primary + variance) of the stored variants.
    variants: Vec<HashBinary>,
}

#[derive(Default)]
struct Index {
    entries: HashMap<HashBinary, Arc<Entry>>,
    primaries: HashMap<HashBinary, Primary>,
    /// URI → primaries (more than one when request headers are in the key).
    by_uri: BTreeMap<Arc<str>, Vec<HashBinary>>,
}

impl Index {
    fn remove_entry(&mut self, combined: &HashBinary) -> Option<Arc<Entry>> {
        let entry = self.entries.remove(combined)?;
        if let Some(p) = self.primaries.get_mut(&entry.primary) {
            p.variants.retain(|v| v != combined);
            if p.variants.is_empty() {
                let uri = p.uri.clone();
                self.primaries.remove(&entry.primary);
                if let Some(list) = self.by_uri.get_mut(&uri) {
                    list.retain(|p| *p != entry.primary);
                    if list.is_empty() {
                        self.by_uri.remove(&uri);
                    }
                }
            }
        }
        Some(entry)
    }
}

/// The bounded memory store. One per process (Pingora needs `'static`).
pub struct MemoryStore {
    index: RwLock<Index>,
    bytes: AtomicU64,
    /// Told when a purge removes an entry, so it stops weighing it.
    eviction: OnceLock<&'static (dyn EvictionManager + Sync)>,
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
        }
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
            for evicted in eviction.increment_weight(&item, delta, None) {
                let combined = pingora::cache::key::CacheHashKey::combined_bin(evicted.key());
                let removed = self.write().remove_entry(&combined);
                if let Some(removed) = removed {
                    self.forget(&removed);
                }
            }
        }
        Ok(body)
    }

    /// Removes every variant stored for these primaries; returns how many.
    fn remove_primaries(&self, primaries: &[HashBinary]) -> usize {
        let mut removed = Vec::new();
        {
            let mut index = self.write();
            for primary in primaries {
                let variants = index
                    .primaries
                    .get(primary)
                    .map(|p| p.variants.clone())
                    .unwrap_or_default();
                for combined in variants {
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

    /// Removes every stored variant of exactly this URI (as built by
    /// [`crate::cache::key`]); returns how many entries went.
    pub fn purge_uri(&self, uri: &str) -> usize {
        let primaries = self.read().by_uri.get(uri).cloned().unwrap_or_default();
        self.remove_primaries(&primaries)
    }

    /// Removes every entry whose URI (`host` + path + query) starts with
    /// `prefix`; returns how many.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let primaries: Vec<HashBinary> = self
            .read()
            .by_uri
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(uri, _)| uri.starts_with(prefix))
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        self.remove_primaries(&primaries)
    }

    /// Removes every entry whose path (any host) starts with `path_prefix`.
    /// Walks the whole index: an admin operation, not a request-path one.
    pub fn purge_path_prefix(&self, path_prefix: &str) -> usize {
        self.purge_where(|_, path| path.starts_with(path_prefix))
    }

    /// Removes what a route can have stored: its host condition and path
    /// prefix. Walks the whole index.
    pub fn purge_route(&self, host: Option<&HostPattern>, path_prefix: &str) -> usize {
        self.purge_where(|h, path| {
            path.starts_with(path_prefix)
                && match host {
                    None => true,
                    Some(HostPattern::Exact(exact)) => h == exact,
                    Some(HostPattern::Wildcard(suffix)) => {
                        h.len() > suffix.len() && h.ends_with(suffix.as_str())
                    }
                }
        })
    }

    fn purge_where(&self, matches: impl Fn(&str, &str) -> bool) -> usize {
        let primaries: Vec<HashBinary> = self
            .read()
            .by_uri
            .iter()
            .filter(|(uri, _)| {
                let split = uri.find('/').unwrap_or(uri.len());
                matches(&uri[..split], &uri[split..])
            })
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        self.remove_primaries(&primaries)
    }
}

/// The serialized form of an empty response header: lets a hit rebuild a
/// `CacheMeta` from its internal part and then put the parsed header in.
fn empty_header() -> Result<&'static [u8]> {
    static EMPTY: OnceLock<Vec<u8>> = OnceLock::new();
    if let Some(bytes) = EMPTY.get() {
        return Ok(bytes);
    }
    let now = std::time::SystemTime::now();
    let meta = CacheMeta::new(now, now, 0, 0, ResponseHeader::build(200, Some(0))?);
    let (_, header) = meta.serialize()?;
    Ok(EMPTY.get_or_init(|| header))
}

/// Serves a stored body; bodies are `Bytes`, so a hit copies nothing.
struct Hit {
    body: Option<Bytes>,
    weight: usize,
    full: Bytes,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        Ok(self.body.take())
    }

    async fn finish(
        self: Box<Self>,
        _: &'static (dyn Storage + Sync),
        _: &CacheKey,
        _: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.full.len();
        let end = end.unwrap_or(len).min(len);
        if start > end {
            return Error::e_explain(
                ErrorType::InternalError,
                "seek past the end of a cached body",
            );
        }
        self.body = Some(self.full.slice(start..end));
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collects a response body; the entry appears only when `finish` runs.
struct Miss {
    store: &'static MemoryStore,
    combined: HashBinary,
    primary: HashBinary,
    compact: CompactCacheKey,
    uri: Arc<str>,
    internal: Vec<u8>,
    header: ResponseHeader,
    times: StoredTimes,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        // A body collected in pieces can have up to twice its length in
        // capacity; keep only what it needs.
        let body = if self.body.capacity() > self.body.len() + self.body.len() / 16 {
            Bytes::copy_from_slice(&self.body)
        } else {
            self.body.freeze()
        };
        let entry = Arc::new(Entry::new(
            self.internal,
            self.header,
            body,
            self.primary,
            self.compact,
            self.times,
        ));
        let weight = entry.weight();
        let store = self.store;
        let replaced = {
            let mut index = store.write();
            let replaced = index.entries.insert(self.combined, entry);
            let primary = index
                .primaries
                .entry(self.primary)
                .or_insert_with(|| Primary {
                    uri: self.uri.clone(),
                    variants: Vec::new(),
                });
            if !primary.variants.contains(&self.combined) {
                primary.variants.push(self.combined);
            }
            let list = index.by_uri.entry(self.uri.clone()).or_default();
            if !list.contains(&self.primary) {
                list.push(self.primary);
            }
            replaced
        };
        store.bytes.fetch_add(weight as u64, Ordering::Relaxed);
        if let Some(old) = replaced {
            store.forget(&old);
        }
        Ok(MissFinishType::Created(weight))
    }
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.read().entries.get(&key.combined_bin()).cloned() else {
            return Ok(None);
        };
        let t = &entry.times;
        let meta = if t.rebuildable {
            let mut meta = CacheMeta::new(
                t.fresh_until,
                t.created,
                t.stale_while_revalidate,
                t.stale_if_error,
                entry.header.clone(),
            );
            if let Some(variance) = t.variance {
                meta.set_variance(variance);
            }
            meta
        } else {
            let mut meta = CacheMeta::deserialize(&entry.internal, empty_header()?)?;
            *meta.response_header_mut() = entry.header.clone();
            meta
        };
        let hit = Hit {
            body: Some(entry.body.clone()),
            weight: entry.weight(),
            full: entry.body.clone(),
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _: &SpanHandle,
    ) -> Result<MissHandler> {
        let uri = uri_of(key)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache key without a URI"))?;
        let (internal, header_bytes) = meta.serialize()?;
        Ok(Box::new(Miss {
            store: self,
            combined: key.combined_bin(),
            primary: key.primary_bin(),
            compact: key.to_compact(),
            uri: uri.into(),
            header: compact_header(&internal, &header_bytes)?,
            internal,
            times: StoredTimes::of(meta),
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _: PurgeType,
        _: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let combined = target.key().combined_bin();
        let removed = self.write().remove_entry(&combined);
        Ok(match removed {
            Some(entry) => {
                self.forget(&entry);
                PurgeOutcome::Purged(None)
            }
            None => PurgeOutcome::NotFound,
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _: &SpanHandle,
    ) -> Result<bool> {
        let (internal, header_bytes) = meta.serialize()?;
        let header = compact_header(&internal, &header_bytes)?;
        let mut index = self.write();
        let Some(old) = index.entries.get(&key.combined_bin()).cloned() else {
            return Ok(false);
        };
        // Encoded copies are not carried over: the new header may carry a
        // new validator, and they are cheap to make again.
        let updated = Arc::new(Entry::new(
            internal,
            header,
            old.body.clone(),
            old.primary,
            old.compact.clone(),
            StoredTimes::of(meta),
        ));
        let weight = updated.weight();
        index.entries.insert(key.combined_bin(), updated);
        drop(index);
        self.bytes.fetch_add(weight as u64, Ordering::Relaxed);
        self.forget(&old);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
