//! What a 304 does to a stored response (RFC 9111 §4.3.4, §3.2): every
//! header field it carries replaces the stored one, except the fields the
//! stored body depends on and `Content-Length`. Pingora's own merge copies
//! only `Cache-Control`, `Expires`, `ETag` and a few more, so a 304 that
//! brings a new `Last-Modified`, `Date`, `Content-Type` parameter or any
//! application header would leave the stored response out of date.

use pingora::http::ResponseHeader;

/// Fields a 304 may not change: the stored body's framing and coding
/// (§3.2), and `Vary` (Pingora keys the variant by the stored one).
const KEPT: [http::header::HeaderName; 5] = [
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_RANGE,
    http::header::VARY,
];

/// The stored header (as Pingora merged it) updated with every field of
/// the 304 (`not_modified`, hop-by-hop fields already removed).
pub fn updated_header(stored: &ResponseHeader, not_modified: &http::HeaderMap) -> ResponseHeader {
    let mut header = stored.clone();
    let mut replaced: Vec<&http::header::HeaderName> = Vec::new();
    for (name, value) in not_modified {
        if KEPT.contains(name) {
            continue;
        }
        if !replaced.contains(&name) {
            header.remove_header(name);
            replaced.push(name);
        }
        // Names and values came from a parsed response: appending cannot fail.
        let _ = header.append_header(name.clone(), value.clone());
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_304_replaces_every_field_it_carries_but_the_framing() {
        let mut stored = ResponseHeader::build(200, None).expect("resp");
        for (n, v) in [
            ("content-length", "5"),
            ("content-type", "application/json"),
            ("etag", "\"v1\""),
            ("x-version", "1"),
            ("x-kept", "yes"),
            ("link", "</a>"),
            ("link", "</b>"),
        ] {
            stored.append_header(n, v).expect("hdr");
        }
        let mut fresh = http::HeaderMap::new();
        for (n, v) in [
            ("content-length", "0"),
            ("etag", "\"v1\""),
            ("x-version", "2"),
            ("link", "</c>"),
            ("cache-control", "max-age=60"),
        ] {
            fresh.append(
                http::header::HeaderName::from_static(n),
                http::HeaderValue::from_static(v),
            );
        }
        let updated = updated_header(&stored, &fresh);
        assert_eq!(updated.headers["content-length"], "5", "framing stays");
        assert_eq!(updated.headers["x-version"], "2");
        assert_eq!(updated.headers["x-kept"], "yes");
        assert_eq!(updated.headers["cache-control"], "max-age=60");
        let links: Vec<_> = updated.headers.get_all("link").iter().collect();
        assert_eq!(links, ["</c>"]);
    }
}
