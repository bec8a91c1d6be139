//! The YAML's `auth` section: JSON Web Tokens whose verified claims name
//! the tenant (and its tier), next to the hashed API keys of `tenants`.

use super::*;

/// `auth`: ways to identify a tenant besides API keys.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// Bearer JWTs from trusted issuers.
    #[serde(default)]
    pub jwt: Option<JwtSpec>,
    /// Request field in which the upstream gets the verified client
    /// certificate (`Hash=…;Subject="…";URI=…;DNS=…`); a client's own copy
    /// is always removed.
    #[serde(default)]
    pub client_certificate_header: Option<String>,
}

/// `auth.jwt`: who may issue tokens and which claims say who the caller is.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// Trusted issuers, each with its keys and audiences.
    pub issuers: Vec<IssuerSpec>,
    /// The claim whose value (a string or a number) is the tenant.
    pub tenant_claim: String,
    /// A claim naming the tenant's tier (used when it names a configured tier).
    #[serde(default)]
    pub tier_claim: Option<String>,
    /// The tier of a tenant that is neither under `tenants` nor given a tier by `tier_claim`.
    pub default_tier: String,
    /// Clock skew allowed for `exp`, `nbf` and `iat`. Default 30s.
    #[serde(default)]
    pub leeway: Option<HumanDuration>,
    /// Claims sent upstream as headers: `{ claim: Header-Name }`.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Most verified tokens remembered (a token seen again costs one hash
    /// lookup instead of a signature check). Default 100000.
    #[serde(default)]
    pub cache_size: Option<usize>,
}

/// One trusted issuer.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerSpec {
    /// The `iss` value its tokens carry, compared exactly.
    pub issuer: String,
    /// Accepted `aud` values; a token must name one of them. Empty: `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where its public keys are published.
    #[serde(default)]
    pub jwks: Option<JwksSpec>,
    /// Signature algorithms accepted from it. Default: every asymmetric one
    /// (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA).
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Environment variable holding the HMAC secret, for HS256/384/512.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Whether its tokens may name tenants `tenants` does not list
    /// (default true); false: only tenants that list this issuer.
    #[serde(default = "default_true")]
    pub unlisted_tenants: bool,
    /// Accepted `typ` header values (RFC 8725 §3.11, e.g. `at+jwt`);
    /// empty: `typ` is not checked.
    #[serde(default)]
    pub types: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// A JSON Web Key Set: `{ url: https://…, refresh: 10m }` or `{ file: path }`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwksSpec {
    /// `http://` or `https://` URL, fetched in the background.
    #[serde(default)]
    pub url: Option<String>,
    /// A local file (re-read at every refresh).
    #[serde(default)]
    pub file: Option<String>,
    /// How often the keys are fetched again. Default 10m.
    #[serde(default)]
    pub refresh: Option<HumanDuration>,
    /// Least time between two fetches caused by tokens naming a key the set
    /// does not have (rotation without waiting for `refresh`). Default 10s.
    #[serde(default)]
    pub unknown_kid_cooldown: Option<HumanDuration>,
    /// Longest wait for one fetch. Default 5s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}
