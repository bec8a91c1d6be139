//! The one host normalisation: what the router matches, what the cache key
//! holds and what purges compare are all this function's output, so a
//! request can never be routed as one host and stored as another.
//!
//! Rules, for a `Host` header value or URI authority (`uri-host [":" port]`,
//! RFC 9110 §7.2, RFC 3986 §3.2.2):
//! - an IPv6 literal keeps its brackets (`[::1]:8080` → `[::1]`);
//! - otherwise a `:port` suffix is removed (the port must be digits, and may
//!   be empty, as RFC 3986 allows);
//! - one trailing dot (the absolute form, `example.com.`) is removed, not
//!   more: `example.com..` is not a host name;
//! - ASCII letters are lower-cased (host names are case-insensitive);
//! - the name must be 1–253 characters of letters, digits, `-`, `_` and
//!   non-empty dot-separated labels. Anything else — non-ASCII bytes (an
//!   unencoded IDN: only its `xn--` A-label form is a host name on the
//!   wire), spaces, `/`, `@`, percent-escapes — is not a host.

use std::fmt;

/// Longest host name (RFC 1035: 253 characters), plus room for brackets of
/// an IPv6 literal.
pub const MAX_HOST: usize = 256;

/// A normalised host, held inline: computed once per request without
/// allocating, then borrowed by the router, the cache key and invalidation.
#[derive(Clone, Copy)]
pub struct Host {
    buf: [u8; MAX_HOST],
    len: u16,
}

impl Host {
    /// Normalises a raw `Host` value; `None` when it is not a valid
    /// `uri-host[:port]` (see the module docs for the rules).
    pub fn parse(raw: &[u8]) -> Option<Host> {
        let name = if raw.first() == Some(&b'[') {
            let end = raw.iter().position(|&b| b == b']')?;
            let (literal, rest) = raw.split_at(end + 1);
            if !valid_port(rest) || !valid_ipv6_literal(literal) {
                return None;
            }
            literal
        } else {
            let (name, rest) = match raw.iter().position(|&b| b == b':') {
                Some(colon) => raw.split_at(colon),
                None => (raw, &[][..]),
            };
            let name = name.strip_suffix(b".").unwrap_or(name);
            if !valid_port(rest) || !valid_name(name) {
                return None;
            }
            name
        };
        let mut host = Host {
            buf: [0; MAX_HOST],
            len: u16::try_from(name.len()).ok()?,
        };
        let out = host.buf.get_mut(..name.len())?;
        out.copy_from_slice(name);
        out.make_ascii_lowercase();
        Some(host)
    }

    /// The normalised host of a request: its `Host` field, or the URI's
    /// authority when it has none (HTTP/2 `:authority`, absolute-form).
    /// `Ok(None)` only for an HTTP/1.0 request that names no host.
    ///
    /// Refused (RFC 9112 §3.2, RFC 9113 §8.3.1): more than one `Host`, a
    /// `Host` that is not `uri-host[:port]` (empty, `/`, spaces, ...), an
    /// HTTP/1.1 or later request with no host at all, and a `Host` that
    /// names another host than the request target's authority — the router
    /// and the upstream must not read two different hosts.
    pub fn of_request(req: &pingora::http::RequestHeader) -> Result<Option<Host>, HostProblem> {
        let mut fields = req.headers.get_all(http::header::HOST).iter();
        let field = fields.next();
        if fields.next().is_some() {
            return Err(HostProblem::Repeated);
        }
        let from_field = match field {
            Some(value) => Some(Host::parse(value.as_bytes()).ok_or(HostProblem::Invalid)?),
            None => None,
        };
        // HTTP/2 carries `:authority` in the URI; an HTTP/1 absolute-form
        // target keeps it in the raw target only (Pingora sets the upstream
        // `Host` from it, so the router must read the same bytes).
        use pingora::protocols::http::authority::{raw_target_authority, RawTargetAuthority};
        let target_authority = match req.uri.authority() {
            Some(authority) => Some(authority.as_str().as_bytes()),
            None => match raw_target_authority(req.raw_path()) {
                RawTargetAuthority::None => None,
                RawTargetAuthority::Absolute { authority, .. } => Some(authority),
                RawTargetAuthority::AmbiguousAuthority => return Err(HostProblem::Invalid),
            },
        };
        let from_target = match target_authority {
            Some(authority) => Some(Host::parse(authority).ok_or(HostProblem::Invalid)?),
            None => None,
        };
        match (from_field, from_target) {
            (Some(a), Some(b)) if a != b => Err(HostProblem::Conflicting),
            (Some(host), _) | (None, Some(host)) => Ok(Some(host)),
            (None, None) if req.version <= http::Version::HTTP_10 => Ok(None),
            (None, None) => Err(HostProblem::Missing),
        }
    }

    /// Normalises a `&str` (config files, admin requests).
    pub fn parse_str(raw: &str) -> Option<Host> {
        Host::parse(raw.as_bytes())
    }

    /// The normalised host.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever copied in (checked by `parse`).
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

/// Why a request's host was refused (each a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostProblem {
    /// HTTP/1.1 or later without `Host` or an authority.
    Missing,
    /// More than one `Host` field.
    Repeated,
    /// Not `uri-host[:port]`.
    Invalid,
    /// `Host` and the request target's authority disagree.
    Conflicting,
}

impl HostProblem {
    /// The client-facing message.
    pub fn message(self) -> &'static str {
        match self {
            HostProblem::Missing => "The request has no Host header",
            HostProblem::Repeated => "The request has more than one Host header",
            HostProblem::Invalid => "The Host header is not a valid host[:port]",
            HostProblem::Conflicting => {
                "The Host header and the request target name different hosts"
            }
        }
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for Host {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Host {}

/// `""` or `":" *DIGIT`.
fn valid_port(rest: &[u8]) -> bool {
    match rest.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// A DNS-style name or IPv4 address: non-empty labels of letters, digits,
/// `-` and `_`, at most 253 characters in all.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `[` IPv6 address (or IPvFuture, refused) `]`.
fn valid_ipv6_literal(literal: &[u8]) -> bool {
    let inner = &literal[1..literal.len() - 1];
    std::str::from_utf8(inner)
        .ok()
        .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
        .is_some()
}

/// A route's host condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `api.example.com`: this host only.
    Exact(String),
    /// `*.example.com`: any subdomain of `example.com`, not `example.com` itself.
    /// Holds the suffix with its leading dot (`.example.com`).
    Wildcard(String),
}

impl HostPattern {
    /// Parses `api.example.com` or `*.example.com`, normalised like a
    /// request's host so that the two compare as plain strings.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "invalid host {raw:?} (write a host name such as api.example.com, or *.example.com for its subdomains)"
            )
        };
        let trimmed = raw.trim();
        if let Some(rest) = trimmed.strip_prefix("*.") {
            let host = Host::parse_str(rest)
                .filter(|h| !h.as_str().starts_with('['))
                .ok_or_else(invalid)?;
            if rest.contains(':') {
                return Err(invalid());
            }
            return Ok(HostPattern::Wildcard(format!(".{}", host.as_str())));
        }
        if trimmed.contains(':') && !trimmed.starts_with('[') {
            return Err(invalid()); // a pattern names a host, not a port
        }
        Host::parse_str(trimmed)
            .map(|h| HostPattern::Exact(h.as_str().to_owned()))
            .ok_or_else(invalid)
    }

    /// Whether a normalised host matches this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => host == exact,
            HostPattern::Wildcard(suffix) => is_below(host, suffix),
        }
    }
}

/// Whether `host` is a subdomain of a wildcard's `suffix` (`.example.com`):
/// the wildcard rule, shared by the router and purges.
pub fn is_below(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len() && host.ends_with(suffix)
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Option<String> {
        Host::parse_str(raw).map(|h| h.as_str().to_owned())
    }

    #[test]
    fn case_port_and_one_trailing_dot_are_normalised() {
        assert_eq!(
            norm("API.Example.com:8080").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(norm("api.example.com.").as_deref(), Some("api.example.com"));
        assert_eq!(
            norm("api.example.com.:80").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(norm("api.example.com:").as_deref(), Some("api.example.com"));
        assert_eq!(norm("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(norm("[FE80::1]").as_deref(), Some("[fe80::1]"));
        assert_eq!(norm("10.0.0.1:80").as_deref(), Some("10.0.0.1"));
    }

    fn request(
        version: http::Version,
        target: &str,
        hosts: &[&str],
    ) -> pingora::http::RequestHeader {
        let mut req =
            pingora::http::RequestHeader::build("GET", target.as_bytes(), None).expect("req");
        req.set_version(version);
        for h in hosts {
            req.append_header("host", *h).expect("host");
        }
        req
    }

    #[test]
    fn a_request_names_exactly_one_valid_host() {
        use http::Version;
        let host = |v, target, hosts: &[&str]| {
            Host::of_request(&request(v, target, hosts)).map(|h| h.map(|h| h.as_str().to_owned()))
        };
        assert_eq!(
            host(Version::HTTP_11, "/", &["A.test:80"]),
            Ok(Some("a.test".into()))
        );
        assert_eq!(
            host(Version::HTTP_11, "http://a.test/x", &[]),
            Ok(Some("a.test".into()))
        );
        assert_eq!(
            host(Version::HTTP_11, "http://a.test/x", &["A.TEST"]),
            Ok(Some("a.test".into()))
        );
        assert_eq!(host(Version::HTTP_10, "/", &[]), Ok(None));
        assert_eq!(host(Version::HTTP_11, "/", &[]), Err(HostProblem::Missing));
        assert_eq!(
            host(Version::HTTP_11, "/", &["a.test", "a.test"]),
            Err(HostProblem::Repeated)
        );
        assert_eq!(
            host(Version::HTTP_11, "/", &["a.test/x"]),
            Err(HostProblem::Invalid)
        );
        assert_eq!(
            host(Version::HTTP_11, "/", &[""]),
            Err(HostProblem::Invalid)
        );
        assert_eq!(
            host(Version::HTTP_10, "/", &["a b"]),
            Err(HostProblem::Invalid)
        );
        assert_eq!(
            host(Version::HTTP_11, "http://a.test/x", &["b.test"]),
            Err(HostProblem::Conflicting)
        );
    }

    #[test]
    fn what_is_not_a_host_is_refused() {
        for bad in [
            "",
            ".",
            "api.example.com..",
            "a..b",
            "a b",
            "a/b",
            "a@b",
            "a%2eb",
            "bücher.example",
            "host:port",
            "host:80:80",
            "host:123456",
            "[::1",
            "[not-v6]",
            "[::1]x",
        ] {
            assert_eq!(norm(bad), None, "{bad:?}");
        }
        assert_eq!(norm(&"a".repeat(300)), None);
        assert_eq!(norm(&format!("{}.com", "a".repeat(64))), None);
    }

    #[test]
    fn host_patterns_are_validated_and_normalised() {
        assert_eq!(
            HostPattern::parse("*.Example.com"),
            Ok(HostPattern::Wildcard(".example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("API.example.com."),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        for bad in [
            "a*.example.com",
            "bad host",
            "",
            "api.example.com:80",
            "*.a:80",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let p = HostPattern::Wildcard(".example.com".into());
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("aexample.com"));
    }
}
