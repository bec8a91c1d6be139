//! The upstream side of a request, phase by phase: choosing the peer,
//! arming the route's deadline on its connection, what a failure allows,
//! the request head the upstream receives, the response head it sent
//! (hop-by-hop fields, retry on a 5xx) and its body streaming under the
//! deadline. The decisions are `upstream::attempt`'s; this is where the
//! phases reach them.

use crate::ctx::RequestCtx;
use crate::metrics::Metrics;
use crate::upstream::replay::Replay;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType, Result};

/// Whether an upstream response has a body after its header (RFC 9112
/// §6.3): not for 1xx, 204, 304, a `Content-Length: 0`, or a HEAD that went
/// upstream as a HEAD (with the cache on, Pingora sent a GET).
fn response_has_body(session: &Session, resp: &ResponseHeader) -> bool {
    let head = session.req_header().method == http::Method::HEAD && !session.cache.enabled();
    let empty = resp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    !(head || empty || matches!(resp.status.as_u16(), 100..=199 | 204 | 304))
}

/// What a failed or retried attempt allows: see `upstream::replay`.
fn replay_of(session: &Session, upstream_reused: bool) -> Replay {
    Replay {
        idempotent: session.req_header().method.is_idempotent(),
        body_buffered: !session.as_downstream().retry_buffer_truncated(),
        response_started: session.response_written().is_some(),
        upstream_reused,
    }
}

/// The peer for the next attempt: the least-connections choice in the
/// route's pool, its timeouts cut to what is left of the total.
pub(super) fn peer(ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let started = ctx.started;
    // Each attempt sends the body from its start: Pingora replays its
    // retry buffer through `request_body_filter` (pingora-proxy
    // `proxy_h1.rs`), so the route's body limit counts this attempt's
    // bytes, not the same bytes once per attempt.
    ctx.request_body_bytes = 0;
    let upgrade = ctx.upgrade;
    let (route, attempts) = ctx.timeouts_and_attempts();
    let (timeouts, pool) = route.ok_or_else(super::steps::no_route)?;
    let mut peer = attempts.start(pool, &timeouts, started)?;
    if upgrade {
        crate::tunnel::bound_by_idle(&mut peer, timeouts.idle);
    }
    let (number, pool) = (attempts.count() as i64, pool.name().to_owned());
    if let Some(trace) = ctx.recording() {
        let address = peer.address().to_string();
        trace.attempt_started(|| {
            let (host, port) = address.rsplit_once(':').unwrap_or((&address, ""));
            vec![
                (
                    "server.address",
                    host.trim_matches(['[', ']']).to_owned().into(),
                ),
                ("server.port", port.parse::<i64>().unwrap_or(0).into()),
                ("tollgate.upstream", pool.into()),
                ("tollgate.attempt", number.into()),
            ]
        });
    }
    Ok(peer)
}

/// Ends the recorded attempt with the failure `e`, and whether tollgate
/// tries again (the retry's reason is the failure).
fn attempt_failed(ctx: &mut RequestCtx, e: &Error) {
    if let Some(trace) = ctx.recording() {
        let retry = e.retry();
        trace.attempt_ended(Some(e.to_string()), || {
            vec![
                ("error.type", e.etype().as_str().into()),
                ("tollgate.retry", retry.into()),
            ]
        });
    }
}

/// The connection `fd` is up (a pooled one when `reused`): the route's
/// total deadline is armed on it (see `upstream::deadline`).
pub(super) fn connected(ctx: &mut RequestCtx, fd: std::os::unix::io::RawFd, reused: bool) {
    if let Some(trace) = ctx.recording() {
        trace.attempt_event("connected", || {
            vec![("tollgate.connection.reused", reused.into())]
        });
    }
    let started = ctx.started;
    if let (Some((timeouts, pool)), attempts) = ctx.timeouts_and_attempts() {
        // On HTTP/2 the descriptor is the connection every stream to
        // that backend shares: cutting it would end them all, so those
        // requests keep their per-read bounds and the body's deadline
        // check (`response_body`) instead.
        let shared = pool.protocol().multiplexed();
        attempts.connected(fd, started, timeouts.total, shared);
    }
}

/// A connect failure: passive health, and a retry when allowed.
pub(super) fn connect_failed(ctx: &mut RequestCtx, e: Box<Error>, metrics: &Metrics) -> Box<Error> {
    let started = ctx.started;
    let e = match ctx.timeouts_and_attempts() {
        (Some((timeouts, pool)), attempts) => {
            attempts.connect_failed(pool, &timeouts, started, e, metrics)
        }
        _ => e,
    };
    attempt_failed(ctx, &e);
    e
}

/// A failure after connecting: passive health, and a replay when allowed.
/// `upstream_reused` is Pingora's `client_reused` (tollgate is the client).
pub(super) fn proxy_failed(
    session: &Session,
    peer: &HttpPeer,
    ctx: &mut RequestCtx,
    e: Box<Error>,
    upstream_reused: bool,
    metrics: &Metrics,
) -> Box<Error> {
    let e = e.more_context(format!("Peer: {peer}"));
    let replay = replay_of(session, upstream_reused);
    let started = ctx.started;
    let e = match ctx.timeouts_and_attempts() {
        (Some((timeouts, pool)), attempts) => {
            attempts.proxy_failed(pool, &timeouts, started, e, replay, metrics)
        }
        _ => e,
    };
    attempt_failed(ctx, &e);
    e
}

/// The response head arrived: time to first byte, a 5xx counted against
/// the backend if configured, and a 5xx the pool retries turned into the
/// error Pingora retries (before any of it is sent or stored).
pub(super) fn response_header(
    session: &Session,
    resp: &ResponseHeader,
    ctx: &mut RequestCtx,
    metrics: &Metrics,
) -> Result<()> {
    let status = resp.status.as_u16();
    let started = ctx.started;
    let body_expected = response_has_body(session, resp);
    if let Some(trace) = ctx.recording() {
        trace.attempt_event("first_byte", || {
            vec![("http.response.status_code", i64::from(status).into())]
        });
    }
    if let (Some((timeouts, pool)), attempts) = ctx.timeouts_and_attempts() {
        attempts.response_header(pool, status, body_expected, metrics);
        let replay = replay_of(session, false);
        if attempts.should_retry_status(pool, &timeouts, started, status, replay) {
            return Err(Error::explain(
                crate::errors::RETRY_STATUS,
                format!("upstream {} answered {status}: retrying", pool.name()),
            ));
        }
    }
    Ok(())
}

/// `Host`: the pool's override, else the normalised host that was routed
/// and keyed — already in an HTTP/1 request (`forwarded`); Pingora has just
/// written an HTTP/2 request's `:authority` into it as received. Then the
/// route's path rewrite. Everything else the upstream receives was written
/// into the request once, in `request_filter`, so the cache reads the same
/// fields.
pub(super) fn request_header(
    session: &Session,
    upstream_request: &mut RequestHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let host = match ctx.pool.as_ref().and_then(|p| p.host_header()) {
        Some(host) => Some(host.clone()),
        None if session.req_header().version == http::Version::HTTP_2 => ctx
            .host
            .as_ref()
            .and_then(|h| http::HeaderValue::from_str(h.as_str()).ok()),
        None => None,
    };
    if let Some(host) = host {
        upstream_request.insert_header(http::header::HOST, host)?;
    }
    if let Some(rewrite) = ctx.route().and_then(|r| r.rewrite.as_ref()) {
        let path = rewrite.apply(upstream_request.uri.path());
        let target = match upstream_request.uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.clone(),
        };
        let uri = target.parse::<http::Uri>().map_err(|e| {
            Error::because(
                ErrorType::InternalError,
                format!("rewritten target {target:?}"),
                e,
            )
        })?;
        upstream_request.set_uri(uri);
        ctx.upstream_path = Some(path);
    }
    Ok(())
}

/// A chunk of the upstream's body: frees the backend's least-connections
/// slot as soon as it has sent everything, and enforces the total timeout
/// while the body streams (a tunnel is bounded by `timeouts.idle` instead).
pub(super) fn response_body(
    body: Option<&bytes::Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let started = ctx.started;
    let tunnel = crate::tunnel::count_from_backend(ctx.tunnel.as_ref(), body);
    let (Some((timeouts, pool)), attempts) = ctx.timeouts_and_attempts() else {
        return Ok(());
    };
    if end_of_stream {
        attempts.response_finished(pool);
        if let Some(trace) = ctx.recording() {
            trace.attempt_ended(None, Vec::new);
        }
        return Ok(());
    }
    if tunnel {
        return Ok(());
    }
    attempts.check_deadline(started, timeouts.total)
}
