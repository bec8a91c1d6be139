//! The memory tier behind Pingora's `Storage` trait.
//!
//! pingora-cache's `MemCache` is a test store (unbounded, copies bodies on
//! every write), so this is our own: entries are `Bytes` shared by every
//! hit, size is bounded by Pingora's LRU eviction manager (which tells
//! Pingora what to purge once the total weight passes `cache.max_size`), and
//! an index by request URI supports purge by exact URL and by prefix.
//! A Redis tier can sit behind the same trait later.
//!
//! Memory: bodies + serialized headers are what the eviction manager
//! weighs; on top come about 200 bytes per entry of index (two hash maps
//! and a B-tree) — see README, Caching.

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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

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
    weight: usize,
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, entry: &Entry) {
        self.bytes.fetch_sub(entry.weight as u64, Ordering::Relaxed);
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
    /// Serialized size of the meta, for the entry's weight.
    meta_len: usize,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let weight = self.body.len() + self.meta_len;
        let entry = Arc::new(Entry {
            internal: self.internal,
            header: self.header,
            body: self.body.freeze(),
            primary: self.primary,
            compact: self.compact,
            weight,
        });
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
        let mut meta = CacheMeta::deserialize(&entry.internal, empty_header()?)?;
        *meta.response_header_mut() = entry.header.clone();
        let hit = Hit {
            body: Some(entry.body.clone()),
            weight: entry.weight,
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
            meta_len: internal.len() + header_bytes.len(),
            internal,
            header: meta.response_header_copy(),
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
        let mut index = self.write();
        let Some(old) = index.entries.get(&key.combined_bin()).cloned() else {
            return Ok(false);
        };
        let weight = old.body.len() + internal.len() + header_bytes.len();
        let updated = Arc::new(Entry {
            internal,
            header: meta.response_header_copy(),
            body: old.body.clone(),
            primary: old.primary,
            compact: old.compact.clone(),
            weight,
        });
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
