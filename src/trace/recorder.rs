//! One request's trace as the proxy records it: the server span's ids and
//! its caller, and — only when the request is sampled — the child spans
//! the phases add (identity, rate limit, cache tiers, upstream attempts,
//! compression). Times are `Instant`s; the export thread turns them into
//! Unix times from the one wall-clock reading taken when the request
//! arrived.

use super::context::{self, Parent, SpanId, TraceId};
use http::HeaderValue;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// What a span is to the request (OpenTelemetry's `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Work inside tollgate (identity, rate limit, cache, compression).
    Internal,
    /// The request tollgate serves.
    Server,
    /// A request tollgate makes (an upstream attempt, a Redis lookup).
    Client,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(Cow<'static, str>),
    /// An integer.
    Int(i64),
    /// A flag.
    Bool(bool),
}

impl From<&'static str> for Value {
    fn from(v: &'static str) -> Self {
        Value::Str(Cow::Borrowed(v))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(Cow::Owned(v))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// A span's attribute: an OpenTelemetry semantic-convention name, or a
/// `tollgate.*` one.
pub type Attribute = (&'static str, Value);

/// A finished (or, for an upstream attempt, open) span.
#[derive(Debug, Clone)]
pub struct Span {
    /// Its id.
    pub id: SpanId,
    /// Its parent's id (the server span, or an attempt for its events).
    pub parent: SpanId,
    /// What it measured.
    pub name: Cow<'static, str>,
    /// Its kind.
    pub kind: Kind,
    /// When it began.
    pub start: Instant,
    /// When it ended.
    pub end: Instant,
    /// What it found.
    pub attributes: Vec<Attribute>,
    /// Moments inside it (an attempt's `connected`, `first_byte`).
    pub events: Vec<(&'static str, Instant)>,
    /// Why it failed, when it did (the span's status is then `ERROR`).
    pub error: Option<String>,
}

/// A cache tier's lookup for a sampled request, recorded by the storage
/// Pingora calls (which sees the cache key, not the request): the tier,
/// when it began and ended, whether it found an entry.
#[derive(Debug, Clone, Copy)]
pub struct TierLookup {
    /// `memory` or `redis`.
    pub tier: &'static str,
    /// When the lookup began.
    pub start: Instant,
    /// When it answered.
    pub end: Instant,
    /// Whether it found an entry.
    pub found: bool,
}

/// Where the cache's storage records a sampled request's tier lookups:
/// carried in the cache key's extensions (only for sampled requests) and
/// read into spans when the request ends.
#[derive(Debug, Clone, Default)]
pub struct TierTap(Arc<Mutex<Vec<TierLookup>>>);

impl TierTap {
    /// Records a lookup of `tier` that began at `start` and just answered.
    pub fn record(&self, tier: &'static str, start: Instant, found: bool) {
        let lookup = TierLookup {
            tier,
            start,
            end: Instant::now(),
            found,
        };
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(lookup);
    }

    /// The lookups recorded so far, in order.
    pub fn take(&self) -> Vec<TierLookup> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// One request's trace context and, when sampled, its spans.
#[derive(Debug)]
pub struct RequestTrace {
    /// The trace: the caller's, or new.
    pub trace_id: TraceId,
    /// tollgate's server span.
    pub span_id: SpanId,
    /// The caller's span, when a trusted caller sent a valid `traceparent`.
    pub parent: Option<SpanId>,
    /// Whether this request is recorded (and exported).
    pub sampled: bool,
    /// The caller's `tracestate`, passed on unchanged.
    pub tracestate: Option<HeaderValue>,
    /// When the request arrived (the server span's start).
    pub started: Instant,
    /// The wall clock at `started`, read when a sampled request ends
    /// (an unsampled one never reads the clock).
    pub wall_start: SystemTime,
    /// The server span's name and attributes, set when the request ends.
    pub server_name: Cow<'static, str>,
    /// The server span's attributes.
    pub attributes: Vec<Attribute>,
    /// The server span's error, when the answer was a 5xx.
    pub error: Option<String>,
    /// When the request ended.
    pub ended: Option<Instant>,
    /// The child spans, in the order they ended (attempts when they began).
    pub children: Vec<Span>,
    /// The upstream attempt under way: an index into `children`.
    attempt: Option<usize>,
    /// When the first and the last response-body chunk passed tollgate's
    /// body filter (the compression span begins at the first).
    pub body: Option<(Instant, Instant)>,
    /// `Content-Encoding` before the compression module saw the response.
    pub encoding_before: Option<HeaderValue>,
    /// The cache storage's tier lookups, when the request got that far.
    pub tiers: Option<TierTap>,
}

impl RequestTrace {
    /// The trace of a request that arrived at `started`: continuing
    /// `parent` when there is one, else a new trace; `sampled` decided
    /// by the caller (`sampler`).
    pub fn new(
        started: Instant,
        parent: Option<Parent>,
        tracestate: Option<HeaderValue>,
        sample: impl FnOnce(Option<&Parent>, &TraceId) -> bool,
    ) -> Self {
        let trace_id = parent.map_or_else(context::new_trace_id, |p| p.trace_id);
        let sampled = sample(parent.as_ref(), &trace_id);
        Self {
            trace_id,
            span_id: context::new_span_id(),
            parent: parent.map(|p| p.span_id),
            sampled,
            tracestate: parent.and(tracestate),
            started,
            wall_start: SystemTime::UNIX_EPOCH,
            server_name: Cow::Borrowed(""),
            attributes: Vec::new(),
            error: None,
            ended: None,
            children: Vec::new(),
            attempt: None,
            body: None,
            encoding_before: None,
            tiers: None,
        }
    }

    /// Records a finished child of the server span, from `start` to now;
    /// `attributes` is only called when the request is sampled.
    pub fn span(
        &mut self,
        name: &'static str,
        kind: Kind,
        start: Instant,
        attributes: impl FnOnce() -> Vec<Attribute>,
    ) {
        // Unsampled: no id drawn (this runs for every request traced at all).
        if self.sampled {
            self.span_as(context::new_span_id(), name, kind, start, attributes);
        }
    }

    /// [`Self::span`] under an id chosen before it began: one a request
    /// the span made (to an auth service) already named as its parent.
    pub fn span_as(
        &mut self,
        id: SpanId,
        name: &'static str,
        kind: Kind,
        start: Instant,
        attributes: impl FnOnce() -> Vec<Attribute>,
    ) {
        if !self.sampled {
            return;
        }
        let span = Span {
            id,
            parent: self.span_id,
            name: Cow::Borrowed(name),
            kind,
            start,
            end: Instant::now(),
            attributes: attributes(),
            events: Vec::new(),
            error: None,
        };
        self.children.push(span);
    }

    /// An upstream attempt begins (a backend was chosen); the one before
    /// it, if still open, ends here.
    pub fn attempt_started(&mut self, attributes: impl FnOnce() -> Vec<Attribute>) {
        if !self.sampled {
            return;
        }
        self.attempt_ended(None, Vec::new);
        let now = Instant::now();
        self.children.push(Span {
            id: context::new_span_id(),
            parent: self.span_id,
            name: Cow::Borrowed("upstream attempt"),
            kind: Kind::Client,
            start: now,
            end: now,
            attributes: attributes(),
            events: Vec::new(),
            error: None,
        });
        self.attempt = Some(self.children.len() - 1);
    }

    /// A moment in the attempt under way (`connected`, `first_byte`).
    pub fn attempt_event(&mut self, name: &'static str, more: impl FnOnce() -> Vec<Attribute>) {
        if let Some(span) = self.attempt.and_then(|i| self.children.get_mut(i)) {
            span.events.push((name, Instant::now()));
            span.attributes.extend(more());
        }
    }

    /// The attempt under way ended: complete, or failed with `error`.
    pub fn attempt_ended(&mut self, error: Option<String>, more: impl FnOnce() -> Vec<Attribute>) {
        if let Some(span) = self.attempt.take().and_then(|i| self.children.get_mut(i)) {
            span.end = Instant::now();
            span.error = error;
            span.attributes.extend(more());
        }
    }

    /// A response-body chunk passed (the compression span's bounds).
    pub fn body_chunk(&mut self) {
        if !self.sampled {
            return;
        }
        let now = Instant::now();
        self.body = Some(self.body.map_or((now, now), |(first, _)| (first, now)));
    }

    /// The `traceparent` the upstream gets: the attempt under way as its
    /// parent when recorded, else the server span.
    pub fn upstream_traceparent(&self) -> HeaderValue {
        let span = self
            .attempt
            .and_then(|i| self.children.get(i))
            .map_or(&self.span_id, |s| &s.id);
        context::traceparent(&self.trace_id, span, self.sampled)
    }

    /// A tap for the cache storage's lookups, when the request is sampled
    /// (one per request: a second call returns the same).
    pub fn tier_tap(&mut self) -> Option<TierTap> {
        if !self.sampled {
            return None;
        }
        Some(self.tiers.get_or_insert_with(TierTap::default).clone())
    }

    /// Records the spans the request's end completes: an attempt still
    /// open, the storage's tier lookups.
    pub fn close(&mut self) {
        self.attempt_ended(None, Vec::new);
        let lookups = self.tiers.as_ref().map(TierTap::take).unwrap_or_default();
        for lookup in lookups {
            self.children.push(Span {
                id: context::new_span_id(),
                parent: self.span_id,
                name: Cow::Borrowed("cache lookup"),
                kind: if lookup.tier == "redis" {
                    Kind::Client
                } else {
                    Kind::Internal
                },
                start: lookup.start,
                end: lookup.end,
                attributes: vec![
                    ("tollgate.cache.tier", lookup.tier.into()),
                    (
                        "tollgate.cache.result",
                        if lookup.found { "hit" } else { "miss" }.into(),
                    ),
                ],
                events: Vec::new(),
                error: None,
            });
        }
        let ended = Instant::now();
        let now = SystemTime::now();
        self.wall_start = now
            .checked_sub(ended.saturating_duration_since(self.started))
            .unwrap_or(now);
        self.ended = Some(ended);
    }

    /// The trace id in lowercase hex, for the access line (no allocation:
    /// it is written on every request while tracing is on).
    pub fn trace_id_hex(&self) -> [u8; 32] {
        let mut text = [0u8; 32];
        context::lower_hex(&self.trace_id, &mut text);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(sampled: bool) -> RequestTrace {
        RequestTrace::new(Instant::now(), None, None, |_, _| sampled)
    }

    #[test]
    fn an_unsampled_request_records_nothing() {
        let mut t = trace(false);
        t.span("identity", Kind::Internal, Instant::now(), || {
            unreachable!("attributes are not built for an unsampled request")
        });
        t.attempt_started(Vec::new);
        t.attempt_event("connected", Vec::new);
        t.body_chunk();
        assert!(t.children.is_empty());
        assert!(t.body.is_none());
        // Its context still travels: the server span is the upstream's parent.
        let header = t.upstream_traceparent();
        assert!(header
            .to_str()
            .expect("text")
            .ends_with(&format!("{}-00", hex::encode(t.span_id))));
    }

    #[test]
    fn attempts_nest_under_the_server_span_and_parent_the_upstream() {
        let mut t = trace(true);
        t.attempt_started(|| vec![("server.address", "10.0.0.1".into())]);
        t.attempt_event("connected", Vec::new);
        let first = t.children[0].id;
        assert!(t
            .upstream_traceparent()
            .to_str()
            .expect("text")
            .contains(&hex::encode(first)));
        t.attempt_ended(Some("connection refused".into()), Vec::new);
        t.attempt_started(Vec::new);
        t.attempt_ended(None, Vec::new);
        assert_eq!(t.children.len(), 2);
        assert!(t.children.iter().all(|s| s.parent == t.span_id));
        assert_eq!(t.children[0].error.as_deref(), Some("connection refused"));
        assert_eq!(t.children[0].events.len(), 1);
        assert_eq!(t.children[1].error, None);
    }

    #[test]
    fn a_continued_trace_keeps_its_id_and_state() {
        let parent = Parent {
            trace_id: [7; 16],
            span_id: [9; 8],
            sampled: true,
        };
        let state = HeaderValue::from_static("vendor=x");
        let t = RequestTrace::new(Instant::now(), Some(parent), Some(state.clone()), |p, _| {
            p.is_some_and(|p| p.sampled)
        });
        assert_eq!(t.trace_id, [7; 16]);
        assert_eq!(t.parent, Some([9; 8]));
        assert_eq!(t.tracestate, Some(state));
        assert!(t.sampled);
        assert_ne!(t.span_id, [9; 8]);
    }
}
