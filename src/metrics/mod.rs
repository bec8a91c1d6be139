//! Every Prometheus metric tollgate exports, registered once per process.
//!
//! Labels come from config names (route, upstream, backend address), never
//! from raw request data, so cardinality is bounded by the config. Hot-path
//! users keep pre-resolved children (see [`RouteMetrics`]) so a request does
//! not hash label values it already knows.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

mod children;
mod labels;
pub use children::{InFlightGuard, RouteMetrics};
pub use labels::*;

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    /// Every metric family name, for the docs and dashboards checks.
    names: Vec<String>,
    /// `tollgate_requests_total{route,method,status}`.
    pub requests: IntCounterVec,
    /// `tollgate_request_duration_seconds{route,method}`.
    pub request_duration: HistogramVec,
    /// `tollgate_requests_in_flight`.
    pub in_flight: IntGauge,
    /// `tollgate_upstream_in_flight{upstream,backend}`.
    pub upstream_in_flight: IntGaugeVec,
    /// `tollgate_build_info{version}`, always 1.
    pub build_info: IntGaugeVec,
    /// `tollgate_upstream_healthy{upstream,backend}`: 1 when the backend may
    /// take traffic (active check passing and not out by passive health).
    pub upstream_healthy: IntGaugeVec,
    /// `tollgate_upstream_failures_total{upstream,backend,kind}`.
    pub upstream_failures: IntCounterVec,
    /// `tollgate_upstream_retries_total{upstream}`.
    pub upstream_retries: IntCounterVec,
    /// `tollgate_upstream_panic_total{upstream}`.
    pub upstream_panic: IntCounterVec,
    /// `tollgate_upstream_backends{upstream}`: the pool's current addresses
    /// (config addresses plus what its DNS names resolve to now).
    pub upstream_backends: IntGaugeVec,
    /// `tollgate_dns_resolutions_total{upstream,result}`.
    pub dns_resolutions: IntCounterVec,
    /// `tollgate_upstream_request_duration_seconds{upstream}`: from choosing
    /// a backend to the end of its response, per attempt.
    pub upstream_duration: HistogramVec,
    /// `tollgate_config_reloads_total{result}`: `ok` or `error`.
    pub config_reloads: IntCounterVec,
    /// `tollgate_cache_requests_total{route,result}`.
    pub cache_requests: IntCounterVec,
    /// `tollgate_cache_size_bytes`: memory the cache holds (bodies, headers, per-entry overhead), bounded by `cache.max_size`.
    pub cache_size: IntGauge,
    /// `tollgate_cache_entries`.
    pub cache_entries: IntGauge,
    /// `tollgate_cache_purged_unreclaimed_entries`: entries a large purge took out of service whose memory is still being freed.
    pub cache_unreclaimed: IntGauge,
    /// `tollgate_cache_evictions_total`.
    pub cache_evictions: IntCounter,
    /// `tollgate_cache_purges_total{reason}`: `admin` or `invalidation`; counts entries removed.
    pub cache_purges: IntCounterVec,
    /// `tollgate_ratelimit_decisions_total{tier,decision}`: `allowed` or `limited`.
    pub ratelimit_decisions: IntCounterVec,
    /// `tollgate_ratelimit_fallback_total{tier}`: decisions made locally because Redis failed.
    pub ratelimit_fallback: IntCounterVec,
    /// `tollgate_auth_failures_total{reason}`: requests refused with 401,
    /// by why (a JWT's failure, `api_key`, `missing`).
    pub auth_failures: IntCounterVec,
    /// `tollgate_auth_jwks_fetches_total{result}`: key-set fetches (`ok`, `error`).
    pub jwks_fetches: IntCounterVec,
    /// `tollgate_trace_spans_exported_total`: spans the collector accepted.
    pub trace_spans_exported: IntCounter,
    /// `tollgate_trace_spans_dropped_total{reason}`: spans of sampled
    /// requests never delivered (`queue_full`, `export_failed`, `not_running`).
    pub trace_spans_dropped: IntCounterVec,
    /// `tollgate_ratelimit_tenant_decisions_total{tenant,decision}`, only for tiers with `tenant_metrics`.
    pub ratelimit_tenant_decisions: IntCounterVec,
    /// `tollgate_ratelimit_buckets`: in-process buckets held.
    pub ratelimit_buckets: IntGauge,
    /// `tollgate_ratelimit_buckets_evicted_total`: buckets dropped by the
    /// `max_local_buckets` cap (brought up to date at scrape time).
    pub ratelimit_buckets_evicted: IntCounter,
    /// `tollgate_redis_errors_total{kind}`: `timeout`, `error`.
    pub redis_errors: IntCounterVec,
    /// `tollgate_redis_breaker_opens_total`: times consecutive Redis
    /// failures opened the circuit breaker.
    pub redis_breaker_opens: IntCounter,
    /// `tollgate_redis_breaker_open`: 1 while requests do not ask Redis.
    pub redis_breaker_open: IntGauge,
    /// `tollgate_client_connections`: client connections being served.
    pub client_connections: IntGauge,
    /// `tollgate_connections_refused_total{reason}`: over `max_connections`
    /// or `max_connections_per_ip`.
    pub connections_refused: IntCounterVec,
    /// `tollgate_request_header_timeouts_total`: connections closed because a
    /// request head did not arrive within `limits.header_timeout`.
    pub header_timeouts: IntCounter,
    /// `tollgate_requests_by_protocol_total{protocol}`: client requests by
    /// the HTTP version they came in (`http1`, `h2`).
    pub requests_by_protocol: IntCounterVec,
    /// `tollgate_requests_by_protocol_total{protocol="http1"}`, resolved once.
    pub requests_h1: IntCounter,
    /// `tollgate_requests_by_protocol_total{protocol="h2"}`, resolved once.
    pub requests_h2: IntCounter,
    /// `tollgate_grpc_calls_total{route,grpc_status}`: gRPC calls by the
    /// status they ended with (the backend's trailers, or tollgate's own).
    pub grpc_calls: IntCounterVec,
    /// `tollgate_address_refusals_total{route,by}`: requests refused 403
    /// for their client address, by the route's or the tenant's list.
    pub address_refusals: IntCounterVec,
    /// `tollgate_cors_preflights_total{route,result}`: CORS preflights
    /// answered by tollgate (`allowed`, `refused`).
    pub cors_preflights: IntCounterVec,
    /// `tollgate_forward_auth_decisions_total{route,decision,source}`:
    /// what the auth services of `forward_auth` decided (`admitted`,
    /// `refused`, `failed`, `failed_open`, `unknown_tenant`), asked
    /// (`service`) or remembered (`cache`).
    pub forward_auth_decisions: IntCounterVec,
    /// `tollgate_client_certificates_total{listener,result}`: handshakes
    /// of listeners that ask for client certificates, by what became of
    /// the certificate (`verified`, `absent`, `revoked`, `expired`,
    /// `untrusted`, `crl_unavailable`, `invalid`).
    pub client_certificates: IntCounterVec,
    /// `tollgate_forward_auth_duration_seconds{route}`: how long the auth
    /// service took to answer (or to fail), per question asked.
    pub forward_auth_duration: HistogramVec,
    /// `tollgate_tunnels_open`: upgraded connections (WebSockets) open now.
    pub tunnels_open: IntGauge,
    /// `tollgate_tunnels_total`: upgraded connections opened.
    pub tunnels_total: IntCounter,
    /// `tollgate_tunnel_bytes_total{direction}`: bytes carried by tunnels,
    /// `to_backend` and `from_backend`.
    pub tunnel_bytes: IntCounterVec,
    /// `tollgate_compression_bytes_total{encoding,direction}`: body bytes
    /// before (`in`) and after (`out`) compression.
    pub compression_bytes: IntCounterVec,
    /// Rate-limit rejections per tenant since the status page last sampled
    /// (not exported: tenants are unbounded label values).
    pub rejected_tenants: crate::rejections::RejectionTally,
    /// `tollgate_access_log_dropped_total`: access-log lines dropped
    /// because the writer could not keep up.
    pub access_log_dropped: IntCounter,
    /// `tollgate_cache_l2_requests_total{result}`: Redis-tier lookups,
    /// `hit`, `miss`, `error`, `timeout`.
    pub cache_l2_requests: IntCounterVec,
    /// `tollgate_cache_l2_writes_total{result}`: `ok`, `dropped`, `overtaken`, `error`.
    pub cache_l2_writes: IntCounterVec,
    /// `tollgate_cache_l2_purge_drains`: purges whose Redis entries are still being deleted after they answered.
    pub cache_l2_drains: IntGauge,
    /// `tollgate_cache_l2_lookup_duration_seconds`.
    pub cache_l2_lookup_seconds: Histogram,
    /// `tollgate_cache_l2_implausible_generations_total`: shared purge
    /// generations heard far ahead of the clock and ignored.
    pub cache_implausible_generations: IntCounter,
    /// `tollgate_cache_purge_channel_listening`: 1 while this instance
    /// hears the other instances' purges (subscribed, and caught up after
    /// a time it could not hear them).
    pub cache_purge_channel_listening: IntGauge,
    /// `tollgate_cache_fills_too_old_total`: responses not stored because
    /// their request began before every purge the log still remembers.
    pub cache_fills_too_old: IntCounter,
    /// `tollgate_cache_l2_write_queue_bytes`: values waiting for the
    /// Redis tier's writer.
    pub cache_l2_write_queue_bytes: IntGauge,
    /// `tollgate_cache_l2_redis_too_old`: 1 while the Redis found is older
    /// than the tier needs (the tier stays off).
    pub cache_l2_redis_too_old: IntGauge,
    /// `tollgate_cache_invalidation_queue`: shared parts of invalidations
    /// and purges waiting or in flight (`cache::l2::outbox`).
    pub cache_invalidation_queue: IntGauge,
    /// `tollgate_cache_invalidation_queue_bytes`: the memory they hold.
    pub cache_invalidation_queue_bytes: IntGauge,
    /// `tollgate_cache_invalidations_shared_total{result}`: shared parts
    /// `sent`, `coalesced` (an identical one was waiting), `dropped` (the
    /// queue was full), `failed` (Redis did not take it), `local` (no
    /// caching route serves the URI: nothing to share).
    pub cache_invalidations_shared: IntCounterVec,
    /// `tollgate_cache_background_refreshes_total{route,status}`: Pingora's
    /// stale-while-revalidate subrequests, which are not client requests
    /// and so are not in `tollgate_requests_total` or the access log.
    pub cache_background_refreshes: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let mut names = Vec::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tollgate_requests_total",
                "Requests answered, by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_request_duration_seconds",
                "Time from request arrival to the end of the response, by route and method",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )?;
        let in_flight = IntGauge::new(
            "tollgate_requests_in_flight",
            "Requests being processed now",
        )?;
        let upstream_in_flight = IntGaugeVec::new(
            Opts::new(
                "tollgate_upstream_in_flight",
                "Requests currently assigned to a backend (the least-connections count)",
            ),
            &["upstream", "backend"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "tollgate_build_info",
                "Build information; the value is always 1",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "tollgate_upstream_healthy",
                "1 when the backend may take traffic (active check passing, not out by passive health)",
            ),
            &["upstream", "backend"],
        )?;
        let upstream_failures = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_failures_total",
                "Failed requests to a backend, by kind: connect, timeout, closed, status_5xx; \
                 stale_connection (a reused pooled connection the backend had closed) and \
                 deadline (a timeout the route's total cut short) never count toward max_fails",
            ),
            &["upstream", "backend", "kind"],
        )?;
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_retries_total",
                "Attempts made after a failed one (on another backend, or on a fresh connection)",
            ),
            &["upstream"],
        )?;
        let upstream_panic = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_panic_total",
                "Requests sent while passive health had every backend of the pool out of \
                 rotation: they go to all of them instead of failing (panic mode)",
            ),
            &["upstream"],
        )?;
        let upstream_backends = IntGaugeVec::new(
            Opts::new(
                "tollgate_upstream_backends",
                "Addresses currently in the pool: config addresses plus what its DNS names resolve to",
            ),
            &["upstream"],
        )?;
        let dns_resolutions = IntCounterVec::new(
            Opts::new(
                "tollgate_dns_resolutions_total",
                "Resolutions of backend names, by result: ok, or timeout, nxdomain, no_records, \
                 servfail, refused, unreachable, error (the last good addresses stay in use)",
            ),
            &["upstream", "result"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_request_duration_seconds",
                "Time from choosing a backend to the end of its response, per attempt",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "tollgate_config_reloads_total",
                "Config reloads by result: ok or error",
            ),
            &["result"],
        )?;
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_requests_total",
                "Requests on cached routes by outcome: hit, stale, revalidated, expired, miss, bypass, uncacheable",
            ),
            &["route", "result"],
        )?;
        let cache_size = IntGauge::new(
            "tollgate_cache_size_bytes",
            "Memory held by the response cache: bodies, headers and per-entry overhead",
        )?;
        let cache_entries = IntGauge::new("tollgate_cache_entries", "Responses held by the cache")?;
        let cache_unreclaimed = IntGauge::new(
            "tollgate_cache_purged_unreclaimed_entries",
            "Entries a large purge took out of service (no longer served) whose memory the reclaimer has yet to free",
        )?;
        let cache_evictions = IntCounter::new(
            "tollgate_cache_evictions_total",
            "Entries evicted to stay within cache.max_size",
        )?;
        let cache_purges = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_purges_total",
                "Entries removed by purge, by reason: admin, invalidation, or remote (a purge another instance published)",
            ),
            &["reason"],
        )?;
        for reason in ["admin", "invalidation", "remote"] {
            cache_purges.with_label_values(&[reason]);
        }
        let ratelimit_decisions = IntCounterVec::new(
            Opts::new(
                "tollgate_ratelimit_decisions_total",
                "Rate-limit decisions by tier: allowed or limited",
            ),
            &["tier", "decision"],
        )?;
        let ratelimit_fallback = IntCounterVec::new(
            Opts::new(
                "tollgate_ratelimit_fallback_total",
                "Decisions made with local buckets because Redis failed",
            ),
            &["tier"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "tollgate_auth_failures_total",
                "Requests refused with 401, by reason",
            ),
            &["reason"],
        )?;
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "tollgate_auth_jwks_fetches_total",
                "Fetches of issuers' JSON Web Key Sets, by result",
            ),
            &["result"],
        )?;
        let trace_spans_exported = IntCounter::new(
            "tollgate_trace_spans_exported_total",
            "Spans of sampled requests the OTLP collector accepted",
        )?;
        let trace_spans_dropped = IntCounterVec::new(
            Opts::new(
                "tollgate_trace_spans_dropped_total",
                "Spans of sampled requests dropped, by reason (queue_full, export_failed, not_running)",
            ),
            &["reason"],
        )?;
        for reason in ["queue_full", "export_failed", "not_running"] {
            trace_spans_dropped.with_label_values(&[reason]);
        }
        let ratelimit_tenant_decisions = IntCounterVec::new(
            Opts::new(
                "tollgate_ratelimit_tenant_decisions_total",
                "Rate-limit decisions per tenant, for tiers with tenant_metrics: true",
            ),
            &["tenant", "decision"],
        )?;
        let ratelimit_buckets = IntGauge::new(
            "tollgate_ratelimit_buckets",
            "In-process rate-limit buckets held",
        )?;
        let ratelimit_buckets_evicted = IntCounter::new(
            "tollgate_ratelimit_buckets_evicted_total",
            "In-process rate-limit buckets evicted by the rate_limit.max_local_buckets cap",
        )?;
        register(
            &registry,
            &mut names,
            Box::new(ratelimit_buckets_evicted.clone()),
        )?;
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "tollgate_redis_errors_total",
                "Failed Redis calls by kind: timeout or error",
            ),
            &["kind"],
        )?;
        for kind in ["timeout", "error"] {
            redis_errors.with_label_values(&[kind]);
        }
        let redis_breaker_opens = IntCounter::new(
            "tollgate_redis_breaker_opens_total",
            "Times consecutive Redis failures opened the circuit breaker",
        )?;
        let redis_breaker_open = IntGauge::new(
            "tollgate_redis_breaker_open",
            "1 while the circuit breaker keeps rate-limit decisions local without asking Redis",
        )?;
        let client_connections = IntGauge::new(
            "tollgate_client_connections",
            "Client connections being served",
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "tollgate_connections_refused_total",
                "Client connections refused with 503 over a connection limit",
            ),
            &["reason"],
        )?;
        for reason in ["max_connections", "max_connections_per_ip"] {
            connections_refused.with_label_values(&[reason]);
        }
        let header_timeouts = IntCounter::new(
            "tollgate_request_header_timeouts_total",
            "Connections closed because a request head did not arrive within limits.header_timeout",
        )?;
        register(&registry, &mut names, Box::new(client_connections.clone()))?;
        register(&registry, &mut names, Box::new(connections_refused.clone()))?;
        register(&registry, &mut names, Box::new(header_timeouts.clone()))?;
        let requests_by_protocol = IntCounterVec::new(
            Opts::new(
                "tollgate_requests_by_protocol_total",
                "Client requests by the HTTP version they came in: http1, h2",
            ),
            &["protocol"],
        )?;
        let requests_h1 = requests_by_protocol.with_label_values(&["http1"]);
        let requests_h2 = requests_by_protocol.with_label_values(&["h2"]);
        let grpc_calls = IntCounterVec::new(
            Opts::new(
                "tollgate_grpc_calls_total",
                "gRPC calls by route and the grpc-status they ended with (backend's or tollgate's own)",
            ),
            &["route", "grpc_status"],
        )?;
        let address_refusals = IntCounterVec::new(
            Opts::new(
                "tollgate_address_refusals_total",
                "Requests refused (403) for their client address, by route and whose list (route, tenant)",
            ),
            &["route", "by"],
        )?;
        let cors_preflights = IntCounterVec::new(
            Opts::new(
                "tollgate_cors_preflights_total",
                "CORS preflights answered by tollgate, by route and result (allowed, refused)",
            ),
            &["route", "result"],
        )?;
        let forward_auth_decisions = IntCounterVec::new(
            Opts::new(
                "tollgate_forward_auth_decisions_total",
                "Forward-auth decisions by route, decision (admitted, refused, failed, failed_open, unknown_tenant) and source (service, cache)",
            ),
            &["route", "decision", "source"],
        )?;
        let client_certificates = IntCounterVec::new(
            Opts::new(
                "tollgate_client_certificates_total",
                "Handshakes on listeners asking for client certificates, by listener and result (verified, absent, revoked, expired, untrusted, crl_unavailable, invalid)",
            ),
            &["listener", "result"],
        )?;
        let forward_auth_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_forward_auth_duration_seconds",
                "Time the forward-auth service took to answer or fail, per question asked",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let tunnels_open = IntGauge::new(
            "tollgate_tunnels_open",
            "Upgraded connections (WebSockets) open now",
        )?;
        let tunnels_total = IntCounter::new(
            "tollgate_tunnels_total",
            "Upgraded connections (WebSockets) opened",
        )?;
        let tunnel_bytes = IntCounterVec::new(
            Opts::new(
                "tollgate_tunnel_bytes_total",
                "Bytes carried by upgraded connections, to_backend and from_backend",
            ),
            &["direction"],
        )?;
        for direction in ["to_backend", "from_backend"] {
            tunnel_bytes.with_label_values(&[direction]);
        }
        register(
            &registry,
            &mut names,
            Box::new(requests_by_protocol.clone()),
        )?;
        register(&registry, &mut names, Box::new(grpc_calls.clone()))?;
        register(&registry, &mut names, Box::new(tunnels_open.clone()))?;
        register(&registry, &mut names, Box::new(tunnels_total.clone()))?;
        register(&registry, &mut names, Box::new(tunnel_bytes.clone()))?;
        let compression_bytes = IntCounterVec::new(
            Opts::new(
                "tollgate_compression_bytes_total",
                "Response body bytes before (in) and after (out) compression, by encoding",
            ),
            &["encoding", "direction"],
        )?;
        register(&registry, &mut names, Box::new(compression_bytes.clone()))?;
        let access_log_dropped = IntCounter::new(
            "tollgate_access_log_dropped_total",
            "Access-log lines dropped because the log writer could not keep up",
        )?;
        register(&registry, &mut names, Box::new(access_log_dropped.clone()))?;
        let cache_l2_requests = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_l2_requests_total",
                "Lookups in the cache's Redis tier after a memory miss: hit, miss, error, timeout",
            ),
            &["result"],
        )?;
        let cache_l2_drains = IntGauge::new(
            "tollgate_cache_l2_purge_drains",
            "Purges that answered and whose Redis entries (hidden by their markers) are still being deleted",
        )?;
        let cache_l2_writes = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_l2_writes_total",
                "Responses written to the cache's Redis tier: ok, dropped (queue full), overtaken (a newer purge names it), error",
            ),
            &["result"],
        )?;
        let cache_implausible_generations = IntCounter::new(
            "tollgate_cache_l2_implausible_generations_total",
            "Shared purge generations heard more than a minute ahead of the clock and ignored",
        )?;
        let cache_l2_redis_too_old = IntGauge::new(
            "tollgate_cache_l2_redis_too_old",
            "1 while the Redis server is older than the cache tier needs (7.0); the tier stays off",
        )?;
        let cache_purge_channel_listening = IntGauge::new(
            "tollgate_cache_purge_channel_listening",
            "1 while this instance hears the other instances' purges on the Redis channel (0: its memory entries live at most 5 s)",
        )?;
        let cache_fills_too_old = IntCounter::new(
            "tollgate_cache_fills_too_old_total",
            "Responses not stored in memory because their request began before every purge the purge log still remembers",
        )?;
        let cache_l2_write_queue_bytes = IntGauge::new(
            "tollgate_cache_l2_write_queue_bytes",
            "Bytes of responses waiting to be written to the cache's Redis tier",
        )?;
        let cache_invalidation_queue = IntGauge::new(
            "tollgate_cache_invalidation_queue",
            "Shared parts of invalidations and purges waiting for Redis or in flight",
        )?;
        let cache_invalidation_queue_bytes = IntGauge::new(
            "tollgate_cache_invalidation_queue_bytes",
            "Memory held by the shared parts of invalidations waiting for Redis",
        )?;
        let cache_invalidations_shared = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_invalidations_shared_total",
                "Shared parts of invalidations: sent, coalesced, dropped (queue full), failed, local (no caching route serves the URI)",
            ),
            &["result"],
        )?;
        for result in ["sent", "coalesced", "dropped", "failed", "local"] {
            cache_invalidations_shared.with_label_values(&[result]);
        }
        for m in [
            Box::new(cache_implausible_generations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(cache_l2_redis_too_old.clone()),
            Box::new(cache_l2_write_queue_bytes.clone()),
            Box::new(cache_fills_too_old.clone()),
            Box::new(cache_purge_channel_listening.clone()),
            Box::new(cache_invalidation_queue.clone()),
            Box::new(cache_invalidation_queue_bytes.clone()),
            Box::new(cache_invalidations_shared.clone()),
        ] {
            register(&registry, &mut names, m)?;
        }
        let cache_l2_lookup_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tollgate_cache_l2_lookup_duration_seconds",
                "Time a lookup in the cache's Redis tier took",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let cache_background_refreshes = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_background_refreshes_total",
                "Background refreshes of stale entries (stale-while-revalidate), by route and upstream status (0: failed)",
            ),
            &["route", "status"],
        )?;
        register(
            &registry,
            &mut names,
            Box::new(cache_background_refreshes.clone()),
        )?;
        register(&registry, &mut names, Box::new(cache_l2_requests.clone()))?;
        register(&registry, &mut names, Box::new(cache_l2_writes.clone()))?;
        register(&registry, &mut names, Box::new(cache_l2_drains.clone()))?;
        register(
            &registry,
            &mut names,
            Box::new(cache_l2_lookup_seconds.clone()),
        )?;
        register(&registry, &mut names, Box::new(ratelimit_decisions.clone()))?;
        register(&registry, &mut names, Box::new(ratelimit_fallback.clone()))?;
        register(&registry, &mut names, Box::new(auth_failures.clone()))?;
        register(&registry, &mut names, Box::new(jwks_fetches.clone()))?;
        register(&registry, &mut names, Box::new(address_refusals.clone()))?;
        register(&registry, &mut names, Box::new(cors_preflights.clone()))?;
        register(
            &registry,
            &mut names,
            Box::new(forward_auth_decisions.clone()),
        )?;
        register(&registry, &mut names, Box::new(client_certificates.clone()))?;
        register(
            &registry,
            &mut names,
            Box::new(forward_auth_duration.clone()),
        )?;
        register(
            &registry,
            &mut names,
            Box::new(trace_spans_exported.clone()),
        )?;
        register(&registry, &mut names, Box::new(trace_spans_dropped.clone()))?;
        register(
            &registry,
            &mut names,
            Box::new(ratelimit_tenant_decisions.clone()),
        )?;
        register(&registry, &mut names, Box::new(ratelimit_buckets.clone()))?;
        register(&registry, &mut names, Box::new(redis_errors.clone()))?;
        register(&registry, &mut names, Box::new(redis_breaker_opens.clone()))?;
        register(&registry, &mut names, Box::new(redis_breaker_open.clone()))?;
        register(&registry, &mut names, Box::new(cache_requests.clone()))?;
        register(&registry, &mut names, Box::new(cache_size.clone()))?;
        register(&registry, &mut names, Box::new(cache_entries.clone()))?;
        register(&registry, &mut names, Box::new(cache_unreclaimed.clone()))?;
        register(&registry, &mut names, Box::new(cache_evictions.clone()))?;
        register(&registry, &mut names, Box::new(cache_purges.clone()))?;
        register(&registry, &mut names, Box::new(upstream_healthy.clone()))?;
        register(&registry, &mut names, Box::new(upstream_failures.clone()))?;
        register(&registry, &mut names, Box::new(upstream_retries.clone()))?;
        register(&registry, &mut names, Box::new(upstream_panic.clone()))?;
        register(&registry, &mut names, Box::new(upstream_backends.clone()))?;
        register(&registry, &mut names, Box::new(dns_resolutions.clone()))?;
        register(&registry, &mut names, Box::new(upstream_duration.clone()))?;
        register(&registry, &mut names, Box::new(config_reloads.clone()))?;
        register(&registry, &mut names, Box::new(requests.clone()))?;
        register(&registry, &mut names, Box::new(request_duration.clone()))?;
        register(&registry, &mut names, Box::new(in_flight.clone()))?;
        register(&registry, &mut names, Box::new(upstream_in_flight.clone()))?;
        register(&registry, &mut names, Box::new(build_info.clone()))?;
        Ok(Self {
            registry,
            names,
            requests,
            request_duration,
            in_flight,
            upstream_in_flight,
            build_info,
            upstream_healthy,
            upstream_failures,
            upstream_retries,
            upstream_panic,
            upstream_backends,
            dns_resolutions,
            upstream_duration,
            config_reloads,
            cache_requests,
            cache_size,
            cache_entries,
            cache_unreclaimed,
            cache_evictions,
            cache_purges,
            ratelimit_decisions,
            ratelimit_fallback,
            auth_failures,
            jwks_fetches,
            address_refusals,
            cors_preflights,
            forward_auth_decisions,
            forward_auth_duration,
            client_certificates,
            trace_spans_exported,
            trace_spans_dropped,
            ratelimit_tenant_decisions,
            ratelimit_buckets,
            ratelimit_buckets_evicted,
            redis_errors,
            redis_breaker_opens,
            redis_breaker_open,
            client_connections,
            connections_refused,
            header_timeouts,
            requests_by_protocol,
            requests_h1,
            requests_h2,
            grpc_calls,
            tunnels_open,
            tunnels_total,
            tunnel_bytes,
            compression_bytes,
            rejected_tenants: Default::default(),
            access_log_dropped,
            cache_l2_requests,
            cache_l2_writes,
            cache_l2_drains,
            cache_l2_lookup_seconds,
            cache_implausible_generations,
            cache_l2_redis_too_old,
            cache_l2_write_queue_bytes,
            cache_fills_too_old,
            cache_purge_channel_listening,
            cache_invalidation_queue,
            cache_invalidation_queue_bytes,
            cache_invalidations_shared,
            cache_background_refreshes,
        })
    }

    /// Every metric family tollgate exports.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Drops the per-backend series of a backend a reload removed.
    pub fn forget_backend(&self, upstream: &str, addr: std::net::SocketAddr) {
        let backend = addr.to_string();
        let labels = [upstream, backend.as_str()];
        let _ = self.upstream_in_flight.remove_label_values(&labels);
        let _ = self.upstream_healthy.remove_label_values(&labels);
    }

    /// Drops the per-pool series of a pool that is no longer configured.
    pub fn forget_upstream(&self, upstream: &str) {
        let _ = self.upstream_retries.remove_label_values(&[upstream]);
        let _ = self.upstream_panic.remove_label_values(&[upstream]);
        let _ = self.upstream_backends.remove_label_values(&[upstream]);
        for result in DNS_RESULTS {
            let _ = self
                .dns_resolutions
                .remove_label_values(&[upstream, result]);
        }
        let _ = self.upstream_duration.remove_label_values(&[upstream]);
    }

    /// Every metric family as it stands now, for the status page.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails on malformed metric families,
        // which registration already rules out.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("encoding metrics failed: {e}");
        }
        out
    }

    /// The per-method duration histograms of one route, resolved on first use.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.into(),
            family: self.request_duration.clone(),
            duration: Default::default(),
        }
    }

    /// Counts a finished request.
    pub fn observe_request(&self, route: &str, method: usize, status: &str) {
        self.requests
            .with_label_values(&[route, METHOD_LABELS[method], status])
            .inc();
    }
}

/// Registers a collector and remembers its family names.
fn register(
    registry: &Registry,
    names: &mut Vec<String>,
    collector: Box<dyn prometheus::core::Collector>,
) -> Result<(), prometheus::Error> {
    names.extend(collector.desc().iter().map(|d| d.fq_name.clone()));
    registry.register(collector)
}

#[cfg(test)]
mod tests;
