//! The YAML's `tracing` section: OpenTelemetry traces exported over OTLP.

use super::*;

/// `tracing`: OpenTelemetry traces (W3C Trace Context in, OTLP/HTTP
/// protobuf out). Off when the section is absent.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// The collector's OTLP/HTTP traces URL, e.g.
    /// `http://otel-collector:4318/v1/traces` (a URL without a path gets
    /// `/v1/traces`).
    pub endpoint: String,
    /// Share of new traces recorded, 0.0 to 1.0; a request continuing a
    /// trace follows its parent's decision. Default 0.01.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    /// Whose `traceparent` is continued: `all` clients,
    /// `trusted_proxies` (default: `server.trusted_proxies` only) or
    /// `none`; others start a new trace.
    #[serde(default)]
    pub accept_parent: Option<AcceptParentSpec>,
    /// `service.name` of the spans. Default `tollgate`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// More resource attributes (e.g. `deployment.environment: prod`).
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// Fields sent with every export (e.g. a collector's API key).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Fields sent with every export whose value is read from an
    /// environment variable (field → variable), for secrets.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// Finished requests waiting for export; past it, new ones are
    /// dropped and counted. Default 2048.
    #[serde(default)]
    pub queue_size: Option<usize>,
    /// Spans per export request at most. Default 512.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Longest wait before a partial batch is sent. Default 1s.
    #[serde(default)]
    pub batch_interval: Option<HumanDuration>,
    /// Longest time one export may take; a batch that fails is dropped
    /// and counted. Default 10s.
    #[serde(default)]
    pub export_timeout: Option<HumanDuration>,
}

/// `tracing.accept_parent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AcceptParentSpec {
    /// Every client's `traceparent` is continued.
    All,
    /// Only a trusted proxy's (`server.trusted_proxies`).
    TrustedProxies,
    /// Never: every request starts a trace.
    None,
}
