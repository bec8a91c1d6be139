//! Where a request's trace begins, what the upstream is told of it, the
//! spans of the steps (`steps` measures identity, rate limit and the
//! fresh-hit lookup and hands them here; `attempt` records upstream
//! attempts; the cache storage its tier lookups), and how it ends.
//! `trace` holds the context, sampler, recorder and exporter.

use super::client::{client_ip, peer_trusted};
use crate::auth::forward::TraceFields;
use crate::cache::fresh;
use crate::ctx::RequestCtx;
use crate::metrics::NO_ROUTE;
use crate::ratelimit::admission::{Admission, Stage};
use crate::ratelimit::identity::Identity;
use crate::state::AppState;
use crate::trace::context::{SpanId, TRACEPARENT, TRACESTATE};
use crate::trace::recorder::{Attribute, Kind, RequestTrace, Span};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::{Error, Result};
use std::borrow::Cow;
use std::time::Instant;

/// Begins the request's trace when `tracing` is on: first thing in
/// `request_filter`, so every answer — refusals too — is traced.
/// Pingora's background refresh is not a client's request: no trace.
pub(super) fn begin(session: &Session, ctx: &mut RequestCtx) {
    let Some(config) = ctx.gateway.config.tracing.as_ref() else {
        return;
    };
    if session.subrequest_ctx.is_some() {
        return;
    }
    let trusted = peer_trusted(session, ctx);
    let headers = &session.req_header().headers;
    ctx.trace = Some(crate::trace::begin(config, headers, trusted, ctx.started));
}

/// The trace context the upstream receives, written once into the
/// request as forwarded (`steps::forward`, beside the forwarding fields):
/// tollgate's `traceparent` (the server span as the upstream's parent)
/// and the caller's `tracestate` when its context was continued;
/// whatever the client sent is replaced.
pub(super) fn forwarded_fields(request: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let Some(trace) = ctx.trace.as_ref() else {
        return Ok(());
    };
    request.insert_header(TRACEPARENT, trace.upstream_traceparent())?;
    match &trace.tracestate {
        Some(state) => request.insert_header(TRACESTATE, state.clone())?,
        None => {
            request.remove_header(&TRACESTATE);
        }
    }
    Ok(())
}

/// The trace context the auth service is asked with (`forward_auth`): a
/// sampled request's `forward auth` span, its id chosen now, as the
/// service's parent; an unsampled one's server span, flagged unsampled;
/// the caller's `tracestate` when its context was continued. Nothing
/// without tracing.
pub(super) fn forward_auth_context(ctx: &RequestCtx) -> (Option<SpanId>, Option<TraceFields>) {
    let Some(trace) = ctx.trace.as_ref() else {
        return (None, None);
    };
    let span = trace.sampled.then(crate::trace::context::new_span_id);
    let parent = span.as_ref().unwrap_or(&trace.span_id);
    let fields = TraceFields {
        traceparent: crate::trace::context::traceparent(&trace.trace_id, parent, trace.sampled),
        tracestate: trace.tracestate.clone(),
    };
    (span, Some(fields))
}

/// A recorded request's attempt names its own span as the upstream's
/// parent, so each retry's backend hangs under its attempt (the field is
/// already there: replacing it does not grow the request's map).
pub(super) fn attempt_fields(upstream_request: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    match ctx.trace.as_ref().filter(|t| t.sampled) {
        Some(trace) => upstream_request.insert_header(TRACEPARENT, trace.upstream_traceparent()),
        None => Ok(()),
    }
}

/// Ends a sampled request's trace — its server span's name, attributes
/// and status, the spans only the end completes (compression, an attempt
/// still open, the cache tiers) — and queues it for export.
pub(super) fn finish(
    state: &AppState,
    session: &Session,
    e: Option<&Error>,
    ctx: &mut RequestCtx,
    status: u16,
) {
    let Some(mut trace) = ctx.trace.take().filter(|t| t.sampled) else {
        return;
    };
    trace.close();
    compression_span(&mut trace, session, ctx.body_bytes_in);
    let req = session.req_header();
    let route = ctx.route().map(|r| r.name.to_string());
    trace.server_name = match &route {
        Some(name) => Cow::Owned(format!("{} {name}", req.method)),
        None => Cow::Owned(req.method.to_string()),
    };
    let mut attributes: Vec<Attribute> = vec![
        ("http.request.method", req.method.to_string().into()),
        ("url.path", req.uri.path().to_owned().into()),
        ("url.scheme", if ctx.tls { "https" } else { "http" }.into()),
        (
            "network.protocol.version",
            protocol_version(req.version).into(),
        ),
        ("http.response.status_code", i64::from(status).into()),
        (
            "http.route",
            route.unwrap_or_else(|| NO_ROUTE.to_owned()).into(),
        ),
        ("tollgate.upstream", ctx.pool_name().to_owned().into()),
        ("tollgate.attempts", (ctx.upstream.count() as i64).into()),
    ];
    if let Some(host) = &ctx.host {
        attributes.push(("server.address", host.as_str().to_owned().into()));
    }
    if let Some(ip) = client_ip(session) {
        attributes.push(("client.address", ip.to_string().into()));
    }
    if let Some(id) = ctx.request_id.as_ref().and_then(|v| v.to_str().ok()) {
        attributes.push(("tollgate.request_id", id.to_owned().into()));
    }
    if let Some(tenant) = tenant_of(ctx) {
        attributes.push(("tollgate.tenant", tenant.into()));
    }
    let cache_status = session
        .response_written()
        .and_then(|r| r.headers.get("cache-status"))
        .and_then(|v| v.to_str().ok());
    if let Some(cache_status) = cache_status {
        attributes.push(("tollgate.cache_status", cache_status.to_owned().into()));
    }
    if ctx.grpc {
        let code = ctx.grpc_status.map_or(-1, i64::from);
        attributes.push(("rpc.grpc.status_code", code.into()));
    }
    if let Some(e) = e {
        attributes.push(("error.type", e.etype().as_str().into()));
    }
    trace.attributes = attributes;
    if status >= 500 {
        trace.error = Some(match e {
            Some(e) => format!("{status}: {}", e.etype().as_str()),
            None => format!("answered {status}"),
        });
    }
    state.traces.submit(trace);
}

/// `compression`: tollgate (or Pingora's module) changed the body's
/// coding — from the first body chunk until the response was sent (the
/// module encodes each chunk after tollgate's body filter has seen it, so
/// the span holds the encoder's work on every chunk), with the coding and
/// the bytes before and after.
fn compression_span(trace: &mut RequestTrace, session: &Session, bytes_in: u64) {
    let Some((first, _)) = trace.body else {
        return;
    };
    let last = trace.ended.unwrap_or_else(Instant::now);
    let encoding =
        |v: Option<&http::HeaderValue>| v.and_then(|v| v.to_str().ok()).map(str::to_owned);
    let before = encoding(trace.encoding_before.as_ref());
    let after = encoding(
        session
            .response_written()
            .and_then(|r| r.headers.get(http::header::CONTENT_ENCODING)),
    );
    if before == after {
        return;
    }
    let (name, coding) = match (&before, &after) {
        (_, Some(to)) => ("compression", to.clone()),
        (Some(from), None) => ("decompression", from.clone()),
        (None, None) => return,
    };
    let bytes_out = session.as_downstream().body_bytes_sent() as i64;
    trace.children.push(Span {
        id: crate::trace::context::new_span_id(),
        parent: trace.span_id,
        name: Cow::Borrowed(name),
        kind: Kind::Internal,
        start: first,
        end: last,
        attributes: vec![
            ("tollgate.compression.coding", coding.into()),
            ("tollgate.compression.bytes_in", (bytes_in as i64).into()),
            ("tollgate.compression.bytes_out", bytes_out.into()),
        ],
        events: Vec::new(),
        error: None,
    });
}

/// Now, when the request is recorded: the start of a span a step is
/// about to measure (an unrecorded request does not read the clock).
pub(super) fn clock(ctx: &RequestCtx) -> Option<Instant> {
    ctx.trace
        .as_ref()
        .filter(|t| t.sampled)
        .map(|_| Instant::now())
}

/// `jwks fetch`: the request waited for an issuer's first key-set fetch.
pub(super) fn jwks_waited(ctx: &mut RequestCtx, began: Option<Instant>) {
    if let (Some(began), Some(trace)) = (began, ctx.recording()) {
        trace.span("jwks fetch", Kind::Internal, began, Vec::new);
    }
}

/// `forward auth`: what the route's auth service decided, and whether
/// the decision was remembered (`cache`) or asked for (`service`).
pub(super) fn forward_auth(
    ctx: &mut RequestCtx,
    began: Option<Instant>,
    span: Option<SpanId>,
    decision: &'static str,
    cached: bool,
) {
    if let (Some(began), Some(span), Some(trace)) = (began, span, ctx.recording()) {
        trace.span_as(span, "forward auth", Kind::Internal, began, || {
            let source = if cached { "cache" } else { "service" };
            vec![
                ("tollgate.forward_auth.decision", decision.into()),
                ("tollgate.forward_auth.source", source.into()),
            ]
        });
    }
}

/// `identity`: who the request was decided to be (or that it was refused).
pub(super) fn identity(ctx: &mut RequestCtx, began: Option<Instant>, accepted: bool) {
    let Some(began) = began else {
        return;
    };
    let outcome = match (accepted, &ctx.identity) {
        (false, _) => "refused",
        (true, Some(Identity::Anonymous(_))) => "anonymous",
        (true, Some(Identity::Token(_))) => "token",
        (true, Some(Identity::Tenant(_))) => "api_key",
        (true, Some(Identity::Certificate(_))) => "certificate",
        (true, Some(Identity::AuthService(_))) => "auth_service",
        (true, None) => "none",
    };
    let tenant = tenant_of(ctx);
    if let Some(trace) = ctx.recording() {
        trace.span("identity", Kind::Internal, began, || {
            let mut attributes = vec![("tollgate.identity", outcome.into())];
            if let Some(tenant) = tenant {
                attributes.push(("tollgate.tenant", tenant.into()));
            }
            attributes
        });
    }
}

/// `rate limit`: the decision, who made it (local buckets, Redis, or
/// the local fallback) and on which tier.
pub(super) fn rate_limit(
    ctx: &mut RequestCtx,
    began: Option<Instant>,
    stage: Stage,
    admission: &Admission,
) {
    let (Some(began), Some(trace)) = (began, ctx.recording()) else {
        return;
    };
    trace.span("rate limit", Kind::Internal, began, || {
        let decision = match admission.refusal {
            Some(_) => "limited",
            None => "allowed",
        };
        let stage = match stage {
            Stage::BeforeCache => "before_cache",
            Stage::BeforeUpstream => "before_upstream",
        };
        let mut attributes = vec![
            ("tollgate.ratelimit.decision", decision.into()),
            ("tollgate.ratelimit.stage", stage.into()),
        ];
        if let Some(store) = admission.decided_by {
            attributes.push(("tollgate.ratelimit.store", store.into()));
        }
        if let Some(tier) = &admission.tier {
            attributes.push(("tollgate.ratelimit.tier", tier.clone().into()));
        }
        attributes
    });
}

/// `cache lookup` on the fresh-hit path (memory): hit, miss, or a
/// request the path does not serve.
pub(super) fn fresh_lookup(ctx: &mut RequestCtx, began: Option<Instant>, lookup: &fresh::Lookup) {
    let (Some(began), Some(trace)) = (began, ctx.recording()) else {
        return;
    };
    let result = match lookup {
        fresh::Lookup::Hit(_) => "hit",
        fresh::Lookup::Miss(_) => "miss",
        fresh::Lookup::NotEligible => "not_eligible",
    };
    trace.span("cache lookup", Kind::Internal, began, || {
        vec![
            ("tollgate.cache.tier", "memory".into()),
            ("tollgate.cache.path", "fresh".into()),
            ("tollgate.cache.result", result.into()),
        ]
    });
}

/// The tenant's name, when the request was identified as one.
pub(super) fn tenant_of(ctx: &RequestCtx) -> Option<String> {
    let limiter = ctx.gateway.rate_limiter.as_ref()?;
    ctx.identity
        .as_ref()
        .and_then(|who| who.tenant_name(limiter))
        .map(str::to_owned)
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    }
}
