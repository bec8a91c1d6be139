//! The documentation book (`docs/book`, built by `scripts/book`, which the
//! test command runs) holds together: every chapter file is in the summary
//! and every summary entry exists, and every link between its pages, to a
//! heading in them, or to a file of the repository resolves. Anchors are
//! computed as mdBook computes heading ids.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = "docs/book/src";

/// Chapter file name → its text.
fn chapters() -> BTreeMap<String, String> {
    std::fs::read_dir(SRC)
        .expect("read the book's sources")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("read chapter"))
        })
        .collect()
}

/// The text outside fenced code blocks and inline code, line by line.
fn prose(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop `inline code`: a link never sits inside it.
        let kept: String = line
            .split('`')
            .enumerate()
            .map(|(i, part)| if i % 2 == 0 { part } else { "code" })
            .collect();
        out.push(kept);
    }
    out
}

/// mdBook's heading id: letters, digits, `_` and `-` lower-cased, white
/// space as `-`, everything else dropped; repeats get `-1`, `-2`, ….
fn heading_ids(text: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        // Link text stays, link targets go: `[a](b.md)` reads as `a`.
        let mut visible = String::new();
        let mut rest = title;
        while let Some(open) = rest.find("](") {
            visible.push_str(&rest[..open]);
            rest = rest[open..]
                .find(')')
                .map_or("", |close| &rest[open + close + 1..]);
        }
        visible.push_str(rest);
        let id: String = visible
            .chars()
            .filter_map(|c| match c {
                c if c.is_alphanumeric() || c == '_' || c == '-' => Some(c.to_ascii_lowercase()),
                c if c.is_whitespace() => Some('-'),
                _ => None,
            })
            .collect();
        let mut unique = id.clone();
        let mut n = 1;
        while !ids.insert(unique.clone()) {
            unique = format!("{id}-{n}");
            n += 1;
        }
    }
    ids
}

/// Every `](target)` link in the prose of `text`.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in prose(text) {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            found.push(rest[..end].trim().to_owned());
            rest = &rest[end..];
        }
    }
    found
}

#[test]
fn the_summary_lists_every_chapter_and_only_chapters_that_exist() {
    let chapters = chapters();
    let summary = &chapters["SUMMARY.md"];
    let listed: BTreeSet<String> = links(summary).into_iter().collect();
    let files: BTreeSet<String> = chapters
        .keys()
        .filter(|n| *n != "SUMMARY.md")
        .cloned()
        .collect();
    assert_eq!(
        listed, files,
        "docs/book/src/SUMMARY.md vs the chapter files"
    );
}

#[test]
fn every_link_in_the_book_resolves() {
    let chapters = chapters();
    let ids: BTreeMap<&String, BTreeSet<String>> = chapters
        .iter()
        .map(|(name, text)| (name, heading_ids(text)))
        .collect();
    let mut broken = Vec::new();
    for (name, text) in &chapters {
        for link in links(text) {
            if link.starts_with("http://")
                || link.starts_with("https://")
                || link.starts_with("mailto:")
            {
                continue;
            }
            let (target, fragment) = match link.split_once('#') {
                Some((t, f)) => (t.to_owned(), Some(f.to_owned())),
                None => (link.clone(), None),
            };
            let page = if target.is_empty() {
                name.clone()
            } else {
                target.clone()
            };
            if page.ends_with(".md") && !page.contains('/') {
                match ids.get(&page) {
                    None => broken.push(format!("{name}: {link}: no chapter {page}")),
                    Some(page_ids) => {
                        if let Some(f) = fragment.filter(|f| !page_ids.contains(f)) {
                            broken.push(format!("{name}: {link}: {page} has no heading #{f}"));
                        }
                    }
                }
                continue;
            }
            let path: PathBuf = Path::new(SRC).join(&target);
            if !path.exists() {
                broken.push(format!("{name}: {link}: {} does not exist", path.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn heading_ids_are_computed_as_mdbook_does() {
    let ids = heading_ids(
        "# Rate limiting\n## Tenants from JWTs (`auth.jwt`)\n### `routes[].cache`\n## Again\n## Again\n```\n# not a heading\n```\n",
    );
    let want: BTreeSet<String> = [
        "rate-limiting",
        "tenants-from-jwts-authjwt",
        "routescache",
        "again",
        "again-1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(ids, want);
    assert_eq!(
        links("see [a](b.md#c) and `[not](x.md)`\n```\n[no](y.md)\n```\n"),
        vec!["b.md#c".to_owned()]
    );
}
