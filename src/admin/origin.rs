//! Admin POST endpoints change state (reload, purge), so a page in the
//! operator's browser must not be able to call them — the browser would
//! attach the Basic credentials it keeps for the status page. Two checks,
//! each enough on its own against a cross-site form or `fetch`:
//! - the body must be declared `application/json`: a cross-site page can
//!   only send that type after a CORS preflight, which the admin listener
//!   never answers;
//! - an `Origin` (or `Sec-Fetch-Site`) that is not the admin listener's own
//!   is refused.
//!
//! Tools (`curl --json`, scripts, `tollgate`'s own tests) send neither
//! header, or the right type.

use http::header::{CONTENT_TYPE, HOST, ORIGIN};
use pingora::http::RequestHeader;

/// Why an admin POST is refused before its token is even looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossSite {
    /// Not `Content-Type: application/json` (415).
    NotJson,
    /// Sent by a page of another origin (403).
    ForeignOrigin,
}

impl CrossSite {
    /// The client-facing message.
    pub fn message(self) -> &'static str {
        match self {
            CrossSite::NotJson => "Admin POST bodies must be Content-Type: application/json",
            CrossSite::ForeignOrigin => "Admin POST requests from another origin are refused",
        }
    }
}

/// Checks an admin POST; `Err` says why it is refused.
pub fn check(req: &RequestHeader) -> Result<(), CrossSite> {
    let json = req
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(CrossSite::NotJson);
    }
    if req
        .headers
        .get("sec-fetch-site")
        .is_some_and(|v| !matches!(v.as_bytes(), b"same-origin" | b"none"))
    {
        return Err(CrossSite::ForeignOrigin);
    }
    if let Some(origin) = req.headers.get(ORIGIN) {
        let host = req
            .headers
            .get(HOST)
            .map(|h| h.as_bytes())
            .unwrap_or_default();
        let own = origin
            .as_bytes()
            .strip_prefix(b"http://")
            .or_else(|| origin.as_bytes().strip_prefix(b"https://"))
            .is_some_and(|authority| !host.is_empty() && authority.eq_ignore_ascii_case(host));
        if !own {
            return Err(CrossSite::ForeignOrigin);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/cache/purge", None).expect("req");
        for (n, v) in headers {
            r.insert_header(n.to_string(), *v).expect("hdr");
        }
        r
    }

    #[test]
    fn only_same_origin_json_is_accepted() {
        let json = ("content-type", "application/json");
        let host = ("host", "127.0.0.1:9090");
        assert_eq!(check(&post(&[json, host])), Ok(()));
        assert_eq!(
            check(&post(&[
                ("content-type", "Application/JSON; charset=utf-8"),
                host
            ])),
            Ok(())
        );
        assert_eq!(
            check(&post(&[json, host, ("origin", "http://127.0.0.1:9090")])),
            Ok(())
        );
        for form in [
            "application/x-www-form-urlencoded",
            "text/plain",
            "multipart/form-data",
        ] {
            assert_eq!(
                check(&post(&[("content-type", form), host])),
                Err(CrossSite::NotJson)
            );
        }
        assert_eq!(check(&post(&[host])), Err(CrossSite::NotJson));
        for (name, value) in [
            ("origin", "https://evil.example"),
            ("origin", "null"),
            ("origin", "http://127.0.0.1:9091"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            assert_eq!(
                check(&post(&[json, host, (name, value)])),
                Err(CrossSite::ForeignOrigin),
                "{name}: {value}"
            );
        }
    }
}
