//! One purge of the Redis tier, in the protocol's order (`invalidation`):
//! take the next shared generation, set the markers, drain the indexes
//! (before answering, or after it for a large hard purge), publish.

use super::drain::{
    drain_index, expire_index, listed_in, scan_uri_indexes, spawn_drain, EAGER, REDIS_BATCH,
};
use super::{generation, markers, Announcement, Purge, Selection};
use crate::cache::l2::RedisTier;
use crate::cache::store::MemoryStore;
use crate::redis_link::RedisConn;

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
/// and lookups no longer see the entries it names, `invalidation::markers`), then
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

pub(super) async fn purge_shared_within(
    tier: &RedisTier,
    store: &MemoryStore,
    instance: &str,
    purge: &Purge,
) -> Result<usize, String> {
    let target = &purge.target;
    let cluster = tier.link().is_cluster();
    if cluster && matches!(target, Selection::Prefix { .. }) {
        return Err(
            "prefix purges of the Redis tier are not supported on a Redis Cluster (purge by url, route or tag)"
                .to_owned(),
        );
    }
    let mut conn = tier
        .link()
        .conn()
        .ok_or_else(|| "the cache's Redis tier is not connected".to_owned())?;
    // The first command after Redis came back may meet the old, broken
    // connection (the connection manager reconnects on that error): once
    // more on a connection error.
    let generation = match generation::next(&mut conn, &tier.generation_key()).await {
        Err(e) if e.is_connection_dropped() || e.is_io_error() => {
            generation::next(&mut conn, &tier.generation_key()).await
        }
        taken => taken,
    }
    .map_err(|e| format!("taking a purge generation: {e}"))?;
    // A hard purge of a URL, route or tag whose indexes list many entries
    // is drained after it answers: its marker (read by lookups, outside a
    // cluster) hides them meanwhile, so it must outlast every entry its
    // index lists. Smaller ones are drained first and their markers need
    // only outlast the writes in flight (`purge_marker_ttl`).
    let named = match target {
        Selection::Uri(uri) => Some([tier.uri_index(uri), tier.legacy_index('u', uri)]),
        Selection::Route(route) => Some([tier.route_index(route), tier.legacy_index('r', route)]),
        Selection::Tag(tag) => Some([tier.tag_index(tag), tier.legacy_index('t', tag)]),
        Selection::Prefix { .. } => None,
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
        (None, Selection::Prefix { prefix, host }) => {
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

/// Leaves the purge's marker (`invalidation::markers`).
async fn leave_marker(
    tier: &RedisTier,
    conn: &mut RedisConn,
    target: &Selection,
    index: Option<&str>,
    generation: u64,
) -> Result<(), String> {
    let ttl_ms = u64::try_from(tier.settings().purge_marker_ttl.as_millis()).unwrap_or(u64::MAX);
    let marked = match target {
        Selection::Uri(uri) => {
            markers::mark(conn, &tier.marker('u', uri), index, generation, ttl_ms).await
        }
        Selection::Route(route) => {
            markers::mark(conn, &tier.marker('r', route), index, generation, ttl_ms).await
        }
        Selection::Tag(tag) => {
            markers::mark(conn, &tier.marker('t', tag), index, generation, ttl_ms).await
        }
        Selection::Prefix { prefix, host } => {
            let member = match host {
                Some(host) => format!("h{host}{prefix}"),
                None => format!("p{prefix}"),
            };
            markers::mark_prefix(conn, &tier.prefix_markers(), &member, generation, ttl_ms).await
        }
    };
    marked.map_err(|e| format!("leaving the purge marker: {e}"))
}
