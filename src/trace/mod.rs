//! OpenTelemetry traces: which requests are recorded and under which
//! trace (`context`, `sampler`), what the proxy records of each
//! (`recorder`), and how they leave the process (`otlp`, `exporter`).
//!
//! Off (no `tracing` section) a request carries no trace and its fields
//! pass through as any other; on, every request gets a trace context —
//! continued from a trusted caller's `traceparent` or new — which the
//! upstream receives, and only sampled requests record spans.

pub mod context;
pub mod exporter;
pub mod otlp;
pub mod recorder;
pub mod sampler;

use crate::config::model::{AcceptParent, TracingConfig};
use recorder::RequestTrace;
use std::time::Instant;

/// The trace of a request that arrived at `started` with `headers`, from
/// a peer that is a trusted proxy or not.
pub fn begin(
    config: &TracingConfig,
    headers: &http::HeaderMap,
    peer_trusted: bool,
    started: Instant,
) -> Box<RequestTrace> {
    let accepted = match config.accept_parent {
        AcceptParent::All => true,
        AcceptParent::TrustedProxies => peer_trusted,
        AcceptParent::None => false,
    };
    let parent = accepted.then(|| context::parent(headers)).flatten();
    let state = parent.and_then(|_| context::state(headers));
    let ratio = config.sample_ratio;
    Box::new(RequestTrace::new(started, parent, state, |parent, id| {
        sampler::sampled(parent, id, ratio)
    }))
}
