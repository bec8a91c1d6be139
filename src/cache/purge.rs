//! Purges that reach every instance. An admin purge on any instance
//! removes the matching entries from its memory, from the Redis tier (by
//! the URI and route index sets the tier keeps), and publishes the purge on
//! the channel `{key_prefix}purge`; every other instance, subscribed,
//! removes the same entries from its memory within a round trip.
//!
//! An instance that cannot hear the channel (Redis down, subscription
//! lost) could keep serving an entry another instance purged meanwhile. The
//! bound: while it is not subscribed, its memory keeps no entry longer
//! than [`DEAF_GRACE`] (a sweep every second removes older ones, so
//! misses refill from Redis or the upstream), and when it hears the
//! channel again it drops every entry it stored before, once.

use super::l2::RedisTier;
use super::markers;
use super::redis_drain::{
    drain_index, expire_index, listed_in, scan_uri_indexes, spawn_drain, EAGER, REDIS_BATCH,
};
use super::store::{MemoryStore, Selection};
use crate::metrics::Metrics;
use crate::redis_link::RedisConn;
use futures::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The longest an instance serves a memory entry while it cannot hear
/// other instances' purges.
pub const DEAF_GRACE: Duration = Duration::from_secs(5);

/// How often the purge channel's connection is asked to prove it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// What a purge removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeTarget {
    /// Every variant of one URI (`host/path?query`, as the key holds it).
    Uri(String),
    /// URIs below `prefix` (a path), on `host` or on any host.
    Prefix {
        /// The path prefix.
        prefix: String,
        /// Only this (normalised) host, if set.
        host: Option<String>,
    },
    /// What one route stored.
    Route(String),
    /// Every entry whose response carried this cache tag.
    Tag(String),
}

/// A purge: what, and whether entries are removed or only marked stale
/// (`soft`: the next request revalidates; stale windows still apply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purge {
    /// What it removes.
    pub target: PurgeTarget,
    /// Mark stale instead of removing.
    #[serde(default)]
    pub soft: bool,
}

/// A purge as published on the channel.
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    /// The instance that purged (it does not apply its own twice).
    from: String,
    purge: Purge,
    /// The purge's shared generation (`cache::markers`); absent from
    /// instances of earlier versions.
    #[serde(default)]
    generation: Option<u64>,
}

/// Applies `purge` to this instance's memory off the async runtime (a
/// purge of a million entries takes seconds of CPU, which must not stall
/// the admin endpoints or the purge channel's heartbeat); how many entries
/// it removed (or marked stale).
pub async fn purge_memory_off_runtime(store: &'static MemoryStore, purge: &Purge) -> usize {
    let purge = purge.clone();
    match tokio::task::spawn_blocking(move || purge_memory(store, &purge)).await {
        Ok(removed) => removed,
        Err(e) => {
            log::error!("cache: a memory purge failed: {e}");
            0
        }
    }
}

/// Applies `purge` to this instance's memory; how many entries it
/// removed (or marked stale).
pub fn purge_memory(store: &'static MemoryStore, purge: &Purge) -> usize {
    let host_prefix;
    let selection = match &purge.target {
        PurgeTarget::Uri(uri) => Selection::Uri(uri),
        PurgeTarget::Prefix {
            prefix,
            host: Some(host),
        } => {
            host_prefix = format!("{host}{prefix}");
            Selection::Prefix(&host_prefix)
        }
        PurgeTarget::Prefix { prefix, host: None } => Selection::PathPrefix(prefix),
        PurgeTarget::Route(route) => Selection::Route(route),
        PurgeTarget::Tag(tag) => Selection::Tag(tag),
    };
    if purge.soft {
        store.expire_selection(selection, SystemTime::now())
    } else {
        store.purge_selection(selection)
    }
}

/// The channel purges are published on.
pub fn channel(tier: &RedisTier) -> String {
    format!("{}purge", tier.settings().key_prefix)
}

/// Removes `target` from the Redis tier and tells the other instances,
/// within `cache.redis.purge_timeout`. Returns how many Redis entries went
/// (or were marked stale); errors say what failed.
///
/// Order: the purge takes the next shared generation and leaves its
/// markers first (from then on, writes that began before it are dropped
/// and lookups no longer see the entries it names, `cache::markers`), then
/// drains the index sets in batches, then publishes (with the generation,
/// so other instances' later requests may write again). A hard purge of
/// a URL, route or tag whose indexes list more than [`REDIS_BATCH`]
/// entries publishes first and drains after answering, paced
/// ([`BACKGROUND`]): the markers hide its entries meanwhile, so it takes
/// effect in milliseconds however large. The answer then counts the
/// entries the indexes listed. On a Redis Cluster (lookups there do not
/// read the markers) and for prefix and soft purges, the drain comes
/// first, as described.
pub async fn purge_shared(
    tier: &RedisTier,
    store: &MemoryStore,
    instance: &str,
    purge: &Purge,
) -> Result<usize, String> {
    let bound = tier.settings().purge_timeout;
    tokio::time::timeout(bound, purge_shared_within(tier, store, instance, purge))
        .await
        .map_err(|_| {
            format!("the purge of the Redis tier took longer than purge_timeout ({bound:?})")
        })?
}

async fn purge_shared_within(
    tier: &RedisTier,
    store: &MemoryStore,
    instance: &str,
    purge: &Purge,
) -> Result<usize, String> {
    let target = &purge.target;
    let cluster = tier.link().is_cluster();
    if cluster && matches!(target, PurgeTarget::Prefix { .. }) {
        return Err(
            "prefix purges of the Redis tier are not supported on a Redis Cluster (purge by url, route or tag)"
                .to_owned(),
        );
    }
    let mut conn = tier
        .link()
        .conn()
        .ok_or_else(|| "the cache's Redis tier is not connected".to_owned())?;
    let generation: u64 = redis::cmd("INCR")
        .arg(tier.generation_key())
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("taking a purge generation: {e}"))?;
    // A hard purge of a URL, route or tag whose indexes list many entries
    // is drained after it answers: its marker (read by lookups, outside a
    // cluster) hides them meanwhile, so it must outlast every entry its
    // index lists. Smaller ones are drained first and their markers need
    // only outlast the writes in flight (`purge_marker_ttl`).
    let named = match target {
        PurgeTarget::Uri(uri) => Some([tier.uri_index(uri), tier.legacy_index('u', uri)]),
        PurgeTarget::Route(route) => Some([tier.route_index(route), tier.legacy_index('r', route)]),
        PurgeTarget::Tag(tag) => Some([tier.tag_index(tag), tier.legacy_index('t', tag)]),
        PurgeTarget::Prefix { .. } => None,
    };
    let deferred = match &named {
        Some(indexes) if !cluster && !purge.soft => {
            let listed = listed_in(&mut conn, indexes).await?;
            (listed > REDIS_BATCH).then_some(listed)
        }
        _ => None,
    };
    let outlast = named
        .as_ref()
        .filter(|_| deferred.is_some())
        .map(|i| i[0].as_str());
    leave_marker(tier, &mut conn, target, outlast, generation).await?;
    store.heard_shared_generation(generation);
    if let (Some(listed), Some(indexes)) = (deferred, named.clone()) {
        publish(tier, &mut conn, instance, purge, generation).await?;
        spawn_drain(tier, indexes);
        return Ok(listed);
    }
    let indexes: Vec<String> = match (named, target) {
        (Some(indexes), _) => indexes.into(),
        (None, PurgeTarget::Prefix { prefix, host }) => {
            let mut found =
                scan_uri_indexes(&mut conn, &tier.uri_index(""), prefix, host.as_deref()).await?;
            found.extend(
                scan_uri_indexes(
                    &mut conn,
                    &tier.legacy_index('u', ""),
                    prefix,
                    host.as_deref(),
                )
                .await?,
            );
            found
        }
        (None, _) => Vec::new(),
    };
    let mut removed = 0usize;
    for index in &indexes {
        removed += if purge.soft {
            expire_index(&mut conn, index).await?
        } else {
            drain_index(&mut conn, index, cluster, EAGER).await?
        };
    }
    publish(tier, &mut conn, instance, purge, generation).await?;
    Ok(removed)
}

/// Tells the other instances about a purge.
async fn publish(
    tier: &RedisTier,
    conn: &mut RedisConn,
    instance: &str,
    purge: &Purge,
    generation: u64,
) -> Result<(), String> {
    let announcement = serde_json::to_string(&Announcement {
        from: instance.to_owned(),
        purge: purge.clone(),
        generation: Some(generation),
    })
    .map_err(|e| e.to_string())?;
    redis::cmd("PUBLISH")
        .arg(channel(tier))
        .arg(announcement)
        .query_async::<i64>(conn)
        .await
        .map_err(|e| format!("publishing the purge: {e}"))?;
    Ok(())
}

/// Leaves the purge's marker (`cache::markers`).
async fn leave_marker(
    tier: &RedisTier,
    conn: &mut RedisConn,
    target: &PurgeTarget,
    index: Option<&str>,
    generation: u64,
) -> Result<(), String> {
    let ttl_ms = u64::try_from(tier.settings().purge_marker_ttl.as_millis()).unwrap_or(u64::MAX);
    let marked = match target {
        PurgeTarget::Uri(uri) => {
            markers::mark(conn, &tier.marker('u', uri), index, generation, ttl_ms).await
        }
        PurgeTarget::Route(route) => {
            markers::mark(conn, &tier.marker('r', route), index, generation, ttl_ms).await
        }
        PurgeTarget::Tag(tag) => {
            markers::mark(conn, &tier.marker('t', tag), index, generation, ttl_ms).await
        }
        PurgeTarget::Prefix { prefix, host } => {
            let member = match host {
                Some(host) => format!("h{host}{prefix}"),
                None => format!("p{prefix}"),
            };
            markers::mark_prefix(conn, &tier.prefix_markers(), &member, generation, ttl_ms).await
        }
    };
    marked.map_err(|e| format!("leaving the purge marker: {e}"))
}

/// Listens for other instances' purges and applies them to memory; keeps
/// memory within [`DEAF_GRACE`] while it cannot listen.
pub struct PurgeListener {
    tier: Arc<RedisTier>,
    store: &'static MemoryStore,
    metrics: Arc<Metrics>,
    instance: String,
}

impl PurgeListener {
    /// A listener for this instance (`instance`, its id on the channel).
    pub fn new(
        tier: Arc<RedisTier>,
        store: &'static MemoryStore,
        metrics: Arc<Metrics>,
        instance: String,
    ) -> Self {
        Self {
            tier,
            store,
            metrics,
            instance,
        }
    }

    async fn apply(&self, payload: &[u8]) {
        let Ok(announcement) = serde_json::from_slice::<Announcement>(payload) else {
            log::warn!("cache purge channel: a message that is not a purge; ignored");
            return;
        };
        let removed = if announcement.from == self.instance {
            0
        } else {
            purge_memory_off_runtime(self.store, &announcement.purge).await
        };
        // After the memory purge: requests beginning from now on may write
        // what this purge named to Redis again.
        if let Some(generation) = announcement.generation {
            self.store.heard_shared_generation(generation);
        }
        self.metrics
            .cache_purges
            .with_label_values(&["remote"])
            .inc_by(removed as u64);
    }

    /// Removes memory entries stored before `cutoff`, off the runtime.
    async fn drop_created_before(&self, cutoff: SystemTime) -> usize {
        let store = self.store;
        tokio::task::spawn_blocking(move || store.purge_created_before(cutoff))
            .await
            .unwrap_or(0)
    }

    /// Removes memory entries older than the grace, while deaf.
    async fn sweep(&self) {
        let Some(cutoff) = SystemTime::now().checked_sub(DEAF_GRACE) else {
            return;
        };
        let removed = self.drop_created_before(cutoff).await;
        if removed > 0 {
            log::debug!("cache: {removed} memory entries dropped while purges cannot be heard");
        }
    }

    /// Connects and subscribes, within `listen_timeout`.
    async fn subscribe(&self) -> Result<redis::aio::PubSub, String> {
        let connect = async {
            let mut pubsub = self.tier.link().client().get_async_pubsub().await?;
            pubsub.subscribe(channel(&self.tier)).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let bound = self.tier.settings().listen_timeout;
        match tokio::time::timeout(bound, connect).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within listen_timeout ({bound:?})")),
        }
    }

    /// The shared purge generation now (after subscribing, so no purge
    /// falls between it and the first message); `None` if Redis does not
    /// say, which only keeps older tickets (more writes dropped).
    async fn current_generation(&self) -> Option<u64> {
        let mut conn = self.tier.link().conn()?;
        let mut get = redis::cmd("GET");
        get.arg(self.tier.generation_key());
        let get = get.query_async::<Option<u64>>(&mut conn);
        match tokio::time::timeout(self.tier.settings().listen_timeout, get).await {
            Ok(Ok(generation)) => Some(generation.unwrap_or(0)),
            _ => None,
        }
    }

    /// One subscription, until it breaks, stops answering its heartbeat
    /// (a `PING` every [`HEARTBEAT`], answered within `listen_timeout`:
    /// a half-open or black-holed connection is noticed), or shutdown.
    async fn listen(
        &self,
        shutdown: &mut ShutdownWatch,
        deaf_since: &mut Option<SystemTime>,
    ) -> bool {
        let pubsub = match self.subscribe().await {
            Ok(p) => p,
            Err(e) => {
                log::debug!("cache purge channel: cannot subscribe: {e}");
                return false;
            }
        };
        log::info!(
            "cache: listening for other instances' purges on {}",
            channel(&self.tier)
        );
        if let Some(generation) = self.current_generation().await {
            self.store.heard_shared_generation(generation);
        }
        if let Some(since) = deaf_since.take() {
            // Whatever was stored before may have been purged unheard.
            let removed = self.drop_created_before(SystemTime::now()).await;
            log::info!(
                "cache: hearing purges again after {:?}; dropped {removed} memory entries stored meanwhile",
                since.elapsed().unwrap_or_default()
            );
        }
        let (mut sink, mut messages) = pubsub.split();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let bound = self.tier.settings().listen_timeout;
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(m) => self.apply(m.get_payload_bytes()).await,
                    None => return false,
                },
                _ = heartbeat.tick() => {
                    let ping = tokio::time::timeout(bound, sink.ping::<redis::Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        log::warn!("cache purge channel: no heartbeat answer within {bound:?}; reconnecting");
                        return false;
                    }
                }
                _ = shutdown.changed() => return true,
            }
        }
    }
}

#[async_trait::async_trait]
impl BackgroundService for PurgeListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut deaf_since: Option<SystemTime> = None;
        loop {
            if self.listen(&mut shutdown, &mut deaf_since).await {
                return;
            }
            deaf_since.get_or_insert_with(|| {
                log::warn!("cache: cannot hear other instances' purges; memory entries live at most {DEAF_GRACE:?} until it can");
                SystemTime::now()
            });
            self.sweep().await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip() {
        let a = Announcement {
            from: "i1".into(),
            purge: Purge {
                target: PurgeTarget::Prefix {
                    prefix: "/p/".into(),
                    host: None,
                },
                soft: true,
            },
            generation: Some(7),
        };
        let text = serde_json::to_string(&a).expect("json");
        let back: Announcement = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.purge, a.purge);
        assert_eq!(back.generation, Some(7));
        // An earlier version's announcement (no generation) is still heard.
        let old = r#"{"from":"i0","purge":{"target":{"uri":"h/a"},"soft":false}}"#;
        let back: Announcement = serde_json::from_str(old).expect("parse");
        assert_eq!(back.generation, None);
        assert_eq!(back.purge.target, PurgeTarget::Uri("h/a".into()));
    }
}
