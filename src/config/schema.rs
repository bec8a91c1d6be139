//! The configuration's JSON Schema, derived from the serde types that read
//! the file (`file`), so editors (the YAML language server) complete and
//! check `tollgate.yaml` against exactly the fields `check` accepts. The
//! shipped copy, `conf/tollgate.schema.json`, is what `tollgate schema`
//! prints; a test keeps the two equal.
//!
//! The schema knows shapes (fields, types, units, enumerations); the
//! cross-field rules (an upstream a route names exists, a tenant's tier is
//! defined) remain `check`'s.

use super::file::FileConfig;

/// The schema of a configuration file, as pretty-printed JSON.
pub fn json() -> String {
    let mut schema = schemars::schema_for!(FileConfig);
    schema.insert("title".to_owned(), "tollgate configuration".into());
    let mut text = serde_json::to_string_pretty(&schema)
        .unwrap_or_else(|e| format!("{{\"error\": \"the schema does not serialise: {e}\"}}"));
    text.push('\n');
    text
}
