//! What is recorded when a request ends: request metrics, the access log
//! line (written off the worker thread by `access_log`) and, past the
//! threshold, the slow-request line.

use crate::access_log::{AccessLog, Rfc3339Millis};
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

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let req = self.session.req_header();
        let route = self.ctx.route();
        write!(
            f,
            "{} {} status={} route={} upstream={} backend={}",
            req.method,
            req.uri.path(),
            self.status,
            route.map_or(NO_ROUTE, |r| &r.name),
            route.map_or("-", |r| r.upstream.name()),
            self.ctx.upstream.backend().unwrap_or("-"),
        )
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
/// thread, `access_log`), slow-request log.
pub fn finish(
    metrics: &Metrics,
    access_log: &AccessLog,
    session: &Session,
    e: Option<&Error>,
    ctx: &RequestCtx,
) {
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
        return;
    }
    let line = if logging.access_log_format == AccessLogFormat::Json {
        let req = session.req_header();
        serde_json::json!({
            "ts_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "status": status,
            "route": route.map_or(NO_ROUTE, |r| &r.name),
            "upstream": route.map(|r| r.upstream.name()),
            "backend": ctx.upstream.backend(),
            "duration_ms": elapsed.as_secs_f64() * 1000.0,
            "request_id": request_id,
            "error": e.map(|e| e.etype().as_str()),
        })
        .to_string()
    } else {
        // The prefix env_logger gives other lines, so both sort together.
        format!(
            "[{} INFO  tollgate::access] {summary} duration_ms={} request_id={request_id}{}{}",
            Rfc3339Millis(std::time::SystemTime::now()),
            Millis(elapsed),
            if e.is_some() { " error=" } else { "" },
            e.map_or("", |e| e.etype().as_str()),
        )
    };
    access_log.write(&line);
}
