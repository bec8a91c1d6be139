//! Tokens verified before, so a client reusing its token costs one hash
//! lookup instead of a signature check. Bounded; an entry lasts until its
//! token expires (with the leeway) and only while the issuer's key set is
//! the one that verified it.
//!
//! Written here rather than with Pingora's `pingora-memory-cache`: entries
//! must be checked against the key set's fingerprint and dropped when a
//! rotation removes their key, and the map is keyed by the SHA-256 the
//! API-key lookup computes anyway.

use super::jwt::TokenTenant;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

/// A verified token.
#[derive(Clone)]
pub struct Verified {
    /// Who it says the caller is.
    pub tenant: Arc<TokenTenant>,
    /// Unix seconds after which it no longer verifies (`exp` + leeway).
    pub expires_at: u64,
    /// Index of its issuer.
    pub issuer: usize,
    /// Fingerprint of the key set that verified it (zeros for HMAC).
    pub fingerprint: [u8; 32],
}

/// The bounded map of verified tokens, by SHA-256 of the token.
pub struct VerifiedTokens {
    shards: Vec<Mutex<HashMap<[u8; 32], Verified, ahash::RandomState>>>,
    per_shard: usize,
}

impl VerifiedTokens {
    /// Room for about `capacity` tokens (0: nothing is remembered).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, digest: &[u8; 32]) -> &Mutex<HashMap<[u8; 32], Verified, ahash::RandomState>> {
        &self.shards[usize::from(digest[0]) % SHARDS]
    }

    /// The token with this digest, if it was verified and has not expired
    /// at `now` (unix seconds); an expired entry is dropped.
    pub fn get(&self, digest: &[u8; 32], now: u64) -> Option<Verified> {
        let mut shard = self.shard(digest).lock().unwrap_or_else(|p| p.into_inner());
        match shard.get(digest) {
            Some(v) if v.expires_at >= now => Some(v.clone()),
            Some(_) => {
                shard.remove(digest);
                None
            }
            None => None,
        }
    }

    /// Remembers a verified token. A full shard first drops its expired
    /// entries, then, if still full, an arbitrary one.
    pub fn insert(&self, digest: [u8; 32], verified: Verified, now: u64) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self
            .shard(&digest)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            shard.retain(|_, v| v.expires_at >= now);
            if shard.len() >= self.per_shard {
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(digest, verified);
    }

    /// Forgets a token (its key set changed).
    pub fn remove(&self, digest: &[u8; 32]) {
        self.shard(digest)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(expires_at: u64) -> Verified {
        Verified {
            tenant: Arc::new(TokenTenant::for_tests("acme")),
            expires_at,
            issuer: 0,
            fingerprint: [0; 32],
        }
    }

    #[test]
    fn expired_tokens_are_not_returned_and_the_map_stays_bounded() {
        let tokens = VerifiedTokens::new(32);
        tokens.insert([1; 32], entry(100), 50);
        assert!(tokens.get(&[1; 32], 100).is_some());
        assert!(tokens.get(&[1; 32], 101).is_none());
        assert_eq!(tokens.len(), 0, "the expired entry was dropped");
        for i in 0..10_000u32 {
            let mut digest = [0u8; 32];
            digest[..4].copy_from_slice(&i.to_le_bytes());
            tokens.insert(digest, entry(1_000), 50);
        }
        assert!(tokens.len() <= 32, "{} remembered", tokens.len());
        let off = VerifiedTokens::new(0);
        off.insert([2; 32], entry(100), 50);
        assert!(off.get(&[2; 32], 60).is_none());
    }
}
