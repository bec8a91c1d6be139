//! A route's CORS policy (Fetch standard, "CORS protocol"): which origins
//! may read its answers from a browser, with which methods, request
//! fields and credentials, which answer fields they may see, and how long
//! a preflight may be remembered.
//!
//! tollgate answers preflights itself and adds the CORS fields to every
//! answer of the route (proxied, cached, its own errors) per request, from
//! the request's own `Origin`: the stored response holds none of them, so
//! one origin's answer is never served to another, and `Vary: Origin`
//! tells caches after tollgate the same. An origin the policy does not
//! allow gets no CORS fields at all (the browser then refuses the read),
//! never an error page.

use http::{HeaderName, HeaderValue, Method};

/// Who may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// Any origin (`*`); not with credentials.
    Any,
    /// These origins exactly (`https://app.example.com`), and every
    /// subdomain of these (`https://*.example.com` → `.example.com` with
    /// its scheme).
    Listed {
        /// Exact origins, lowercase.
        exact: Vec<String>,
        /// `(scheme://, .suffix[:port])` of wildcard entries.
        subdomains: Vec<(String, String)>,
    },
}

/// The compiled `cors` block of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    /// Who may read.
    pub origins: Origins,
    /// Methods a preflight may ask for.
    pub methods: Vec<Method>,
    /// `Access-Control-Allow-Methods` as sent.
    pub methods_field: HeaderValue,
    /// Request fields a preflight may ask for (lowercase); `None`: any.
    pub request_headers: Option<Vec<HeaderName>>,
    /// `Access-Control-Expose-Headers`, when some are exposed.
    pub expose_field: Option<HeaderValue>,
    /// `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
    /// `Access-Control-Max-Age`, seconds.
    pub max_age: Option<u64>,
}

/// Why a `cors` entry cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsProblem(pub String);

/// One CORS response field: a static, title-cased name (Pingora copies a
/// `HeaderName` it cannot title-case into an allocation per write) and
/// its value.
pub type CorsField = (&'static str, HeaderValue);

/// The CORS fields tollgate writes (and removes from upstream answers on
/// a route with a policy: the route's policy is the one clients see).
pub const CORS_FIELDS: [&str; 6] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
];

/// Reads one `allow_origins` entry: `*`, `scheme://host[:port]`, or
/// `scheme://*.domain[:port]`.
pub fn parse_origin(entry: &str) -> Result<OriginEntry, CorsProblem> {
    if entry == "*" {
        return Ok(OriginEntry::Any);
    }
    let lower = entry.to_ascii_lowercase();
    let bad = || {
        CorsProblem(format!(
            "{entry:?} is not an origin (write https://app.example.com, https://*.example.com or \"*\")"
        ))
    };
    let (scheme, rest) = lower.split_once("://").ok_or_else(bad)?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '?', '#', '@'])
    {
        return Err(bad());
    }
    if let Some(domain) = rest.strip_prefix("*.") {
        if domain.is_empty() || domain.contains('*') {
            return Err(bad());
        }
        return Ok(OriginEntry::Subdomains(
            format!("{scheme}://"),
            format!(".{domain}"),
        ));
    }
    if rest.contains('*') {
        return Err(bad());
    }
    Ok(OriginEntry::Exact(format!("{scheme}://{rest}")))
}

/// One `allow_origins` entry, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginEntry {
    /// `*`.
    Any,
    /// One origin.
    Exact(String),
    /// Every subdomain: scheme and `.suffix`.
    Subdomains(String, String),
}

impl Origins {
    /// The origins of `entries` (`*` anywhere makes it `Any`).
    pub fn of(entries: Vec<OriginEntry>) -> Self {
        let mut exact = Vec::new();
        let mut subdomains = Vec::new();
        for entry in entries {
            match entry {
                OriginEntry::Any => return Origins::Any,
                OriginEntry::Exact(o) => exact.push(o),
                OriginEntry::Subdomains(scheme, suffix) => subdomains.push((scheme, suffix)),
            }
        }
        Origins::Listed { exact, subdomains }
    }

    /// Whether `origin` (the request's `Origin` value) may read.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Origins::Any => true,
            Origins::Listed { exact, subdomains } => {
                // Origins are ASCII and compared case-insensitively in
                // their scheme and host (RFC 6454 §4).
                exact.iter().any(|o| o.eq_ignore_ascii_case(origin))
                    || subdomains.iter().any(|(scheme, suffix)| {
                        let o = origin.to_ascii_lowercase();
                        o.strip_prefix(scheme.as_str()).is_some_and(|host| {
                            host.len() > suffix.len()
                                && host.ends_with(suffix.as_str())
                                && !host[..host.len() - suffix.len()].contains(['/', ':', '@'])
                        })
                    })
            }
        }
    }
}

/// What a preflight asked for.
pub struct Preflight<'a> {
    /// `Origin`.
    pub origin: &'a HeaderValue,
    /// `Access-Control-Request-Method`.
    pub method: &'a HeaderValue,
    /// `Access-Control-Request-Headers` (comma-separated), if any.
    pub headers: Option<&'a HeaderValue>,
}

impl CorsPolicy {
    /// The fields answering `preflight`, or `None` when the policy does
    /// not allow it (the answer then carries no CORS fields).
    pub fn preflight(&self, preflight: &Preflight<'_>) -> Option<Vec<CorsField>> {
        let origin = preflight.origin.to_str().ok()?;
        if !self.origins.allows(origin) {
            return None;
        }
        let method = Method::from_bytes(preflight.method.as_bytes()).ok()?;
        if !self.methods.contains(&method) {
            return None;
        }
        let requested: Vec<&str> = preflight
            .headers
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(allowed) = &self.request_headers {
            let all_allowed = requested
                .iter()
                .all(|h| allowed.iter().any(|a| a.as_str().eq_ignore_ascii_case(h)));
            if !all_allowed {
                return None;
            }
        }
        let mut fields = self.origin_fields(preflight.origin);
        fields.push(("Access-Control-Allow-Methods", self.methods_field.clone()));
        if let Some(headers) = preflight.headers.filter(|_| !requested.is_empty()) {
            // What was asked, once allowed (a list of names the client
            // chose; echoing it is what `*` cannot do with credentials).
            fields.push(("Access-Control-Allow-Headers", headers.clone()));
        }
        if let Some(age) = self.max_age {
            fields.push(("Access-Control-Max-Age", HeaderValue::from(age)));
        }
        Some(fields)
    }

    /// The fields for an answer to a request from `origin`, or nothing
    /// when it may not read.
    pub fn response_fields(&self, origin: Option<&HeaderValue>) -> Vec<CorsField> {
        let Some(origin) = origin.filter(|o| o.to_str().is_ok_and(|o| self.origins.allows(o)))
        else {
            return Vec::new();
        };
        let mut fields = self.origin_fields(origin);
        if let Some(expose) = &self.expose_field {
            fields.push(("Access-Control-Expose-Headers", expose.clone()));
        }
        fields
    }

    /// `Access-Control-Allow-Origin` (`*` only for any origin without
    /// credentials; else the request's origin) and the credentials flag.
    fn origin_fields(&self, origin: &HeaderValue) -> Vec<CorsField> {
        let allow = match (&self.origins, self.credentials) {
            (Origins::Any, false) => HeaderValue::from_static("*"),
            _ => origin.clone(),
        };
        let mut fields = vec![("Access-Control-Allow-Origin", allow)];
        if self.credentials {
            fields.push((
                "Access-Control-Allow-Credentials",
                HeaderValue::from_static("true"),
            ));
        }
        fields
    }

    /// Whether answers depend on the request's `Origin` (and so need
    /// `Vary: Origin`): always, but for any origin without credentials,
    /// whose answer is the same `*` for everyone.
    pub fn varies_on_origin(&self) -> bool {
        !matches!((&self.origins, self.credentials), (Origins::Any, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
        CorsPolicy {
            origins: Origins::of(
                origins
                    .iter()
                    .map(|o| parse_origin(o).expect("origin"))
                    .collect(),
            ),
            methods: vec![Method::GET, Method::POST],
            methods_field: HeaderValue::from_static("GET, POST"),
            request_headers: Some(vec![HeaderName::from_static("content-type")]),
            expose_field: Some(HeaderValue::from_static("x-request-id")),
            credentials,
            max_age: Some(600),
        }
    }

    fn v(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn origins_match_exactly_or_as_subdomains() {
        let p = policy(&["https://app.example.com", "https://*.example.org"], false);
        assert!(p.origins.allows("https://app.example.com"));
        assert!(p.origins.allows("HTTPS://APP.EXAMPLE.COM"));
        assert!(
            !p.origins.allows("http://app.example.com"),
            "scheme matters"
        );
        assert!(!p.origins.allows("https://app.example.com.evil.net"));
        assert!(!p.origins.allows("https://app.example.com:8443"));
        assert!(p.origins.allows("https://a.b.example.org"));
        assert!(
            !p.origins.allows("https://example.org"),
            "the apex is not a subdomain"
        );
        assert!(!p.origins.allows("https://evilexample.org"));
        assert!(!p.origins.allows("null"));
    }

    #[test]
    fn a_preflight_is_answered_only_within_the_policy() {
        let p = policy(&["https://app.example.com"], true);
        let ok = Preflight {
            origin: &v("https://app.example.com"),
            method: &v("POST"),
            headers: Some(&v("Content-Type")),
        };
        let fields = p.preflight(&ok).expect("allowed");
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("access-control-allow-origin"),
            Some(v("https://app.example.com"))
        );
        assert_eq!(get("access-control-allow-credentials"), Some(v("true")));
        assert_eq!(get("access-control-allow-methods"), Some(v("GET, POST")));
        assert_eq!(get("access-control-max-age"), Some(v("600")));
        for refused in [
            Preflight {
                origin: &v("https://evil.example"),
                ..ok
            },
            Preflight {
                method: &v("DELETE"),
                ..ok
            },
            Preflight {
                headers: Some(&v("content-type, x-secret")),
                ..ok
            },
        ] {
            assert!(p.preflight(&refused).is_none());
        }
    }

    #[test]
    fn answers_carry_fields_only_for_allowed_origins() {
        let any = policy(&["*"], false);
        let fields = any.response_fields(Some(&v("https://x.test")));
        assert_eq!(fields[0].1, v("*"));
        assert!(!any.varies_on_origin());
        let listed = policy(&["https://app.example.com"], false);
        assert!(listed
            .response_fields(Some(&v("https://x.test")))
            .is_empty());
        assert!(listed.response_fields(None).is_empty());
        assert!(listed.varies_on_origin());
    }

    #[test]
    fn bad_origins_are_refused() {
        for bad in [
            "app.example.com",
            "ftp://x",
            "https://x/path",
            "https://*",
            "https://a.*.com",
            "https://",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
