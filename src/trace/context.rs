//! W3C Trace Context (Level 1): the `traceparent` a request arrives with,
//! the `tracestate` that travels with it, and the `traceparent` written
//! to the upstream.
//!
//! Read as the recommendation says a receiver must: lowercase hex only,
//! neither id all zeros, version `ff` refused, a higher version read by
//! its version-00 prefix (and a `-` after it); repeated `traceparent`
//! fields are no context at all.

use http::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` passed on; the recommendation lets a vendor
/// discard one it cannot keep whole (512 characters is its floor).
const MAX_TRACESTATE: usize = 512;
/// Most list members of a `tracestate`.
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A trace's id: 16 bytes, never all zero.
pub type TraceId = [u8; 16];
/// A span's id: 8 bytes, never all zero.
pub type SpanId = [u8; 8];

/// The caller's span, as its `traceparent` named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// The trace the request belongs to.
    pub trace_id: TraceId,
    /// The caller's span: the parent of tollgate's server span.
    pub span_id: SpanId,
    /// The caller recorded its span (flag `01`).
    pub sampled: bool,
}

/// Reads the request's `traceparent`; `None` when absent, repeated or
/// malformed (the request then starts a trace).
pub fn parent(headers: &HeaderMap) -> Option<Parent> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse(value.as_bytes())
}

/// `version-traceid-parentid-flags`, as version 00 defines it.
fn parse(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    match version {
        0xff => return None,
        0 if v.len() != 55 => return None,
        // A later version: only its version-00 prefix is read.
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    for (i, b) in span_id.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// Two lowercase hex digits.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

/// The request's `tracestate`, its fields joined as one list, when it is
/// within the bounds tollgate passes on (at most 32 members and 512
/// characters); otherwise none.
pub fn state(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut fields = headers.get_all(TRACESTATE).iter();
    let first = fields.next()?;
    let rest: Vec<&HeaderValue> = fields.collect();
    let joined = if rest.is_empty() {
        first.clone()
    } else {
        let mut text = first.as_bytes().to_vec();
        for field in rest {
            text.push(b',');
            text.extend_from_slice(field.as_bytes());
        }
        HeaderValue::from_bytes(&text).ok()?
    };
    let members = joined
        .as_bytes()
        .split(|b| *b == b',')
        .filter(|m| m.iter().any(|b| !b.is_ascii_whitespace()))
        .count();
    let fits = joined.len() <= MAX_TRACESTATE && members <= MAX_TRACESTATE_MEMBERS;
    (fits && members > 0).then_some(joined)
}

/// The `traceparent` to send on: version 00, this trace, `span` as the
/// parent of whatever the upstream records.
pub fn traceparent(trace_id: &TraceId, span: &SpanId, sampled: bool) -> HeaderValue {
    let mut text = [0u8; 55];
    text[..3].copy_from_slice(b"00-");
    lower_hex(trace_id, &mut text[3..35]);
    text[35] = b'-';
    lower_hex(span, &mut text[36..52]);
    text[52] = b'-';
    text[53..].copy_from_slice(if sampled { b"01" } else { b"00" });
    // Hex digits and dashes are always a valid field value.
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `bytes` as lowercase hex into `out` (twice as long): on every proxied
/// request while tracing is on, so a table rather than a formatter.
pub fn lower_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// A new random trace id (not all zeros): one 128-bit draw.
pub fn new_trace_id() -> TraceId {
    loop {
        let id = rand::random::<u128>();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A new random span id (not all zeros): one 64-bit draw.
pub fn new_span_id() -> SpanId {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_parent_is_read() {
        let p = parent(&headers(&[(TRACEPARENT, GOOD)])).expect("parent");
        assert_eq!(hex::encode(p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(p.span_id), "00f067aa0ba902b7");
        assert!(p.sampled);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(
            !parent(&headers(&[(TRACEPARENT, &unsampled)]))
                .expect("p")
                .sampled
        );
        // Other flag bits do not make it sampled or invalid.
        let other = GOOD.replace("-01", "-02");
        assert!(
            !parent(&headers(&[(TRACEPARENT, &other)]))
                .expect("p")
                .sampled
        );
    }

    #[test]
    fn malformed_parents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01xyz",
        ] {
            assert_eq!(parent(&headers(&[(TRACEPARENT, bad)])), None, "{bad:?}");
        }
        assert_eq!(
            parent(&headers(&[(TRACEPARENT, GOOD), (TRACEPARENT, GOOD)])),
            None,
            "repeated"
        );
    }

    #[test]
    fn a_later_version_is_read_by_its_prefix() {
        let later = GOOD.replacen("00", "cc", 1) + "-what-comes-next";
        let p = parent(&headers(&[(TRACEPARENT, &later)])).expect("parent");
        assert!(p.sampled);
    }

    #[test]
    fn tracestate_is_joined_and_bounded() {
        let joined = state(&headers(&[(TRACESTATE, "a=1"), (TRACESTATE, "b=2")]));
        assert_eq!(joined.expect("state").to_str().ok(), Some("a=1,b=2"));
        let long = "k=".to_owned() + &"v".repeat(600);
        assert_eq!(state(&headers(&[(TRACESTATE, &long)])), None);
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(state(&headers(&[(TRACESTATE, &many)])), None);
        assert_eq!(state(&HeaderMap::new()), None);
    }

    #[test]
    fn the_written_traceparent_reads_back() {
        let trace_id = new_trace_id();
        let span = new_span_id();
        let value = traceparent(&trace_id, &span, true);
        let p = parse(value.as_bytes()).expect("reads back");
        assert_eq!((p.trace_id, p.span_id, p.sampled), (trace_id, span, true));
        let value = traceparent(&trace_id, &span, false);
        assert!(!parse(value.as_bytes()).expect("reads back").sampled);
    }
}
