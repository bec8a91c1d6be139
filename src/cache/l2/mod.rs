//! The cache's second tier in Redis: what one instance fetched, the others
//! find there instead of asking the upstream again.
//!
//! - **Lookups** (on a memory miss) are one script — the entry, unless a
//!   purge marker hides it (`markers::LOOKUP_LUA`; a plain `GET` on
//!   a cluster) — with their own short timeout
//!   (`cache.redis.lookup_timeout`, default 20 ms) behind a circuit
//!   breaker; a slow or absent Redis is a miss, never an error.
//! - **Writes** happen off the request path: a stored response is queued
//!   (bounded) for a writer task that stores it with `PX` = its freshness
//!   plus its stale windows and adds it to its URI's, route's and tags'
//!   index sets (for purges), in one script that first checks the purge
//!   markers (`cache::invalidation`): a write a purge overtook is dropped. Each
//!   write has its own bound (`write_timeout`). A full queue drops the
//!   write and counts it.
//! - **Format**: `TGC3`, then the length (u32, big-endian) and bytes of
//!   the entry's index keys (newline-separated: a purge that drains one
//!   index reads them with `GETRANGE` to take the entry out of its other
//!   indexes too), then the length and bytes of its write's shared purge
//!   generation (decimal: the lookup script compares it with the purge
//!   markers of those index keys, `cache::invalidation`), then the lengths and
//!   bytes of Pingora's serialized internal meta and header, then the body.
//!   `TGC2` (no generation, written by the previous version during a
//!   rolling upgrade) still decodes, as generation 0: any live marker that
//!   names it hides it. `TGC1` (no index keys) is a miss: it cannot be
//!   checked against the markers. An earlier version reads `TGC3` as a
//!   miss. Anything else that does not decode (a truncated value) is a
//!   miss, counted as an error; it is never served.
//! - **Purges** answer once their markers are set and published; a large
//!   index is drained afterwards (`cache::invalidation`). Until then its entries
//!   are still in Redis, and the lookup script hides them.

pub mod generation;
pub mod markers;
pub mod outbox;

use super::names::EntryNames;
use super::store::FillTicket;
use crate::breaker::{CircuitBreaker, Permit, Transition};
use crate::metrics::Metrics;
use crate::redis_link::RedisLink;
use bytes::Bytes;
use markers::MarkedWrite;
use outbox::{Outbox, DEFAULT_LIMIT_BYTES};
use pingora::cache::key::HashBinary;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The format tag every stored value starts with.
const MAGIC: &[u8; 4] = b"TGC3";

/// The previous format: index keys, no generation.
const MAGIC_V2: &[u8; 4] = b"TGC2";

/// The most bytes of index keys an entry carries; an entry with more (an
/// unusual number of long tags) is kept in memory only: without its index
/// keys a lookup could not check it against the purge markers.
pub const MAX_INDEX_NAMES: usize = 4096;

/// Bytes a purge reads from the front of an entry to find its index keys
/// (most fit; a longer block is read again whole).
pub const HEAD_READ: usize = 512;

/// Writes queued for the writer task before new ones are dropped.
pub const WRITE_QUEUE: usize = 1024;

/// Bytes of values queued for the writer task before new writes are
/// dropped: a burst of large misses cannot hold [`WRITE_QUEUE`] × 1 MiB
/// outside `cache.max_size` (`tollgate_cache_l2_write_queue_bytes`).
pub const WRITE_QUEUE_BYTES: usize = 32 << 20;

/// Settings of the tier (`cache.redis`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Settings {
    /// Larger bodies stay in memory only.
    pub max_object_size: usize,
    /// Prefix of every key and of the purge channel.
    pub key_prefix: String,
    /// How long a lookup may take before it counts as a miss.
    pub lookup_timeout: Duration,
    /// How long one write may take.
    pub write_timeout: Duration,
    /// How long a purge of the tier may take, all batches together.
    pub purge_timeout: Duration,
    /// How long the purge channel may take to connect, or to hear this
    /// instance's own heartbeat, before it counts as lost.
    pub listen_timeout: Duration,
    /// How long purge markers live (and so the oldest write checked).
    pub purge_marker_ttl: Duration,
}

impl L2Settings {
    /// The longest any one command of the tier may take: the bound of the
    /// connection, under which each kind of work sets its own.
    pub fn longest_command(&self) -> Duration {
        self.lookup_timeout
            .max(self.write_timeout)
            .max(self.purge_timeout)
            .max(self.listen_timeout)
    }
}

/// A response as the tier stores it.
pub struct L2Entry {
    /// The index keys the entry was added to, newline-separated (kept
    /// as written so a soft purge can write them back unchanged).
    pub index_names: Vec<u8>,
    /// The shared purge generation its write began at (0 when unknown):
    /// a purge marker newer than it that names it hides it.
    pub generation: u64,
    /// Pingora's serialized internal meta.
    pub internal: Vec<u8>,
    /// Pingora's serialized header.
    pub header: Vec<u8>,
    /// The body.
    pub body: Bytes,
}

/// The index keys of an entry as the format carries them: joined by
/// newlines, or nothing past [`MAX_INDEX_NAMES`] bytes.
pub fn index_names(indexes: &[String]) -> Vec<u8> {
    let joined = indexes.join("\n").into_bytes();
    match joined.len() <= MAX_INDEX_NAMES {
        true => joined,
        false => Vec::new(),
    }
}

/// Encodes an entry in the tier's format.
pub fn encode(
    index_names: &[u8],
    generation: u64,
    internal: &[u8],
    header: &[u8],
    body: &[u8],
) -> Option<Vec<u8>> {
    let generation = generation.to_string();
    let sized = index_names.len() + generation.len() + internal.len() + header.len();
    let mut out = Vec::with_capacity(20 + sized + body.len());
    out.extend_from_slice(MAGIC);
    for part in [index_names, generation.as_bytes(), internal, header] {
        out.extend_from_slice(&u32::try_from(part.len()).ok()?.to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(body);
    Some(out)
}

/// Decodes a stored value; `None` for anything not in the current format
/// or `TGC2`.
pub fn decode(value: &[u8]) -> Option<L2Entry> {
    let (index_names, generation, rest) = match value.strip_prefix(MAGIC) {
        Some(rest) => {
            let (index_names, rest) = take_sized(rest)?;
            let (generation, rest) = take_sized(rest)?;
            let generation = std::str::from_utf8(generation).ok()?.parse().ok()?;
            (index_names, generation, rest)
        }
        None => {
            let (index_names, rest) = take_sized(value.strip_prefix(MAGIC_V2)?)?;
            (index_names, 0, rest)
        }
    };
    if index_names.is_empty() {
        // Nothing the purge markers could be checked against.
        return None;
    }
    let (internal, rest) = take_sized(rest)?;
    let (header, body) = take_sized(rest)?;
    Some(L2Entry {
        index_names: index_names.to_vec(),
        generation,
        internal: internal.to_vec(),
        header: header.to_vec(),
        body: Bytes::copy_from_slice(body),
    })
}

/// The index keys in the front of a stored value (`head`, at least its
/// first [`HEAD_READ`] bytes): `Ok` with the keys, `Err(n)` when the block
/// is longer than `head` and the first `n` bytes are needed, `Ok(empty)`
/// for a value without them (`TGC1`, or not ours).
pub fn index_names_in(head: &[u8]) -> Result<Vec<&str>, usize> {
    let Some(rest) = head
        .strip_prefix(MAGIC)
        .or_else(|| head.strip_prefix(MAGIC_V2))
    else {
        return Ok(Vec::new());
    };
    let Some(len) = rest.get(..4).and_then(|b| b.try_into().ok()) else {
        return Ok(Vec::new());
    };
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_INDEX_NAMES {
        return Ok(Vec::new());
    }
    let Some(block) = rest.get(4..4 + len) else {
        return Err(8 + len);
    };
    Ok(std::str::from_utf8(block)
        .map(|names| names.split('\n').filter(|n| !n.is_empty()).collect())
        .unwrap_or_default())
}

fn take_sized(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let rest = &bytes[4..];
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Why a lookup found nothing, for `tollgate_cache_l2_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    /// Found and decoded.
    Hit,
    /// Not there.
    Miss,
    /// Redis answered with an error, is not connected, or the value did
    /// not decode.
    Error,
    /// No answer within the lookup timeout (or the breaker is open).
    Timeout,
}

impl LookupResult {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            LookupResult::Hit => "hit",
            LookupResult::Miss => "miss",
            LookupResult::Error => "error",
            LookupResult::Timeout => "timeout",
        }
    }
}

/// The Redis tier of the cache.
pub struct RedisTier {
    link: Arc<RedisLink>,
    breaker: Arc<CircuitBreaker>,
    settings: L2Settings,
    writes: tokio::sync::mpsc::Sender<MarkedWrite>,
    metrics: Arc<Metrics>,
    /// Whether the last lookup or write got an answer (for `/health`).
    answering: Arc<AtomicBool>,
    /// Shared parts of invalidations waiting to be sent.
    outbox: Arc<Outbox>,
    /// Bytes of the values queued for the writer.
    queued_bytes: Arc<AtomicUsize>,
    /// The epoch of Redis's data as last learned (0: not yet), for
    /// writes whose request began before this instance knew any.
    epoch: Arc<AtomicU64>,
    /// The version of a Redis found too old for the tier's scripts (then
    /// the tier stays off: memory only).
    too_old: std::sync::Mutex<Option<String>>,
}

/// The oldest Redis the tier's scripts run on: `PEXPIRE … GT/NX` and
/// `ZADD … GT` came with 7.0.
pub const REDIS_NEEDED: (u32, u32) = (7, 0);

/// The `redis_version` in an `INFO server` answer, as (major, minor) and
/// as written.
pub fn redis_version(info: &str) -> Option<((u32, u32), String)> {
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))?
        .trim();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    Some(((major, minor), version.to_owned()))
}

impl RedisTier {
    /// Connects in the background and starts the writer; fails only on a
    /// malformed URL or when a thread cannot start.
    pub fn start(
        target: &crate::redis_link::RedisEndpoint,
        settings: L2Settings,
        breaker: CircuitBreaker,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, String> {
        // Each kind of work bounds its own commands; the connection's bound
        // is the longest of them, so a purge is not cut at a lookup's.
        let link = RedisLink::connect(target, settings.longest_command(), "cache", || {})?;
        let (writes, queue) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let answering = Arc::new(AtomicBool::new(false));
        let tier = Arc::new(Self {
            link: link.clone(),
            breaker: Arc::new(breaker),
            settings,
            writes,
            metrics: metrics.clone(),
            answering: answering.clone(),
            outbox: Arc::new(Outbox::new(DEFAULT_LIMIT_BYTES, metrics.clone())),
            too_old: std::sync::Mutex::new(None),
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            epoch: Arc::new(AtomicU64::new(0)),
        });
        let (write_timeout, marker_ttl) =
            (tier.settings.write_timeout, tier.settings.purge_marker_ttl);
        let queued_bytes = tier.queued_bytes.clone();
        let (epoch, epoch_key) = (tier.epoch.clone(), tier.epoch_key());
        crate::redis_link::spawn_runtime_thread("tollgate-cache-l2-writer".into(), move || {
            let writer = Writer {
                link,
                metrics,
                answering,
                queued_bytes,
                epoch,
                epoch_key,
                write_timeout,
                marker_ttl,
            };
            writer.run(queue)
        })
        .map_err(|e| format!("cache redis tier: cannot start the writer: {e}"))?;
        Ok(tier)
    }

    /// The tier's settings.
    pub fn settings(&self) -> &L2Settings {
        &self.settings
    }

    /// The metrics the tier counts in (purges count their drains there).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The connection, for purges and the purge channel.
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    /// Whether Redis answered the tier's last lookup or write, the
    /// breaker is closed and the server is recent enough: `/health` says
    /// `degraded` otherwise.
    pub fn is_answering(&self) -> bool {
        self.answering.load(Ordering::Relaxed) && !self.breaker.is_open() && !self.is_off()
    }

    /// The version of the Redis found, when it is older than
    /// [`REDIS_NEEDED`] (the tier is off).
    pub fn too_old(&self) -> Option<String> {
        self.too_old
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the tier is off because Redis is too old.
    fn is_off(&self) -> bool {
        self.too_old
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Asks Redis its version (after each (re)connection of the purge
    /// channel: a failover may bring another server) and turns the tier
    /// off while it is older than [`REDIS_NEEDED`], with a log line, the
    /// gauge `tollgate_cache_l2_redis_too_old` and `/health` saying so,
    /// rather than failing every write.
    pub async fn check_version(&self) {
        let Some(mut conn) = self.link.conn() else {
            return;
        };
        let mut ask = redis::cmd("INFO");
        ask.arg("server");
        let info = ask.query_async::<String>(&mut conn);
        let Ok(Ok(info)) = tokio::time::timeout(self.settings.listen_timeout, info).await else {
            return;
        };
        let Some((found, version)) = redis_version(&info) else {
            return;
        };
        let old = found < REDIS_NEEDED;
        let mut too_old = self.too_old.lock().unwrap_or_else(|p| p.into_inner());
        if old && too_old.is_none() {
            log::error!(
                "cache redis tier: Redis {version} is older than {}.{}, which the tier needs (PEXPIRE GT, ZADD GT); the tier stays off (memory only)",
                REDIS_NEEDED.0,
                REDIS_NEEDED.1
            );
        }
        *too_old = old.then_some(version);
        self.metrics.cache_l2_redis_too_old.set(i64::from(old));
    }

    /// Whether the breaker keeps lookups away from Redis.
    pub fn breaker_is_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Whether the breaker lets work through now (`SkipAndProbe`: the
    /// caller's work is the probe, and its [`RedisTier::record_answer`]
    /// closes or reopens the breaker).
    pub fn permit(&self) -> Permit {
        match self.is_off() {
            true => Permit::Skip,
            false => self.breaker.permit(),
        }
    }

    /// Records whether Redis answered work of the tier (a lookup, a
    /// shared invalidation) for the breaker and `/health`.
    pub fn record_answer(&self, answered: bool) {
        self.answering.store(answered, Ordering::Relaxed);
        if self.breaker.record(answered) == Transition::Opened {
            log::warn!(
                "cache redis tier: circuit breaker open, memory only for {:?}",
                self.breaker.open_for()
            );
        }
    }

    /// Learns the epoch of Redis's data (the purge listener asks it when
    /// it subscribes and with every heartbeat); returns the one before.
    pub fn learn_epoch(&self, epoch: u64) -> u64 {
        self.epoch.swap(epoch, Ordering::AcqRel)
    }

    /// The queue of invalidations' shared parts.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The Redis key of an entry.
    pub fn entry_key(&self, combined: &HashBinary) -> String {
        format!("{}c:{}", self.settings.key_prefix, hex::encode(combined))
    }

    /// The index of a URI's entries (a sorted set scored by expiry).
    pub fn uri_index(&self, uri: &str) -> String {
        format!("{}i:u:{uri}", self.settings.key_prefix)
    }

    /// The index of a tag's entries.
    pub fn tag_index(&self, tag: &str) -> String {
        format!("{}i:t:{tag}", self.settings.key_prefix)
    }

    /// The index of a route's entries.
    pub fn route_index(&self, route: &str) -> String {
        format!("{}i:r:{route}", self.settings.key_prefix)
    }

    /// An index as earlier versions named it (a plain set that never
    /// shrank): purges still drain it, so entries written by an instance
    /// of an earlier version during a rolling upgrade are purged too.
    pub fn legacy_index(&self, kind: char, name: &str) -> String {
        format!("{}{kind}:{name}", self.settings.key_prefix)
    }

    /// The purge marker of a URI (`u`), route (`r`) or tag (`t`).
    pub fn marker(&self, kind: char, name: &str) -> String {
        format!("{}x:{kind}:{name}", self.settings.key_prefix)
    }

    /// The sorted set of prefix purge markers.
    pub fn prefix_markers(&self) -> String {
        format!("{}x:prefixes", self.settings.key_prefix)
    }

    /// The epoch of Redis's data (`generation`).
    pub fn epoch_key(&self) -> String {
        format!("{}epoch", self.settings.key_prefix)
    }

    /// The shared purge generation's counter.
    pub fn generation_key(&self) -> String {
        format!("{}gen", self.settings.key_prefix)
    }

    /// Looks an entry up; anything but a decoded hit is `None`, counted.
    pub async fn lookup(&self, combined: &HashBinary) -> Option<L2Entry> {
        let started = Instant::now();
        let (result, entry) = self.try_lookup(combined).await;
        self.metrics
            .cache_l2_requests
            .with_label_values(&[result.label()])
            .inc();
        self.metrics
            .cache_l2_lookup_seconds
            .observe(started.elapsed().as_secs_f64());
        entry
    }

    async fn try_lookup(&self, combined: &HashBinary) -> (LookupResult, Option<L2Entry>) {
        if self.is_off() {
            return (LookupResult::Error, None);
        }
        match self.breaker.permit() {
            Permit::Ask => {}
            Permit::Skip => return (LookupResult::Timeout, None),
            Permit::SkipAndProbe => {
                self.link.probe(self.breaker.clone(), "cache");
                return (LookupResult::Timeout, None);
            }
        }
        let Some(mut conn) = self.link.conn() else {
            self.breaker.record(false);
            return (LookupResult::Error, None);
        };
        let key = self.entry_key(combined);
        let prefix_markers = self.prefix_markers();
        let get = async {
            if self.link.is_cluster() {
                redis::cmd("GET").arg(&key).query_async(&mut conn).await
            } else {
                let prefix_len = self.settings.key_prefix.len();
                markers::lookup(&mut conn, &key, &prefix_markers, prefix_len).await
            }
        };
        // `answered`: Redis did its part (a value that does not decode is
        // ours to refuse, not a reason to open the breaker).
        let (result, entry, answered) =
            match tokio::time::timeout(self.settings.lookup_timeout, get).await {
                Err(_) => (LookupResult::Timeout, None, false),
                Ok(Err(e)) if e.is_timeout() => (LookupResult::Timeout, None, false),
                Ok(Err(_)) => (LookupResult::Error, None, false),
                Ok(Ok(None)) => (LookupResult::Miss, None, true),
                Ok(Ok(Some(value))) => match decode(&value) {
                    Some(entry) => (LookupResult::Hit, Some(entry), true),
                    None => {
                        log::warn!("cache redis tier: {key} does not decode; treated as a miss");
                        (LookupResult::Error, None, true)
                    }
                },
            };
        self.record_answer(answered);
        (result, entry)
    }

    /// Queues an entry for writing; never waits. `ttl` is how long Redis
    /// keeps it; its URI, route and tags are the purge indexes it joins and
    /// the markers that drop it; `ticket`, when its request began.
    pub fn store(
        &self,
        combined: &HashBinary,
        entry: &L2Entry,
        ttl: Duration,
        names: &EntryNames<'_>,
        ticket: FillTicket,
    ) {
        if entry.body.len() > self.settings.max_object_size || ttl.is_zero() || self.is_off() {
            return;
        }
        let indexes: Vec<String> = [self.uri_index(names.uri), self.route_index(names.route)]
            .into_iter()
            .chain(names.tags.iter().map(|t| self.tag_index(t)))
            .collect();
        let names_block = index_names(&indexes);
        if names_block.is_empty() {
            return; // too many index keys to check against purges: memory only
        }
        let Some(value) = encode(
            &names_block,
            ticket.shared,
            &entry.internal,
            &entry.header,
            &entry.body,
        ) else {
            return;
        };
        let write = MarkedWrite {
            key: self.entry_key(combined),
            value,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            uri: names.uri.to_owned(),
            markers: [self.marker('u', names.uri), self.marker('r', names.route)]
                .into_iter()
                .chain(names.tags.iter().map(|t| self.marker('t', t)))
                .collect(),
            prefix_markers: self.prefix_markers(),
            epoch_key: self.epoch_key(),
            indexes,
            ticket,
        };
        let bytes = write.value.len();
        let queued = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if queued > WRITE_QUEUE_BYTES || self.writes.try_send(write).is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.metrics
                .cache_l2_writes
                .with_label_values(&["dropped"])
                .inc();
            return;
        }
        self.metrics
            .cache_l2_write_queue_bytes
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
    }
}

/// How long Redis keeps an entry: until its freshness and its longest
/// stale window are over.
pub fn ttl_of(fresh_until: SystemTime, stale_secs: u32, now: SystemTime) -> Duration {
    fresh_until
        .checked_add(Duration::from_secs(u64::from(stale_secs)))
        .and_then(|end| end.duration_since(now).ok())
        .unwrap_or(Duration::ZERO)
}

/// The writer task's state: one script per entry
/// (`markers::write`), each bounded by `write_timeout`. A
/// write whose request began so long ago that the markers which could
/// drop it may be gone is dropped unsent.
struct Writer {
    link: Arc<RedisLink>,
    metrics: Arc<Metrics>,
    answering: Arc<AtomicBool>,
    queued_bytes: Arc<AtomicUsize>,
    epoch: Arc<AtomicU64>,
    epoch_key: String,
    write_timeout: Duration,
    marker_ttl: Duration,
}

impl Writer {
    async fn run(self, mut queue: tokio::sync::mpsc::Receiver<MarkedWrite>) {
        while let Some(write) = queue.recv().await {
            let result = self.write(&write).await;
            let left = self
                .queued_bytes
                .fetch_sub(write.value.len(), Ordering::AcqRel)
                .saturating_sub(write.value.len());
            self.metrics
                .cache_l2_write_queue_bytes
                .set(i64::try_from(left).unwrap_or(i64::MAX));
            if result != "overtaken" {
                self.answering.store(result == "ok", Ordering::Relaxed);
            }
            self.metrics
                .cache_l2_writes
                .with_label_values(&[result])
                .inc();
        }
    }

    /// Sends one write; the metric label of how it went.
    async fn write(&self, write: &MarkedWrite) -> &'static str {
        if write.ticket.began.elapsed() + self.write_timeout >= self.marker_ttl {
            return "overtaken";
        }
        let Some(mut conn) = self.link.conn() else {
            return "error";
        };
        // A request that began before this instance knew Redis's epoch (its
        // first moments) is checked in the epoch known now: it had heard no
        // generation either, so every marker of this epoch drops it.
        let epoch = match write.ticket.epoch {
            0 => match self.epoch.load(Ordering::Acquire) {
                0 => match generation::epoch(&mut conn, &self.epoch_key).await {
                    Ok(epoch) => {
                        self.epoch.store(epoch, Ordering::Release);
                        epoch
                    }
                    Err(_) => return "error",
                },
                known => known,
            },
            own => own,
        };
        let sent = markers::write(&mut conn, write, epoch, self.link.is_cluster());
        match tokio::time::timeout(self.write_timeout, sent).await {
            Ok(Ok(true)) => "ok",
            Ok(Ok(false)) => "overtaken",
            Ok(Err(e)) => {
                log::debug!("cache redis tier: writing {}: {e}", write.key);
                "error"
            }
            Err(_) => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_anything_else_is_refused() {
        let names = index_names(&["p:i:u:a/x".to_owned(), "p:i:r:api".to_owned()]);
        let value = encode(&names, 42, b"meta", b"header", b"body bytes").expect("encode");
        let entry = decode(&value).expect("decode");
        assert_eq!(
            (&entry.internal[..], &entry.header[..], &entry.body[..]),
            (&b"meta"[..], &b"header"[..], &b"body bytes"[..])
        );
        assert_eq!(entry.generation, 42);
        assert_eq!(entry.index_names, names);
        assert_eq!(index_names_in(&value), Ok(vec!["p:i:u:a/x", "p:i:r:api"]));
        assert!(decode(b"TGC0....").is_none(), "another format");
        assert!(decode(&value[..10]).is_none(), "truncated");
        assert!(decode(b"").is_none());
        let mut lying = value.clone();
        lying[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&lying).is_none(), "a length past the end");
    }

    fn value_of(magic: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut value = magic.to_vec();
        for part in parts {
            value.extend_from_slice(&(part.len() as u32).to_be_bytes());
            value.extend_from_slice(part);
        }
        value.extend_from_slice(b"body");
        value
    }

    #[test]
    fn the_previous_format_decodes_as_generation_0_and_the_one_before_not() {
        let v2 = value_of(b"TGC2", &[b"p:i:u:a/x", b"meta", b"header"]);
        let entry = decode(&v2).expect("TGC2 decodes");
        assert_eq!(
            (&entry.header[..], &entry.body[..], entry.generation),
            (&b"header"[..], &b"body"[..], 0)
        );
        assert_eq!(index_names_in(&v2), Ok(vec!["p:i:u:a/x"]));
        let v1 = value_of(b"TGC1", &[b"meta", b"header"]);
        assert!(
            decode(&v1).is_none(),
            "no index keys: cannot be checked against purge markers"
        );
        assert_eq!(index_names_in(&v1), Ok(Vec::new()));
    }

    #[test]
    fn a_long_index_block_asks_for_more_and_an_oversized_one_is_not_written() {
        let long: Vec<String> = (0..40)
            .map(|i| format!("prefix:i:t:tag-number-{i:04}"))
            .collect();
        let names = index_names(&long);
        let value = encode(&names, 7, b"m", b"h", b"b").expect("encode");
        assert_eq!(index_names_in(&value[..HEAD_READ]), Err(8 + names.len()));
        assert_eq!(index_names_in(&value).map(|n| n.len()), Ok(40));
        let huge: Vec<String> = (0..1000).map(|i| format!("t{i:08}")).collect();
        assert!(index_names(&huge).is_empty(), "over MAX_INDEX_NAMES: none");
        let value = encode(&[], 7, b"m", b"h", b"b").expect("encode");
        assert!(decode(&value).is_none(), "no index keys: never served");
    }

    #[test]
    fn the_redis_version_is_read_from_info() {
        let info = "# Server\r\nredis_version:6.2.14\r\nredis_mode:standalone\r\n";
        assert_eq!(redis_version(info), Some(((6, 2), "6.2.14".to_owned())));
        assert!(redis_version(info).expect("v").0 < REDIS_NEEDED);
        let info = "redis_version:7.0.15\n";
        assert!(redis_version(info).expect("v").0 >= REDIS_NEEDED);
        assert_eq!(redis_version("# Server\r\n"), None);
    }

    #[test]
    fn redis_keeps_an_entry_for_its_freshness_and_stale_window() {
        let now = SystemTime::now();
        let ttl = ttl_of(now + Duration::from_secs(60), 30, now);
        assert_eq!(ttl, Duration::from_secs(90));
        assert_eq!(
            ttl_of(now - Duration::from_secs(60), 30, now),
            Duration::ZERO
        );
    }
}
