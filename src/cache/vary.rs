//! `Vary` (RFC 9111 §4.1): the request header fields a stored response
//! lists in `Vary` select which stored variant answers a request. Pingora
//! keeps variants apart by a variance hash on top of the primary key; this
//! builds that hash from the request's values of the listed fields.
//! `Vary: *` never gets here: such responses are not stored (`policy`).

use pingora::cache::key::HashBinary;
use pingora::cache::{CacheMeta, VarianceBuilder};
use pingora::http::RequestHeader;

/// The variance of `req` for a stored response's `Vary`, `None` when the
/// response varies on nothing.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut variance = VarianceBuilder::new();
    for value in meta.headers().get_all(http::header::VARY) {
        for name in value.to_str().unwrap_or("").split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            let value = req
                .headers
                .get(name.as_str())
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            variance.add_owned_name_value(name, value);
        }
    }
    variance.finalize()
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
            r.insert_header(n.to_string(), *v).expect("hdr");
        }
        r
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
