//! An OTLP/HTTP trace receiver for the tests: a test upstream that takes
//! `POST /v1/traces` and decodes each body with the OpenTelemetry
//! protocol's own generated types (`opentelemetry-proto`), so what
//! tollgate exports is read as a collector reads it.

use super::upstream::{reply, Action, Recorded, TestUpstream};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// A running receiver.
pub struct OtlpReceiver {
    /// The upstream that takes the exports.
    pub server: TestUpstream,
}

/// A span as received, with its resource's attributes.
#[derive(Debug, Clone)]
pub struct Received {
    /// The span.
    pub span: Span,
    /// `service.name` of its resource.
    pub service: String,
}

impl Received {
    /// The trace id in hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span id in hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent span id in hex (empty for a root).
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// An attribute as text (strings as they are, ints and bools printed).
    pub fn attr(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }

    /// The names of its events, in order.
    pub fn events(&self) -> Vec<String> {
        self.span.events.iter().map(|e| e.name.clone()).collect()
    }
}

/// `attributes[key]` as text.
pub fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The answer a collector gives to an accepted export: an empty
/// `ExportTraceServiceResponse`.
fn accepted() -> Action {
    reply(200, &[("content-type", "application/x-protobuf")], "")
}

impl OtlpReceiver {
    /// A receiver that accepts every export.
    pub fn start() -> Self {
        Self {
            server: TestUpstream::start(|_| accepted()),
        }
    }

    /// A receiver that takes exports and never answers until released (a
    /// hung collector).
    pub fn hung() -> Self {
        Self {
            server: TestUpstream::start(|_| match accepted() {
                Action::Reply(r) => Action::ReplyWhenReleased(r),
                other => other,
            }),
        }
    }

    /// The `tracing` block that exports here, with `more` YAML flow entries.
    pub fn config(&self, more: &str) -> String {
        format!(
            "tracing: {{ endpoint: \"http://{}/v1/traces\", batch_interval: 100ms{} }}\n",
            self.server.addr,
            if more.is_empty() {
                String::new()
            } else {
                format!(", {more}")
            }
        )
    }

    /// Every span received so far, decoded; panics on an export that is
    /// not a valid OTLP/HTTP protobuf request.
    pub fn spans(&self) -> Vec<Received> {
        self.server.recorded().iter().flat_map(decode).collect()
    }

    /// The spans of trace `trace_id` (hex).
    pub fn trace(&self, trace_id: &str) -> Vec<Received> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id() == trace_id)
            .collect()
    }
}

/// One export request's spans.
fn decode(export: &Recorded) -> Vec<Received> {
    assert_eq!(export.method, "POST");
    assert_eq!(export.path, "/v1/traces");
    assert_eq!(
        export.header("content-type"),
        Some("application/x-protobuf")
    );
    let request = ExportTraceServiceRequest::decode(export.body.as_slice())
        .expect("an OTLP ExportTraceServiceRequest");
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let service = attribute(&resource.attributes, "service.name").unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Received {
                    span,
                    service: service.clone(),
                });
            }
        }
    }
    out
}
