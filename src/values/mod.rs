//! The vocabulary the configuration model and the runtime share: parsed
//! values (host patterns, method sets, templates, field-edit policies,
//! path rewrites, path rules, JSON Web Key Sets, field names) and the pure
//! functions that judge them.
//!
//! This is the bottom layer (`docs/book/src/architecture.md`, "Layers"): nothing
//! here imports another tollgate module outside `values/`, so `config/`
//! can check a file with the same code the runtime later runs, without
//! reaching up into the runtime.

pub mod address_policy;
pub mod cert_name;
pub mod cors;
pub mod fields;
pub mod header_policy;
pub mod host;
pub mod hygiene;
pub mod key_set;
pub mod methods;
pub mod pem;
pub mod rewrite;
pub mod template;
pub mod url;
