//! Targeted cache-control fields (RFC 9213): `CDN-Cache-Control` and the
//! like are Dictionary structured fields (RFC 8941), not `Cache-Control`
//! syntax. §2.1: a field that is empty or fails to parse is ignored as a
//! whole ("as if the field were not present"), and a directive whose value
//! has another type than the one its definition implies (a `max-age` that
//! is a string or a decimal, a `no-store` that is not `?1`) is not
//! consumed — here the field is then ignored as a whole too, rather than
//! read one directive short. A valid field is rewritten in
//! `Cache-Control` syntax (parameters dropped) and read by Pingora's
//! `CacheControl`, like `Cache-Control` itself.

use pingora::cache::cache_control::CacheControl;
use pingora::http::ResponseHeader;
use sfv::{BareItem, ListEntry, Parser};
use std::fmt::Write as _;

/// Directives whose argument is delta-seconds: an sf-integer ≥ 0.
const INTEGER: [&str; 4] = [
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];
/// Directives without an argument: `?1` (a bare key).
const BOOLEAN: [&str; 7] = [
    "no-store",
    "must-revalidate",
    "proxy-revalidate",
    "public",
    "no-transform",
    "must-understand",
    "immutable",
];
/// Directives with an optional list of field names: `?1` or an sf-string.
const BOOLEAN_OR_STRING: [&str; 2] = ["no-cache", "private"];

/// The directives of the targeted field `name` in `resp`, or `None` when
/// it is absent, empty, not a valid Dictionary, or holds a directive of
/// the wrong type.
pub fn directives(resp: &ResponseHeader, name: &str) -> Option<CacheControl> {
    let mut lines = resp.headers.get_all(name).iter().peekable();
    lines.peek()?;
    // Lines combine into one Dictionary (RFC 8941 §4.2).
    let mut value = Vec::new();
    for (i, line) in lines.enumerate() {
        if i > 0 {
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(line.as_bytes());
    }
    let canonical = canonical(&value)?;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_str(&canonical).ok()?,
    );
    CacheControl::from_headers_named(http::header::CACHE_CONTROL.as_str(), &headers)
}

/// The field in `Cache-Control` syntax, when it is a valid, non-empty
/// Dictionary whose known directives all have their types.
fn canonical(value: &[u8]) -> Option<String> {
    let dictionary = Parser::parse_dictionary(value).ok()?;
    if dictionary.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (key, entry) in &dictionary {
        let known = INTEGER.contains(&key.as_str())
            || BOOLEAN.contains(&key.as_str())
            || BOOLEAN_OR_STRING.contains(&key.as_str());
        let item = match entry {
            ListEntry::Item(item) => &item.bare_item,
            ListEntry::InnerList(_) if known => return None,
            ListEntry::InnerList(_) => continue,
        };
        let directive = match item {
            BareItem::Integer(n) if INTEGER.contains(&key.as_str()) && *n >= 0 => {
                format!("{key}={n}")
            }
            BareItem::Boolean(true)
                if BOOLEAN.contains(&key.as_str()) || BOOLEAN_OR_STRING.contains(&key.as_str()) =>
            {
                key.clone()
            }
            BareItem::String(fields) if BOOLEAN_OR_STRING.contains(&key.as_str()) => {
                format!("{key}=\"{fields}\"")
            }
            _ if known => return None,
            // An extension directive: kept when its value reads the same
            // in `Cache-Control` syntax, skipped otherwise.
            BareItem::Boolean(true) => key.clone(),
            BareItem::Integer(n) => format!("{key}={n}"),
            BareItem::Token(t) => format!("{key}={t}"),
            _ => continue,
        };
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{directive}");
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_dictionaries_read_as_cache_control() {
        assert_eq!(canonical(b"max-age=60").as_deref(), Some("max-age=60"));
        assert_eq!(
            canonical(b"no-store, max-age=0;x=1").as_deref(),
            Some("no-store, max-age=0")
        );
        assert_eq!(
            canonical(b"private=\"set-cookie\", s-maxage=5").as_deref(),
            Some("private=\"set-cookie\", s-maxage=5")
        );
        assert_eq!(canonical(b"none").as_deref(), Some("none"));
    }

    /// RFC 9213 §2.1: parse errors, empty fields and directives of the
    /// wrong type make the whole field ignored.
    #[test]
    fn invalid_fields_and_wrongly_typed_directives_are_ignored_whole() {
        for bad in [
            &b""[..],
            b"max-age=\"60\"",
            b"max-age=60.0",
            b"max-age=-1",
            b"max-age=60, no-store=?0",
            b"no-store=1",
            b"max-age=abc",
            b"max-age=60,",
            b"max-age=60 max-age=1",
            b"MAX-AGE=60",
            b"public=(a b)",
            b"private=:aGk=:",
        ] {
            assert_eq!(canonical(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_parsed_field_answers_like_cache_control() {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.insert_header("cdn-cache-control", "max-age=600")
            .expect("hdr");
        let cc = directives(&resp, "cdn-cache-control").expect("valid");
        assert_eq!(cc.max_age().expect("parses"), Some(600));
        let mut bad = ResponseHeader::build(200, None).expect("resp");
        bad.insert_header("cdn-cache-control", "max-age=\"600\"")
            .expect("hdr");
        assert!(directives(&bad, "cdn-cache-control").is_none());
    }
}
