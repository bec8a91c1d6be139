//! [`MemoryStore`] behind Pingora's `Storage` trait: lookups rebuild the
//! meta from what the entry keeps parsed, misses collect the body and
//! insert the entry when it is complete, revalidations replace the meta.

use super::entry::{compact_header, Entry, StoredTimes};
use super::index::Primary;
use super::MemoryStore;
use crate::cache::key::{route_part, uri_of};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, CacheKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, HitHandler, MissHandler, PurgeType, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

/// The serialized form of an empty response header: lets a hit rebuild a
/// `CacheMeta` from its internal part and then put the parsed header in.
pub(super) fn empty_header() -> Result<&'static [u8]> {
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

/// A hit handler serving `body` from memory not held by the store (an
/// entry from the Redis tier that memory could not keep).
pub fn hit_of(body: Bytes) -> HitHandler {
    Box::new(Hit {
        body: Some(body.clone()),
        weight: body.len(),
        full: body,
    })
}

/// Collects a response body; the entry appears only when `finish` runs.
struct Miss {
    store: &'static MemoryStore,
    combined: HashBinary,
    primary: HashBinary,
    compact: CompactCacheKey,
    uri: Arc<str>,
    route: Arc<str>,
    tags: Vec<Arc<str>>,
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
                    route: self.route.clone(),
                    variants: Vec::new(),
                    tags: Vec::new(),
                });
            if !primary.variants.contains(&self.combined) {
                primary.variants.push(self.combined);
            }
            let new_tags: Vec<Arc<str>> = self
                .tags
                .iter()
                .filter(|t| !primary.tags.contains(t))
                .cloned()
                .collect();
            primary.tags.extend(new_tags.iter().cloned());
            for tag in new_tags {
                index.by_tag.entry(tag).or_default().push(self.primary);
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
        let route = key
            .primary_key_str()
            .and_then(route_part)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache key without a route"))?;
        let (internal, header_bytes) = meta.serialize()?;
        Ok(Box::new(Miss {
            store: self,
            combined: key.combined_bin(),
            primary: key.primary_bin(),
            compact: key.to_compact(),
            uri: uri.into(),
            route: route.into(),
            tags: self.tags_of(meta.response_header()),
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
