//! Hashing for the store's maps and sets (keyed by cache-key hashes, or by
//! route and tag names). std's
//! SipHash showed as ~5 % of a large purge (`benches/load/purge.sh`);
//! aHash (already built for Pingora's LRU) is several times cheaper on a
//! 16-byte key and, like SipHash, keyed with a random seed per process, so
//! a client choosing URLs cannot aim them at one bucket.

use std::collections::{HashMap, HashSet};

/// A map keyed by cache-key hashes.
pub(super) type KeyMap<V> = HashMap<pingora::cache::key::HashBinary, V, ahash::RandomState>;

/// A set of cache-key hashes.
pub(super) type KeyHashSet = HashSet<pingora::cache::key::HashBinary, ahash::RandomState>;

/// A map keyed by route or tag names.
pub(super) type NameMap<V> = HashMap<std::sync::Arc<str>, V, ahash::RandomState>;
