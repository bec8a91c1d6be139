//! The JSON error bodies clients see, one constructor per situation, and
//! the mapping from Pingora errors to them.
//!
//! Shape (stable, relied on by clients): `{"error": "<code>", "message": "<text>"}`
//! with `Content-Type: application/json`.

use crate::config::units::seconds_one_decimal;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};
use std::borrow::Cow;
use std::time::Duration;

/// Custom Pingora error type: the route's total timeout ran out.
pub const REQUEST_TIMEOUT: ErrorType = ErrorType::Custom("request_timeout");
/// Custom Pingora error type: a request body grew past the route's limit
/// while it streamed (a chunked body; a `Content-Length` is checked first).
pub const PAYLOAD_TOO_LARGE: ErrorType = ErrorType::Custom("payload_too_large");
/// Custom Pingora error type: the backend answered 502/503/504 to an
/// idempotent request and the pool retries those (`retry_on_5xx`); raised
/// only when a retry will be made, so the client never sees it.
pub const RETRY_STATUS: ErrorType = ErrorType::Custom("upstream_retry_status");
/// Custom Pingora error type: the pool has no backend that may take traffic.
pub const NO_HEALTHY_UPSTREAM: ErrorType = ErrorType::Custom("no_healthy_upstream");

/// An error response about to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code, the `error` field.
    pub code: &'static str,
    /// Human-readable text, the `message` field.
    pub message: Cow<'static, str>,
    /// Extra fields for this kind of error (the 429's `tier`, `retry_after`).
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    /// `WWW-Authenticate` of a 401.
    pub challenge: Option<Cow<'static, str>>,
}

impl ErrorResponse {
    /// 400: the request cannot be routed safely as sent.
    pub fn bad_request(message: &'static str) -> Self {
        Self::new(400, "bad_request", Cow::Borrowed(message))
    }

    /// 405: a method tollgate does not serve at all (`CONNECT`).
    pub fn method_not_allowed(message: &'static str) -> Self {
        Self::new(405, "method_not_allowed", Cow::Borrowed(message))
    }

    /// 431: the request head is larger than `limits.max_header_size`, or
    /// has more fields than `limits.max_headers`.
    pub fn header_too_large(what: &'static str) -> Self {
        Self::new(431, "request_header_too_large", Cow::Borrowed(what))
    }

    /// 414: the request target is longer than `limits.max_uri_length`.
    pub fn uri_too_long(limit: usize) -> Self {
        Self::new(
            414,
            "uri_too_long",
            Cow::Owned(format!("The request target is longer than {limit} bytes")),
        )
    }

    /// 413: the body is larger than the route allows.
    pub fn payload_too_large(limit: u64) -> Self {
        Self::new(
            413,
            "payload_too_large",
            Cow::Owned(format!("The request body is larger than {limit} bytes")),
        )
    }

    /// 403: the client's address may not use this route, or this
    /// tenant's requests may not come from it (`addresses`).
    pub fn address_refused() -> Self {
        Self::new(
            403,
            "forbidden",
            Cow::Borrowed("Requests from this address are not allowed here"),
        )
    }

    /// 503: the route's auth service (`forward_auth`) could not decide.
    pub fn auth_unavailable() -> Self {
        Self::new(
            503,
            "auth_unavailable",
            Cow::Borrowed("The authorization service could not be reached; try again"),
        )
    }

    /// 403: the route's auth service admitted the request for a tenant
    /// tollgate does not know.
    pub fn unknown_tenant() -> Self {
        Self::new(
            403,
            "forbidden",
            Cow::Borrowed("The authorization service named an unknown tenant"),
        )
    }

    /// 404: no route matches.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "not_found",
            Cow::Borrowed("No route matches this request"),
        )
    }

    /// 502: the backend refused, reset or sent something that is not HTTP.
    pub fn bad_gateway(upstream: &str) -> Self {
        Self::new(
            502,
            "bad_gateway",
            Cow::Owned(format!("Upstream {upstream} failed to answer")),
        )
    }

    /// 503: every backend of the pool is out of rotation.
    pub fn no_healthy_upstream(upstream: &str) -> Self {
        Self::new(
            503,
            "no_healthy_upstream",
            Cow::Owned(format!("No healthy backend in upstream {upstream}")),
        )
    }

    /// 504: the route's total timeout ran out.
    pub fn request_timeout(total: Duration) -> Self {
        Self::new(
            504,
            "request_timeout",
            Cow::Owned(format!(
                "Request exceeded {} timeout",
                seconds_one_decimal(total)
            )),
        )
    }

    /// 504: the backend did not connect or answer within the route's
    /// connect or read timeout (which is shorter than the total).
    pub fn upstream_timeout(upstream: &str, what: &str, limit: Duration) -> Self {
        Self::new(
            504,
            "upstream_timeout",
            Cow::Owned(format!(
                "Upstream {upstream} did not {what} within {}",
                seconds_one_decimal(limit)
            )),
        )
    }

    /// 504: the client asked for `only-if-cached` and the cache has nothing.
    pub fn not_cached() -> Self {
        Self::new(
            504,
            "not_cached",
            Cow::Borrowed("The response is not in the cache (only-if-cached)"),
        )
    }

    /// 500: a fault in tollgate itself.
    pub fn internal() -> Self {
        Self::new(500, "internal_error", Cow::Borrowed("Internal proxy error"))
    }

    /// Any other status Pingora asked for.
    pub fn status(status: u16) -> Self {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        Self::new(status, "http_error", Cow::Borrowed(reason))
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), self.code.into());
        body.insert("message".into(), self.message.as_ref().into());
        if let Some(extra) = &self.extra {
            body.extend(extra.clone());
        }
        Bytes::from(serde_json::Value::Object(body).to_string())
    }

    /// 401: an API key was sent and is unknown or malformed.
    pub fn invalid_api_key() -> Self {
        Self::new(
            401,
            "invalid_api_key",
            Cow::Borrowed("The API key is not valid"),
        )
    }

    /// 401: no API key, and anonymous requests are refused. With `bearer`
    /// (keys and tokens are read from `Authorization`), the answer names
    /// the scheme (`WWW-Authenticate: Bearer`, no error code: RFC 6750 §3).
    pub fn api_key_required(bearer: bool) -> Self {
        Self {
            challenge: bearer.then_some(Cow::Borrowed("Bearer")),
            ..Self::new(
                401,
                "api_key_required",
                Cow::Borrowed("An API key is required (Authorization: Bearer <key> or X-API-Key)"),
            )
        }
    }

    /// 401: a bearer JWT did not verify; `WWW-Authenticate` says why
    /// (RFC 6750 §3), the same words as the JSON body's message.
    pub fn invalid_token(description: &'static str) -> Self {
        Self {
            challenge: Some(Cow::Owned(format!(
                "Bearer error=\"invalid_token\", error_description=\"{description}\""
            ))),
            ..Self::new(401, "invalid_token", Cow::Borrowed(description))
        }
    }

    /// 429: over budget.
    pub fn rate_limited(message: String, tier: &str, retry_after: u64) -> Self {
        let mut extra = serde_json::Map::new();
        extra.insert("tier".into(), tier.into());
        extra.insert("retry_after".into(), retry_after.into());
        Self {
            extra: Some(extra),
            ..Self::new(429, "rate_limited", Cow::Owned(message))
        }
    }

    fn new(status: u16, code: &'static str, message: Cow<'static, str>) -> Self {
        Self {
            status,
            code,
            message,
            extra: None,
            challenge: None,
        }
    }

    /// Response header for [`Self::body`]; errors are never cached.
    pub fn header(&self, body_len: usize) -> pingora::Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(self.status, Some(4))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body_len)?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        if let Some(challenge) = &self.challenge {
            resp.insert_header(http::header::WWW_AUTHENTICATE, challenge.as_ref())?;
        }
        Ok(resp)
    }
}

/// What the request path knows when it classifies a failure.
pub struct FailureContext<'a> {
    /// The route's upstream name, if a route matched.
    pub upstream: Option<&'a str>,
    /// The route's connect, read and total timeouts.
    pub timeouts: Option<crate::config::model::RouteTimeouts>,
    /// Whether the attempt's connect timeout was cut short by the total deadline.
    pub connect_bound_by_total: bool,
    /// Whether the attempt's read timeout was cut short by the total deadline.
    pub read_bound_by_total: bool,
}

/// Maps a Pingora error to the response the client gets, or `None` when the
/// client is gone and nothing can be sent.
pub fn classify(e: &Error, cx: &FailureContext<'_>) -> Option<ErrorResponse> {
    use ErrorType::*;
    let upstream = cx.upstream.unwrap_or("(none)");
    let etype = e.etype();
    if *etype == REQUEST_TIMEOUT {
        return cx.timeouts.map(|t| ErrorResponse::request_timeout(t.total));
    }
    if *etype == NO_HEALTHY_UPSTREAM {
        return Some(ErrorResponse::no_healthy_upstream(upstream));
    }
    if let HTTPStatus(code) = etype {
        return Some(ErrorResponse::status(*code));
    }
    match e.esource() {
        ErrorSource::Upstream => Some(match (etype, cx.timeouts) {
            (ConnectTimedout, Some(t)) if cx.connect_bound_by_total => {
                ErrorResponse::request_timeout(t.total)
            }
            (ReadTimedout | WriteTimedout, Some(t)) if cx.read_bound_by_total => {
                ErrorResponse::request_timeout(t.total)
            }
            (ConnectTimedout, Some(t)) => {
                ErrorResponse::upstream_timeout(upstream, "accept a connection", t.connect)
            }
            (ReadTimedout | WriteTimedout, Some(t)) => {
                ErrorResponse::upstream_timeout(upstream, "respond", t.read)
            }
            _ => ErrorResponse::bad_gateway(upstream),
        }),
        ErrorSource::Downstream => match etype {
            ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout => None,
            _ => Some(ErrorResponse::bad_request("Malformed request")),
        },
        ErrorSource::Internal | ErrorSource::Unset => Some(ErrorResponse::internal()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::RouteTimeouts;

    fn cx(connect_bound: bool, read_bound: bool) -> FailureContext<'static> {
        FailureContext {
            upstream: Some("api"),
            timeouts: Some(RouteTimeouts {
                connect: Duration::from_secs(2),
                read: Duration::from_secs(10),
                total: Duration::from_secs(30),
                idle: Duration::from_secs(300),
            }),
            connect_bound_by_total: connect_bound,
            read_bound_by_total: read_bound,
        }
    }

    fn upstream_error(t: ErrorType) -> Box<Error> {
        Error::new_up(t)
    }

    #[test]
    fn total_timeout_body_quotes_the_route_number() {
        let r = classify(&Error::new(REQUEST_TIMEOUT), &cx(false, false)).expect("response");
        assert_eq!(r.status, 504);
        assert_eq!(
            r.body(),
            Bytes::from_static(
                br#"{"error":"request_timeout","message":"Request exceeded 30.0s timeout"}"#
            )
        );
    }

    #[test]
    fn read_timeout_bound_by_the_deadline_is_a_request_timeout() {
        let e = upstream_error(ErrorType::ReadTimedout);
        assert_eq!(
            classify(&e, &cx(false, true)).map(|r| r.code),
            Some("request_timeout")
        );
        assert_eq!(
            classify(&e, &cx(false, false)).map(|r| r.code),
            Some("upstream_timeout")
        );
    }

    #[test]
    fn refused_and_broken_upstreams_are_502() {
        for t in [
            ErrorType::ConnectRefused,
            ErrorType::ConnectionClosed,
            ErrorType::InvalidHTTPHeader,
        ] {
            let r = classify(&upstream_error(t), &cx(false, false)).expect("response");
            assert_eq!((r.status, r.code), (502, "bad_gateway"));
        }
    }

    #[test]
    fn a_vanished_client_gets_nothing_and_a_malformed_one_gets_400() {
        let gone = Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(classify(&gone, &cx(false, false)), None);
        let bad = Error::new_down(ErrorType::InvalidHTTPHeader);
        assert_eq!(
            classify(&bad, &cx(false, false)).map(|r| r.status),
            Some(400)
        );
    }
}
