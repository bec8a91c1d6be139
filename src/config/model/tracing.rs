//! The validated `tracing` section: where spans go, which requests are
//! recorded, whose trace context is continued.

use crate::values::url::Url;
use http::{HeaderName, HeaderValue};
use std::time::Duration;

/// OpenTelemetry tracing, when the `tracing` section is present.
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL.
    pub endpoint: Url,
    /// Share of new traces recorded (0.0 to 1.0).
    pub sample_ratio: f64,
    /// Whose incoming `traceparent` is continued.
    pub accept_parent: AcceptParent,
    /// `service.name`.
    pub service_name: String,
    /// More resource attributes, in file order (sorted by key).
    pub resource: Vec<(String, String)>,
    /// Fields sent with every export (literal and from the environment).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Finished requests the export queue holds.
    pub queue_size: usize,
    /// Spans per export request at most.
    pub batch_size: usize,
    /// Longest wait before a partial batch is sent.
    pub batch_interval: Duration,
    /// Longest time one export may take.
    pub export_timeout: Duration,
}

/// Whose incoming trace context a request continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptParent {
    /// Every client's.
    All,
    /// Only a trusted proxy's (`server.trusted_proxies`).
    TrustedProxies,
    /// Nobody's: every request starts a trace.
    None,
}
