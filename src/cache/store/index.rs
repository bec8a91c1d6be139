//! The store's index: every entry by its combined key (primary +
//! variance), every variant of a primary key, and every primary key by its
//! request URI, which is what purges by URL and prefix walk.

use super::entry::Entry;
use pingora::cache::key::HashBinary;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// All variants stored for one request URI.
pub(super) struct Primary {
    pub(super) uri: Arc<str>,
    /// The route that stored them (from the key's scope line).
    pub(super) route: Arc<str>,
    /// Combined keys (primary + variance) of the stored variants.
    pub(super) variants: Vec<HashBinary>,
    /// Cache tags (surrogate keys) its responses carried.
    pub(super) tags: Vec<Arc<str>>,
}

/// Entries by combined key, variants by primary key, primaries by URI.
#[derive(Default)]
pub(super) struct Index {
    pub(super) entries: HashMap<HashBinary, Arc<Entry>>,
    pub(super) primaries: HashMap<HashBinary, Primary>,
    /// URI → primaries (more than one when request headers are in the key).
    pub(super) by_uri: BTreeMap<Arc<str>, Vec<HashBinary>>,
    /// Tag → primaries whose responses carried it.
    pub(super) by_tag: HashMap<Arc<str>, Vec<HashBinary>>,
}

impl Index {
    /// The combined keys of a primary's stored variants.
    pub(super) fn variants_of(&self, primary: &HashBinary) -> Vec<HashBinary> {
        self.primaries
            .get(primary)
            .map(|p| p.variants.clone())
            .unwrap_or_default()
    }

    pub(super) fn remove_entry(&mut self, combined: &HashBinary) -> Option<Arc<Entry>> {
        let entry = self.entries.remove(combined)?;
        if let Some(p) = self.primaries.get_mut(&entry.primary) {
            p.variants.retain(|v| v != combined);
            if p.variants.is_empty() {
                let uri = p.uri.clone();
                let tags = std::mem::take(&mut p.tags);
                self.primaries.remove(&entry.primary);
                for tag in tags {
                    if let Some(list) = self.by_tag.get_mut(&tag) {
                        list.retain(|p| *p != entry.primary);
                        if list.is_empty() {
                            self.by_tag.remove(&tag);
                        }
                    }
                }
                if let Some(list) = self.by_uri.get_mut(&uri) {
                    list.retain(|p| *p != entry.primary);
                    if list.is_empty() {
                        self.by_uri.remove(&uri);
                    }
                }
            }
        }
        Some(entry)
    }
}
