//! Budgets shared by every instance through Redis: one Lua script per
//! decision reads, decides and advances all of a request's buckets
//! atomically, with Redis's own clock so instances need not agree on time.
//!
//! Failure policy: a decision waits at most `redis.timeout`; on a timeout or
//! error the instance decides with its local buckets, counts it, reports
//! Redis as degraded in `/health`, and keeps trying. A request is never
//! failed or delayed past the timeout because of Redis, and after
//! `circuit_breaker.failures` failures in a row not delayed at all: the
//! breaker (`breaker.rs`) keeps requests away from Redis until a probe
//! off the request path gets an answer.

use super::gcra::{Verdict, WindowState};
use super::local::Check;
use crate::breaker::{CircuitBreaker, Permit, Transition};
use crate::config::model::RedisConfig;
use crate::redis_link::{RedisEndpoint, RedisLink};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// GCRA over several keys and windows, atomically. Times in microseconds
/// (Lua numbers are doubles: nanoseconds since the epoch would not fit).
/// ARGV per key: cost, window count, then (interval, tolerance) per window.
/// Returns: allowed (0/1), retry-after µs, then per window: remaining, used µs.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pos = 1
local allowed = 1
local retry = 0
local plans = {}
local longest = 0
for k = 1, #KEYS do
  local cost = tonumber(ARGV[pos])
  local n = tonumber(ARGV[pos + 1])
  pos = pos + 2
  for i = 1, n do
    local interval = tonumber(ARGV[pos])
    local tol = tonumber(ARGV[pos + 1])
    pos = pos + 2
    local tat = tonumber(redis.call('HGET', KEYS[k], tostring(i - 1))) or 0
    if tat < now then tat = now end
    local new_tat = tat + interval * cost
    local ahead = new_tat - now
    if ahead > tol then
      allowed = 0
      if ahead - tol > retry then retry = ahead - tol end
    end
    if tol > longest then longest = tol end
    plans[#plans + 1] = {k, i - 1, tat, new_tat, interval, tol}
  end
end
local out = {allowed, retry}
for _, p in ipairs(plans) do
  local used = p[3] - now
  if allowed == 1 then used = p[4] - now end
  local remaining = math.floor((p[6] - used) / p[5])
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = used
end
if allowed == 1 then
  for _, p in ipairs(plans) do
    redis.call('HSET', KEYS[p[1]], tostring(p[2]), string.format('%.0f', p[4]))
  end
  for k = 1, #KEYS do
    redis.call('PEXPIRE', KEYS[k], math.floor(longest / 1000) + 1000)
  end
end
return out
"#;

/// The Redis side of the rate-limit store.
pub struct RedisBuckets {
    link: Arc<RedisLink>,
    script: redis::Script,
    timeout: Duration,
    prefix: String,
    degraded: AtomicBool,
    last_error: Mutex<Option<String>>,
    breaker: Arc<CircuitBreaker>,
}

/// Why a Redis decision did not happen.
#[derive(Debug)]
pub enum RedisFailure {
    /// Not connected (yet, or any more).
    NotConnected,
    /// No answer within the timeout.
    Timeout,
    /// Redis answered with an error, or the connection broke.
    Error(String),
    /// Not asked: the circuit breaker is open.
    BreakerOpen,
}

/// The outcome of one decision through Redis.
pub struct RedisOutcome {
    /// The verdicts, or why Redis did not decide.
    pub result: Result<Vec<Verdict>, RedisFailure>,
    /// Whether this decision's failure opened the breaker.
    pub opened_breaker: bool,
}

impl RedisBuckets {
    /// Prepares the client and starts connecting in the background; never
    /// fails because Redis is down.
    pub fn new(config: &RedisConfig) -> Result<Arc<Self>, String> {
        // The link learns who to tell once this exists; a connection made
        // before that is looked for below.
        let owner: Arc<OnceLock<Weak<Self>>> = Arc::new(OnceLock::new());
        let told = owner.clone();
        let link = RedisLink::connect(
            &RedisEndpoint::of(config),
            config.timeout,
            "ratelimit",
            move || {
                if let Some(me) = told.get().and_then(Weak::upgrade) {
                    me.note(None);
                }
            },
        )?;
        let me = Arc::new(Self {
            link,
            script: redis::Script::new(GCRA_LUA),
            timeout: config.timeout,
            prefix: config.key_prefix.clone(),
            degraded: AtomicBool::new(true),
            last_error: Mutex::new(Some("not connected yet".to_owned())),
            breaker: Arc::new(CircuitBreaker::new(
                config.breaker_failures,
                config.breaker_open_for,
            )),
        });
        let _ = owner.set(Arc::downgrade(&me));
        // Connected before `owner` was set (the link's thread can win that
        // race on a loaded machine): nobody was told, and `/health` would
        // say degraded until the first decision. The link stores its
        // connection before it tells, so one of the two sees the other.
        if me.link.is_connected() {
            me.note(None);
        }
        Ok(me)
    }

    /// Whether the last decision fell back to local buckets.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// The last failure, for `/health`.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn note(&self, failure: Option<&RedisFailure>) {
        match failure {
            None => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    log::info!("redis: decisions are shared again");
                }
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Some(f) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    log::warn!("redis: falling back to local buckets: {f:?}");
                }
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{f:?}"));
            }
        }
    }

    /// Whether the circuit breaker keeps requests away from Redis.
    pub fn breaker_is_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Decides the checks in Redis, unless the breaker is open.
    pub async fn decide(&self, checks: &[Check<'_>]) -> RedisOutcome {
        match self.breaker.permit() {
            Permit::Ask => {}
            Permit::Skip => {
                return RedisOutcome {
                    result: Err(RedisFailure::BreakerOpen),
                    opened_breaker: false,
                }
            }
            Permit::SkipAndProbe => {
                self.link.probe(self.breaker.clone(), "ratelimit");
                return RedisOutcome {
                    result: Err(RedisFailure::BreakerOpen),
                    opened_breaker: false,
                };
            }
        }
        let result = self.try_decide(checks).await;
        self.note(result.as_ref().err());
        let opened_breaker = self.breaker.record(result.is_ok()) == Transition::Opened;
        if opened_breaker {
            log::warn!(
                "redis: circuit breaker open, deciding locally without asking Redis for {:?}",
                self.breaker.open_for()
            );
        }
        RedisOutcome {
            result,
            opened_breaker,
        }
    }

    async fn try_decide(&self, checks: &[Check<'_>]) -> Result<Vec<Verdict>, RedisFailure> {
        let Some(mut conn) = self.link.conn() else {
            return Err(RedisFailure::NotConnected);
        };
        let mut invocation = self.script.prepare_invoke();
        for c in checks {
            invocation.key(redis_key(&self.prefix, c.key));
            invocation.arg(c.cost).arg(c.windows.len());
            for w in c.windows {
                invocation
                    .arg(micros(w.interval_ns))
                    .arg(micros(w.tolerance_ns));
            }
        }
        let reply: Vec<i64> =
            match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
                Err(_) => return Err(RedisFailure::Timeout),
                // The connection's own response timeout races ours.
                Ok(Err(e)) if e.is_timeout() => return Err(RedisFailure::Timeout),
                Ok(Err(e)) => return Err(RedisFailure::Error(e.to_string())),
                Ok(Ok(v)) => v,
            };
        parse_reply(checks, &reply)
            .ok_or_else(|| RedisFailure::Error("unexpected script reply".into()))
    }
}

/// The Redis key of a bucket: the requester's part in a hash tag, so every
/// key of one decision (the tier's bucket and the route's) lives in one
/// Redis Cluster slot, as a multi-key script needs. Braces in the
/// requester's part would end the tag early: they are replaced.
fn redis_key(prefix: &str, key: &str) -> String {
    let (who, rest) = key
        .split_once('|')
        .map_or((key, None), |(w, r)| (w, Some(r)));
    let who = who.replace(['{', '}'], "_");
    match rest {
        Some(rest) => format!("{prefix}{{{who}}}|{rest}"),
        None => format!("{prefix}{{{who}}}"),
    }
}

fn micros(ns: u64) -> u64 {
    (ns / 1000).max(1)
}

fn secs_from_micros(us: i64) -> u64 {
    u64::try_from(us.max(0)).unwrap_or(0).div_ceil(1_000_000)
}

fn parse_reply(checks: &[Check<'_>], reply: &[i64]) -> Option<Vec<Verdict>> {
    let allowed = *reply.first()? == 1;
    let retry_after_secs = if allowed {
        0
    } else {
        secs_from_micros(*reply.get(1)?).max(1)
    };
    let mut pos = 2;
    let mut out = Vec::with_capacity(checks.len());
    for c in checks {
        let mut windows = super::gcra::PerWindow::with_capacity(c.windows.len());
        for _ in c.windows {
            let remaining = u64::try_from(*reply.get(pos)?).unwrap_or(0);
            let used = *reply.get(pos + 1)?;
            windows.push(WindowState {
                remaining,
                reset_secs: secs_from_micros(used),
            });
            pos += 2;
        }
        out.push(Verdict {
            allowed,
            retry_after_secs,
            windows,
            new_tats: super::gcra::PerWindow::new(),
        });
    }
    Some(out)
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn one_decisions_keys_share_a_hash_tag() {
        assert_eq!(redis_key("rl:", "t:acme"), "rl:{t:acme}");
        assert_eq!(redis_key("rl:", "t:acme|r:search"), "rl:{t:acme}|r:search");
        assert_eq!(redis_key("rl:", "t:{x}|r:a"), "rl:{t:_x_}|r:a");
    }
}
