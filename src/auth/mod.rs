//! Identities beyond hashed API keys: bearer JWTs from trusted issuers,
//! verified at the edge, whose claims name the tenant and its tier; and
//! the auth services routes ask before proxying (`forward`).

pub mod forward;
pub mod jwt;
pub mod keyring;
pub mod verdict;
mod verified;
