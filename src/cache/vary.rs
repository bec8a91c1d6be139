//! `Vary` (RFC 9111 §4.1): the request header fields a stored response
//! lists in `Vary` select which stored variant answers a request. Pingora
//! keeps variants apart by a variance hash on top of the primary key; this
//! builds that hash from the request's values of the listed fields.
//! `Vary: *` never gets here: such responses are not stored (`policy`).

use pingora::cache::key::HashBinary;
use pingora::cache::{CacheMeta, VarianceBuilder};
use pingora::http::RequestHeader;

/// The variance of `req` for a stored response's `Vary`, `None` when the
/// response varies on nothing. Per listed field, the request's value is
/// every line of it combined in order (§4.1: "combining all of the field
/// lines"), compared as bytes — a value that is not ASCII is still a
/// value — and an absent field matches only an absent one.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut variance = VarianceBuilder::new();
    for value in meta.headers().get_all(http::header::VARY) {
        for name in value.as_bytes().split(|b| *b == b',') {
            let Ok(name) = http::HeaderName::from_bytes(name.trim_ascii()) else {
                // Empty, or not a field name: no request can carry it.
                continue;
            };
            variance.add_owned_name_value(name.to_string(), combined(req, &name));
        }
    }
    variance.finalize()
}

/// Every line of `name` in `req`, joined by `", "`, after a `=` that tells
/// a present field (even an empty one) from an absent one.
fn combined(req: &RequestHeader, name: &http::HeaderName) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, line) in req.headers.get_all(name).iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"=" } else { b", " });
        out.extend_from_slice(line.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;
    use std::time::SystemTime;

    fn meta(vary: Option<&str>) -> CacheMeta {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        if let Some(v) = vary {
            resp.insert_header("vary", v).expect("vary");
        }
        let now = SystemTime::now();
        CacheMeta::new(now, now, 0, 0, resp)
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("req");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("hdr");
        }
        r
    }

    /// §4.1: field lines are combined before comparing; an absent field
    /// matches only an absent one; bytes outside ASCII are a value.
    #[test]
    fn repeated_lines_are_combined_and_absent_is_not_empty() {
        let m = meta(Some("X-Tenant"));
        let two_lines = variance(&m, &req(&[("x-tenant", "a"), ("x-tenant", "b")]));
        let one_line = variance(&m, &req(&[("x-tenant", "a, b")]));
        let first_only = variance(&m, &req(&[("x-tenant", "a")]));
        assert_eq!(two_lines, one_line);
        assert_ne!(two_lines, first_only);
        assert_ne!(
            variance(&m, &req(&[])),
            variance(&m, &req(&[("x-tenant", "")]))
        );
        let mut latin1 = RequestHeader::build("GET", b"/", None).expect("req");
        let value = http::HeaderValue::from_bytes(b"caf\xe9").expect("obs-text");
        latin1.insert_header("x-tenant", value).expect("hdr");
        assert_ne!(variance(&m, &latin1), variance(&m, &req(&[])));
    }

    #[test]
    fn a_listed_name_that_is_not_ascii_does_not_hide_the_others() {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        let vary = http::HeaderValue::from_bytes(b"\xff, Accept-Language").expect("vary");
        resp.insert_header("vary", vary).expect("vary");
        let now = SystemTime::now();
        let m = CacheMeta::new(now, now, 0, 0, resp);
        assert_ne!(
            variance(&m, &req(&[("accept-language", "en")])),
            variance(&m, &req(&[("accept-language", "fr")]))
        );
    }

    #[test]
    fn no_vary_means_no_variance() {
        assert_eq!(variance(&meta(None), &req(&[("accept", "x")])), None);
    }

    #[test]
    fn listed_fields_select_the_variant_and_others_do_not() {
        let m = meta(Some("Accept-Language, accept"));
        let en = variance(&m, &req(&[("accept-language", "en")]));
        let fr = variance(&m, &req(&[("accept-language", "fr")]));
        let en_again = variance(&m, &req(&[("accept-language", "en"), ("x-other", "1")]));
        assert!(en.is_some());
        assert_ne!(en, fr);
        assert_eq!(en, en_again);
    }

    #[test]
    fn names_are_case_insensitive() {
        let upper = variance(
            &meta(Some("ACCEPT-LANGUAGE")),
            &req(&[("accept-language", "en")]),
        );
        let lower = variance(
            &meta(Some("accept-language")),
            &req(&[("accept-language", "en")]),
        );
        assert_eq!(upper, lower);
    }
}
