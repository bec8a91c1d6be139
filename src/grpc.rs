//! gRPC over HTTP/2 as an edge proxy meets it: which requests are gRPC
//! calls, the deadline a client sends (`grpc-timeout`), and tollgate's own
//! answers written as gRPC statuses.
//!
//! The wire format is the one in gRPC's `PROTOCOL-HTTP2.md`: a call is a
//! POST whose `Content-Type` is `application/grpc` (optionally `+proto`,
//! `+json`, …); its status travels in trailers, or — for an answer with no
//! messages — in the response header itself ("trailers-only"), with HTTP
//! status 200. A gRPC client reads an HTTP error status only as a vague
//! `UNAVAILABLE`/`UNKNOWN`, so a 429 from tollgate would lose its meaning;
//! written as `RESOURCE_EXHAUSTED` it keeps it.

use crate::errors::ErrorResponse;
use pingora::http::{RequestHeader, ResponseHeader};
use std::time::Duration;

/// `grpc-status` codes tollgate answers with (gRPC's `statuscodes.md`).
pub mod code {
    /// The call's arguments are wrong (a malformed request).
    pub const INVALID_ARGUMENT: u16 = 3;
    /// The deadline passed before the call finished.
    pub const DEADLINE_EXCEEDED: u16 = 4;
    /// Not allowed for this caller.
    pub const PERMISSION_DENIED: u16 = 7;
    /// A quota or size limit ran out (rate limit, message too large).
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    /// No such method here (no route).
    pub const UNIMPLEMENTED: u16 = 12;
    /// An internal error.
    pub const INTERNAL: u16 = 13;
    /// The service cannot be reached now; the caller may retry.
    pub const UNAVAILABLE: u16 = 14;
    /// No valid credentials.
    pub const UNAUTHENTICATED: u16 = 16;
    /// Anything else.
    pub const UNKNOWN: u16 = 2;
}

/// Whether `req` is a gRPC call: a POST (the only method gRPC uses, so
/// other requests cost no field lookup) with `Content-Type:
/// application/grpc`, alone or with a `+codec` suffix or parameters (not
/// `application/grpc-web`, which is HTTP/1-compatible and carries its
/// trailers in the body).
pub fn is_call(req: &RequestHeader) -> bool {
    req.method == http::Method::POST
        && req
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| is_grpc_type(v.as_bytes()))
}

/// Whether a `Content-Type` value is gRPC's.
pub fn is_grpc_type(value: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    value.len() >= GRPC.len()
        && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(value.get(GRPC.len()), None | Some(b'+' | b';' | b' '))
}

/// The client's deadline from `grpc-timeout` (`1*8DIGIT unit`, unit one
/// of `H M S m u n`); `None` when absent or malformed (a malformed value
/// is ignored, as gRPC servers do, and the route's own total applies).
pub fn timeout(req: &RequestHeader) -> Option<Duration> {
    parse_timeout(req.headers.get("grpc-timeout")?.as_bytes())
}

/// Parses a `grpc-timeout` value.
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n.checked_mul(3600)?),
        b'M' => Duration::from_secs(n.checked_mul(60)?),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status for one of tollgate's own HTTP answers.
pub fn status_for(http_status: u16) -> u16 {
    match http_status {
        400 | 414 => code::INVALID_ARGUMENT,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 | 405 => code::UNIMPLEMENTED,
        408 | 504 => code::DEADLINE_EXCEEDED,
        413 | 429 | 431 => code::RESOURCE_EXHAUSTED,
        500 => code::INTERNAL,
        502 | 503 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// tollgate's answer `err` as a gRPC trailers-only response: HTTP 200,
/// `grpc-status`, `grpc-message` (the JSON error's message,
/// percent-encoded as gRPC requires) and the error code in
/// `tollgate-error`, sent as one header block that ends the stream.
pub fn trailers_only(err: &ErrorResponse) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(200, Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    resp.insert_header("grpc-status", status_for(err.status).to_string())?;
    resp.insert_header("grpc-message", percent_encode(&err.message))?;
    resp.insert_header("tollgate-error", err.code)?;
    if let Some(challenge) = &err.challenge {
        resp.insert_header(http::header::WWW_AUTHENTICATE, challenge.as_ref())?;
    }
    Ok(resp)
}

/// The highest status code gRPC defines (`UNAUTHENTICATED`).
const LAST_CODE: u16 = 16;

/// The `grpc-status` a response header (or trailer block) carries. A code
/// gRPC does not define (above 16, or not a number) is `UNKNOWN`, as gRPC
/// clients read it: a backend cannot grow `tollgate_grpc_calls_total` by
/// one series per number it sends.
pub fn status_in(headers: &http::HeaderMap) -> Option<u16> {
    let value = headers.get("grpc-status")?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|text| text.parse::<u16>().ok())
        .filter(|code| *code <= LAST_CODE);
    Some(code.unwrap_or(code::UNKNOWN))
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_are_recognised_and_lookalikes_are_not() {
        for yes in [
            &b"application/grpc"[..],
            b"application/grpc+proto",
            b"Application/GRPC+json",
            b"application/grpc; charset=utf-8",
        ] {
            assert!(is_grpc_type(yes), "{:?}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"application/grpc-web"[..],
            b"application/grpc-web+proto",
            b"application/grpcx",
            b"application/json",
            b"application/grp",
            b"",
        ] {
            assert!(!is_grpc_type(no), "{:?}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn grpc_timeouts_parse_every_unit_and_refuse_malformed_values() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [
            &b""[..],
            b"S",
            b"10",
            b"10s",
            b"123456789S",
            b"-1S",
            b"1.5S",
            b" 1S",
        ] {
            assert_eq!(
                parse_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn statuses_outside_the_defined_codes_are_unknown() {
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-status", value.parse().expect("value"));
            status_in(&headers)
        };
        assert_eq!(with("0"), Some(0));
        assert_eq!(with("16"), Some(16));
        for wild in ["17", "65535", "99999999", "-1", "ok", ""] {
            assert_eq!(with(wild), Some(code::UNKNOWN), "{wild:?}");
        }
        assert_eq!(status_in(&http::HeaderMap::new()), None);
    }

    #[test]
    fn own_answers_map_to_the_documented_statuses() {
        assert_eq!(status_for(429), code::RESOURCE_EXHAUSTED);
        assert_eq!(status_for(401), code::UNAUTHENTICATED);
        assert_eq!(status_for(404), code::UNIMPLEMENTED);
        assert_eq!(status_for(504), code::DEADLINE_EXCEEDED);
        assert_eq!(status_for(502), code::UNAVAILABLE);
        assert_eq!(status_for(503), code::UNAVAILABLE);
        assert_eq!(status_for(413), code::RESOURCE_EXHAUSTED);
        assert_eq!(status_for(400), code::INVALID_ARGUMENT);
        assert_eq!(status_for(418), code::UNKNOWN);
    }

    #[test]
    fn a_trailers_only_answer_carries_status_and_an_encoded_message() {
        let err = ErrorResponse::no_route();
        let resp = trailers_only(&err).expect("header");
        assert_eq!(resp.status, 200);
        assert_eq!(status_in(&resp.headers), Some(code::UNIMPLEMENTED));
        assert_eq!(percent_encode("50% off\né"), "50%25 off%0A%C3%A9");
    }
}
