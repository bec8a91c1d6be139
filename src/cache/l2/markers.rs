//! Purges win over fills in Redis too. A write to the Redis tier is queued
//! off the request path, so it can reach Redis after another instance's
//! purge of the same entry; left alone, the purged copy would live there
//! (and be promoted into every memory) for its whole TTL.
//!
//! So every shared purge takes the next **shared generation** (`generation`:
//! never lower than Redis's clock) and leaves **purge markers** holding it: one key per
//! purged URI, route and tag (`{prefix}x:u:…`, `x:r:…`, `x:t:…`), and a
//! bounded sorted set of purged prefixes (`{prefix}x:prefixes`). Every
//! instance learns the generations from the purge channel; a request's
//! [`FillTicket`] records the newest it had heard of when it began. The
//! write script ([`WRITE_LUA`]) stores an entry only if no marker newer
//! than the write's generation names it, in the same atomic step as the
//! `SET` — so a write that began before a purge it had not heard of is
//! dropped, and one that began after it is kept. Hearing a generation late
//! only drops more writes (they stay in memory), never keeps a purged one.
//!
//! Markers live `cache.redis.purge_marker_ttl`; a write whose request began
//! longer ago than that (less the write timeout) is dropped before it is
//! sent, as no marker is left to check it against.
//!
//! The same script keeps the index sets honest: they are sorted sets
//! scored by each member's expiry, trimmed of expired members on every
//! write, so an index holds about the live entries however long a route is
//! in use.
//!
//! Lookups check the same markers ([`LOOKUP_LUA`]): an entry carries its
//! write's generation and its index keys (`cache::l2`'s format), and a
//! marker newer than it that names it hides it. So a purge takes effect
//! when its markers are set, before its entries are deleted: a large
//! index is drained after the purge answers, and a marker lives as long
//! as the longest-lived entry its index held when it was set.
//!
//! On a Redis Cluster the entry, its markers and its indexes live in
//! different slots, so one script cannot cover them: the markers are read
//! and the entry written in separate commands, and a purge landing between
//! the two (one round trip) can still be overtaken. Lookups there are a
//! plain `GET`, so cluster purges delete their entries before answering.

use crate::cache::store::FillTicket;
use crate::redis_link::RedisConn;
use redis::RedisResult;

/// Prefix markers kept; a write older than the oldest one kept, when the
/// set is full, is dropped.
pub const PREFIXES_KEPT: usize = 1024;

/// Stores an entry unless a purge marker newer than the write names it;
/// adds it to its indexes (scored by expiry, expired members trimmed).
///
/// KEYS: entry, prefix markers, the `n` markers (URI, route, tags), the
/// epoch, then the index sets. ARGV: value, ttl (ms), the write's shared
/// generation, `n`, the entry's URI, [`PREFIXES_KEPT`], how far ahead of
/// Redis's clock a generation may be (µs, `generation::MAX_AHEAD`), the
/// write's epoch. Returns 1 when stored, 0 when a purge overtook it, its
/// generation is implausible, or it was stamped in another epoch of
/// Redis's data (`generation`).
/// Numbers go back to Redis as integer strings (`%.0f`): a Lua number
/// would be written as `1.7e+15`.
pub const WRITE_LUA: &str = r#"
local generation = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
if redis.call('GET', KEYS[3 + n]) ~= ARGV[8] then return 0 end
local time = redis.call('TIME')
if generation > tonumber(time[1]) * 1000000 + tonumber(time[2]) + tonumber(ARGV[7]) then
  return 0
end
for i = 3, 2 + n do
  local marked = redis.call('GET', KEYS[i])
  if marked and tonumber(marked) > generation then return 0 end
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if oldest[2] and tonumber(oldest[2]) > generation then return 0 end
end
local uri = ARGV[5]
local slash = string.find(uri, '/', 1, true)
local path = slash and string.sub(uri, slash) or ''
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[3], '+inf')) do
  local subject = path
  if string.sub(m, 1, 1) == 'h' then subject = uri end
  local prefix = string.sub(m, 2)
  if string.sub(subject, 1, #prefix) == prefix then return 0 end
end
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 4 + n, #KEYS do
  redis.call('ZADD', KEYS[i], string.format('%.0f', now + ttl), KEYS[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%.0f', now))
  if redis.call('PEXPIRE', KEYS[i], ttl, 'GT') == 0 then
    redis.call('PEXPIRE', KEYS[i], ttl, 'NX')
  end
end
return 1
"#;

/// Leaves a marker: the larger of its generation and ARGV[1], for at
/// least ARGV[2] ms, as long as it already had left, and — KEYS[2], the
/// index the purge drains, when given — until the last entry that index
/// lists expires (its highest score), so every entry it names stays hidden
/// until deleted or expired however long the drain takes.
const MARK_LUA: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local generation = tonumber(ARGV[1])
if current > generation then generation = current end
local ttl = tonumber(ARGV[2])
local left = redis.call('PTTL', KEYS[1])
if left > ttl then ttl = left end
if KEYS[2] and redis.call('TYPE', KEYS[2]).ok == 'zset' then
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if last[2] then
    local time = redis.call('TIME')
    local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    local needed = tonumber(last[2]) - now + 1000
    if needed > ttl then ttl = needed end
  end
end
redis.call('SET', KEYS[1], string.format('%.0f', generation), 'PX', string.format('%.0f', ttl))
return 1
"#;

/// Reads an entry unless a purge marker newer than its write names it
/// (then `nil`, as if absent). The markers are found from the entry's own
/// index keys: `{prefix}i:K:name` is marked by `{prefix}x:K:name`.
///
/// KEYS: the entry, the prefix markers. ARGV: the key prefix's length,
/// [`PREFIXES_KEPT`]. A value in another format is returned as it is (the
/// caller refuses it); `TGC2` counts as generation 0.
pub const LOOKUP_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local magic = string.sub(v, 1, 4)
if magic ~= 'TGC3' and magic ~= 'TGC2' then return v end
local function u32(at)
  local a, b, c, d = string.byte(v, at, at + 3)
  if not d then return nil end
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local len = u32(5)
if not len then return v end
local names = string.sub(v, 9, 8 + len)
local stamp = '0'
if magic == 'TGC3' then
  local glen = u32(9 + len)
  if not glen then return v end
  stamp = string.sub(v, 13 + len, 12 + len + glen)
  if not tonumber(stamp) then return v end
end
local generation = tonumber(stamp)
local skip = tonumber(ARGV[1])
local uri = nil
for name in string.gmatch(names, '[^\n]+') do
  local marked = redis.call('GET', string.sub(name, 1, skip) .. 'x' .. string.sub(name, skip + 2))
  if marked and tonumber(marked) > generation then return false end
  if string.sub(name, skip + 1, skip + 4) == 'i:u:' then uri = string.sub(name, skip + 5) end
end
if not uri then return false end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if oldest[2] and tonumber(oldest[2]) > generation then return false end
end
local slash = string.find(uri, '/', 1, true)
local path = slash and string.sub(uri, slash) or ''
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. stamp, '+inf')) do
  local subject = path
  if string.sub(m, 1, 1) == 'h' then subject = uri end
  local prefix = string.sub(m, 2)
  if string.sub(subject, 1, #prefix) == prefix then return false end
end
return v
"#;

/// Leaves a prefix marker (member ARGV[2], score ARGV[1]), keeps the
/// newest ARGV[3] and the set for ARGV[4] ms.
const MARK_PREFIX_LUA: &str = r#"
redis.call('ZADD', KEYS[1], 'GT', ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"#;

/// Replaces KEYS[1] by ARGV[2], keeping its TTL, only if it still holds
/// ARGV[1]: a soft purge's read-modify-write that a concurrent write
/// (newer than the purge, or the markers would have dropped it) wins.
const REPLACE_IF_UNCHANGED_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"#;

fn script(
    source: &'static str,
    cell: &'static std::sync::OnceLock<redis::Script>,
) -> &'static redis::Script {
    cell.get_or_init(|| redis::Script::new(source))
}

static WRITE: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
static MARK: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
static LOOKUP: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
static MARK_PREFIX: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();

/// An entry to write, with what purges find it by.
pub struct MarkedWrite {
    /// The entry's key.
    pub key: String,
    /// Its encoded value.
    pub value: Vec<u8>,
    /// How long Redis keeps it (ms, ≥ 1).
    pub ttl_ms: u64,
    /// Its URI (`host/path?query`), for prefix markers.
    pub uri: String,
    /// Marker keys that drop it: its URI's, its route's, its tags'.
    pub markers: Vec<String>,
    /// The prefix markers' set.
    pub prefix_markers: String,
    /// The key of Redis's epoch (`generation`).
    pub epoch_key: String,
    /// Index sets it joins (URI, route, tags).
    pub indexes: Vec<String>,
    /// When its request began, in generations.
    pub ticket: FillTicket,
}

/// Whether a marker newer than `generation` names the write (the cluster
/// path's check; the script makes the same one).
fn overtaken(
    generation: u64,
    markers: &[Option<u64>],
    prefixes: &[(String, u64)],
    full: bool,
    uri: &str,
) -> bool {
    if markers.iter().flatten().any(|m| *m > generation) {
        return true;
    }
    if full && prefixes.iter().map(|(_, g)| *g).min() > Some(generation) {
        return true;
    }
    let path = uri.find('/').map_or("", |i| &uri[i..]);
    prefixes
        .iter()
        .filter(|(_, g)| *g > generation)
        .any(|(m, _)| {
            let (subject, prefix) = match m.strip_prefix('h') {
                Some(prefix) => (uri, prefix),
                None => (path, m.get(1..).unwrap_or("")),
            };
            subject.starts_with(prefix)
        })
}

/// Writes `w` unless a purge overtook it or it belongs to another `epoch`
/// of Redis's data; `Ok(false)` when dropped.
pub async fn write(
    conn: &mut RedisConn,
    w: &MarkedWrite,
    epoch: u64,
    cluster: bool,
) -> RedisResult<bool> {
    if !cluster {
        let mut invocation = script(WRITE_LUA, &WRITE).prepare_invoke();
        invocation
            .key(&w.key)
            .key(&w.prefix_markers)
            .key(&w.markers[..])
            .key(&w.epoch_key)
            .key(&w.indexes[..])
            .arg(&w.value[..])
            .arg(w.ttl_ms)
            .arg(w.ticket.shared)
            .arg(w.markers.len())
            .arg(&w.uri)
            .arg(PREFIXES_KEPT)
            .arg(super::generation::max_ahead_micros())
            .arg(epoch);
        let stored: i64 = invocation.invoke_async(conn).await?;
        return Ok(stored == 1);
    }
    // One key per command: the keys live in many slots.
    let mut marked = Vec::with_capacity(w.markers.len());
    for key in &w.markers {
        let value: Option<u64> = redis::cmd("GET").arg(key).query_async(conn).await?;
        marked.push(value);
    }
    let prefixes: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg(&w.prefix_markers)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    let full = prefixes.len() >= PREFIXES_KEPT;
    let current: Option<u64> = redis::cmd("GET")
        .arg(&w.epoch_key)
        .query_async(conn)
        .await?;
    let implausible = current != Some(epoch)
        || !super::generation::plausible(w.ticket.shared, std::time::SystemTime::now());
    if implausible || overtaken(w.ticket.shared, &marked, &prefixes, full, &w.uri) {
        return Ok(false);
    }
    let _: () = redis::cmd("SET")
        .arg(&w.key)
        .arg(&w.value[..])
        .arg("PX")
        .arg(w.ttl_ms)
        .query_async(conn)
        .await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for index in &w.indexes {
        let _: () = redis::cmd("ZADD")
            .arg(index)
            .arg(now_ms.saturating_add(w.ttl_ms))
            .arg(&w.key)
            .query_async(conn)
            .await?;
        let _: () = redis::cmd("ZREMRANGEBYSCORE")
            .arg(index)
            .arg("-inf")
            .arg(now_ms)
            .query_async(conn)
            .await?;
        let longer: i64 = redis::cmd("PEXPIRE")
            .arg(index)
            .arg(w.ttl_ms)
            .arg("GT")
            .query_async(conn)
            .await?;
        if longer == 0 {
            let _: i64 = redis::cmd("PEXPIRE")
                .arg(index)
                .arg(w.ttl_ms)
                .arg("NX")
                .query_async(conn)
                .await?;
        }
    }
    Ok(true)
}

/// Leaves a marker of `generation` on `key` for at least `ttl_ms`, and
/// until the last entry `index` lists expires (`None` on a cluster, where
/// the two live in different slots).
pub async fn mark(
    conn: &mut RedisConn,
    key: &str,
    index: Option<&str>,
    generation: u64,
    ttl_ms: u64,
) -> RedisResult<()> {
    let mut invocation = script(MARK_LUA, &MARK).prepare_invoke();
    invocation.key(key);
    if let Some(index) = index {
        invocation.key(index);
    }
    let _: i64 = invocation
        .arg(generation)
        .arg(ttl_ms)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// Reads `key` unless a purge marker hides it ([`LOOKUP_LUA`]).
pub async fn lookup(
    conn: &mut RedisConn,
    key: &str,
    prefix_markers: &str,
    key_prefix_len: usize,
) -> RedisResult<Option<Vec<u8>>> {
    script(LOOKUP_LUA, &LOOKUP)
        .key(key)
        .key(prefix_markers)
        .arg(key_prefix_len)
        .arg(PREFIXES_KEPT)
        .invoke_async(conn)
        .await
}

/// Leaves a prefix marker: `member` is `h` + host and path prefix, or `p`
/// + a path prefix on any host.
pub async fn mark_prefix(
    conn: &mut RedisConn,
    set: &str,
    member: &str,
    generation: u64,
    ttl_ms: u64,
) -> RedisResult<()> {
    let _: i64 = script(MARK_PREFIX_LUA, &MARK_PREFIX)
        .key(set)
        .arg(generation)
        .arg(member)
        .arg(PREFIXES_KEPT)
        .arg(ttl_ms)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// The command that replaces `key`'s value `old` by `new` (keeping its
/// TTL) unless it changed meanwhile; answers 1 when it did (pipelined by
/// soft purges). `EVAL`, not `EVALSHA`: inside a pipeline there is no
/// retry after `NOSCRIPT`, and the script is short.
pub fn replace_if_unchanged_cmd(key: &str, old: &[u8], new: &[u8]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(REPLACE_IF_UNCHANGED_LUA)
        .arg(1)
        .arg(key)
        .arg(old)
        .arg(new);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_newer_markers_that_name_the_write_overtake_it() {
        let uri = "h.test/a/b?x=1";
        assert!(!overtaken(5, &[None, Some(5), Some(3)], &[], false, uri));
        assert!(overtaken(5, &[None, Some(6)], &[], false, uri));
        let prefixes = vec![("h".to_owned() + "h.test/a/", 7), ("p/a/".to_owned(), 4)];
        assert!(overtaken(5, &[], &prefixes, false, uri), "host prefix");
        assert!(!overtaken(7, &[], &prefixes, false, uri), "heard of it");
        let others = vec![("hg.test/a/".to_owned(), 9), ("p/b".to_owned(), 9)];
        assert!(!overtaken(5, &[], &others, false, uri));
        assert!(
            overtaken(5, &[], &[("p/a".to_owned(), 6)], false, uri),
            "path prefix"
        );
        assert!(
            overtaken(5, &[], &[("p/z".to_owned(), 6)], true, uri),
            "full, all newer"
        );
        assert!(!overtaken(6, &[], &[("p/z".to_owned(), 6)], true, uri));
    }
}
