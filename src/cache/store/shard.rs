//! One shard of the store: the entries whose primary key hashes to it,
//! and its primaries with their variants. A hit takes one shard's read
//! lock and nothing else; a write on one shard never blocks hits on
//! another.
//!
//! Invariant: every variant listed by a primary is in `entries`, and every
//! entry's primary lists it; a primary exists only with at least one
//! variant. The secondary indexes (`index.rs`) follow the primaries
//! through the changes these methods return.

use super::entry::Entry;
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

/// A primary that left the shard: what the indexes must forget.
pub(super) struct Gone {
    pub(super) primary: HashBinary,
    pub(super) uri: Arc<str>,
    pub(super) route: Arc<str>,
    pub(super) tags: Arc<[Arc<str>]>,
}

/// What a fill changed in the indexes' view.
pub(super) enum IndexChange {
    /// Nothing: the primary existed with the same tags.
    None,
    /// The primary is new.
    Added,
    /// The primary existed; its tags were these and are now the fill's.
    Retagged(Arc<[Arc<str>]>),
}

/// Entries and primaries of one shard.
#[derive(Default)]
pub(super) struct Shard {
    pub(super) entries: KeyMap<Arc<Entry>>,
    pub(super) primaries: KeyMap<Primary>,
}

impl Shard {
    /// Stores `entry` under `combined`: returns the entry it replaced and
    /// what the indexes must learn.
    pub(super) fn insert(
        &mut self,
        combined: HashBinary,
        entry: Arc<Entry>,
        uri: &Arc<str>,
        route: &Arc<str>,
        tags: &Arc<[Arc<str>]>,
    ) -> (Option<Arc<Entry>>, IndexChange) {
        let primary = entry.primary;
        let replaced = self.entries.insert(combined, entry);
        let change = match self.primaries.get_mut(&primary) {
            Some(p) => {
                if !p.variants.contains(&combined) {
                    p.variants.push(combined);
                }
                if p.tags[..] == tags[..] {
                    IndexChange::None
                } else {
                    IndexChange::Retagged(std::mem::replace(&mut p.tags, tags.clone()))
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
                IndexChange::Added
            }
        };
        (replaced, change)
    }

    /// Removes one entry; with it its primary, when it was the last variant.
    pub(super) fn remove(&mut self, combined: &HashBinary) -> Option<(Arc<Entry>, Option<Gone>)> {
        let entry = self.entries.remove(combined)?;
        let gone = self.forget_variant(&entry.primary, combined);
        Some((entry, gone))
    }

    /// Removes the variants of `primary` that `matches`.
    pub(super) fn remove_variants_where(
        &mut self,
        primary: &HashBinary,
        matches: &impl Fn(&Entry) -> bool,
    ) -> (Vec<Arc<Entry>>, Option<Gone>) {
        let Some(p) = self.primaries.get(primary) else {
            return (Vec::new(), None);
        };
        let doomed: SmallVec<[HashBinary; 2]> = p
            .variants
            .iter()
            .filter(|v| self.entries.get(*v).is_some_and(|e| matches(e)))
            .copied()
            .collect();
        let mut removed = Vec::with_capacity(doomed.len());
        let mut gone = None;
        for combined in doomed {
            if let Some((entry, g)) = self.remove(&combined) {
                removed.push(entry);
                gone = gone.or(g);
            }
        }
        (removed, gone)
    }

    fn forget_variant(&mut self, primary: &HashBinary, combined: &HashBinary) -> Option<Gone> {
        let p = self.primaries.get_mut(primary)?;
        p.variants.retain(|v| v != combined);
        if !p.variants.is_empty() {
            return None;
        }
        let p = self.primaries.remove(primary)?;
        Some(Gone {
            primary: *primary,
            uri: p.uri,
            route: p.route,
            tags: p.tags,
        })
    }
}
