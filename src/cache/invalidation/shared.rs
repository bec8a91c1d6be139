//! One purge of the Redis tier, in the protocol's order (`invalidation`):
//! take the next shared generation, set the markers, drain the indexes
//! (before answering, or after it for a large hard purge), publish.

use super::drain::{
    drain_index, expire_index, listed_in, scan_uri_indexes, spawn_drain, EAGER, REDIS_BATCH,
};
use super::{Announcement, Purge, Selection};
use crate::cache::l2::RedisTier;
use crate::cache::l2::{generation, markers};
use crate::cache::store::MemoryStore;
use crate::redis_link::RedisConn;

/// A batch of hard URI invalidations in one round trip (standalone Redis):
/// the next shared generation (as [`generation::NEXT_LUA`] takes it), then
/// for each URI its marker — never lowered, kept at least ARGV[1] ms, as
/// long as it had left, and until the last entry its index lists expires
/// — and its announcement on the channel. Nothing is drained: the markers
/// hide the entries until they expire or are refilled, as for a large
/// purge; this is what lets a write's invalidation cost one script. One
/// announcement carries the whole batch.
///
/// KEYS: the counter, then per URI its marker and its index. ARGV: the
/// markers' least TTL (ms), the channel, the announcement before and after
/// its generation. Returns the generation.
pub const INVALIDATE_URIS_LUA: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local now_ms = math.floor(now / 1000)
local next = tonumber(redis.call('GET', KEYS[1]) or '0') + 1
if now > next then next = now end
local generation = string.format('%.0f', next)
redis.call('SET', KEYS[1], generation)
for i = 1, (#KEYS - 1) / 2 do
  local marker, index = KEYS[2 * i], KEYS[2 * i + 1]
  local ttl = tonumber(ARGV[1])
  local left = redis.call('PTTL', marker)
  if left > ttl then ttl = left end
  if redis.call('TYPE', index).ok == 'zset' then
    local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
    if last[2] then
      local needed = tonumber(last[2]) - now_ms + 1000
      if needed > ttl then ttl = needed end
    end
  end
  local value = generation
  local current = tonumber(redis.call('GET', marker) or '0')
  if current > next then value = string.format('%.0f', current) end
  redis.call('SET', marker, value, 'PX', string.format('%.0f', ttl))
end
redis.call('PUBLISH', ARGV[2], ARGV[3] .. generation .. ARGV[4])
return generation
"#;

static INVALIDATE_URIS: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();

/// The shared part of hard URI invalidations (a write's), in one round
/// trip ([`INVALIDATE_URIS_LUA`]): markers and announcements, no drain.
/// Not on a Redis Cluster (the keys live in many slots): there each goes
/// through [`purge_shared`]'s steps.
pub(super) async fn invalidate_uris(
    tier: &RedisTier,
    store: &MemoryStore,
    instance: &str,
    purges: &[Purge],
) -> Result<(), String> {
    let mut conn = tier
        .link()
        .conn()
        .ok_or_else(|| "the cache's Redis tier is not connected".to_owned())?;
    let script = INVALIDATE_URIS.get_or_init(|| redis::Script::new(INVALIDATE_URIS_LUA));
    let mut invocation = script.prepare_invoke();
    invocation.key(tier.generation_key());
    let ttl_ms = u64::try_from(tier.settings().purge_marker_ttl.as_millis()).unwrap_or(u64::MAX);
    invocation.arg(ttl_ms).arg(channel(tier));
    for purge in purges {
        let Selection::Uri(uri) = &purge.selection else {
            return Err("a batch of URI invalidations named something else".to_owned());
        };
        invocation
            .key(tier.marker('u', uri))
            .key(tier.uri_index(uri));
    }
    let Some((first, rest)) = purges.split_first() else {
        return Ok(());
    };
    // The announcement's text around its generation (a sentinel replaced).
    let sentinel = u64::MAX.to_string();
    let text = serde_json::to_string(&Announcement {
        from: instance.to_owned(),
        purge: first.clone(),
        purges: rest.to_vec(),
        generation: Some(u64::MAX),
    })
    .map_err(|e| e.to_string())?;
    let (before, after) = text
        .rsplit_once(&sentinel)
        .ok_or_else(|| "an announcement without its generation".to_owned())?;
    invocation.arg(before).arg(after);
    let generation: String = invocation
        .invoke_async(&mut conn)
        .await
        .map_err(|e| format!("invalidating in Redis: {e}"))?;
    if let Ok(generation) = generation.parse() {
        store.heard_shared_generation(generation);
    }
    Ok(())
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
/// and lookups no longer see the entries it names, `l2::markers`), then
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
    let target = &purge.selection;
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
        purges: Vec::new(),
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

/// Leaves the purge's marker (`l2::markers`).
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
