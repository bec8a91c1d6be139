//! A shard's secondary indexes: its primaries by URI (ordered, for prefix
//! purges), by route and by tag. Each shard keeps its own under its own
//! lock, so a fill touches nothing outside its shard; a purge asks every
//! shard (64 hash lookups for a URL, route or tag).
//!
//! Invariant: a primary key is in `by_uri[uri]`, `by_route[route]` and
//! `by_tag[t]` for each of its tags exactly while its shard holds at least
//! one variant of it, with that URI, route and tags. Every change is a
//! hash-set insert or remove (the URI map is a B-tree, O(log n)): removing
//! an entry costs the same whatever the index sizes, so a purge of n
//! entries is O(n).

use super::keyhash::{KeyHashSet, NameMap};
use pingora::cache::key::HashBinary;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Primary keys by URI, route and tag.
#[derive(Default)]
pub(super) struct Indexes {
    pub(super) by_uri: BTreeMap<Arc<str>, KeyHashSet>,
    pub(super) by_route: NameMap<KeyHashSet>,
    pub(super) by_tag: NameMap<KeyHashSet>,
}

impl Indexes {
    /// A primary that now has its first variant.
    pub(super) fn add_primary(
        &mut self,
        primary: HashBinary,
        uri: &Arc<str>,
        route: &Arc<str>,
        tags: &[Arc<str>],
    ) {
        self.by_uri.entry(uri.clone()).or_default().insert(primary);
        self.by_route
            .entry(route.clone())
            .or_default()
            .insert(primary);
        for tag in tags {
            self.by_tag.entry(tag.clone()).or_default().insert(primary);
        }
    }

    /// A primary whose last variant is gone.
    pub(super) fn remove_primary(
        &mut self,
        primary: &HashBinary,
        uri: &Arc<str>,
        route: &Arc<str>,
        tags: &[Arc<str>],
    ) {
        if let Some(set) = self.by_uri.get_mut(uri) {
            set.remove(primary);
            if set.is_empty() {
                self.by_uri.remove(uri);
            }
        }
        remove_from(&mut self.by_route, route, primary);
        for tag in tags {
            remove_from(&mut self.by_tag, tag, primary);
        }
    }

    /// A primary refilled with other tags: the old ones go, the new come.
    pub(super) fn retag(&mut self, primary: HashBinary, old: &[Arc<str>], new: &[Arc<str>]) {
        for tag in old.iter().filter(|t| !new.contains(t)) {
            remove_from(&mut self.by_tag, tag, &primary);
        }
        for tag in new.iter().filter(|t| !old.contains(t)) {
            self.by_tag.entry(tag.clone()).or_default().insert(primary);
        }
    }
}

fn remove_from(map: &mut NameMap<KeyHashSet>, key: &Arc<str>, primary: &HashBinary) {
    if let Some(set) = map.get_mut(key) {
        set.remove(primary);
        if set.is_empty() {
            map.remove(key);
        }
    }
}
