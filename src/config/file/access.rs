//! The YAML's access-policy blocks a route (and a tenant) may carry: who
//! may call it by network (`addresses`), and which browser origins may
//! read it (`cors`), which auth service decides (`forward_auth`); and a
//! TLS listener's client certificates.

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

/// `listen[].tls.client_certificates`: mutual TLS on a listener.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificatesSpec {
    /// PEM bundle of the CAs whose client certificates are accepted.
    pub ca: String,
    /// PEM file of certificate revocation lists, one from each CA that
    /// issues client certificates; revoked certificates are refused.
    #[serde(default)]
    pub crl: Option<String>,
    /// `require` (default): no handshake without a valid certificate;
    /// `request`: a client may come without one (an invalid one is still
    /// refused).
    #[serde(default)]
    pub mode: ClientCertificateModeSpec,
}

/// `listen[].tls.client_certificates.mode`.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificateModeSpec {
    /// Every client presents a valid certificate.
    #[default]
    Require,
    /// A client may present none.
    Request,
}

/// `routes[].forward_auth`: an auth service asked before proxying.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthSpec {
    /// The upstream pool of the auth service.
    pub upstream: String,
    /// Path (and query) asked on the auth service with GET. Default `/`.
    #[serde(default)]
    pub path: Option<String>,
    /// Request fields sent to it, besides `X-Forwarded-Method`, `-Uri`,
    /// `-Host`, `-Proto`, `-For` and `X-Request-Id`. Default
    /// `[authorization, cookie]`.
    #[serde(default)]
    pub request_fields: Option<Vec<String>>,
    /// Fields of an admitting (2xx) answer copied into the upstream
    /// request; a client's own copies are removed.
    #[serde(default)]
    pub upstream_fields: Vec<String>,
    /// Field of an admitting answer that names the tenant (one listed
    /// under `tenants`), whose tier then applies.
    #[serde(default)]
    pub tenant_field: Option<String>,
    /// Longest wait for the answer. Default 2s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Largest answer body read (a refusal's body is returned to the
    /// client). Default 64KiB.
    #[serde(default)]
    pub max_answer_size: Option<crate::config::units::ByteSize>,
    /// How long a decision is remembered. Default 0s: every request asks.
    #[serde(default)]
    pub cache_ttl: Option<HumanDuration>,
    /// What a remembered decision is for: `request` (default: the
    /// credential fields, method, host and URI) or `credential` (the
    /// `request_fields` alone, when the answer does not depend on what is
    /// asked for).
    #[serde(default)]
    pub cache_key: ForwardAuthCacheKeySpec,
    /// Most decisions remembered. Default 10000.
    #[serde(default)]
    pub cache_size: Option<usize>,
    /// Admit requests (without a tenant or fields) when the auth service
    /// fails: unreachable, too slow, a 5xx or an oversized answer.
    /// Default false: 503 `auth_unavailable`.
    #[serde(default)]
    pub fail_open: bool,
}

/// `routes[].forward_auth.cache_key`.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ForwardAuthCacheKeySpec {
    /// The credential fields, the method, the host and the URI.
    #[default]
    Request,
    /// The credential fields only.
    Credential,
}
