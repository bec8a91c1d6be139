//! Finished traces as an OTLP `ExportTraceServiceRequest` in protobuf
//! (opentelemetry-proto `collector/trace/v1`, `trace/v1`, `common/v1`,
//! `resource/v1`), the body of an OTLP/HTTP export.
//!
//! Written here rather than through `opentelemetry-otlp`/`prost`: the
//! spans are tollgate's own records (no SDK span objects), only these few
//! messages are ever written, and the encoder is the whole dependency.
//! The test suite decodes what it writes with the official generated
//! types (`opentelemetry-proto`), so the two cannot drift apart.

use super::recorder::{Kind, RequestTrace, Span, Value};
use std::time::{Instant, UNIX_EPOCH};

/// Who exports: the resource every span belongs to.
pub struct Resource<'a> {
    /// `service.name`.
    pub service_name: &'a str,
    /// `service.instance.id`: this process.
    pub instance: &'a str,
    /// Further attributes from the config.
    pub attributes: &'a [(String, String)],
}

/// The instrumentation scope's name on every span.
const SCOPE: &str = "tollgate";

/// `ExportTraceServiceRequest` holding `traces`.
pub fn export_request(resource: &Resource<'_>, traces: &[Box<RequestTrace>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + traces.len() * 512);
    // resource_spans = 1
    message(&mut out, 1, |rs| {
        // resource = 1
        message(rs, 1, |r| {
            key_value(
                r,
                1,
                "service.name",
                &Value::from(resource.service_name.to_owned()),
            );
            key_value(
                r,
                1,
                "service.instance.id",
                &Value::from(resource.instance.to_owned()),
            );
            key_value(
                r,
                1,
                "service.version",
                &Value::from(env!("CARGO_PKG_VERSION")),
            );
            key_value(r, 1, "telemetry.sdk.name", &Value::from("tollgate"));
            for (k, v) in resource.attributes {
                let key: &str = k;
                message(r, 1, |kv| {
                    string(kv, 1, key);
                    message(kv, 2, |any| string(any, 1, v));
                });
            }
        });
        // scope_spans = 2
        message(rs, 2, |ss| {
            message(ss, 1, |scope| {
                string(scope, 1, SCOPE);
                string(scope, 2, env!("CARGO_PKG_VERSION"));
            });
            for trace in traces {
                let clock = Clock::of(trace);
                server_span(ss, trace, &clock);
                for child in &trace.children {
                    child_span(ss, trace, child, &clock);
                }
            }
        });
    });
    out
}

/// Unix nanoseconds of a request's `Instant`s.
struct Clock {
    base: Instant,
    base_unix: u64,
}

impl Clock {
    fn of(trace: &RequestTrace) -> Self {
        let base_unix = trace
            .wall_start
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Self {
            base: trace.started,
            base_unix,
        }
    }

    fn unix(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base).as_nanos() as u64;
        self.base_unix.saturating_add(since)
    }
}

/// `Span.flags`: the W3C flags (sampled), and whether the parent is remote.
fn flags(remote_parent: Option<bool>) -> u32 {
    const SAMPLED: u32 = 0x01;
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    match remote_parent {
        Some(true) => SAMPLED | HAS_IS_REMOTE | IS_REMOTE,
        Some(false) => SAMPLED | HAS_IS_REMOTE,
        None => SAMPLED,
    }
}

fn server_span(out: &mut Vec<u8>, trace: &RequestTrace, clock: &Clock) {
    let end = trace.ended.unwrap_or_else(Instant::now);
    message(out, 2, |s| {
        bytes(s, 1, &trace.trace_id);
        bytes(s, 2, &trace.span_id);
        if let Some(state) = &trace.tracestate {
            string(s, 3, &String::from_utf8_lossy(state.as_bytes()));
        }
        if let Some(parent) = &trace.parent {
            bytes(s, 4, parent);
        }
        string(s, 5, &trace.server_name);
        varint_field(s, 6, kind(Kind::Server));
        fixed64(s, 7, clock.unix(trace.started));
        fixed64(s, 8, clock.unix(end));
        for (k, v) in &trace.attributes {
            key_value(s, 9, k, v);
        }
        status(s, trace.error.as_deref());
        fixed32(s, 16, flags(Some(trace.parent.is_some())));
    });
}

fn child_span(out: &mut Vec<u8>, trace: &RequestTrace, span: &Span, clock: &Clock) {
    message(out, 2, |s| {
        bytes(s, 1, &trace.trace_id);
        bytes(s, 2, &span.id);
        bytes(s, 4, &span.parent);
        string(s, 5, &span.name);
        varint_field(s, 6, kind(span.kind));
        fixed64(s, 7, clock.unix(span.start));
        fixed64(s, 8, clock.unix(span.end));
        for (k, v) in &span.attributes {
            key_value(s, 9, k, v);
        }
        for (name, at) in &span.events {
            // events = 11: time_unix_nano = 1, name = 2
            message(s, 11, |e| {
                fixed64(e, 1, clock.unix(*at));
                string(e, 2, name);
            });
        }
        status(s, span.error.as_deref());
        fixed32(s, 16, flags(Some(false)));
    });
}

/// `Span.status` = 15: `STATUS_CODE_ERROR` (2) with its message; unset
/// (no field) otherwise.
fn status(out: &mut Vec<u8>, error: Option<&str>) {
    if let Some(message_text) = error {
        message(out, 15, |st| {
            string(st, 2, message_text);
            varint_field(st, 3, 2);
        });
    }
}

fn kind(kind: Kind) -> u64 {
    match kind {
        Kind::Internal => 1,
        Kind::Server => 2,
        Kind::Client => 3,
    }
}

/// A `KeyValue` in field `field`: key = 1, value = 2 (`AnyValue`:
/// string_value = 1, bool_value = 2, int_value = 3).
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message(out, field, |kv| {
        string(kv, 1, key);
        message(kv, 2, |any| match value {
            Value::Str(text) => string(any, 1, text),
            Value::Bool(flag) => varint_field(any, 2, u64::from(*flag)),
            Value::Int(n) => varint_field(any, 3, *n as u64),
        });
    });
}

// Protobuf wire format: tag = field << 3 | wire type (0 varint, 1 fixed64,
// 2 length-delimited, 5 fixed32).

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire));
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 0);
    varint(out, v);
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    tag(out, field, 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    bytes(out, field, s.as_bytes());
}

/// A length-delimited submessage written by `body`.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    body(&mut inner);
    bytes(out, field, &inner);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_groups_of_seven() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
        out.clear();
        // A negative int64 is ten bytes, as protobuf writes it.
        varint(&mut out, (-1i64) as u64);
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn a_request_becomes_server_and_child_spans() {
        let mut t = RequestTrace::new(Instant::now(), None, None, |_, _| true);
        t.span("identity", Kind::Internal, Instant::now(), Vec::new);
        t.ended = Some(Instant::now());
        let resource = Resource {
            service_name: "tollgate",
            instance: "i-1",
            attributes: &[],
        };
        let body = export_request(&resource, &[Box::new(t)]);
        // Field 1 (resource_spans), length-delimited.
        assert_eq!(body[0], 0x0a);
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("identity") && text.contains("service.name"));
    }
}
