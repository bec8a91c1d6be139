//! One shard of the store: the entries whose primary key hashes to it,
//! its primaries with their variants, and its own indexes of them by URI,
//! route and tag. A hit takes one shard's read lock and nothing else; a
//! fill takes one shard's write lock and nothing else of the store's, so a
//! write on one shard never blocks hits or fills on another.
//!
//! Invariant: every variant listed by a primary is in `entries`, and every
//! entry's primary lists it; a primary exists only with at least one
//! variant; the indexes (`index.rs`) list exactly this shard's primaries
//! under their URI, route and tags. These methods keep all three.

use super::entry::Entry;
use super::index::Indexes;
use super::keyhash::KeyMap;
use pingora::cache::key::HashBinary;
use smallvec::SmallVec;
use std::sync::Arc;

/// All variants stored for one primary key (one request URI, or one URI
/// and `key.headers` values).
pub(super) struct Primary {
    pub(super) uri: Arc<str>,
    /// The route that stored them (from the key's scope line).
    pub(super) route: Arc<str>,
    /// Combined keys (primary + variance) of the stored variants.
    pub(super) variants: SmallVec<[HashBinary; 2]>,
    /// Cache tags its latest response carried (replaced on every fill).
    pub(super) tags: Arc<[Arc<str>]>,
}

/// Entries, primaries and indexes of one shard.
#[derive(Default)]
pub(super) struct Shard {
    pub(super) entries: KeyMap<Arc<Entry>>,
    pub(super) primaries: KeyMap<Primary>,
    pub(super) index: Indexes,
}

impl Shard {
    /// Stores `entry` under `combined`; returns the entry it replaced.
    pub(super) fn insert(
        &mut self,
        combined: HashBinary,
        entry: Arc<Entry>,
        uri: &Arc<str>,
        route: &Arc<str>,
        tags: &Arc<[Arc<str>]>,
    ) -> Option<Arc<Entry>> {
        let primary = entry.primary;
        let replaced = self.entries.insert(combined, entry);
        match self.primaries.get_mut(&primary) {
            Some(p) => {
                if !p.variants.contains(&combined) {
                    p.variants.push(combined);
                }
                if p.tags[..] != tags[..] {
                    let old = std::mem::replace(&mut p.tags, tags.clone());
                    self.index.retag(primary, &old, tags);
                }
            }
            None => {
                self.primaries.insert(
                    primary,
                    Primary {
                        uri: uri.clone(),
                        route: route.clone(),
                        variants: SmallVec::from_slice(&[combined]),
                        tags: tags.clone(),
                    },
                );
                self.index.add_primary(primary, uri, route, tags);
            }
        }
        replaced
    }

    /// Removes one entry; with it its primary, when it was the last variant.
    pub(super) fn remove(&mut self, combined: &HashBinary) -> Option<Arc<Entry>> {
        let entry = self.entries.remove(combined)?;
        self.forget_variant(&entry.primary, combined);
        Some(entry)
    }

    /// Removes the variants of `primary` that `matches`.
    pub(super) fn remove_variants_where(
        &mut self,
        primary: &HashBinary,
        matches: &impl Fn(&Entry) -> bool,
    ) -> Vec<Arc<Entry>> {
        let Some(p) = self.primaries.get(primary) else {
            return Vec::new();
        };
        let doomed: SmallVec<[HashBinary; 2]> = p
            .variants
            .iter()
            .filter(|v| self.entries.get(*v).is_some_and(|e| matches(e)))
            .copied()
            .collect();
        doomed
            .into_iter()
            .filter_map(|combined| self.remove(&combined))
            .collect()
    }

    fn forget_variant(&mut self, primary: &HashBinary, combined: &HashBinary) {
        let Some(p) = self.primaries.get_mut(primary) else {
            return;
        };
        p.variants.retain(|v| v != combined);
        if !p.variants.is_empty() {
            return;
        }
        if let Some(p) = self.primaries.remove(primary) {
            self.index
                .remove_primary(primary, &p.uri, &p.route, &p.tags);
        }
    }
}
