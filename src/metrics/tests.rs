//! The metrics' own checks: the book's table (and README's list) name exactly what is
//! exported.

use super::*;
use std::collections::BTreeSet;

/// `tollgate_*` names in a text, with histogram suffixes folded.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("tollgate_") {
        if i > 0
            && (text.as_bytes()[i - 1].is_ascii_alphanumeric() || text.as_bytes()[i - 1] == b':')
        {
            continue; // e.g. "route:tollgate_requests:rate5m" is a recording rule name
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .map_or(name.clone(), str::to_owned);
        out.insert(name);
    }
    out
}

fn file(path: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn dashboard_and_alerts_use_only_metrics_that_exist() {
    let metrics = Metrics::new().expect("metrics");
    let known: BTreeSet<String> = metrics.names().iter().cloned().collect();
    let dashboard = file("conf/grafana/tollgate.json");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("dashboard is JSON");
    for (what, text) in [
        ("dashboard", dashboard),
        ("alerts", file("conf/prometheus/alerts.yml")),
    ] {
        let unknown: Vec<_> = referenced(&text).difference(&known).cloned().collect();
        assert!(
            unknown.is_empty(),
            "{what} uses metrics tollgate does not export: {unknown:?}"
        );
    }
}

#[test]
fn the_book_metrics_table_and_the_readme_list_match_what_is_exported() {
    let metrics = Metrics::new().expect("metrics");
    let known: BTreeSet<String> = metrics.names().iter().cloned().collect();
    let chapter = file("docs/book/src/operations.md");
    let table: BTreeSet<String> = chapter
        .lines()
        .filter_map(|l| l.strip_prefix("| `tollgate_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("tollgate_{name}"))
        .collect();
    assert_eq!(table, known, "the book's metrics table vs exported metrics");
    // The README's list: every `tollgate_…` name in its Metrics section.
    let readme = file("README.md");
    let section = readme
        .split("\n## Metrics")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Metrics section");
    let listed: BTreeSet<String> = section
        .split('`')
        .filter(|w| w.starts_with("tollgate_") && !w.contains(' '))
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, known, "README's metrics list vs exported metrics");
}
