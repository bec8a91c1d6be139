//! A stored entry: the response as a hit serves it (parsed header, body
//! `Bytes`, the meta fields a hit reads), what it weighs in memory, and
//! its encoded copies.

use bytes::Bytes;
use pingora::cache::key::{CompactCacheKey, HashBinary};
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use pingora::Result;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

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
pub(super) struct StoredTimes {
    pub(super) fresh_until: SystemTime,
    pub(super) created: SystemTime,
    /// What `Age` counts from (`CacheMeta::epoch`).
    pub(super) epoch: SystemTime,
    pub(super) stale_while_revalidate: u32,
    pub(super) stale_if_error: u32,
    pub(super) variance: Option<HashBinary>,
    /// `CacheMeta::new` + variance rebuilds the meta exactly: never
    /// revalidated, no epoch override, provenance at creation. Otherwise a
    /// hit deserializes the stored internal meta as before.
    pub(super) rebuildable: bool,
}

impl StoredTimes {
    pub(super) fn of(meta: &CacheMeta) -> Self {
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
    /// Freshness left (for `Cache-Status: ttl=`).
    pub ttl: Duration,
    /// The entry itself, for [`MemoryStore::encoded_body`].
    pub entry: StoredEntry,
}

/// A handle on a stored entry (opaque outside the store).
pub struct StoredEntry(pub(super) Arc<Entry>);

/// The codings an entry keeps one encoded copy of, by slot.
pub(super) const ENCODED_CODINGS: [&str; 3] = ["gzip", "zstd", "br"];

/// What a cache tag costs in an entry's weight beyond its bytes (the
/// `Arc<str>` and the tag index's set slot).
pub(super) const TAG_OVERHEAD: usize = 64;

/// The weight of a primary's tags.
pub(super) fn tags_weight(tags: &[std::sync::Arc<str>]) -> usize {
    tags.iter().map(|t| t.len() + TAG_OVERHEAD).sum()
}

/// What an encoded copy weighs beyond its bytes.
pub(super) const ENCODED_OVERHEAD: usize = 64;

/// Fields a hit adds to a clone of the stored header: `Age`,
/// `Cache-Status`, `X-Request-Id`, `X-Response-Time`, five rate-limit
/// fields, an encoding's two, and one to spare.
const HIT_FIELDS: usize = 12;

/// Rebuilds `header` from its serialized form so that it owns compact
/// buffers instead of slices of the upstream connection's read buffer, with
/// index room for the fields a hit adds. A clone keeps a `HeaderMap`'s index
/// size, so each hit's clone takes those fields without regrowing and
/// rehashing both of Pingora's maps (~2,000 instructions a hit,
/// `benches/load/instructions.sh`); what is stored is itself a clone, so
/// only the index is larger, not the field list.
pub(super) fn compact_header(internal: &[u8], header_bytes: &[u8]) -> Result<ResponseHeader> {
    let parsed = CacheMeta::deserialize(internal, header_bytes)?.response_header_copy();
    let mut roomy = ResponseHeader::build(parsed.status, Some(parsed.headers.len() + HIT_FIELDS))?;
    roomy.set_version(parsed.version);
    roomy.set_reason_phrase(parsed.get_reason_phrase())?;
    if parsed.has_case() {
        // Every name and value as a slice of one buffer: one allocation
        // where each field took two, so an entry costs less to keep and to
        // free (a purge of a million entries is mostly frees).
        let mut buf = bytes::BytesMut::new();
        let mut spans = Vec::with_capacity(parsed.headers.len());
        for (name, value) in parsed.case_header_iter() {
            let start = buf.len();
            buf.extend_from_slice(name.as_slice());
            let middle = buf.len();
            buf.extend_from_slice(value.as_bytes());
            spans.push((start, middle, buf.len(), value.is_sensitive()));
        }
        let buf = buf.freeze();
        for (start, middle, end, sensitive) in spans {
            let mut value =
                http::HeaderValue::from_maybe_shared(buf.slice(middle..end)).map_err(|e| {
                    pingora::Error::because(
                        pingora::ErrorType::InternalError,
                        "a stored header value",
                        e,
                    )
                })?;
            value.set_sensitive(sensitive);
            roomy.append_header(buf.slice(start..middle), value)?;
        }
    } else {
        for (name, value) in &parsed.headers {
            roomy.append_header(name, value.clone())?;
        }
    }
    Ok(roomy.clone())
}

/// What a parsed header holds in memory, for the entry's weight.
fn header_weight(header: &ResponseHeader) -> usize {
    header
        .headers
        .iter()
        .map(|(name, value)| 2 * name.as_str().len() + value.len() + HEADER_FIELD_OVERHEAD)
        .sum::<usize>()
        // The index room: two maps, at most twice the slots, 4 bytes each.
        + 2 * 2 * HIT_FIELDS * 4
}

/// Weight of an entry: body, header and internal meta as held, plus the
/// fixed overhead.
fn entry_weight(body: &Bytes, header: &ResponseHeader, internal: &[u8]) -> usize {
    body.len() + header_weight(header) + internal.len() + ENTRY_OVERHEAD
}

/// One stored response: what a hit needs, parsed once when it is stored.
/// Its weight counts its body, header, internal meta, its primary's tags
/// and its encoded copies.
pub(super) struct Entry {
    /// Pingora's serialized internal meta (freshness, variance): small msgpack.
    pub(super) internal: Vec<u8>,
    /// The stored response header, kept parsed: a hit clones it instead of
    /// zstd-decompressing a serialized copy (that showed as ~8 % of a hit).
    pub(super) header: ResponseHeader,
    pub(super) body: Bytes,
    pub(super) primary: HashBinary,
    /// The key the eviction manager tracks this entry under.
    pub(super) compact: CompactCacheKey,
    pub(super) times: StoredTimes,
    /// The tags' part of the weight (kept for the entry's replacements).
    pub(super) tags_weight: usize,
    /// Grows when an encoded copy is added.
    pub(super) weight: AtomicUsize,
    /// Encoded copies of `body`, one slot per [`ENCODED_CODINGS`], each
    /// made once however many first hits ask for it together
    /// ([`super::MemoryStore::encoded_body`]).
    pub(super) encoded: [tokio::sync::OnceCell<Bytes>; 3],
    /// The purge generation its request began at (its fill's
    /// [`super::FillTicket`]): a purge recorded later names it, one
    /// recorded earlier does not (or the fill would have been dropped).
    pub(super) generation: u64,
}

impl Entry {
    /// An entry without encoded copies, weighed by what it holds and its
    /// primary's tags (`tags_weight`).
    pub(super) fn new(
        internal: Vec<u8>,
        header: ResponseHeader,
        body: Bytes,
        primary: HashBinary,
        compact: CompactCacheKey,
        times: StoredTimes,
        tags_weight: usize,
    ) -> Self {
        let weight = entry_weight(&body, &header, &internal) + tags_weight;
        Self {
            internal,
            header,
            body,
            primary,
            compact,
            times,
            tags_weight,
            weight: AtomicUsize::new(weight),
            encoded: Default::default(),
            generation: 0,
        }
    }

    /// This entry, stale from `now` on (a soft purge); `None` when its
    /// internal meta does not decode.
    pub(super) fn expired_at(&self, now: SystemTime) -> Option<Entry> {
        let mut meta = CacheMeta::deserialize(&self.internal, empty_header().ok()?).ok()?;
        *meta.response_header_mut() = self.header.clone();
        meta.expire_at(now);
        let (internal, _) = meta.serialize().ok()?;
        let mut times = StoredTimes::of(&meta);
        times.variance = self.times.variance;
        Some(
            Entry::new(
                internal,
                self.header.clone(),
                self.body.clone(),
                self.primary,
                self.compact.clone(),
                times,
                self.tags_weight,
            )
            .stamped(self.generation),
        )
    }

    /// This entry, stored by a request that began at purge `generation`.
    pub(super) fn stamped(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    pub(super) fn weight(&self) -> usize {
        self.weight.load(Ordering::Relaxed)
    }
}
