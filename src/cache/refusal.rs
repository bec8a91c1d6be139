//! The common refusals to store, decided without Pingora's full
//! `Cache-Control` parse: a `no-store` or `private` response, and a
//! response to a credentialed request that does not allow storing it.
//!
//! Pingora's parser runs a regex and builds a map per response (~5,000
//! instructions, `benches/load/instructions.sh`); an uncacheable response
//! on a cached route paid it on every request, because Pingora asks
//! `response_cache_filter` again even for keys its predictor already
//! bypasses (to learn when they turn cacheable). This scan reads only the
//! directive names, and answers only for strictly well-formed fields
//! (RFC 9110 §5.6: tokens, `=token` or `="quoted"`, commas); anything else
//! (a `;`, an unterminated quote, a non-ASCII byte) returns `None` and the
//! full parse decides, so both always agree: `policy.rs` calls this first
//! and falls through to the same checks.

use http::header::GetAll;
use http::HeaderValue;

/// What the scan found, with Pingora's semantics: a later duplicate
/// replaces an earlier one (its map insert), `private` refuses only
/// without field names, the others count with or without a value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Directives {
    /// `no-store`.
    pub no_store: bool,
    /// `private` without field names (as last given).
    pub private: bool,
    /// `public`, `must-revalidate` or `s-maxage`: storing a response to a
    /// request with `Authorization` is allowed (RFC 9111 §3.5).
    pub allows_authorized: bool,
}

/// Scans every line of a `Cache-Control`-style field; `None` when a line
/// is not strictly well-formed.
pub fn scan(lines: GetAll<'_, HeaderValue>) -> Option<Directives> {
    let mut found = Directives::default();
    let (mut public, mut must_revalidate, mut s_maxage) = (false, false, false);
    for line in lines {
        let mut rest = line.as_bytes();
        loop {
            rest = rest.trim_ascii_start();
            let name_len = rest.iter().take_while(|b| is_tchar(**b)).count();
            if name_len == 0 {
                return None; // empty element, or a byte that is no token
            }
            let (name, after) = rest.split_at(name_len);
            let (has_value, after) = match after.split_first() {
                Some((b'=', value)) => (true, skip_value(value)?),
                _ => (false, after),
            };
            if name.eq_ignore_ascii_case(b"no-store") {
                found.no_store = true;
            } else if name.eq_ignore_ascii_case(b"private") {
                found.private = !has_value;
            } else if name.eq_ignore_ascii_case(b"public") {
                public = true;
            } else if name.eq_ignore_ascii_case(b"must-revalidate") {
                must_revalidate = true;
            } else if name.eq_ignore_ascii_case(b"s-maxage") {
                s_maxage = true;
            }
            rest = after.trim_ascii_start();
            match rest.split_first() {
                None => break,
                Some((b',', next)) => rest = next,
                Some(_) => return None,
            }
        }
    }
    found.allows_authorized = public || must_revalidate || s_maxage;
    Some(found)
}

/// Past a directive's value (a token or a quoted string); `None` when it
/// is neither.
fn skip_value(value: &[u8]) -> Option<&[u8]> {
    if let Some(quoted) = value.strip_prefix(b"\"") {
        let mut i = 0;
        while i < quoted.len() {
            match quoted[i] {
                b'"' => return Some(&quoted[i + 1..]),
                b'\\' => i += 2,
                b if b < 0x20 || b == 0x7f || !b.is_ascii() => return None,
                _ => i += 1,
            }
        }
        return None; // unterminated
    }
    let len = value.iter().take_while(|b| is_tchar(**b)).count();
    (len > 0).then(|| &value[len..])
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
    use proptest::prelude::*;

    fn scan_of(lines: &[&str]) -> Option<Directives> {
        let mut headers = http::HeaderMap::new();
        for line in lines {
            headers.append(
                http::header::CACHE_CONTROL,
                HeaderValue::from_str(line).expect("value"),
            );
        }
        scan(headers.get_all(http::header::CACHE_CONTROL))
    }

    /// What Pingora's parser says about the same lines, and whether it
    /// refuses to store them.
    fn pingora_of(lines: &[&str]) -> (Directives, bool) {
        let mut resp = pingora::http::ResponseHeader::build(200, None).expect("resp");
        for line in lines {
            resp.append_header("cache-control", *line).expect("value");
        }
        let cc = CacheControl::from_resp_headers(&resp).expect("parsed");
        let directives = Directives {
            no_store: cc.no_store(),
            private: cc.private(),
            allows_authorized: cc.allow_caching_authorized_req(),
        };
        (directives, cc.is_cacheable() == Cacheable::No)
    }

    #[test]
    fn the_refusing_directives_are_found() {
        let d = scan_of(&["No-Store"]).expect("well-formed");
        assert!(d.no_store && !d.private && !d.allows_authorized);
        let d = scan_of(&["public, max-age=60", "private"]).expect("well-formed");
        assert!(d.private && d.allows_authorized);
        // Field names: the rest of the response may be stored.
        let d = scan_of(&[r#"private="set-cookie, x-a", s-maxage=5"#]).expect("well-formed");
        assert!(!d.private && d.allows_authorized);
        // A directive name inside a quoted value is no directive.
        let d = scan_of(&[r#"community="no-store, private""#]).expect("well-formed");
        assert_eq!(d, Directives::default());
    }

    #[test]
    fn anything_not_strictly_well_formed_is_left_to_the_full_parse() {
        for lines in [
            &["no-store;"][..],
            &["a=\"unterminated, no-store"],
            &["max-age=60,,public"],
            &[", no-store"],
            &["no store"],
            &["max-age="],
            &["no-store", ""],
        ] {
            assert_eq!(scan_of(lines), None, "{lines:?}");
        }
    }

    fn directive() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("no-store"),
            Just("NO-STORE"),
            Just("private"),
            Just("Private"),
            Just("public"),
            Just("must-revalidate"),
            Just("s-maxage"),
            Just("max-age"),
            Just("no-cache"),
            Just("x-ext"),
        ];
        let value = prop_oneof![
            Just(String::new()),
            Just("=60".to_owned()),
            Just("=tok".to_owned()),
            Just(r#"="no-store, private""#.to_owned()),
            Just(r#"="a\"b""#.to_owned()),
        ];
        (name, value).prop_map(|(n, v)| format!("{n}{v}"))
    }

    proptest! {
        /// Wherever the scan answers, it answers as Pingora's parser does.
        #[test]
        fn agrees_with_pingoras_parser(
            lines in prop::collection::vec(
                (prop::collection::vec(directive(), 1..5), prop_oneof![Just(","), Just(", "), Just(" ,  ")])
                    .prop_map(|(ds, sep)| ds.join(sep)),
                1..3,
            )
        ) {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let scanned = scan_of(&lines).expect("generated lines are well-formed");
            let (parsed, refused) = pingora_of(&lines);
            prop_assert_eq!(scanned, parsed);
            prop_assert_eq!(scanned.no_store || scanned.private, refused);
        }
    }
}
