//! The shared purge generation: taken in Redis by every shared purge,
//! stamped on every Redis write (the generation its request had heard of)
//! and compared with purge markers by the scripts (`markers`).
//!
//! It must never go backwards, or new markers would be older than the
//! entries they are meant to hide. A bare `INCR` goes back to 1 whenever
//! Redis loses the counter; so the next generation is the larger of the
//! counter + 1 and Redis's clock in microseconds ([`NEXT_LUA`]). After a
//! restart without persistence, a `FLUSHALL`, an eviction of the counter
//! or a failover to a replica that missed it, the clock is past every
//! generation handed out before (as long as the servers' clocks agree
//! within the time the loss took). Generations far ahead of the clock are
//! refused wherever they can enter: by instances hearing them
//! ([`plausible`]) and by the write script.
//!
//! The clock keeps new generations ahead, but what Redis lost with its
//! data also includes the markers older writes must be checked against:
//! a write stamped before the loss and sent after it would find no marker
//! and be stored. So each life of Redis's data has an **epoch**, a random
//! id under `{prefix}epoch` made by the first instance to find it missing
//! ([`EPOCH_LUA`]); instances read it when they subscribe and with every
//! heartbeat, tickets carry the one known when their request began, and
//! the write script refuses a write of another epoch (or when there is
//! none). A restart, `FLUSHALL` or eviction of the key starts a new epoch;
//! writes queued across it are dropped (they stay in memory).

use crate::redis_link::RedisConn;
use redis::RedisResult;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far ahead of the clock a generation may be and still be believed:
/// room for clocks that disagree, far less than the lifetime of anything
/// stamped with it. A generation beyond it comes from a buggy or hostile
/// publisher, or a counter set by hand, and would keep every later marker
/// from hiding what was stamped with it.
pub const MAX_AHEAD: Duration = Duration::from_secs(60);

/// Takes the next generation: `max(counter + 1, TIME in µs)`, stored back
/// as an integer string (a Lua number would be written as `1.7e+15`).
/// KEYS: the counter. Returns the generation.
pub const NEXT_LUA: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local next = tonumber(redis.call('GET', KEYS[1]) or '0') + 1
if now > next then next = now end
local text = string.format('%.0f', next)
redis.call('SET', KEYS[1], text)
return text
"#;

static NEXT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();

/// The epoch of Redis's data: the stored one, or ARGV[1] set now when
/// there is none (the first instance to find it missing makes it).
/// KEYS: the epoch key.
pub const EPOCH_LUA: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if epoch then return epoch end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"#;

static EPOCH: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();

/// The epoch of Redis's data at `key`, made (a random id, never 0) if
/// there is none.
pub async fn epoch(conn: &mut RedisConn, key: &str) -> RedisResult<u64> {
    let made = rand::random::<u64>().max(1);
    let text: String = EPOCH
        .get_or_init(|| redis::Script::new(EPOCH_LUA))
        .key(key)
        .arg(made.to_string())
        .invoke_async(conn)
        .await?;
    integer(text, "the Redis epoch is not an integer")
}

/// A script's integer answer, or an error saying what it was.
fn integer(text: String, what: &'static str) -> RedisResult<u64> {
    text.parse()
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, what, text)))
}

/// Takes the next shared generation from the counter at `key`.
pub async fn next(conn: &mut RedisConn, key: &str) -> RedisResult<u64> {
    let text: String = NEXT
        .get_or_init(|| redis::Script::new(NEXT_LUA))
        .key(key)
        .invoke_async(conn)
        .await?;
    integer(text, "the purge generation script answered a non-integer")
}

/// The clock in the generations' unit (µs since the epoch).
pub fn micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// [`MAX_AHEAD`] in the generations' unit, for the write script.
pub fn max_ahead_micros() -> u64 {
    u64::try_from(MAX_AHEAD.as_micros()).unwrap_or(u64::MAX)
}

/// Whether a generation heard from elsewhere may be believed at `now`:
/// not more than [`MAX_AHEAD`] ahead of the clock.
pub fn plausible(generation: u64, now: SystemTime) -> bool {
    generation <= micros(now).saturating_add(max_ahead_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_generations_near_the_clock_or_behind_it_are_believed() {
        let now = SystemTime::now();
        assert!(plausible(0, now), "a counter of an earlier version");
        assert!(plausible(micros(now), now));
        assert!(plausible(micros(now + Duration::from_secs(30)), now));
        assert!(!plausible(micros(now + Duration::from_secs(3600)), now));
        assert!(!plausible(u64::MAX, now), "a hostile announcement");
    }
}
