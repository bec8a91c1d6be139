//! Tokens verified (or refused) before, so a client reusing its token
//! costs one hash lookup instead of a signature check. Bounded; a verified
//! entry lasts until its token expires (with the leeway) and only while
//! the issuer's key set is the one that verified it; a refused one for a
//! minute, on the same condition when a key set refused it.
//!
//! Written here rather than with Pingora's `pingora-memory-cache`: entries
//! must be checked against the key set's fingerprint and dropped when a
//! rotation removes their key, and the map is keyed by the SHA-256 the
//! API-key lookup computes anyway.

use super::verdict::TokenTenant;
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

/// A token that failed, remembered so the same bytes sent again cost a
/// lookup, not another signature check: only for failures that cannot
/// turn into success while the verifier lives (not `NotYetValid` or
/// `UnknownKid`, which time or a key refresh change), and, for a
/// signature, only while the key set that refused it is current.
#[derive(Clone, Copy)]
pub struct Refused {
    /// Why.
    pub failure: super::verdict::Failure,
    /// Unix seconds until which it is remembered.
    pub until: u64,
    /// Index of its issuer, when a key set decided (`usize::MAX`: none).
    pub issuer: usize,
    /// Fingerprint of that key set (zeros when none decided).
    pub fingerprint: [u8; 32],
}

/// Something remembered until a unix second.
pub trait Expiring: Clone {
    /// Unix seconds after which it is forgotten.
    fn expires_at(&self) -> u64;
}

impl Expiring for Verified {
    fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

impl Expiring for Refused {
    fn expires_at(&self) -> u64 {
        self.until
    }
}

/// The verified tokens, by SHA-256 of the token.
pub type VerifiedTokens = TokenMemory<Verified>;

/// The refused tokens, by SHA-256 of the token.
pub type RefusedTokens = TokenMemory<Refused>;

/// A bounded map of tokens by SHA-256, sharded so lookups of different
/// tokens rarely wait on each other.
pub struct TokenMemory<V> {
    shards: Vec<Mutex<HashMap<[u8; 32], V, ahash::RandomState>>>,
    per_shard: usize,
}

impl<V: Expiring> TokenMemory<V> {
    /// Room for about `capacity` tokens (0: nothing is remembered).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, digest: &[u8; 32]) -> &Mutex<HashMap<[u8; 32], V, ahash::RandomState>> {
        &self.shards[usize::from(digest[0]) % SHARDS]
    }

    /// The token with this digest, if remembered and not expired at `now`
    /// (unix seconds); an expired entry is dropped.
    pub fn get(&self, digest: &[u8; 32], now: u64) -> Option<V> {
        let mut shard = self.shard(digest).lock().unwrap_or_else(|p| p.into_inner());
        match shard.get(digest) {
            Some(v) if v.expires_at() >= now => Some(v.clone()),
            Some(_) => {
                shard.remove(digest);
                None
            }
            None => None,
        }
    }

    /// Remembers a token. A full shard makes room by dropping one entry
    /// (whichever the map yields first): constant work under the lock,
    /// never a scan of the shard; expired entries go when they are next
    /// looked up or pushed out.
    pub fn insert(&self, digest: [u8; 32], value: V) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self
            .shard(&digest)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            if let Some(victim) = shard.keys().next().copied() {
                shard.remove(&victim);
            }
        }
        shard.insert(digest, value);
    }

    /// Forgets a token.
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
        tokens.insert([1; 32], entry(100));
        assert!(tokens.get(&[1; 32], 100).is_some());
        assert!(tokens.get(&[1; 32], 101).is_none());
        assert_eq!(tokens.len(), 0, "the expired entry was dropped");
        for i in 0..10_000u32 {
            let mut digest = [0u8; 32];
            digest[..4].copy_from_slice(&i.to_le_bytes());
            tokens.insert(digest, entry(1_000));
        }
        assert!(tokens.len() <= 32, "{} remembered", tokens.len());
        let off = VerifiedTokens::new(0);
        off.insert([2; 32], entry(100));
        assert!(off.get(&[2; 32], 60).is_none());
    }
}
