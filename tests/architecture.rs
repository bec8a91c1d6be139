//! The module layers `docs/book/src/architecture.md` draws are the ones the code
//! has: every module under `src/` is in the list once, no module imports
//! one on a layer above its own, and no modules import each other in a
//! circle — neither between the top-level modules nor between the
//! submodules of any folder (a module and its own submodules are one unit:
//! a parent and its children may use each other's items).
//!
//! An import is any `crate::…` path (in `use` or inline, groups included)
//! or `super::…` path outside comments; `#[cfg(test)]` code counts too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module: its path from `src/` (`["cache", "store", "entry"]`).
type ModPath = Vec<String>;

/// Every module under `src/` (but the crate roots) and its source file.
fn modules() -> BTreeMap<ModPath, PathBuf> {
    let mut found = BTreeMap::new();
    let mut folders = vec![PathBuf::from("src")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("read src/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix("src").expect("under src");
            let mut parts: ModPath = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            found.insert(parts, path);
        }
    }
    found
}

/// The source without `//` comments (line, doc and inner doc), so a
/// module named in prose is not an import.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal (a URL) keeps the line.
            Some(at) if line[..at].matches('"').count() % 2 == 0 => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path (as segments) that follows `crate::` or `super::` in `code`,
/// with `{a, b::c}` groups expanded one level deep.
fn paths_in(code: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(root) {
            let start = from + at;
            from = start + root.len();
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            // `super::super::x` is read from its first `super`.
            if root == "super::" && start >= 7 && &code[start - 7..start] == "super::" {
                continue;
            }
            let mut head = root.trim_end_matches("::").to_owned();
            let mut rest = &code[from..];
            while let Some(more) = rest.strip_prefix("super::") {
                head.push_str("::super");
                rest = more;
            }
            let prefix: Vec<String> = take_segments(rest);
            let after: usize = prefix.iter().map(|s| s.len() + 2).sum();
            let tail = rest.get(after..).unwrap_or("");
            if tail.starts_with('{') {
                let close = tail.find('}').unwrap_or(tail.len());
                for member in tail[1..close].split(',') {
                    let mut path = prefix.clone();
                    path.extend(take_segments(member.trim()));
                    found.push((head.clone(), path));
                }
            } else {
                let mut path = prefix;
                path.extend(take_segments(&rest[after.min(rest.len())..]));
                found.push((head, path));
            }
        }
    }
    found
}

/// `a::b::c` at the start of `text` as segments (identifiers only).
fn take_segments(text: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut rest = text;
    loop {
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        segments.push(rest[..len].to_owned());
        match rest[len..].strip_prefix("::") {
            Some(more) if !more.starts_with('{') => rest = more,
            _ => break,
        }
    }
    segments
}

/// The module a path names: its longest prefix that is a module.
fn module_named(mods: &BTreeMap<ModPath, PathBuf>, path: &[String]) -> Option<ModPath> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| mods.contains_key(m))
}

/// Which module imports which (file-level, nearest module).
fn imports() -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mods = modules();
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (module, file) in &mods {
        for (head, path) in paths_in(&code_of(file)) {
            let mut base: ModPath = match head.as_str() {
                "crate" => Vec::new(),
                _ => {
                    let ups = head.matches("super").count();
                    // `super` in `a/b.rs` and in `a/b/mod.rs` both name `a`.
                    module[..module.len().saturating_sub(ups)].to_vec()
                }
            };
            base.extend(path);
            if let Some(target) = module_named(&mods, &base) {
                if &target != module {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    edges
}

/// The layer list: module (top-level name, `x/` or `x.rs`) → layer.
fn layers() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string("docs/book/src/architecture.md")
        .expect("read the architecture chapter");
    let section = doc
        .split("## Layers")
        .nth(1)
        .expect("the architecture chapter has a Layers section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the Layers section opens with the layer list");
    let mut layers = BTreeMap::new();
    let mut current = None;
    for line in block.lines() {
        let mut words = line.split_whitespace().peekable();
        if let Some(n) = words.peek().and_then(|w| w.parse::<u32>().ok()) {
            current = Some(n);
            words.next();
        }
        let Some(layer) = current else { continue };
        for word in words {
            let name = word.trim_end_matches('/').trim_end_matches(".rs");
            if word.ends_with('/') || word.ends_with(".rs") {
                let before = layers.insert(name.to_owned(), layer);
                assert!(before.is_none(), "{word} is listed twice in the layer list");
            }
        }
    }
    layers
}

/// Circles in `edges` (strongly connected components of two or more).
fn circles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<BTreeSet<ModPath>> {
    // Kosaraju: order by finish time, then walk the reversed graph.
    let nodes: BTreeSet<&ModPath> = edges
        .iter()
        .flat_map(|(a, bs)| std::iter::once(a).chain(bs))
        .collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for &start in &nodes {
        if !seen.insert(start) {
            continue;
        }
        let mut stack = vec![(start, edges.get(start).into_iter().flatten())];
        while let Some((node, next)) = stack.last_mut() {
            match next.find(|n| !seen.contains(n)) {
                Some(n) => {
                    seen.insert(n);
                    stack.push((n, edges.get(n).into_iter().flatten()));
                }
                None => {
                    order.push(*node);
                    stack.pop();
                }
            }
        }
    }
    let mut reversed: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (a, bs) in edges {
        for b in bs {
            reversed.entry(b).or_default().push(a);
        }
    }
    let mut assigned = BTreeSet::new();
    let mut found = Vec::new();
    for &root in order.iter().rev() {
        if !assigned.insert(root) {
            continue;
        }
        let mut component = BTreeSet::from([root.clone()]);
        let mut todo = vec![root];
        while let Some(node) = todo.pop() {
            for &prev in reversed.get(node).into_iter().flatten() {
                if assigned.insert(prev) {
                    component.insert(prev.clone());
                    todo.push(prev);
                }
            }
        }
        if component.len() > 1 {
            found.push(component);
        }
    }
    found
}

fn show(m: &ModPath) -> String {
    m.join("/")
}

#[test]
fn every_module_is_on_one_layer_and_imports_none_above_it() {
    let layers = layers();
    let tops: BTreeSet<String> = modules().keys().map(|m| m[0].clone()).collect();
    let listed: BTreeSet<String> = layers.keys().filter(|k| *k != "main").cloned().collect();
    assert_eq!(
        tops, listed,
        "the layer list in docs/book/src/architecture.md names exactly the modules under src/"
    );
    let mut upward = Vec::new();
    for (from, targets) in imports() {
        for to in targets {
            let (a, b) = (&from[0], &to[0]);
            if a != b && layers[a] < layers[b] {
                upward.push(format!(
                    "{} (layer {}) imports {} (layer {})",
                    show(&from),
                    layers[a],
                    show(&to),
                    layers[b]
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports reaching up:\n{}",
        upward.join("\n")
    );
    let config_imports: BTreeSet<String> = imports()
        .into_iter()
        .filter(|(from, _)| from[0] == "config")
        .flat_map(|(_, to)| to.into_iter().map(|t| t[0].clone()))
        .filter(|t| t != "config")
        .collect();
    assert_eq!(
        config_imports,
        BTreeSet::from(["values".to_owned()]),
        "config/ describes: it imports the shared values and no runtime module"
    );
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    // Between siblings of each folder: an import from `a/x/…` to `a/y/…`
    // is an edge `a/x` → `a/y`; a module and its own submodules are one.
    let mut siblings: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (from, targets) in imports() {
        for to in targets {
            let shared = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if shared == from.len() || shared == to.len() {
                continue;
            }
            siblings
                .entry(from[..=shared].to_vec())
                .or_default()
                .insert(to[..=shared].to_vec());
        }
    }
    let found: Vec<String> = circles(&siblings)
        .iter()
        .map(|c| c.iter().map(show).collect::<Vec<_>>().join(" ↔ "))
        .collect();
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn the_import_reader_sees_groups_nested_supers_and_ignores_comments() {
    let code = code_of(Path::new("tests/fixtures/architecture_sample.rs"));
    let mut seen = paths_in(&code);
    seen.sort();
    let want = vec![
        ("crate".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
        (
            "crate".to_owned(),
            vec!["a".to_owned(), "c".to_owned(), "D".to_owned()],
        ),
        ("crate".to_owned(), vec!["e".to_owned(), "f".to_owned()]),
        ("super".to_owned(), vec!["g".to_owned()]),
        (
            "super::super".to_owned(),
            vec!["h".to_owned(), "I".to_owned()],
        ),
    ];
    assert_eq!(seen, want);
    let circle = BTreeMap::from([
        (vec!["a".to_owned()], BTreeSet::from([vec!["b".to_owned()]])),
        (vec!["b".to_owned()], BTreeSet::from([vec!["a".to_owned()]])),
        (vec!["c".to_owned()], BTreeSet::from([vec!["a".to_owned()]])),
    ]);
    assert_eq!(circles(&circle).len(), 1, "a ↔ b is found, c is not in it");
}
