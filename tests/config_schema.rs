//! The configuration's JSON Schema agrees with the model, `check` and the
//! reference: the shipped copy is what `tollgate schema` prints, every
//! config `check` accepts validates against it, a mistake in a field's
//! name or shape is caught by it, and the configuration reference in the
//! book documents every field the schema has and no other.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn schema() -> serde_json::Value {
    serde_json::from_str(&tollgate::config::schema::json()).expect("the schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("the schema is a valid draft 2020-12 schema")
}

fn yaml_as_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("read config");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    serde_json::to_value(yaml).expect("YAML as JSON")
}

/// Every field path of the schema: `routes[].cache.ttl`, `tiers.<name>.burst`.
fn schema_paths(schema: &serde_json::Value) -> BTreeSet<String> {
    fn resolve<'a>(
        root: &'a serde_json::Value,
        mut node: &'a serde_json::Value,
    ) -> &'a serde_json::Value {
        while let Some(reference) = node.get("$ref").and_then(|r| r.as_str()) {
            let name = reference.rsplit('/').next().unwrap_or_default();
            node = &root["$defs"][name];
        }
        node
    }
    fn walk(
        root: &serde_json::Value,
        node: &serde_json::Value,
        prefix: &str,
        depth: usize,
        out: &mut BTreeSet<String>,
    ) {
        assert!(
            depth < 16,
            "the schema nests deeper than the config does: {prefix}"
        );
        let node = resolve(root, node);
        for key in ["anyOf", "oneOf", "allOf"] {
            for alternative in node
                .get(key)
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
            {
                walk(root, alternative, prefix, depth + 1, out);
            }
        }
        if let Some(items) = node.get("items") {
            walk(root, items, &format!("{prefix}[]"), depth + 1, out);
        }
        for (name, field) in node
            .get("properties")
            .and_then(|p| p.as_object())
            .into_iter()
            .flatten()
        {
            let path = match prefix {
                "" => name.clone(),
                _ => format!("{prefix}.{name}"),
            };
            out.insert(path.clone());
            walk(root, field, &path, depth + 1, out);
        }
        if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
            walk(root, values, &format!("{prefix}.<name>"), depth + 1, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(schema, schema, "", 0, &mut out);
    out
}

#[test]
fn the_shipped_schema_is_what_tollgate_schema_prints() {
    let shipped =
        std::fs::read_to_string("conf/tollgate.schema.json").expect("read shipped schema");
    let printed = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("schema")
        .output()
        .expect("run tollgate schema");
    assert!(printed.status.success());
    // Not assert_eq: a 60 KB diff in the failure says less than this does.
    assert!(
        String::from_utf8_lossy(&printed.stdout) == shipped,
        "conf/tollgate.schema.json is stale: run `cargo run -- schema > conf/tollgate.schema.json`"
    );
}

#[test]
fn every_config_check_accepts_validates_against_the_schema() {
    let validator = validator();
    let mut configs = vec![
        Path::new("conf/tollgate.yaml").to_path_buf(),
        Path::new("conf/demo.yaml").to_path_buf(),
    ];
    // The configs the Kubernetes manifests mount (deploy/**/tollgate.yaml).
    let mut folders = vec![Path::new("deploy").to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("read deploy/").flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.file_name().is_some_and(|n| n == "tollgate.yaml") {
                configs.push(path);
            }
        }
    }
    assert!(configs.len() >= 4, "conf/ and deploy/ configs: {configs:?}");
    for config in configs {
        let checked = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("check")
            .arg(&config)
            // The deploy/ configs name the admin token's variable.
            .env("TOLLGATE_ADMIN_TOKEN", "test-token")
            .output()
            .expect("run tollgate check");
        assert!(
            checked.status.success(),
            "{} passes check",
            config.display()
        );
        let errors: Vec<String> = validator
            .iter_errors(&yaml_as_json(&config))
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", config.display());
        let text = std::fs::read_to_string(&config).expect("read config");
        assert!(
            text.lines().next().is_some_and(|l| l.contains("$schema=")),
            "{} names the schema on its first line for the YAML language server",
            config.display()
        );
    }
}

#[test]
fn a_misspelt_field_a_unitless_duration_or_a_wrong_type_fails_the_schema_as_it_fails_check() {
    let validator = validator();
    for (fixture, why) in [
        ("typo_in_field", "an unknown field"),
        ("bad_duration", "a duration without its unit"),
        ("wrong_type", "a field of the wrong type"),
    ] {
        let path = Path::new("tests/fixtures/invalid").join(format!("{fixture}.yaml"));
        assert!(
            !validator.is_valid(&yaml_as_json(&path)),
            "{fixture}.yaml ({why}) must fail the schema"
        );
    }
    let base = yaml_as_json(Path::new("conf/demo.yaml"));
    assert!(validator.is_valid(&base));
    let mut bad_size = base.clone();
    bad_size["limits"] = serde_json::json!({ "max_body_size": "10 parsecs" });
    assert!(!validator.is_valid(&bad_size), "an unknown size unit");
    let mut good_size = base;
    good_size["limits"] = serde_json::json!({ "max_body_size": "10MiB", "max_headers": 50 });
    assert!(validator.is_valid(&good_size), "a size with its unit");
}

/// The fields the configuration reference documents: each table row's
/// first cell names fields (backticked), relative to the backticked path
/// in the heading above the table.
fn documented_paths(reference: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut prefix = String::new();
    for line in reference.lines() {
        if line.starts_with('#') {
            prefix = line
                .split('`')
                .nth(1)
                .filter(|p| !p.contains(' '))
                .unwrap_or_default()
                .to_owned();
            // The heading names a field (`cache.redis`) or the items of one
            // (`routes[]`, `tiers.<name>`): the field itself is documented.
            let field = prefix.trim_end_matches("[]").trim_end_matches(".<name>");
            if !field.is_empty() {
                out.insert(field.to_owned());
            }
            continue;
        }
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let first_cell = row.split(" |").next().unwrap_or_default();
        for (i, name) in format!("`{first_cell}").split('`').enumerate() {
            if i % 2 == 1 && !name.is_empty() {
                out.insert(match prefix.as_str() {
                    "" => name.to_owned(),
                    _ => format!("{prefix}.{name}"),
                });
            }
        }
    }
    out
}

#[test]
fn the_reference_documents_every_field_of_the_schema_and_no_other() {
    let reference = std::fs::read_to_string("docs/book/src/configuration.md")
        .expect("read the configuration reference");
    let documented = documented_paths(&reference);
    let fields = schema_paths(&schema());
    // A container is documented by its fields' rows.
    let covered = |path: &String| {
        documented.contains(path)
            || documented
                .iter()
                .any(|d| d.starts_with(&format!("{path}.")) || d.starts_with(&format!("{path}[]")))
    };
    let missing: Vec<&String> = fields.iter().filter(|f| !covered(f)).collect();
    assert!(
        missing.is_empty(),
        "fields the reference does not document: {missing:#?}"
    );
    let unknown: Vec<&String> = documented.iter().filter(|d| !fields.contains(*d)).collect();
    assert!(
        unknown.is_empty(),
        "the reference documents fields the model does not accept: {unknown:#?}"
    );
}
