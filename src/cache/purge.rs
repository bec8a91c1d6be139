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
use super::store::{MemoryStore, Selection};
use crate::metrics::Metrics;
use futures::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The longest an instance serves a memory entry while it cannot hear
/// other instances' purges.
pub const DEAF_GRACE: Duration = Duration::from_secs(5);

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
}

/// Applies `purge` to this instance's memory; how many entries it
/// removed (or marked stale).
pub fn purge_memory(store: &MemoryStore, purge: &Purge) -> usize {
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

/// A glob (Redis `MATCH`) that matches `literal` exactly.
fn glob_escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Removes `target` from the Redis tier and tells the other instances.
/// Returns how many Redis entries went; errors say what failed.
pub async fn purge_shared(
    tier: &RedisTier,
    instance: &str,
    purge: &Purge,
) -> Result<usize, String> {
    let target = &purge.target;
    let mut conn = tier
        .link()
        .conn()
        .ok_or_else(|| "the cache's Redis tier is not connected".to_owned())?;
    let indexes: Vec<String> = match target {
        PurgeTarget::Uri(uri) => vec![tier.uri_index(uri)],
        PurgeTarget::Route(route) => vec![tier.route_index(route)],
        PurgeTarget::Tag(tag) => vec![tier.tag_index(tag)],
        PurgeTarget::Prefix { .. } if tier.link().is_cluster() => {
            return Err(
                "prefix purges of the Redis tier are not supported on a Redis Cluster (purge by url, route or tag)"
                    .to_owned(),
            )
        }
        PurgeTarget::Prefix { prefix, host } => {
            let (pattern, any_host) = match host {
                Some(host) => (
                    format!(
                        "{}*",
                        glob_escape(&tier.uri_index(&format!("{host}{prefix}")))
                    ),
                    false,
                ),
                None => (format!("{}*", glob_escape(&tier.uri_index(""))), true),
            };
            let uri_start = tier.uri_index("").len();
            let mut found = Vec::new();
            let mut iter: redis::AsyncIter<String> = redis::cmd("SCAN")
                .cursor_arg(0)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .clone()
                .iter_async(&mut conn)
                .await
                .map_err(|e| format!("scanning the Redis tier: {e}"))?;
            while let Some(item) = iter.next().await {
                let key = item.map_err(|e| format!("scanning the Redis tier: {e}"))?;
                let keep = !any_host || {
                    let uri = key.get(uri_start..).unwrap_or("");
                    let path = uri.find('/').map_or("", |i| &uri[i..]);
                    path.starts_with(prefix.as_str())
                };
                if keep {
                    found.push(key);
                }
            }
            drop(iter);
            found
        }
    };
    let mut removed = 0usize;
    for index in &indexes {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(index)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("reading {index}: {e}"))?;
        if purge.soft {
            for key in &members {
                removed += usize::from(expire_entry(&mut conn, key).await?);
            }
            continue;
        }
        if tier.link().is_cluster() {
            // One key per command: the entries live in many slots.
            for key in members.iter().chain(std::iter::once(index)) {
                let gone: usize = redis::cmd("DEL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| format!("deleting {key}: {e}"))?;
                removed += usize::from(gone > 0 && key != index);
            }
            continue;
        }
        let mut del = redis::cmd("DEL");
        del.arg(index);
        for m in &members {
            del.arg(m);
        }
        let gone: usize = del
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("deleting what {index} lists: {e}"))?;
        removed += gone.saturating_sub(1);
    }
    let announcement = serde_json::to_string(&Announcement {
        from: instance.to_owned(),
        purge: purge.clone(),
    })
    .map_err(|e| e.to_string())?;
    redis::cmd("PUBLISH")
        .arg(channel(tier))
        .arg(announcement)
        .query_async::<i64>(&mut conn)
        .await
        .map_err(|e| format!("publishing the purge: {e}"))?;
    Ok(removed)
}

/// Marks one Redis entry stale now (a soft purge), keeping its expiry;
/// `false` when it is gone or does not decode.
async fn expire_entry(conn: &mut crate::redis_link::RedisConn, key: &str) -> Result<bool, String> {
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(|e| format!("reading {key}: {e}"))?;
    let Some(entry) = value.as_deref().and_then(super::l2::decode) else {
        return Ok(false);
    };
    let Ok(mut meta) = pingora::cache::CacheMeta::deserialize(&entry.internal, &entry.header)
    else {
        return Ok(false);
    };
    meta.expire_at(SystemTime::now());
    let Ok((internal, header)) = meta.serialize() else {
        return Ok(false);
    };
    let Some(value) = super::l2::encode(&internal, &header, &entry.body) else {
        return Ok(false);
    };
    let set: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("KEEPTTL")
        .arg("XX")
        .query_async(conn)
        .await
        .map_err(|e| format!("marking {key} stale: {e}"))?;
    Ok(set.is_some())
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

    fn apply(&self, payload: &[u8]) {
        let Ok(announcement) = serde_json::from_slice::<Announcement>(payload) else {
            log::warn!("cache purge channel: a message that is not a purge; ignored");
            return;
        };
        if announcement.from == self.instance {
            return;
        }
        let removed = purge_memory(self.store, &announcement.purge);
        self.metrics
            .cache_purges
            .with_label_values(&["remote"])
            .inc_by(removed as u64);
    }

    /// Removes memory entries older than the grace, while deaf.
    fn sweep(&self) {
        let Some(cutoff) = SystemTime::now().checked_sub(DEAF_GRACE) else {
            return;
        };
        let removed = self.store.purge_created_before(cutoff);
        if removed > 0 {
            log::debug!("cache: {removed} memory entries dropped while purges cannot be heard");
        }
    }

    /// One subscription, until it breaks or shutdown.
    async fn listen(
        &self,
        shutdown: &mut ShutdownWatch,
        deaf_since: &mut Option<SystemTime>,
    ) -> bool {
        let mut pubsub = match self.tier.link().client().get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                log::debug!("cache purge channel: cannot connect: {e}");
                return false;
            }
        };
        if let Err(e) = pubsub.subscribe(channel(&self.tier)).await {
            log::debug!("cache purge channel: cannot subscribe: {e}");
            return false;
        }
        log::info!(
            "cache: listening for other instances' purges on {}",
            channel(&self.tier)
        );
        if let Some(since) = deaf_since.take() {
            // Whatever was stored before may have been purged unheard.
            let removed = self.store.purge_created_before(SystemTime::now());
            log::info!(
                "cache: hearing purges again after {:?}; dropped {removed} memory entries stored meanwhile",
                since.elapsed().unwrap_or_default()
            );
        }
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(m) => self.apply(m.get_payload_bytes()),
                    None => return false,
                },
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
            self.sweep();
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
    fn globs_match_only_the_literal() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

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
        };
        let text = serde_json::to_string(&a).expect("json");
        let back: Announcement = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.purge, a.purge);
    }
}
