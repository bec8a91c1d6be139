//! In-process buckets: GCRA state per key, in shards so that many tenants
//! do not contend on one lock. Used alone without Redis, and as the
//! fallback when Redis is slow or down.
//!
//! Memory: one entry per key (tenant, anonymous IP, route-level bucket)
//! that was seen while its bucket was not full; [`LocalBuckets::sweep`]
//! (run every few seconds) drops entries whose buckets have refilled, so the
//! map holds only keys active within their longest window. And a hard cap:
//! a flood of distinct source addresses cannot grow it past
//! `max_local_buckets`; past it, each shard evicts its least spent buckets
//! (those nearest to full, whose loss forgets the least), in batches so the
//! cost per request stays constant.

use super::gcra::{self, Verdict, Window};
use smallvec::{smallvec, SmallVec};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

const SHARDS: usize = 64;

/// One shard: bucket key → the TAT of each of its windows.
type Shard = HashMap<Box<str>, Vec<u64>>;

/// One bucket to decide: its key, windows and the cost of this request.
pub struct Check<'a> {
    /// Bucket key (`t:acme`, `ip:192.0.2.7`, `t:acme|r:search`).
    pub key: &'a str,
    /// Its windows.
    pub windows: &'a [Window],
    /// Tokens this request takes.
    pub cost: u64,
}

/// The sharded in-process bucket store.
pub struct LocalBuckets {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
    /// Most buckets one shard holds before it evicts.
    shard_capacity: usize,
    evicted: AtomicU64,
}

impl Default for LocalBuckets {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBuckets {
    /// An empty store holding at most a million buckets.
    pub fn new() -> Self {
        Self::with_capacity(1_000_000)
    }

    /// An empty store holding at most about `capacity` buckets.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            epoch: Instant::now(),
            shard_capacity: (capacity / SHARDS).max(16),
            evicted: AtomicU64::new(0),
        }
    }

    /// Buckets evicted by the cap since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    fn now_ns(&self) -> u64 {
        // +1 so that a stored 0 always means "full bucket".
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides all checks together: the request passes only if every bucket
    /// allows it, and only then do they all advance. One verdict per check.
    pub fn decide(&self, checks: &[Check<'_>]) -> Vec<Verdict> {
        // Inline: a decision has one or two checks (tier, route).
        let mut shard_ids: SmallVec<[usize; 4]> =
            checks.iter().map(|c| self.shard_of(c.key)).collect();
        let mut order = shard_ids.clone();
        order.sort_unstable();
        order.dedup();
        // Locks in ascending shard order: no deadlock between two requests.
        let mut guards: SmallVec<[(usize, MutexGuard<'_, _>); 4]> =
            order.iter().map(|&s| (s, self.lock(s))).collect();
        let now = self.now_ns();
        let verdicts: Vec<Verdict> = checks
            .iter()
            .zip(&shard_ids)
            .map(|(c, shard)| {
                let map = guards.iter().find(|(s, _)| s == shard).map(|(_, g)| g);
                let stored = map
                    .and_then(|m| m.get(c.key))
                    .filter(|tats| tats.len() == c.windows.len());
                match stored {
                    Some(tats) => gcra::decide(c.windows, tats, now, c.cost),
                    None => {
                        let fresh: gcra::PerWindow<u64> = smallvec![0; c.windows.len()];
                        gcra::decide(c.windows, &fresh, now, c.cost)
                    }
                }
            })
            .collect();
        if verdicts.iter().all(|v| v.allowed) {
            for ((c, v), shard) in checks.iter().zip(&verdicts).zip(shard_ids.iter_mut()) {
                if let Some((_, guard)) = guards.iter_mut().find(|(s, _)| s == shard) {
                    match guard.get_mut(c.key) {
                        Some(slot) => {
                            slot.clear();
                            slot.extend_from_slice(&v.new_tats);
                        }
                        None => {
                            guard.insert(c.key.into(), v.new_tats.to_vec());
                            if guard.len() > self.shard_capacity {
                                let keep = self.shard_capacity - self.shard_capacity / 8;
                                let n = evict_least_spent(guard, keep);
                                self.evicted.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            verdicts
        } else {
            // A refused request consumes nothing anywhere.
            verdicts
                .into_iter()
                .map(|mut v| {
                    v.allowed = false;
                    v
                })
                .collect()
        }
    }

    /// Drops buckets that have refilled completely; returns how many are left.
    pub fn sweep(&self) -> usize {
        let now = self.now_ns();
        let mut left = 0;
        for shard in 0..SHARDS {
            let mut map = self.lock(shard);
            map.retain(|_, tats| tats.iter().any(|t| *t > now));
            left += map.len();
        }
        left
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|s| self.lock(s).len()).sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Evicts buckets nearest to full until `keep` are left; how many went.
fn evict_least_spent(map: &mut Shard, keep: usize) -> usize {
    let excess = map.len().saturating_sub(keep);
    if excess == 0 {
        return 0;
    }
    let spent = |tats: &Vec<u64>| tats.iter().copied().max().unwrap_or(0);
    let mut levels: Vec<u64> = map.values().map(spent).collect();
    let (_, threshold, _) = levels.select_nth_unstable(excess - 1);
    let threshold = *threshold;
    let mut removed = 0;
    map.retain(|_, tats| {
        if removed < excess && spent(tats) <= threshold {
            removed += 1;
            false
        } else {
            true
        }
    });
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_independent_and_all_must_allow() {
        let store = LocalBuckets::new();
        let tier = [Window::new(3, 3600, 3)];
        let route = [Window::new(1, 3600, 1)];
        let both = |k: &str| {
            store
                .decide(&[
                    Check {
                        key: k,
                        windows: &tier,
                        cost: 1,
                    },
                    Check {
                        key: &format!("{k}|r"),
                        windows: &route,
                        cost: 1,
                    },
                ])
                .iter()
                .all(|v| v.allowed)
        };
        assert!(both("a"));
        assert!(!both("a"), "the route budget binds");
        // The refused request did not consume the tier budget: two left.
        let tier_only = |k: &str| {
            store.decide(&[Check {
                key: k,
                windows: &tier,
                cost: 1,
            }])[0]
                .allowed
        };
        assert!(tier_only("a"));
        assert!(tier_only("a"));
        assert!(!tier_only("a"));
        assert!(tier_only("b"), "another key has its own bucket");
    }

    #[test]
    fn a_flood_of_keys_is_capped_and_the_big_spenders_are_kept() {
        let store = LocalBuckets::with_capacity(64 * 16);
        let w = [Window::new(100, 3600, 100)];
        // A heavy spender first.
        for _ in 0..50 {
            store.decide(&[Check {
                key: "t:big",
                windows: &w,
                cost: 1,
            }]);
        }
        for i in 0..20_000 {
            let key = format!("ip:{i}");
            store.decide(&[Check {
                key: &key,
                windows: &w,
                cost: 1,
            }]);
        }
        assert!(store.len() <= 64 * 16, "{} buckets held", store.len());
        assert!(store.evicted() >= 20_000 - 64 * 16);
        // The spender still has 50 spent: 50 more and it is refused.
        let left = (0..60)
            .filter(|_| {
                store.decide(&[Check {
                    key: "t:big",
                    windows: &w,
                    cost: 1,
                }])[0]
                    .allowed
            })
            .count();
        assert_eq!(left, 50);
    }

    #[test]
    fn refilled_buckets_are_swept() {
        let store = LocalBuckets::new();
        let w = [Window::new(1_000_000, 1, 1_000_000)];
        store.decide(&[Check {
            key: "x",
            windows: &w,
            cost: 1,
        }]);
        assert_eq!(store.len(), 1);
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while store.sweep() > 0 {
            assert!(Instant::now() < deadline, "never swept");
            std::thread::yield_now(); // poll until the 1 µs refill has passed
        }
        assert!(store.is_empty());
    }
}
