//! Taking a purge's entries out of Redis: reading an index a batch at a
//! time, deleting what it lists (and its entries' members of their other
//! indexes), before a purge answers or after it (paced), scanning URI
//! indexes for prefix purges, and marking entries stale for soft purges.
//! `invalidation::shared` decides which of these a purge needs and in what
//! order. Entries are deleted before their index members are taken out,
//! so a drain cut short (Redis gone, a timeout) leaves nothing that a
//! later purge could not find.

use crate::cache::l2::{self, markers, RedisTier};
use crate::redis_link::RedisConn;
use futures::StreamExt;
use std::collections::HashMap;
use std::time::SystemTime;

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

/// Entries taken out of an index per command: each command stays within a
/// few milliseconds of Redis's time however large the index.
pub(super) const REDIS_BATCH: usize = 1000;

/// How a drain goes: entries per batch, and how many times as long as a
/// batch took it rests after it.
#[derive(Clone, Copy)]
pub(super) struct Pace {
    batch: usize,
    rest: u32,
}

/// A drain before the purge answers: as fast as Redis allows, each
/// command within a few milliseconds of Redis's time.
pub(super) const EAGER: Pace = Pace {
    batch: REDIS_BATCH,
    rest: 0,
};

/// A drain after the purge answered: small batches, resting four times as
/// long as each took (at most a fifth of Redis's time). Measured in the
/// book's benchmark history, "Tuned constants".
const BACKGROUND: Pace = Pace { batch: 50, rest: 4 };

/// How many entries these indexes list.
pub(super) async fn listed_in(conn: &mut RedisConn, indexes: &[String]) -> Result<usize, String> {
    let mut listed = 0;
    for index in indexes {
        if let Some(batches) = IndexBatches::open(conn, index, REDIS_BATCH).await? {
            listed += batches.left;
        }
    }
    Ok(listed)
}

/// Starts draining a purge's indexes after it answered, counted in
/// `tollgate_cache_l2_purge_drains` while it runs.
pub(super) fn spawn_drain(tier: &RedisTier, indexes: [String; 2]) {
    let (link, metrics) = (tier.link().clone(), tier.metrics().clone());
    metrics.cache_l2_drains.inc();
    tokio::spawn(async move {
        drain_after_answer(&link, &indexes).await;
        metrics.cache_l2_drains.dec();
    });
}

/// Drains a purge's indexes after it answered (its markers hide the
/// entries meanwhile), paced ([`BACKGROUND`]). Failures are logged: the
/// entries left stay hidden until they expire, and their index members
/// are trimmed as they do.
async fn drain_after_answer(link: &crate::redis_link::RedisLink, indexes: &[String]) {
    let started = std::time::Instant::now();
    let mut removed = 0;
    for index in indexes {
        let Some(mut conn) = link.conn() else {
            log::warn!("cache: draining {index} after its purge: Redis is not connected; its entries stay hidden until they expire");
            return;
        };
        match drain_index(&mut conn, index, false, BACKGROUND).await {
            Ok(n) => removed += n,
            Err(e) => {
                log::warn!("cache: draining {index} after its purge: {e}; the entries left stay hidden until they expire");
                return;
            }
        }
    }
    log::info!(
        "cache: deleted {removed} purged Redis entries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The URI index keys (named from `uri_index_start`) below `prefix`, on
/// `host` or any host, by a cursor-based `SCAN`.
pub(super) async fn scan_uri_indexes(
    conn: &mut RedisConn,
    uri_index_start: &str,
    prefix: &str,
    host: Option<&str>,
) -> Result<Vec<String>, String> {
    let pattern = match host {
        Some(host) => format!(
            "{}*",
            glob_escape(&format!("{uri_index_start}{host}{prefix}"))
        ),
        None => format!("{}*", glob_escape(uri_index_start)),
    };
    let uri_start = uri_index_start.len();
    let mut found = Vec::new();
    let mut iter: redis::AsyncIter<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(&pattern)
        .arg("COUNT")
        .arg(REDIS_BATCH)
        .clone()
        .iter_async(conn)
        .await
        .map_err(|e| format!("scanning the Redis tier: {e}"))?;
    while let Some(item) = iter.next().await {
        let key = item.map_err(|e| format!("scanning the Redis tier: {e}"))?;
        let keep = host.is_some() || {
            let uri = key.get(uri_start..).unwrap_or("");
            let path = uri.find('/').map_or("", |i| &uri[i..]);
            path.starts_with(prefix)
        };
        if keep {
            found.push(key);
        }
    }
    Ok(found)
}

/// The members of an index, a batch at a time: the first ones of a sorted
/// set (`ZRANGE`; a drain takes them out with [`IndexBatches::forget`] once
/// their entries are deleted), or read from a set of the earlier format
/// (`SSCAN`) that is deleted once read whole. At most as many as it held
/// when the purge began, so a purge ends however fast new entries arrive.
struct IndexBatches<'a> {
    index: &'a str,
    sorted: bool,
    left: usize,
    cursor: Option<u64>,
    /// Members per batch.
    size: usize,
}

impl<'a> IndexBatches<'a> {
    async fn open(
        conn: &mut RedisConn,
        index: &'a str,
        size: usize,
    ) -> Result<Option<Self>, String> {
        let kind: String = redis::cmd("TYPE")
            .arg(index)
            .query_async(conn)
            .await
            .map_err(|e| format!("reading {index}: {e}"))?;
        let sorted = match kind.as_str() {
            "zset" => true,
            "set" => false,
            _ => return Ok(None),
        };
        let left: usize = redis::cmd(if sorted { "ZCARD" } else { "SCARD" })
            .arg(index)
            .query_async(conn)
            .await
            .map_err(|e| format!("reading {index}: {e}"))?;
        Ok(Some(Self {
            index,
            sorted,
            left,
            cursor: Some(0),
            size,
        }))
    }

    /// The next batch, removed from the index (sorted sets) or read (sets);
    /// `None` at the end.
    async fn next(
        &mut self,
        conn: &mut RedisConn,
        remove: bool,
    ) -> Result<Option<Vec<String>>, String> {
        let index = self.index;
        let failed = |e: redis::RedisError| format!("reading {index}: {e}");
        if self.left == 0 {
            return Ok(None);
        }
        if self.sorted {
            let batch: Vec<String> = if remove {
                // The front of the set: the previous batch was forgotten.
                redis::cmd("ZRANGE")
                    .arg(index)
                    .arg(0)
                    .arg(self.size.min(self.left) - 1)
                    .query_async(conn)
                    .await
                    .map_err(failed)?
            } else {
                let start = self.cursor.unwrap_or(0);
                let stop = start + self.size.min(self.left) as u64 - 1;
                self.cursor = Some(stop + 1);
                redis::cmd("ZRANGE")
                    .arg(index)
                    .arg(start)
                    .arg(stop)
                    .query_async(conn)
                    .await
                    .map_err(failed)?
            };
            self.left = self.left.saturating_sub(batch.len());
            if batch.is_empty() {
                self.left = 0;
                return Ok(None);
            }
            return Ok(Some(batch));
        }
        let Some(cursor) = self.cursor else {
            self.left = 0;
            if remove {
                let _: i64 = redis::cmd("UNLINK")
                    .arg(index)
                    .query_async(conn)
                    .await
                    .map_err(failed)?;
            }
            return Ok(None);
        };
        let (next, batch): (u64, Vec<String>) = redis::cmd("SSCAN")
            .arg(index)
            .arg(cursor)
            .arg("COUNT")
            .arg(self.size)
            .query_async(conn)
            .await
            .map_err(failed)?;
        self.cursor = (next != 0).then_some(next);
        Ok(Some(batch))
    }

    /// Takes a batch whose entries are deleted out of a sorted index (a
    /// set of the earlier format goes whole at its end).
    async fn forget(&self, conn: &mut RedisConn, batch: &[String]) -> Result<(), String> {
        if !self.sorted {
            return Ok(());
        }
        let _: i64 = redis::cmd("ZREM")
            .arg(self.index)
            .arg(batch)
            .query_async(conn)
            .await
            .map_err(|e| format!("taking deleted entries out of {}: {e}", self.index))?;
        Ok(())
    }
}

/// Removes every entry an index lists, and the index, in batches
/// (`UNLINK`: Redis frees the values off its main thread) at `pace`; how
/// many entries went.
pub(super) async fn drain_index(
    conn: &mut RedisConn,
    index: &str,
    cluster: bool,
    pace: Pace,
) -> Result<usize, String> {
    let Some(mut batches) = IndexBatches::open(conn, index, pace.batch).await? else {
        return Ok(0);
    };
    let mut removed = 0usize;
    loop {
        let started = std::time::Instant::now();
        let Some(batch) = batches.next(conn, true).await? else {
            break;
        };
        if batch.is_empty() {
            continue;
        }
        leave_other_indexes(conn, index, &batch, cluster).await?;
        if cluster {
            // One key per command: the entries live in many slots.
            for key in &batch {
                let gone: usize = redis::cmd("UNLINK")
                    .arg(key)
                    .query_async(conn)
                    .await
                    .map_err(|e| format!("deleting {key}: {e}"))?;
                removed += gone;
            }
        } else {
            let gone: usize = redis::cmd("UNLINK")
                .arg(&batch)
                .query_async(conn)
                .await
                .map_err(|e| format!("deleting what {index} lists: {e}"))?;
            removed += gone;
        }
        batches.forget(conn, &batch).await?;
        if pace.rest > 0 {
            tokio::time::sleep(started.elapsed() * pace.rest).await;
        }
    }
    Ok(removed)
}

/// Takes a batch of entries about to be deleted out of their other
/// indexes (the keys each entry's `TGC2` header lists), so that purging a
/// tag does not leave its entries' members in their URI and route indexes
/// until they expire. Entries without the header (`TGC1`, or too many
/// index keys) keep that old behaviour.
async fn leave_other_indexes(
    conn: &mut RedisConn,
    drained: &str,
    batch: &[String],
    cluster: bool,
) -> Result<(), String> {
    let read = |key: &str, len: usize| {
        let mut cmd = redis::cmd("GETRANGE");
        cmd.arg(key).arg(0).arg(len.saturating_sub(1));
        cmd
    };
    let failed =
        |e: redis::RedisError| format!("reading the index keys of {drained}'s entries: {e}");
    let mut heads: Vec<Vec<u8>> = if cluster {
        let mut heads = Vec::with_capacity(batch.len());
        for key in batch {
            heads.push(
                read(key, l2::HEAD_READ)
                    .query_async(conn)
                    .await
                    .map_err(failed)?,
            );
        }
        heads
    } else {
        let mut pipe = redis::pipe();
        for key in batch {
            pipe.add_command(read(key, l2::HEAD_READ));
        }
        pipe.query_async(conn).await.map_err(failed)?
    };
    let mut members: HashMap<String, Vec<&str>> = HashMap::new();
    for (key, head) in batch.iter().zip(heads.iter_mut()) {
        if let Err(whole) = l2::index_names_in(head) {
            *head = read(key, whole).query_async(conn).await.map_err(failed)?;
        }
        for name in l2::index_names_in(head).unwrap_or_default() {
            if name != drained {
                members.entry(name.to_owned()).or_default().push(key);
            }
        }
    }
    if members.is_empty() {
        return Ok(());
    }
    let zrem = |index: &str, keys: &[&str]| {
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(index).arg(keys);
        cmd
    };
    let failed = |e: redis::RedisError| {
        format!("taking {drained}'s entries out of their other indexes: {e}")
    };
    if cluster {
        for (index, keys) in &members {
            let _: i64 = zrem(index, keys).query_async(conn).await.map_err(failed)?;
        }
    } else {
        let mut pipe = redis::pipe();
        for (index, keys) in &members {
            pipe.add_command(zrem(index, keys)).ignore();
        }
        let _: () = pipe.query_async(conn).await.map_err(failed)?;
    }
    Ok(())
}

/// Marks every entry an index lists stale now (a soft purge), a batch at
/// a time: one pipelined read of the batch, the new values made here
/// (Pingora's meta is not something a script can rewrite), one pipelined
/// compare-and-set of them; how many.
pub(super) async fn expire_index(conn: &mut RedisConn, index: &str) -> Result<usize, String> {
    let Some(mut batches) = IndexBatches::open(conn, index, REDIS_BATCH).await? else {
        return Ok(0);
    };
    let mut expired = 0usize;
    while let Some(batch) = batches.next(conn, false).await? {
        expired += expire_batch(conn, &batch).await?;
    }
    Ok(expired)
}

/// Marks a batch of Redis entries stale now, keeping their expiry; an
/// entry that is gone, does not decode, or was rewritten meanwhile (by a
/// write newer than the purge: the markers drop older ones) is left.
async fn expire_batch(conn: &mut RedisConn, keys: &[String]) -> Result<usize, String> {
    let mut read = redis::pipe();
    for key in keys {
        read.get(key);
    }
    let values: Vec<Option<Vec<u8>>> = read
        .query_async(conn)
        .await
        .map_err(|e| format!("reading entries to mark stale: {e}"))?;
    let now = SystemTime::now();
    let mut replace = redis::pipe();
    let mut replacing = 0usize;
    for (key, old) in keys.iter().zip(values) {
        let Some((old, new)) = old.and_then(|old| expired_value(&old, now).map(|new| (old, new)))
        else {
            continue;
        };
        replace.add_command(markers::replace_if_unchanged_cmd(key, &old, &new));
        replacing += 1;
    }
    if replacing == 0 {
        return Ok(0);
    }
    let replaced: Vec<i64> = replace
        .query_async(conn)
        .await
        .map_err(|e| format!("marking entries stale: {e}"))?;
    Ok(replaced.iter().filter(|r| **r == 1).count())
}

/// A stored value with its meta expired at `now`; `None` when it does not
/// decode.
fn expired_value(old: &[u8], now: SystemTime) -> Option<Vec<u8>> {
    let entry = l2::decode(old)?;
    let mut meta = pingora::cache::CacheMeta::deserialize(&entry.internal, &entry.header).ok()?;
    meta.expire_at(now);
    let (internal, header) = meta.serialize().ok()?;
    l2::encode(
        &entry.index_names,
        entry.generation,
        &internal,
        &header,
        &entry.body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_only_the_literal() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
