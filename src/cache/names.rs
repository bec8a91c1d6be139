//! What cached entries are named by, and what a purge selects among them:
//! one pair of types from the admin API, the purge channel and the outbox
//! down to the memory store's indexes, purge log and bans, and the Redis
//! tier's index and marker keys. Nothing re-derives which entries a purge
//! names: [`Selection::names`] is the rule.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The names an entry (or a fill about to become one) is found by.
#[derive(Debug, Clone, Copy)]
pub struct EntryNames<'a> {
    /// Its URI as the cache key holds it (`host/path?query`).
    pub uri: &'a str,
    /// The route that stored it.
    pub route: &'a str,
    /// Its cache tags.
    pub tags: &'a [Arc<str>],
}

/// Which cached entries a purge selects. Serialized as the purge
/// channel's announcements carry it (`{"uri": …}`, `{"prefix": {…}}`,
/// `{"route": …}`, `{"tag": …}`), unchanged from earlier versions so that
/// instances of both hear each other during a rolling upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Every variant of one URI (`host/path?query`, as the key holds it).
    Uri(String),
    /// URIs below `prefix` (a path), on `host` or on any host.
    Prefix {
        /// The path prefix.
        prefix: String,
        /// Only this (normalised) host, if set.
        host: Option<String>,
    },
    /// What one route stored.
    Route(String),
    /// Every entry whose response carried this cache tag.
    Tag(String),
}

impl Selection {
    /// Whether this selects an entry with these names.
    pub fn names(&self, entry: &EntryNames<'_>) -> bool {
        match self {
            Selection::Uri(uri) => uri == entry.uri,
            Selection::Prefix { prefix, host } => {
                let split = entry.uri.find('/').unwrap_or(entry.uri.len());
                let (entry_host, path) = entry.uri.split_at(split);
                path.starts_with(prefix.as_str()) && host.as_deref().is_none_or(|h| h == entry_host)
            }
            Selection::Route(route) => route == entry.route,
            Selection::Tag(tag) => entry.tags.iter().any(|t| **t == **tag),
        }
    }

    /// The one name it selects by, for a keyed lookup: a URI, a route or
    /// a tag (a prefix names no single key).
    pub fn key(&self) -> Option<(NameKind, &str)> {
        match self {
            Selection::Uri(name) => Some((NameKind::Uri, name)),
            Selection::Route(name) => Some((NameKind::Route, name)),
            Selection::Tag(name) => Some((NameKind::Tag, name)),
            Selection::Prefix { .. } => None,
        }
    }
}

/// The kinds of single names a selection can be keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// A URI.
    Uri,
    /// A route.
    Route,
    /// A cache tag.
    Tag,
}

/// A purge: what, and whether entries are removed or only marked stale
/// (`soft`: the next request revalidates; stale windows still apply).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Purge {
    /// What it removes. (`target` on the purge channel, as earlier
    /// versions read it.)
    #[serde(rename = "target")]
    pub selection: Selection,
    /// Mark stale instead of removing.
    #[serde(default)]
    pub soft: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_names_exactly_the_entries_it_describes() {
        let tags: Vec<Arc<str>> = vec!["t1".into()];
        let entry = EntryNames {
            uri: "h.test/a/b?x=1",
            route: "api",
            tags: &tags,
        };
        let prefix = |prefix: &str, host: Option<&str>| Selection::Prefix {
            prefix: prefix.into(),
            host: host.map(Into::into),
        };
        for (selection, named) in [
            (Selection::Uri("h.test/a/b?x=1".into()), true),
            (Selection::Uri("h.test/a/b".into()), false),
            (prefix("/a/", None), true),
            (prefix("/a/", Some("h.test")), true),
            (prefix("/a/", Some("g.test")), false),
            (prefix("/b", None), false),
            (Selection::Route("api".into()), true),
            (Selection::Route("web".into()), false),
            (Selection::Tag("t1".into()), true),
            (Selection::Tag("t2".into()), false),
        ] {
            assert_eq!(selection.names(&entry), named, "{selection:?}");
        }
    }

    #[test]
    fn announcements_of_earlier_versions_still_read() {
        let old = r#"{"uri":"h/a"}"#;
        let back: Selection = serde_json::from_str(old).expect("parse");
        assert_eq!(back, Selection::Uri("h/a".into()));
        let old = r#"{"prefix":{"prefix":"/p/","host":null}}"#;
        let back: Selection = serde_json::from_str(old).expect("parse");
        assert_eq!(
            back,
            Selection::Prefix {
                prefix: "/p/".into(),
                host: None
            }
        );
    }
}
