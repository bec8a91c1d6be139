//! The per-request context every `ProxyHttp` phase reads and fills.

use crate::cache::policy::RequestDirectives;
use crate::gateway::{Gateway, Route};
use crate::metrics::InFlightGuard;
use crate::ratelimit::RateHeaders;
use crate::router::RouteId;
use crate::upstream::BackendLease;
use http::HeaderValue;
use std::sync::Arc;
use std::time::Instant;

/// State of one request, from `new_ctx` to `logging`.
///
/// Counters tied to the request (`in_flight`, `backend`) are RAII guards,
/// released when the context drops however the request ends.
pub struct RequestCtx {
    /// When the request arrived; the total timeout counts from here.
    pub started: Instant,
    /// The config generation this request runs on, start to finish.
    pub gateway: Arc<Gateway>,
    /// The matched route, set in `request_filter`.
    pub route: Option<RouteId>,
    /// The request id (client's or generated), sent upstream and back.
    pub request_id: Option<HeaderValue>,
    /// The backend this request is on, for least-connections and logs.
    pub backend: Option<BackendLease>,
    /// The current attempt's timeouts were cut short by the total deadline.
    pub bound_by_total: DeadlineBound,
    /// Status of an error response we generated (0: client was gone).
    pub error_status: Option<u16>,
    /// Backends tried so far (1 + retries).
    pub attempts: usize,
    /// Timings of the current upstream attempt.
    pub timing: UpstreamTiming,
    /// What the request's `Cache-Control` asks of the cache.
    pub cache_directives: RequestDirectives,
    /// Rate-limit headers for the response, once a budget was decided.
    pub rate_headers: Option<RateHeaders>,
    /// Response body bytes before compression.
    pub body_bytes_in: u64,
    /// The cache key, when the fresh-hit path built it and found nothing to
    /// serve: Pingora's `cache_key_callback` takes it instead of building it again.
    pub cache_key: Option<pingora::cache::key::CacheKey>,
    _in_flight: InFlightGuard,
}

/// When the current upstream attempt reached each step, for the slow-request
/// log and `tollgate_upstream_request_duration_seconds`.
#[derive(Debug, Default, Clone, Copy)]
pub struct UpstreamTiming {
    /// A backend was chosen.
    pub chosen_at: Option<Instant>,
    /// The connection was established (or reused).
    pub connected_at: Option<Instant>,
    /// The response header arrived.
    pub first_byte_at: Option<Instant>,
    /// The attempt's duration was recorded.
    pub observed: bool,
}

/// Which of an attempt's timeouts were shortened to the remaining total time.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeadlineBound {
    /// The connect timeout.
    pub connect: bool,
    /// The read/write timeout.
    pub read: bool,
}

impl RequestCtx {
    /// A fresh context on `gateway`, counted in `tollgate_requests_in_flight`.
    pub fn new(gateway: Arc<Gateway>, in_flight: &prometheus::IntGauge) -> Self {
        Self {
            started: Instant::now(),
            gateway,
            route: None,
            request_id: None,
            backend: None,
            bound_by_total: DeadlineBound::default(),
            error_status: None,
            attempts: 0,
            timing: UpstreamTiming::default(),
            cache_directives: RequestDirectives::default(),
            rate_headers: None,
            body_bytes_in: 0,
            cache_key: None,
            _in_flight: InFlightGuard::new(in_flight),
        }
    }

    /// The matched route, if any.
    pub fn route(&self) -> Option<&Route> {
        self.route.map(|id| self.gateway.route(id))
    }
}
