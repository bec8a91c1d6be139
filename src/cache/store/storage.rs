//! [`MemoryStore`] behind Pingora's `Storage` trait: lookups rebuild the
//! meta from what the entry keeps parsed, misses collect the body and
//! insert the entry when it is complete, revalidations replace the meta.

use super::entry::{compact_header, empty_header, tags_weight, Entry, StoredTimes};
use super::{Fill, FillTicket, MemoryStore};
use crate::cache::key::{route_part, uri_of};
use crate::trace::recorder::TierTap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, CacheKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, HitHandler, MissHandler, PurgeType, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

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

/// The ticket a request's cache key carries (set when the key was built);
/// a key built elsewhere (a test, a promotion without one) gets the
/// current generation.
pub fn ticket_of(store: &MemoryStore, key: &CacheKey) -> FillTicket {
    key.extensions
        .get::<FillTicket>()
        .copied()
        .unwrap_or_else(|| store.ticket())
}

/// Collects a response body; the entry appears only when `finish` runs,
/// and not at all if a purge overtook the request meanwhile.
struct Miss {
    store: &'static MemoryStore,
    combined: HashBinary,
    primary: HashBinary,
    compact: CompactCacheKey,
    uri: Arc<str>,
    route: Arc<str>,
    tags: Arc<[Arc<str>]>,
    ticket: FillTicket,
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
        let entry = Arc::new(
            Entry::new(
                self.internal,
                self.header,
                body,
                self.primary,
                self.compact,
                self.times,
                tags_weight(&self.tags),
            )
            .stamped(self.ticket.local),
        );
        let (_, weight) = self.store.store_fill(Fill {
            combined: self.combined,
            entry,
            uri: self.uri,
            route: self.route,
            tags: self.tags,
            ticket: self.ticket,
        });
        // Pingora admits the key with this weight: the stored entry's, or
        // when the fill was dropped, whatever is stored there now.
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
        let tap = key.extensions.get::<TierTap>();
        let started = tap.map(|_| Instant::now());
        let entry = self.get_live(&key.primary_bin(), &key.combined_bin());
        if let (Some(tap), Some(started)) = (tap, started) {
            tap.record("memory", started, entry.is_some());
        }
        let Some(entry) = entry else {
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
            tags: self.tags_of(meta.response_header()).into(),
            ticket: ticket_of(self, key),
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
        Ok(if self.remove_key(target.key()) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
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
        let times = StoredTimes::of(meta);
        // Encoded copies are not carried over: the new header may carry a
        // new validator, and they are cheap to make again.
        Ok(self.replace_meta(
            &key.primary_bin(),
            &key.combined_bin(),
            ticket_of(self, key),
            |old| {
                // Keeps the old stamp: a purge pending over the entry still
                // names it (its revalidation began before that purge ended).
                Entry::new(
                    internal,
                    header,
                    old.body.clone(),
                    old.primary,
                    old.compact.clone(),
                    times,
                    old.tags_weight,
                )
                .stamped(old.generation)
            },
        ))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
