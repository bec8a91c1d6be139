//! How tollgate writes what it answers itself or passes on: the headers
//! every response gets on its way out, the JSON errors, a fresh hit, and
//! the answer to a failed request. Used by `proxy.rs`, which decides when.

use crate::cache::fresh::FreshResponse;
use crate::compression::{self, BodyCoding};
use crate::config::model::RedirectConfig;
use crate::ctx::RequestCtx;
use crate::errors::{self, ErrorResponse};
use crate::headers;
use crate::ratelimit;
use crate::values::cors::{CorsPolicy, Preflight, CORS_FIELDS};
use crate::values::template::Values;
use pingora::http::ResponseHeader;
use pingora::proxy::{FailToProxy, Session};
use pingora::{Error, Result};

/// What every response from an upstream or the cache gets on its way out:
/// the rate-limit headers, the compression decision, and request id,
/// timing and `Via`.
pub fn finish_header(
    session: &mut Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    if let Some(rate) = &ctx.rate_headers {
        ratelimit::apply_headers(resp, rate)?;
    }
    if let Some(trace) = ctx.recording() {
        trace.encoding_before = resp.headers.get(http::header::CONTENT_ENCODING).cloned();
    }
    if ctx.grpc || resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        // gRPC frames its messages (and compresses them itself, per
        // message); a tunnel's bytes are not a body. Neither is touched.
        compression::bypass_module(session);
        if ctx.grpc {
            ctx.grpc_status = crate::grpc::status_in(&resp.headers);
        }
    } else {
        let route_compression = ctx.route().map(|r| r.compression);
        let config = ctx.gateway.config.compression.as_ref();
        ctx.body_coding = compression::on_response(session, resp, config, route_compression)?;
    }
    let tags = &ctx.gateway.config.cache_tags;
    if tags.strip {
        for name in &tags.headers {
            resp.remove_header(name);
        }
    }
    if let Some(name) = &tags.invalidation_header {
        resp.remove_header(name);
    }
    headers::decorate(resp, ctx.request_id.as_ref(), decoration(ctx, true))?;
    if let Some(cookie) = ctx.set_cookie.take() {
        resp.append_header(http::header::SET_COOKIE, cookie)?;
    }
    route_fields(session, resp, ctx);
    Ok(())
}

/// Answers a redirect route: `Location` from its template (`{uri}` is the
/// normalised path and the query as received), no body, `no-store`
/// unless the route lets clients keep it (`max_age`).
pub async fn redirect(
    session: &mut Session,
    ctx: &mut RequestCtx,
    redirect: &RedirectConfig,
) -> Result<()> {
    let req = session.req_header();
    let uri = match req.uri.path_and_query() {
        Some(pq) => pq.as_str().to_owned(),
        None => req.uri.path().to_owned(),
    };
    let values = Values {
        uri: Some(&uri),
        path: Some(req.uri.path()),
        host: ctx.host.as_ref().map(crate::values::host::Host::as_str),
        ..Values::default()
    };
    let Some(location) = redirect.to.render(&values) else {
        // `{host}` on a request without a host (HTTP/1.0).
        return error(
            session,
            ctx,
            &ErrorResponse::bad_request("This redirect needs a Host"),
        )
        .await;
    };
    let mut resp = ResponseHeader::build(redirect.status, Some(6))?;
    resp.insert_header(http::header::LOCATION, location)?;
    resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
    let cache_control = match redirect.max_age {
        Some(age) => format!("public, max-age={}", age.as_secs()),
        None => "no-store".to_owned(),
    };
    resp.insert_header(http::header::CACHE_CONTROL, cache_control)?;
    if let Some(rate) = &ctx.rate_headers {
        ratelimit::apply_headers(&mut resp, rate)?;
    }
    headers::decorate(&mut resp, ctx.request_id.as_ref(), decoration(ctx, false))?;
    route_fields(session, &mut resp, ctx);
    session.write_response_header(Box::new(resp), true).await
}

/// The route's `headers.response`, last, so it can replace or remove
/// what the upstream or tollgate wrote (`Server`, `Strict-Transport-Security`);
/// then its CORS fields for this request's `Origin`.
fn route_fields(session: &Session, resp: &mut ResponseHeader, ctx: &RequestCtx) {
    if let Some(route) = ctx.route().filter(|r| !r.response_headers.is_empty()) {
        let values = super::client::template_values(session, ctx);
        route.response_headers.apply(resp, &values);
    }
    if let Some(policy) = ctx.route().and_then(|r| r.cors.as_deref()) {
        cors_fields(session, resp, policy);
    }
}

/// A route with a CORS policy: the upstream's CORS fields go (the route's
/// policy is the one clients see), the policy's fields for this request's
/// `Origin` are added (none for an origin it does not allow), and
/// `Vary: Origin` when the answer depends on it. Computed per request
/// from the request, never stored: one origin's answer cannot reach another.
fn cors_fields(session: &Session, resp: &mut ResponseHeader, policy: &CorsPolicy) {
    // One pass over the names; a removal only for a field that is there.
    let upstream_sent = resp
        .headers
        .keys()
        .any(|name| name.as_str().starts_with("access-control-"));
    if upstream_sent {
        for name in CORS_FIELDS {
            resp.remove_header(name);
        }
    }
    let origin = session.req_header().headers.get(http::header::ORIGIN);
    for (name, value) in policy.response_fields(origin) {
        let _ = resp.insert_header(name, value);
    }
    if policy.varies_on_origin() {
        add_vary(resp, "Origin");
    }
}

/// Adds `token` to `Vary` unless it (or `*`) is already there.
fn add_vary(resp: &mut ResponseHeader, token: &'static str) {
    let present = resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.eq_ignore_ascii_case(token))
        })
    });
    if !present {
        // A static name and value: Pingora's header map copies a
        // `HeaderName` it has no title-case spelling for (`vary`) into a
        // fresh allocation on every append; a `&'static str` is borrowed.
        let _ = resp.append_header("Vary", http::HeaderValue::from_static(token));
    }
}

/// Whether the request is a CORS preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`) on a route with a policy.
pub fn is_cors_preflight(session: &Session, ctx: &RequestCtx) -> bool {
    let req = session.req_header();
    req.method == http::Method::OPTIONS
        && ctx.route().is_some_and(|r| r.cors.is_some())
        && req.headers.contains_key(http::header::ORIGIN)
        && req
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Answers a CORS preflight (`is_cors_preflight`): 204 with the route
/// policy's fields when it allows what was asked, 204 without any when it
/// does not (the browser then refuses the request; no error page). Counted
/// in `tollgate_cors_preflights_total`, never charged to a budget.
pub async fn cors_preflight(
    session: &mut Session,
    ctx: &mut RequestCtx,
    metrics: &crate::metrics::Metrics,
) -> Result<()> {
    let req = session.req_header();
    let Some(policy) = ctx.route().and_then(|r| r.cors.clone()) else {
        return Ok(());
    };
    let (Some(origin), Some(method)) = (
        req.headers.get(http::header::ORIGIN),
        req.headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD),
    ) else {
        return Ok(());
    };
    let asked = Preflight {
        origin,
        method,
        headers: req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS),
    };
    let fields = policy.preflight(&asked);
    let route = ctx.route().map_or("", |r| &r.name);
    metrics
        .cors_preflights
        .with_label_values(&[
            route,
            if fields.is_some() {
                "allowed"
            } else {
                "refused"
            },
        ])
        .inc();
    let mut resp = ResponseHeader::build(204, Some(8))?;
    for (name, value) in fields.into_iter().flatten() {
        resp.insert_header(name, value)?;
    }
    resp.insert_header(
        http::header::VARY,
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    )?;
    headers::decorate(&mut resp, ctx.request_id.as_ref(), decoration(ctx, false))?;
    ctx.error_status = Some(204);
    session.write_response_header(Box::new(resp), true).await
}

/// tollgate's own fields as `response_headers` says; `proxied` responses
/// may get `Via`.
fn decoration(ctx: &RequestCtx, proxied: bool) -> headers::Decoration {
    let config = &ctx.gateway.config;
    headers::Decoration {
        response_time: config.response_time_header.then(|| ctx.started.elapsed()),
        via: proxied && config.via_header,
    }
}

/// Bounds how long a kept-alive client connection may sit idle before its
/// next request (`limits.keepalive_timeout`). Pingora keeps an HTTP/1.1
/// connection open indefinitely by default; its keep-alive timer is set
/// here, once the response is out, and carried to the connection's next
/// request by Pingora. A connection that is to close stays closing.
pub fn limit_keepalive(session: &mut Session, ctx: &RequestCtx) {
    if session.as_ref().get_keepalive() == Some(0) {
        let idle = ctx.gateway.config.limits.keepalive_timeout;
        session.as_mut().set_keepalive(Some(idle.as_secs().max(1)));
    }
}

/// Largest unread request body Pingora drains after one of our answers so
/// the client keeps its connection; a larger (or chunked) body closes it.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// Whether a connection may stay open after an answer given before any
/// upstream was involved: nothing of the request body was consumed, so
/// Pingora drains what is left when it reuses the connection — if that is
/// small and its length known.
fn keeps_connection(session: &Session) -> bool {
    let headers = &session.req_header().headers;
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return false;
    }
    match headers.get(http::header::CONTENT_LENGTH) {
        None => true,
        Some(v) => std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|len| len <= DRAIN_LIMIT),
    }
}

/// Sends one of our JSON errors in place of the request (401, 404, 429, …:
/// no upstream involved), keeping the client's connection when the request
/// body, if any, is small enough to drain — a throttled client must not pay
/// for a new connection (and TLS handshake) on every retry.
pub async fn error(session: &mut Session, ctx: &mut RequestCtx, err: &ErrorResponse) -> Result<()> {
    let keep = keeps_connection(session);
    write_error(session, ctx, err, keep).await
}

/// Returns an auth service's refusal (`forward_auth`) as it wrote it:
/// status, end-to-end fields and body, plus tollgate's request id and
/// timing and the route's fields (CORS included, so a browser can read
/// the refusal).
pub async fn auth_refusal(
    session: &mut Session,
    ctx: &mut RequestCtx,
    refusal: &crate::auth::forward::Refusal,
) -> Result<()> {
    ctx.error_status = Some(refusal.status);
    let keep = keeps_connection(session);
    let mut resp = ResponseHeader::build(refusal.status, Some(refusal.headers.len() + 4))?;
    for (name, value) in &refusal.headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, refusal.body.len())?;
    headers::decorate(&mut resp, ctx.request_id.as_ref(), decoration(ctx, false))?;
    route_fields(session, &mut resp, ctx);
    if !keep {
        session.set_keepalive(None);
    }
    let body = refusal.body.clone();
    session
        .write_response_header(Box::new(resp), body.is_empty())
        .await?;
    if !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Sends one of our JSON errors, with request id, timing and (for a 429)
/// the rate-limit headers and `Retry-After`; `Connection: close` unless
/// `keep_connection`.
async fn write_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: &ErrorResponse,
    keep_connection: bool,
) -> Result<()> {
    ctx.error_status = Some(err.status);
    if ctx.grpc {
        return write_grpc_error(session, ctx, err, keep_connection).await;
    }
    let body = err.body();
    let mut resp = err.header(body.len())?;
    own_answer_fields(session, ctx, &mut resp, err, keep_connection)?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// What every one of our errors carries, in JSON or gRPC form: request id
/// and timing, the route's response fields, the rate-limit fields (and
/// `Retry-After` on a 429), and `Connection: close` unless kept.
fn own_answer_fields(
    session: &mut Session,
    ctx: &RequestCtx,
    resp: &mut ResponseHeader,
    err: &ErrorResponse,
    keep_connection: bool,
) -> Result<()> {
    headers::decorate(resp, ctx.request_id.as_ref(), decoration(ctx, false))?;
    route_fields(session, resp, ctx);
    if let Some(rate) = &ctx.rate_headers {
        ratelimit::apply_headers(resp, rate)?;
        if err.status == 429 {
            resp.insert_header("Retry-After", rate.retry_after.max(1))?;
        }
    }
    if !keep_connection {
        session.set_keepalive(None);
    }
    Ok(())
}

/// One of our errors to a gRPC call: a trailers-only answer (one header
/// block ending the stream) with the mapped `grpc-status`, the same
/// request id and rate-limit fields as the JSON form.
async fn write_grpc_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: &ErrorResponse,
    keep_connection: bool,
) -> Result<()> {
    let mut resp = crate::grpc::trailers_only(err)?;
    ctx.grpc_status = Some(crate::grpc::status_for(err.status));
    own_answer_fields(session, ctx, &mut resp, err, keep_connection)?;
    compression::bypass_module(session);
    if session.req_header().version < http::Version::HTTP_2 {
        resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
    }
    // One header block that ends the stream (`write_response_header`
    // leaves an HTTP/2 stream open, and a gRPC client reads a header
    // followed by an empty end of stream as a missing-trailers error).
    let ended = pingora::protocols::http::HttpTask::Header(Box::new(resp), true);
    session.write_response_tasks(vec![ended]).await.map(drop)
}

/// Sends a fresh hit found by `cache::fresh`.
pub async fn fresh_hit(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut hit: FreshResponse,
) -> Result<()> {
    finish_header(session, &mut hit.header, ctx)?;
    session.write_response_header(hit.header, hit.head).await?;
    if !hit.head {
        ctx.body_bytes_in += hit.stored_len;
        match ctx.body_coding.take() {
            // Brotli chosen here only when the stored copy could not be made.
            Some(mut coding @ BodyCoding::Brotli(_)) => {
                let body = coding.chunk(&hit.body, true)?;
                session.write_response_body(Some(body), true).await?;
            }
            Some(BodyCoding::Inflate(stream)) => stream_decoded(session, stream, hit.body).await?,
            None => session.write_response_body(Some(hit.body), true).await?,
        }
    }
    Ok(())
}

/// Writes a stored body decoded, slice by slice: each slice's output is
/// written before the next is decoded, so memory stays within
/// `inflate`'s bounds however far the body inflates.
async fn stream_decoded(
    session: &mut Session,
    mut stream: compression::inflate::InflateStream,
    body: bytes::Bytes,
) -> Result<()> {
    let corrupt = |e: compression::inflate::InflateError| {
        Error::explain(
            pingora::ErrorType::InternalError,
            format!("decoding a cached body: {e}"),
        )
    };
    for slice in body.chunks(16 * 1024) {
        let mut out = stream.feed(slice).map_err(corrupt)?;
        while !out.is_empty() {
            session.write_response_body(Some(out), false).await?;
            if !stream.has_held_input() {
                break;
            }
            out = stream.feed(&[]).map_err(corrupt)?;
        }
    }
    while !stream.finished() {
        let out = stream.feed(&[]).map_err(corrupt)?;
        if out.is_empty() {
            return Err(corrupt(compression::inflate::InflateError::Corrupt(
                "the stream ends early".to_owned(),
            )));
        }
        session.write_response_body(Some(out), false).await?;
    }
    session.write_response_body(None, true).await
}

/// Answers a failed request with the JSON error `errors::classify` maps it
/// to, unless the client is gone or the response had already started.
///
/// The connection is kept when the answer went out whole and what is left
/// of the request body is known and small enough to drain
/// ([`keeps_connection`]), or was read whole, and the failure was not in
/// reading the request: an error from a flaky
/// backend must not cost the client a new connection (and handshake).
/// Pingora reuses the connection on our word (`can_reuse_downstream`,
/// patch 0001 in `pingora-patched/PATCHES.md`); otherwise the answer says
/// `Connection: close`. The status to log is 0 when the client was gone.
pub async fn failure(session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
    let route = ctx.route();
    let cx = ctx
        .upstream
        .failure_context(ctx.pool.as_deref(), ctx.timeouts());
    let classified = if *e.etype() == errors::PAYLOAD_TOO_LARGE {
        Some(ErrorResponse::payload_too_large(
            route.map_or(0, |r| r.max_body_size),
        ))
    } else {
        errors::classify(e, &cx)
    };
    let mut kept = false;
    let code = match classified {
        Some(resp) if session.response_written().is_none() => {
            // A request whose own reading failed leaves nothing to trust.
            let keep = *e.esource() != pingora::ErrorSource::Downstream
                && (session.as_mut().is_body_done() || keeps_connection(session));
            match write_error(session, ctx, &resp, keep).await {
                Ok(()) => kept = keep,
                Err(write_err) => {
                    log::debug!("could not send {} to the client: {write_err}", resp.status)
                }
            }
            resp.status
        }
        Some(resp) => resp.status, // headers already sent: the stream is cut
        None => 0,
    };
    ctx.error_status = Some(code);
    FailToProxy {
        error_code: code,
        can_reuse_downstream: kept,
    }
}
