//! The YAML's access-policy blocks a route (and a tenant) may carry: who
//! may call it by network (`addresses`), and which browser origins may
//! read it (`cors`); and a TLS listener's client certificates.

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
