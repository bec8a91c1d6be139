//! Memory (L1) and Redis (L2) behind one Pingora `Storage`: a lookup asks
//! memory, then Redis; an L2 hit is promoted into memory (and weighed by
//! the eviction manager like any stored response) and served from there,
//! marked so `Cache-Status` says `detail=l2`. A response stored in memory
//! is queued for Redis once complete; a revalidation (304) updates both.
//! Evictions leave Redis alone: another instance may still want the entry.

use super::l2::{ttl_of, L2Entry, RedisTier};
use super::names::EntryNames;
use super::store::{ticket_of, MemoryStore};
use crate::cache::key::{route_part, uri_of};
use crate::trace::recorder::TierTap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, CacheKey};
use pingora::cache::storage::{HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, HitHandler, MissHandler, PurgeType, Storage};
use pingora::Result;
use std::any::Any;
use std::sync::Arc;
use std::time::SystemTime;

/// Marks a meta that came from Redis (in its extensions, for this request).
#[derive(Debug, Clone, Copy)]
pub struct FromL2;

/// The two tiers.
pub struct TieredStorage {
    memory: &'static MemoryStore,
    redis: Arc<RedisTier>,
}

impl TieredStorage {
    /// Memory in front of `redis`.
    pub fn new(memory: &'static MemoryStore, redis: Arc<RedisTier>) -> Self {
        Self { memory, redis }
    }

    /// The Redis tier.
    pub fn redis(&self) -> &Arc<RedisTier> {
        &self.redis
    }

    /// Queues `meta` + `body` for Redis under `key`, unless a purge
    /// recorded since the request began names it.
    fn write_through(&self, key: &CacheKey, meta: &CacheMeta, body: Bytes) {
        let (Some(uri), Some(route)) = (uri_of(key), key.primary_key_str().and_then(route_part))
        else {
            return;
        };
        let tags = self.memory.tags_of(meta.response_header());
        let ticket = ticket_of(self.memory, key);
        if self.memory.overtaken(ticket, uri, route, &tags) {
            return;
        }
        let Ok((internal, header)) = meta.serialize() else {
            return;
        };
        let stale = meta
            .stale_while_revalidate_sec()
            .max(meta.stale_if_error_sec());
        let ttl = ttl_of(meta.fresh_until(), stale, SystemTime::now());
        let entry = L2Entry {
            index_names: Vec::new(), // `RedisTier::store` names them
            generation: 0,           // and stamps them with the ticket's
            internal,
            header,
            body,
        };
        let names = EntryNames {
            uri,
            route,
            tags: &tags,
        };
        self.redis
            .store(&key.combined_bin(), &entry, ttl, &names, ticket);
    }

    /// Puts an entry found in Redis into memory, as a miss would have.
    async fn promote(&'static self, key: &CacheKey, meta: &CacheMeta, body: Bytes) -> Result<()> {
        let span = pingora::cache::trace::Span::inactive().handle();
        let mut miss = self.memory.get_miss_handler(key, meta, &span).await?;
        miss.write_body(body, true).await?;
        let weight = match miss.finish().await? {
            MissFinishType::Created(w) | MissFinishType::Appended(w, _) => w,
        };
        self.memory
            .admit(&key.to_compact(), weight, meta.fresh_until());
        Ok(())
    }
}

/// Collects the body beside memory's own miss handler, for Redis.
struct TieredMiss {
    inner: MissHandler,
    storage: &'static TieredStorage,
    key: CacheKey,
    meta: CacheMeta,
    body: Option<BytesMut>,
}

#[async_trait]
impl HandleMiss for TieredMiss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        if let Some(body) = self.body.as_mut() {
            if body.len() + data.len() > self.storage.redis.settings().max_object_size {
                self.body = None; // too large for Redis: memory only
            } else {
                body.extend_from_slice(&data);
            }
        }
        self.inner.write_body(data, eof).await
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let this = *self;
        let finished = this.inner.finish().await?;
        if let Some(body) = this.body {
            this.storage
                .write_through(&this.key, &this.meta, body.freeze());
        }
        Ok(finished)
    }
}

#[async_trait]
impl Storage for TieredStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        if let Some(hit) = self.memory.lookup(key, trace).await? {
            return Ok(Some(hit));
        }
        let (Some(uri), Some(route)) = (uri_of(key), key.primary_key_str().and_then(route_part))
        else {
            return Ok(None);
        };
        // Invariant 4 (`cache::invalidation`): nothing a purge whose shared
        // part is not done names comes from Redis.
        let outbox = self.redis.outbox();
        if outbox.hides_uri(uri) {
            return Ok(None);
        }
        let tap = key.extensions.get::<TierTap>();
        let started = tap.map(|_| std::time::Instant::now());
        let entry = self.redis.lookup(&key.combined_bin()).await;
        if let (Some(tap), Some(started)) = (tap, started) {
            tap.record("redis", started, entry.is_some());
        }
        let Some(entry) = entry else {
            return Ok(None);
        };
        let meta = match CacheMeta::deserialize(&entry.internal, &entry.header) {
            Ok(meta) => meta,
            Err(e) => {
                log::warn!("cache redis tier: a stored meta does not decode ({e}); a miss");
                return Ok(None);
            }
        };
        let tags = self.memory.tags_of(meta.response_header());
        let names = EntryNames {
            uri,
            route,
            tags: &tags,
        };
        // A purge made while the lookup was under way: its markers may have
        // come after Redis answered.
        let ticket = ticket_of(self.memory, key);
        if outbox.hides(&names) || self.memory.overtaken(ticket, uri, route, &tags) {
            return Ok(None);
        }
        self.promote(key, &meta, entry.body.clone()).await?;
        // Reading back what was just promoted is not a lookup of its own
        // in the request's trace.
        let untapped = tap.is_some().then(|| {
            let mut key = key.clone();
            key.extensions.remove::<TierTap>();
            key
        });
        let promoted = self.memory.lookup(untapped.as_ref().unwrap_or(key), trace);
        let (mut meta, hit) = match promoted.await? {
            Some(found) => found,
            // Evicted as it was admitted (memory too small for it): serve
            // what Redis gave.
            None => (meta, super::store::hit_of(entry.body)),
        };
        meta.extensions_mut().insert(FromL2);
        Ok(Some((meta, hit)))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let inner = self.memory.get_miss_handler(key, meta, trace).await?;
        let (internal, header) = meta.serialize()?;
        Ok(Box::new(TieredMiss {
            inner,
            storage: self,
            key: key.clone(),
            meta: CacheMeta::deserialize(&internal, &header)?,
            body: Some(BytesMut::new()),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        kind: PurgeType,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // Only this instance's memory: an eviction here is no reason to
        // take the entry from the others (admin purges reach Redis
        // through `cache::invalidation`).
        self.memory.purge(target, kind, trace).await
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        let updated = self.memory.update_meta(key, meta, trace).await?;
        if updated {
            if let Some(body) = self.memory.body(&key.primary_bin(), &key.combined_bin()) {
                self.write_through(key, meta, body);
            }
        }
        Ok(updated)
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
