//! The request target's form (RFC 9112 §3.2). Pingora keeps any target it
//! cannot read as a path verbatim for the wire while its `Uri` says `/`
//! (pingora-http `parse_request_target`): a target such as `admin`,
//! `?x=1`, `foo:bar`, or one that is not UTF-8 would be routed, limited
//! and keyed as `/` and reach the upstream as sent. Only the four forms
//! the RFC defines are accepted, each with its method; an absolute-form
//! target is served as origin-form, its scheme checked against the
//! listener.

use pingora::http::RequestHeader;
use pingora::protocols::http::authority::{raw_target_authority, RawTargetAuthority};

/// How a request target is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `/path?query` (§3.2.1).
    Origin,
    /// `http://host/path?query` (§3.2.2): rewritten to origin-form before
    /// it is routed or forwarded.
    Absolute,
}

/// Why a target is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetProblem {
    /// None of the four forms, or a form used with the wrong method.
    NotAForm,
    /// Bytes that are not UTF-8: Pingora's `Uri` holds a lossy copy, the
    /// upstream would get the original.
    NotUtf8,
    /// An absolute-form target whose scheme is not the listener's.
    WrongScheme,
    /// `CONNECT` (authority-form): tollgate does not tunnel.
    Connect,
    /// `OPTIONS *` (asterisk-form): tollgate serves no server-wide OPTIONS.
    Asterisk,
}

impl TargetProblem {
    /// The client-facing message.
    pub fn message(self) -> &'static str {
        match self {
            TargetProblem::NotAForm => {
                "The request target must be a path starting with / (or an absolute http URL)"
            }
            TargetProblem::NotUtf8 => "The request target is not valid UTF-8",
            TargetProblem::WrongScheme => {
                "The absolute request target's scheme does not match the connection"
            }
            TargetProblem::Connect => "CONNECT is not supported",
            TargetProblem::Asterisk => "OPTIONS * is not supported",
        }
    }
}

/// The form of `req`'s target, arriving over TLS or not.
pub fn form(req: &RequestHeader, tls: bool) -> Result<Form, TargetProblem> {
    if req.method == http::Method::CONNECT {
        return Err(TargetProblem::Connect);
    }
    let raw = req.raw_path();
    if !req.raw_path_is_utf8() {
        return Err(TargetProblem::NotUtf8);
    }
    // HTTP/2 carries the target as `:scheme` + `:authority` + `:path`;
    // Pingora's `Uri` holds them, and the path must still be a path.
    if req.uri.scheme().is_some() {
        return match raw.first() {
            Some(b'/') => Ok(Form::Origin),
            _ => Err(TargetProblem::NotAForm),
        };
    }
    match raw.first() {
        Some(b'/') => return Ok(Form::Origin),
        _ if raw == b"*" => {
            return Err(if req.method == http::Method::OPTIONS {
                TargetProblem::Asterisk
            } else {
                TargetProblem::NotAForm
            })
        }
        _ => {}
    }
    match raw_target_authority(raw) {
        RawTargetAuthority::Absolute { scheme, .. } => {
            let expected: &[u8] = if tls { b"https" } else { b"http" };
            if scheme.eq_ignore_ascii_case(expected) {
                Ok(Form::Absolute)
            } else if scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")
            {
                Err(TargetProblem::WrongScheme)
            } else {
                Err(TargetProblem::NotAForm)
            }
        }
        RawTargetAuthority::None | RawTargetAuthority::AmbiguousAuthority => {
            Err(TargetProblem::NotAForm)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &[u8]) -> RequestHeader {
        RequestHeader::build(method, target, None).expect("req")
    }

    #[test]
    fn only_the_four_forms_with_their_methods_are_served() {
        assert_eq!(form(&req("GET", b"/a?b=1"), false), Ok(Form::Origin));
        assert_eq!(
            form(&req("GET", b"http://api.test/a"), false),
            Ok(Form::Absolute)
        );
        assert_eq!(
            form(&req("GET", b"HTTPS://api.test/a"), true),
            Ok(Form::Absolute)
        );
        assert_eq!(
            form(&req("GET", b"https://api.test/a"), false),
            Err(TargetProblem::WrongScheme)
        );
        assert_eq!(
            form(&req("GET", b"http://api.test/a"), true),
            Err(TargetProblem::WrongScheme)
        );
        for bad in [
            &b"admin"[..],
            b"?x=1",
            b"foo:bar",
            b"ftp://api.test/a",
            b"*",
        ] {
            assert_eq!(
                form(&req("GET", bad), false),
                Err(TargetProblem::NotAForm),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            form(&req("OPTIONS", b"*"), false),
            Err(TargetProblem::Asterisk)
        );
        assert_eq!(
            form(&req("CONNECT", b"api.test:443"), false),
            Err(TargetProblem::Connect)
        );
        assert_eq!(
            form(&req("GET", b"/caf\xe9"), false),
            Err(TargetProblem::NotUtf8)
        );
    }
}
