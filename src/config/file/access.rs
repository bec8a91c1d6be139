//! The YAML's access-policy blocks a route (and a tenant) may carry: who
//! may call it by network (`addresses`), and which browser origins may
//! read it (`cors`).

use super::*;

/// `addresses`: client networks allowed and denied; the most specific
/// listed network containing the client's address decides, and with an
/// `allow` list an unlisted address is refused.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressesSpec {
    /// Networks (`10.0.0.0/8`, `2001:db8::/32`) or addresses admitted.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Networks or addresses refused.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `cors`: which origins may read the route's answers from a browser.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    /// `https://app.example.com`, `https://*.example.com` (subdomains), or
    /// `"*"` (any origin, not with credentials).
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for. Default `[GET, HEAD, POST]`.
    #[serde(default)]
    pub allow_methods: Option<Vec<String>>,
    /// Request fields a preflight may ask for. Default: any it asks for.
    #[serde(default)]
    pub allow_headers: Option<Vec<String>>,
    /// Answer fields scripts may read besides the CORS-safelisted ones.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Let browsers send cookies and credentials, and read the answers.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may remember a preflight's answer. Default: the
    /// browser's own (5 s in Chromium).
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
}
