//! What verifying a token decides: the caller it names, or why it was
//! refused. Shared by the verifier (`jwt`) and the cache of its verdicts
//! (`verified`).

use http::{HeaderName, HeaderValue};

/// The caller a verified token names.
#[derive(Debug)]
pub struct TokenTenant {
    /// The tenant claim's value.
    pub name: Box<str>,
    /// Index into the rate limiter's tiers.
    pub tier: usize,
    /// Its budget's key (`t:<name>`: the same as the tenant's API keys use).
    pub bucket_key: Box<str>,
    /// `forward_claims` headers for the upstream.
    pub forward: Vec<(HeaderName, HeaderValue)>,
}

#[cfg(test)]
impl TokenTenant {
    /// A tenant for unit tests.
    pub fn for_tests(name: &str) -> Self {
        Self {
            name: name.into(),
            tier: 0,
            bucket_key: format!("t:{name}").into(),
            forward: Vec::new(),
        }
    }
}

/// Why a token was refused: a `tollgate_auth_failures_total` reason and
/// the `error_description` of the 401's `WWW-Authenticate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Not three base64url parts of JSON, or a `crit` header.
    Malformed,
    /// `alg` missing, `none`, not in the issuer's list, or not the key's.
    Algorithm,
    /// The set has no key by the token's `kid`.
    UnknownKid,
    /// The signature does not verify.
    Signature,
    /// Past `exp` (plus leeway).
    Expired,
    /// Before `nbf`, or `iat` in the future (beyond leeway).
    NotYetValid,
    /// `iss` missing or not a configured issuer.
    Issuer,
    /// `aud` missing or not an accepted audience.
    Audience,
    /// Signed, but a needed claim is missing or unusable.
    Claims(&'static str),
    /// The tenant it names may not be named by its issuer (RFC 8725
    /// §3.8): a configured tenant that does not list the issuer, or an
    /// unlisted tenant from an issuer with `unlisted_tenants: false`.
    Tenant,
}

impl Failure {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Malformed => "malformed",
            Failure::Algorithm => "algorithm",
            Failure::UnknownKid => "unknown_kid",
            Failure::Signature => "signature",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not_yet_valid",
            Failure::Issuer => "issuer",
            Failure::Audience => "audience",
            Failure::Claims(_) => "claims",
            Failure::Tenant => "tenant",
        }
    }

    /// The `error_description` (no detail of the token itself).
    pub fn description(self) -> &'static str {
        match self {
            Failure::Malformed => "The token is malformed",
            Failure::Algorithm => "The token's algorithm is not accepted",
            Failure::UnknownKid => "The token is signed with an unknown key",
            Failure::Signature => "The token's signature is invalid",
            Failure::Expired => "The token has expired",
            Failure::NotYetValid => "The token is not valid yet",
            Failure::Issuer => "The token's issuer is not trusted",
            Failure::Audience => "The token is not for this audience",
            Failure::Claims(what) => what,
            Failure::Tenant => "The token's issuer may not name this tenant",
        }
    }
}
