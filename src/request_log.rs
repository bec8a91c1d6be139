//! What is recorded when a request ends: request metrics, the access log
//! line (written off the worker thread by `access_log`) and, past the
//! threshold, the slow-request line.

use crate::access_log::{self, AccessLog};
use crate::config::file::AccessLogFormat;
use crate::ctx::RequestCtx;
use crate::headers::Millis;
use crate::metrics::{method_index, Metrics, METHOD_LABELS, NO_ROUTE};
use pingora::proxy::Session;
use pingora::Error;
use std::fmt;
use std::time::{Duration, Instant};

/// Status logged when the client left before any response (nginx's 499).
const CLIENT_CLOSED: u16 = 499;

/// The fields both log lines start with.
struct Summary<'a> {
    session: &'a Session,
    ctx: &'a RequestCtx,
    status: u16,
}

impl Summary<'_> {
    /// Appends `GET /path status=200 route=… upstream=… backend=…`.
    fn push(&self, out: &mut Vec<u8>) {
        let req = self.session.req_header();
        let route = self.ctx.route();
        let mut digits = itoa::Buffer::new();
        for (label, value) in [
            ("", req.method.as_str()),
            (" ", req.uri.path()),
            (" status=", digits.format(self.status)),
            (" route=", route.map_or(NO_ROUTE, |r| &r.name)),
            (" upstream=", self.ctx.pool_name()),
            (" backend=", self.ctx.upstream.backend().unwrap_or("-")),
        ] {
            out.extend_from_slice(label.as_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        if let Some(path) = &self.ctx.upstream_path {
            out.extend_from_slice(b" upstream_path=");
            out.extend_from_slice(path.as_bytes());
        }
        out.extend_from_slice(b" proto=");
        out.extend_from_slice(protocol(self.session, self.ctx).as_bytes());
        if self.ctx.grpc {
            out.extend_from_slice(b" grpc_status=");
            match self.ctx.grpc_status {
                Some(code) => out.extend_from_slice(digits.format(code).as_bytes()),
                None => out.push(b'-'),
            }
        }
    }
}

/// How the client spoke: `http/1.0`, `http/1.1`, `h2`, or `websocket` for
/// a connection the backend switched to a tunnel.
fn protocol(session: &Session, ctx: &RequestCtx) -> &'static str {
    if ctx.tunnel.is_some() {
        return "websocket";
    }
    match session.req_header().version {
        http::Version::HTTP_2 => "h2",
        http::Version::HTTP_10 => "http/1.0",
        _ => "http/1.1",
    }
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::with_capacity(128);
        self.push(&mut text);
        f.write_str(&String::from_utf8_lossy(&text))
    }
}

/// Milliseconds, or `-` when a step never happened.
struct StepMillis(Option<Duration>);

impl fmt::Display for StepMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => Millis(d).fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Records a finished request: metrics, access log (queued for its writer
/// thread, `access_log`), slow-request log. Returns the status recorded
/// (499 when the client left first).
pub fn finish(
    metrics: &Metrics,
    access_log: &AccessLog,
    session: &Session,
    e: Option<&Error>,
    ctx: &RequestCtx,
) -> u16 {
    if ctx.subrequest {
        // Pingora's background refresh, not a client's request: counted
        // on its own, never as a request or an access line.
        let status = session
            .response_written()
            .map_or(0, |r| r.status.as_u16())
            .to_string();
        let route = ctx.route().map_or(NO_ROUTE, |r| &r.name);
        metrics
            .cache_background_refreshes
            .with_label_values(&[route, &status])
            .inc();
        return 0;
    }
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or(ctx.error_status)
        .filter(|s| *s != 0)
        .unwrap_or(CLIENT_CLOSED);
    let elapsed = ctx.started.elapsed();
    let method = method_index(&session.req_header().method);
    let route = ctx.route();
    let status_code =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    metrics.observe_request(
        route.map_or(NO_ROUTE, |r| &r.name),
        method,
        status_code.as_str(),
    );
    if ctx.grpc {
        let mut digits = itoa::Buffer::new();
        let code = ctx.grpc_status.map_or("none", |c| digits.format(c));
        metrics
            .grpc_calls
            .with_label_values(&[route.map_or(NO_ROUTE, |r| &r.name), code])
            .inc();
    }
    match route {
        Some(r) => r.metrics.duration(method).observe(elapsed.as_secs_f64()),
        None => metrics
            .request_duration
            .with_label_values(&[NO_ROUTE, METHOD_LABELS[method]])
            .observe(elapsed.as_secs_f64()),
    }

    let logging = &ctx.gateway.config.logging;
    let summary = Summary {
        session,
        ctx,
        status,
    };
    let request_id = ctx
        .request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    if elapsed >= logging.slow_request_threshold {
        let timing = ctx.upstream.timing();
        let since_chosen =
            |at: Option<Instant>| StepMillis(timing.chosen_at.zip(at).map(|(from, to)| to - from));
        log::warn!(
            target: "tollgate::slow",
            "slow request: {summary} attempts={} connect_ms={} ttfb_ms={} total_ms={} request_id={request_id}",
            ctx.upstream.count(),
            since_chosen(timing.connected_at),
            since_chosen(timing.first_byte_at),
            Millis(elapsed),
        );
    }
    if !(logging.access_log && access_log.enabled()) {
        return status;
    }
    let trace_id = ctx.trace.as_ref().map(|t| t.trace_id_hex());
    if logging.access_log_format == AccessLogFormat::Json {
        let req = session.req_header();
        let line = serde_json::json!({
            "ts_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "status": status,
            "route": route.map_or(NO_ROUTE, |r| &r.name),
            "upstream": ctx.pool.as_ref().map(|p| p.name()),
            "backend": ctx.upstream.backend(),
            "upstream_path": ctx.upstream_path,
            "proto": protocol(session, ctx),
            "grpc_status": ctx.grpc_status,
            "duration_ms": elapsed.as_secs_f64() * 1000.0,
            "request_id": request_id,
            "trace_id": trace_id.as_ref().map(|t| String::from_utf8_lossy(t)),
            "error": e.map(|e| e.etype().as_str()),
        });
        access_log.write(&line.to_string());
        return status;
    }
    // The prefix env_logger gives other lines, so both sort together;
    // written straight into the thread's log buffer.
    access_log.write_with(|out| {
        out.push(b'[');
        access_log::push_rfc3339_millis(out, std::time::SystemTime::now());
        out.extend_from_slice(b" INFO  tollgate::access] ");
        summary.push(out);
        out.extend_from_slice(b" duration_ms=");
        Millis(elapsed).push(out);
        out.extend_from_slice(b" request_id=");
        out.extend_from_slice(request_id.as_bytes());
        if let Some(trace_id) = &trace_id {
            out.extend_from_slice(b" trace_id=");
            out.extend_from_slice(trace_id);
        }
        if let Some(e) = e {
            out.extend_from_slice(b" error=");
            out.extend_from_slice(e.etype().as_str().as_bytes());
        }
    });
    status
}
