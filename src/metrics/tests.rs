//! The metrics' own checks: the README's table lists exactly what is
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
fn the_readme_metrics_table_matches_what_is_exported() {
    let metrics = Metrics::new().expect("metrics");
    let known: BTreeSet<String> = metrics.names().iter().cloned().collect();
    let readme = file("README.md");
    let table: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `tollgate_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("tollgate_{name}"))
        .collect();
    assert_eq!(table, known, "README metrics table vs exported metrics");
}
