//! The per-request context every `ProxyHttp` phase reads and fills.

use crate::cache::policy::RequestDirectives;
use crate::config::model::RouteTimeouts;
use crate::gateway::{Gateway, Route};
use crate::metrics::InFlightGuard;
use crate::ratelimit::identity::Identity;
use crate::ratelimit::RateHeaders;
use crate::router::RouteId;
use crate::upstream::attempt::Attempts;
use crate::upstream::UpstreamPool;
use crate::values::host::Host;
use http::HeaderValue;
use std::sync::Arc;
use std::time::Instant;

/// State of one request, from `new_ctx` to `logging`.
///
/// Counters tied to the request (`in_flight`, the backend lease in `upstream`) are RAII guards,
/// released when the context drops however the request ends.
pub struct RequestCtx {
    /// When the request arrived; the total timeout counts from here.
    pub started: Instant,
    /// The config generation this request runs on, start to finish.
    pub gateway: Arc<Gateway>,
    /// The request's normalised host, computed once in `request_filter`:
    /// what the router matched and what the cache key holds.
    pub host: Option<Host>,
    /// Whether the client connected over TLS (the scheme in the cache key
    /// and `X-Forwarded-Proto`), set in `request_filter`.
    pub tls: bool,
    /// The matched route, set in `request_filter`.
    pub route: Option<RouteId>,
    /// The path the upstream received, when the route rewrote it.
    pub upstream_path: Option<String>,
    /// The pool this request goes to (a split route chose it), set with
    /// the route; `None` without a route and on a redirect route.
    pub pool: Option<Arc<UpstreamPool>>,
    /// A sticky split's cookie to set on the response.
    pub set_cookie: Option<String>,
    /// The request id (client's or generated), sent upstream and back.
    pub request_id: Option<HeaderValue>,
    /// The backend leased, attempts made, their timings and deadlines.
    pub upstream: Attempts,
    /// Status of an error response we generated (0: client was gone).
    pub error_status: Option<u16>,
    /// What the request's `Cache-Control` asks of the cache.
    pub cache_directives: RequestDirectives,
    /// Who sent the request, decided once in `request_filter` before the
    /// cache is asked (`None` without rate limiting, or on an exempt route
    /// whose key did not identify anyone).
    pub identity: Option<Identity>,
    /// Fields an admitting auth service (`forward_auth`) gave for the
    /// upstream.
    pub auth_fields: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The route's auth service admitted the request (or failed open).
    pub auth_admitted: bool,
    /// The client's request carried a credential (`Authorization` or an
    /// API-key field): its response is stored only when it says it may be
    /// shared (RFC 9111 §3.5). Read before the key is removed upstream.
    pub credentialed: bool,
    /// This is Pingora's background subrequest (a stale-while-revalidate
    /// refresh), not a client's request: no admission, no client metrics.
    pub subrequest: bool,
    /// Rate-limit headers for the response, once a budget was decided.
    pub rate_headers: Option<RateHeaders>,
    /// Response body bytes before compression.
    pub body_bytes_in: u64,
    /// What tollgate does to this response's body itself: brotli encoding,
    /// or decoding for a client that cannot take its coding.
    pub body_coding: Option<crate::compression::BodyCoding>,
    /// Request body bytes received so far (checked against the route's limit).
    pub request_body_bytes: u64,
    /// The fields of an upstream 304 that answered a revalidation, until
    /// `response_cache_filter` updates the stored response with them.
    pub not_modified: Option<http::HeaderMap>,
    /// The cache key, when the fresh-hit path built it and found nothing to
    /// serve: Pingora's `cache_key_callback` takes it instead of building it again.
    pub cache_key: Option<pingora::cache::key::CacheKey>,
    /// The request is a gRPC call (`Content-Type: application/grpc…`):
    /// never cached or compressed, and tollgate's own answers are gRPC
    /// statuses in a trailers-only response.
    pub grpc: bool,
    /// The client's `grpc-timeout`, which caps the route's total for this call.
    pub deadline_cap: Option<std::time::Duration>,
    /// The request asked to switch protocols (WebSocket): its answer is
    /// never cached or compressed, and once the backend says 101 the
    /// connection is a tunnel bounded by `timeouts.idle`.
    pub upgrade: bool,
    /// The backend switched protocols: the tunnel's bytes are streamed
    /// and counted, and the total timeout no longer applies.
    pub tunnel: Option<crate::tunnel::OpenTunnel>,
    /// `grpc-status` of the answer (its trailers, or a trailers-only
    /// header), for the access line and metrics.
    pub grpc_status: Option<u16>,
    /// Why the request's `Connection` header is refused, found when its
    /// nominated fields were removed (before anything read the request);
    /// answered as a 400 by the first step that can answer.
    pub connection_problem: Option<crate::connection_options::ConnectionProblem>,
    /// The request's trace context (`tracing` on), its spans when sampled;
    /// `None` with tracing off, so nothing is recorded or paid for.
    pub trace: Option<Box<crate::trace::recorder::RequestTrace>>,
    /// `tollgate_requests_in_flight`, released early for a subrequest.
    in_flight: Option<InFlightGuard>,
}

impl RequestCtx {
    /// A fresh context on `gateway`, counted in `tollgate_requests_in_flight`.
    pub fn new(gateway: Arc<Gateway>, in_flight: &prometheus::IntGauge) -> Self {
        Self {
            started: Instant::now(),
            gateway,
            host: None,
            tls: false,
            route: None,
            request_id: None,
            upstream: Attempts::default(),
            error_status: None,
            cache_directives: RequestDirectives::default(),
            identity: None,
            auth_fields: Vec::new(),
            auth_admitted: false,
            credentialed: false,
            subrequest: false,
            upstream_path: None,
            pool: None,
            set_cookie: None,
            rate_headers: None,
            body_bytes_in: 0,
            body_coding: None,
            request_body_bytes: 0,
            cache_key: None,
            not_modified: None,
            grpc: false,
            deadline_cap: None,
            upgrade: false,
            tunnel: None,
            grpc_status: None,
            connection_problem: None,
            trace: None,
            in_flight: Some(InFlightGuard::new(in_flight)),
        }
    }

    /// The configured tenant identified by its API key or client
    /// certificate (index into the rate limiter's tenants), if any.
    pub fn tenant(&self) -> Option<usize> {
        match self.identity {
            Some(Identity::Tenant(i) | Identity::Certificate(i) | Identity::AuthService(i)) => {
                Some(i)
            }
            _ => None,
        }
    }

    /// Marks this context as Pingora's background subrequest: it is not a
    /// client's request, so it leaves the in-flight gauge at once.
    pub fn mark_subrequest(&mut self) {
        self.subrequest = true;
        self.in_flight = None;
    }

    /// The matched route, if any.
    pub fn route(&self) -> Option<&Route> {
        self.route.map(|id| self.gateway.route(id))
    }

    /// The route's timeouts as they hold for this request: the total
    /// capped by a gRPC client's `grpc-timeout` (and connect and read by
    /// that total). An upgrade's tunnel gets `idle` as its read and write
    /// timeout in `upstream_peer`.
    pub fn timeouts(&self) -> Option<RouteTimeouts> {
        let mut t = self.route()?.timeouts;
        if let Some(cap) = self.deadline_cap {
            t.total = t.total.min(cap);
            t.connect = t.connect.min(t.total);
            t.read = t.read.min(t.total);
        }
        Some(t)
    }

    /// This request's timeouts with the pool chosen for it, and the
    /// request's attempts, borrowed together so an upstream phase can read
    /// the first and update the other.
    pub fn timeouts_and_attempts(
        &mut self,
    ) -> (Option<(RouteTimeouts, &Arc<UpstreamPool>)>, &mut Attempts) {
        let timeouts = self.timeouts();
        (timeouts.zip(self.pool.as_ref()), &mut self.upstream)
    }

    /// The request's trace when it is sampled: where the phases record
    /// their spans.
    pub fn recording(&mut self) -> Option<&mut crate::trace::recorder::RequestTrace> {
        self.trace.as_deref_mut().filter(|t| t.sampled)
    }

    /// The name of the pool chosen for this request (`-` if none).
    pub fn pool_name(&self) -> &str {
        self.pool.as_ref().map_or("-", |p| p.name())
    }
}
