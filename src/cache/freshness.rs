//! RFC 9111 §4.2 arithmetic: how long a response stays fresh and how old
//! it already is when it arrives. Pure functions of the response header and
//! the time it arrived, so every rule has a unit test with its section.
//!
//! - Freshness lifetime (§4.2.1): `s-maxage`, else `max-age`, else
//!   `Expires` minus the response's own `Date`. An invalid value of any of
//!   them (`max-age=10a`, `Expires: 0`) means "already stale", as §4.2.1
//!   and §5.3 ask, not "use the default".
//! - Age (§4.2.3): `apparent_age = max(0, response_time - date_value)`,
//!   `corrected_age_value = age_value + response_delay`,
//!   `corrected_initial_age = max(apparent_age, corrected_age_value)`;
//!   resident time is added by measuring `Age` from `response_time -
//!   corrected_initial_age` (Pingora's epoch override).
//! - `Age` (§5.1) is delta-seconds: one value of digits only, saturating at
//!   2^31 (§1.2.2); anything else is "not available", i.e. 0 (§4.2.3).
//! - Heuristic freshness (§4.2.2): 10 % of the time since `Last-Modified`,
//!   at most a day, for the statuses §15.1 of RFC 9110 marks cacheable by
//!   default, when the response has no explicit freshness.
//! - HTTP-dates are accepted in all three formats RFC 9110 §5.6.7 requires
//!   recipients to read (IMF-fixdate, RFC 850, asctime).

use pingora::cache::cache_control::CacheControl;
use pingora::http::ResponseHeader;
use std::time::{Duration, SystemTime};

/// The largest delta-seconds value kept (RFC 9111 §1.2.2).
const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The share of the time since `Last-Modified` a heuristic lifetime gets.
const HEURISTIC_FRACTION: u32 = 10; // percent

/// The longest heuristic lifetime.
const HEURISTIC_MAX: Duration = Duration::from_secs(24 * 3600);

/// Statuses that are cacheable without explicit freshness (RFC 9110
/// §15.1; 206 left out: the store holds whole bodies).
pub const HEURISTICALLY_CACHEABLE: [u16; 11] =
    [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// A header's single HTTP-date, in any of the three formats.
pub fn http_date(resp: &ResponseHeader, name: http::header::HeaderName) -> Option<SystemTime> {
    let mut values = resp.headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()
}

/// The explicit freshness lifetime (§4.2.1), `None` when the response
/// gives none. `cc` is parsed from `Cache-Control` when `cc_field` names
/// it (a repeated directive is then checked on its lines), or from a
/// targeted field (`None`: a Dictionary, where a repeated key's last value
/// is the value, RFC 8941 §3.2). `response_time` stands in for a missing
/// or invalid `Date`.
pub fn explicit_lifetime(
    cc: Option<&CacheControl>,
    cc_field: Option<&str>,
    resp: &ResponseHeader,
    response_time: SystemTime,
) -> Option<Duration> {
    if let Some(cc) = cc {
        if cc.no_cache() {
            return Some(Duration::ZERO);
        }
        for (name, directive) in [("s-maxage", cc.s_maxage()), ("max-age", cc.max_age())] {
            match directive {
                // §4.2.1: the same directive twice with different values
                // is treated as stale (the RFC's other choice, "use the
                // first", is not what Pingora's parser keeps: the last).
                Ok(Some(_)) if cc_field.is_some_and(|field| conflicting(resp, field, name)) => {
                    return Some(Duration::ZERO)
                }
                Ok(Some(secs)) => return Some(Duration::from_secs(u64::from(secs))),
                Ok(None) => {}
                Err(_) => return Some(Duration::ZERO), // invalid: stale
            }
        }
    }
    if !resp.headers.contains_key(http::header::EXPIRES) {
        return None;
    }
    let Some(expires) = http_date(resp, http::header::EXPIRES) else {
        return Some(Duration::ZERO); // `Expires: 0` and friends: already expired
    };
    let date = http_date(resp, http::header::DATE).unwrap_or(response_time);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// Whether `directive` appears more than once in the field `field` with
/// different values (across all its lines).
fn conflicting(resp: &ResponseHeader, field: &str, directive: &str) -> bool {
    let mut seen: Option<&[u8]> = None;
    for line in resp.headers.get_all(field) {
        for part in line.as_bytes().split(|b| *b == b',') {
            let (name, value) = match part.iter().position(|b| *b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &b""[..]),
            };
            if !name.trim_ascii().eq_ignore_ascii_case(directive.as_bytes()) {
                continue;
            }
            let value = value.trim_ascii();
            match seen {
                Some(first) if first != value => return true,
                _ => seen = Some(value),
            }
        }
    }
    false
}

/// The heuristic lifetime (§4.2.2) of a response without explicit
/// freshness, when its status allows one and it has `Last-Modified`.
pub fn heuristic_lifetime(resp: &ResponseHeader, response_time: SystemTime) -> Option<Duration> {
    if !HEURISTICALLY_CACHEABLE.contains(&resp.status.as_u16()) {
        return None;
    }
    let modified = http_date(resp, http::header::LAST_MODIFIED)?;
    let date = http_date(resp, http::header::DATE).unwrap_or(response_time);
    let since = date.duration_since(modified).ok()?;
    Some((since * HEURISTIC_FRACTION / 100).min(HEURISTIC_MAX))
}

/// `Age` as delta-seconds (§5.1): a list (`7200, 0`, or two fields) is
/// read by its first member, as §5.1 says, so a response an upstream
/// cache says is old is not taken for fresh; 0 when absent or when that
/// member is not a non-negative integer.
pub fn age_value(resp: &ResponseHeader) -> u64 {
    let Some(value) = resp.headers.get(http::header::AGE) else {
        return 0;
    };
    let first = value.as_bytes().split(|b| *b == b',').next().unwrap_or(&[]);
    let bytes = first.trim_ascii();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    // Digits only: a parse can fail only by overflowing, which saturates.
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS))
}

/// How old the response already is when it arrives (§4.2.3).
pub fn corrected_initial_age(
    resp: &ResponseHeader,
    response_time: SystemTime,
    response_delay: Duration,
) -> Duration {
    let apparent = http_date(resp, http::header::DATE)
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    let corrected = Duration::from_secs(age_value(resp)).saturating_add(response_delay);
    apparent.max(corrected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).expect("resp");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("hdr");
        }
        r
    }

    fn lifetime(headers: &[(&str, &str)], now: SystemTime) -> Option<u64> {
        let r = resp(200, headers);
        let cc = CacheControl::from_resp_headers(&r);
        explicit_lifetime(cc.as_ref(), Some("cache-control"), &r, now).map(|d| d.as_secs())
    }

    fn at(date: &str) -> SystemTime {
        httpdate::parse_http_date(date).expect("date")
    }

    const NOW: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    /// §4.2.1: s-maxage, then max-age, then Expires − Date.
    #[test]
    fn lifetime_follows_the_rfc_order() {
        let now = at(NOW);
        assert_eq!(
            lifetime(&[("cache-control", "max-age=10, s-maxage=100")], now),
            Some(100)
        );
        assert_eq!(lifetime(&[("cache-control", "max-age=10")], now), Some(10));
        assert_eq!(
            lifetime(
                &[
                    ("date", "Sun, 06 Nov 1994 08:00:00 GMT"),
                    ("expires", "Sun, 06 Nov 1994 09:00:00 GMT")
                ],
                now
            ),
            Some(3600),
            "Expires counts from the response's Date, not from now"
        );
        assert_eq!(lifetime(&[], now), None);
    }

    /// §4.2.1, §5.3: invalid freshness information means stale.
    #[test]
    fn invalid_max_age_or_expires_means_already_stale() {
        let now = at(NOW);
        for cc in ["max-age=10a", "max-age=a10", "max-age=1.5", "s-maxage=-1"] {
            assert_eq!(lifetime(&[("cache-control", cc)], now), Some(0), "{cc}");
        }
        assert_eq!(lifetime(&[("expires", "0")], now), Some(0));
        for conflict in [
            &[("cache-control", "max-age=60, max-age=120")][..],
            &[
                ("cache-control", "max-age=60"),
                ("cache-control", "MAX-AGE=5"),
            ][..],
            &[("cache-control", "s-maxage=60, s-maxage=0")][..],
        ] {
            assert_eq!(lifetime(conflict, now), Some(0), "{conflict:?}");
        }
        assert_eq!(
            lifetime(&[("cache-control", "max-age=60, max-age=60")], now),
            Some(60),
            "the same value twice is no conflict"
        );
        assert_eq!(lifetime(&[("expires", "tomorrow")], now), Some(0));
        assert_eq!(
            lifetime(&[("cache-control", "no-cache, max-age=60")], now),
            Some(0)
        );
    }

    /// RFC 9110 §5.6.7: all three date formats are read.
    #[test]
    fn all_three_http_date_formats_are_read() {
        let now = at(NOW);
        for expires in [
            "Sun, 06 Nov 1994 09:49:37 GMT",
            "Sunday, 06-Nov-94 09:49:37 GMT",
            "Sun Nov  6 09:49:37 1994",
        ] {
            assert_eq!(
                lifetime(&[("date", NOW), ("expires", expires)], now),
                Some(3600),
                "{expires}"
            );
        }
    }

    /// §5.1, §1.2.2: delta-seconds, saturating, the first member of a
    /// list; anything else is absent.
    #[test]
    fn age_is_parsed_strictly() {
        assert_eq!(age_value(&resp(200, &[("age", "3600")])), 3600);
        assert_eq!(
            age_value(&resp(200, &[("age", "99999999999999999999")])),
            1 << 31
        );
        for bad in ["-1", "1.5", "abc", "10;x=1", "", ", 10", "1 0"] {
            assert_eq!(age_value(&resp(200, &[("age", bad)])), 0, "{bad:?}");
        }
        // A list is read by its first member (§5.1).
        assert_eq!(age_value(&resp(200, &[("age", "7200, 0")])), 7200);
        assert_eq!(age_value(&resp(200, &[("age", "10,x")])), 10);
        assert_eq!(age_value(&resp(200, &[("age", "1"), ("age", "2")])), 1);
    }

    /// §4.2.3: the older of the apparent age and Age + response delay.
    #[test]
    fn initial_age_counts_the_upstream_age_and_an_old_date() {
        let now = at(NOW);
        let delay = Duration::from_secs(2);
        let with_age = resp(200, &[("age", "3600"), ("date", NOW)]);
        assert_eq!(corrected_initial_age(&with_age, now, delay).as_secs(), 3602);
        let old_date = resp(200, &[("date", "Sun, 06 Nov 1994 08:39:37 GMT")]);
        assert_eq!(corrected_initial_age(&old_date, now, delay).as_secs(), 600);
        let future_date = resp(200, &[("date", "Sun, 06 Nov 1994 09:49:37 GMT")]);
        assert_eq!(
            corrected_initial_age(&future_date, now, Duration::ZERO).as_secs(),
            0
        );
    }

    /// §4.2.2: a tenth of the time since Last-Modified, capped, only for
    /// statuses cacheable by default.
    #[test]
    fn heuristic_lifetime_is_a_tenth_of_the_age_of_the_content() {
        let now = at(NOW);
        let r = resp(
            200,
            &[
                ("date", NOW),
                ("last-modified", "Sun, 06 Nov 1994 07:49:37 GMT"),
            ],
        );
        assert_eq!(heuristic_lifetime(&r, now), Some(Duration::from_secs(360)));
        let old = resp(
            200,
            &[
                ("date", NOW),
                ("last-modified", "Tue, 06 Nov 1984 07:49:37 GMT"),
            ],
        );
        assert_eq!(heuristic_lifetime(&old, now), Some(HEURISTIC_MAX));
        let not_default = resp(302, &[("last-modified", "Sun, 06 Nov 1994 07:49:37 GMT")]);
        assert_eq!(heuristic_lifetime(&not_default, now), None);
        assert_eq!(heuristic_lifetime(&resp(200, &[]), now), None);
    }
}
