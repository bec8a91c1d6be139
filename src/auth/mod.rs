//! Identities beyond hashed API keys: bearer JWTs from trusted issuers,
//! verified at the edge, whose claims name the tenant and its tier.

pub mod jwt;
pub mod keyring;
pub mod verdict;
mod verified;
