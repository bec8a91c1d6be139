//! The `ProxyHttp` implementation: the order of things, and nothing else.
//! Each phase is a few calls into the module that owns the behaviour.

use crate::cache::{self, policy::RequestDirectives};
use crate::compression;
use crate::ctx::{RequestCtx, UpstreamTiming};
use crate::errors::{self, ErrorResponse, FailureContext};
use crate::headers;
use crate::ratelimit::{self, identity::Refusal, local::Check};
use crate::state::AppState;
use crate::upstream::FailureKind;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::{CacheKey, HashBinary};
use pingora::cache::{
    CacheMeta, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable, VarianceBuilder,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Request headers that ask more of the cache than "a fresh copy, whole":
/// such requests take Pingora's full cache path (304s, ranges, revalidation).
const ASKS_MORE_OF_THE_CACHE: [http::header::HeaderName; 8] = [
    http::header::CACHE_CONTROL,
    http::header::PRAGMA,
    http::header::RANGE,
    http::header::IF_NONE_MATCH,
    http::header::IF_MODIFIED_SINCE,
    http::header::IF_MATCH,
    http::header::IF_UNMODIFIED_SINCE,
    http::header::IF_RANGE,
];

/// The proxy service logic.
pub struct Proxy {
    state: Arc<AppState>,
}

impl Proxy {
    /// A proxy serving whatever config generation `state` holds.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// Records a failed attempt on the current backend (passive health,
    /// metrics) and says whether a retry is allowed: retries left, time
    /// left, and another backend ready to take it.
    fn note_failure(&self, ctx: &mut RequestCtx, kind: FailureKind) -> bool {
        let (Some(route), Some(lease)) = (ctx.route(), ctx.backend.as_ref()) else {
            return false;
        };
        let pool = &route.upstream;
        pool.record_failure(lease.backend(), kind, &self.state.metrics);
        let retry = ctx.attempts <= pool.retries()
            && ctx.started.elapsed() < route.timeouts.total
            && pool.has_other_ready(lease.socket_addr());
        if retry {
            pool.retries_counter().inc();
        }
        retry
    }

    /// `tollgate_upstream_request_duration_seconds`, once per attempt.
    fn observe_upstream_duration(&self, ctx: &mut RequestCtx) {
        if ctx.timing.observed {
            return;
        }
        if let (Some(route), Some(chosen)) = (ctx.route(), ctx.timing.chosen_at) {
            route
                .upstream
                .duration_histogram()
                .observe(chosen.elapsed().as_secs_f64());
            ctx.timing.observed = true;
        }
    }

    /// Sends one of our JSON errors, with the usual response headers.
    /// Whether budgets are decided before the cache lookup (the default).
    fn counts_cached(&self, ctx: &RequestCtx) -> bool {
        ctx.gateway
            .rate_limiter
            .as_ref()
            .is_none_or(|l| l.config.count_cached_responses)
    }

    /// Identifies the requester and decides its budget; the refusal (401
    /// or 429) to send, if any. Rate-limit headers go into `ctx` for the
    /// response either way.
    async fn rate_limit(&self, session: &Session, ctx: &mut RequestCtx) -> Option<ErrorResponse> {
        let gateway = ctx.gateway.clone();
        let limiter = gateway.rate_limiter.as_ref()?;
        let route = gateway.route(ctx.route?);
        let budget = route.rate_budget.as_ref()?;
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let who = match limiter.identify(session.req_header(), peer) {
            Ok(who) => who,
            Err(Refusal::InvalidKey) => return Some(ErrorResponse::invalid_api_key()),
            Err(Refusal::KeyRequired) => return Some(ErrorResponse::api_key_required()),
        };
        let tier = limiter.tier_of(&who)?;
        let key = limiter.bucket_key(&who);
        let route_key = (!budget.windows.is_empty()).then(|| format!("{key}|r:{}", route.name));
        let mut checks = vec![Check {
            key: &key,
            windows: &limiter.tiers[tier].windows,
            cost: budget.cost,
        }];
        if let Some(route_key) = &route_key {
            checks.push(Check {
                key: route_key,
                windows: &budget.windows,
                cost: budget.cost,
            });
        }
        let (verdicts, fallback) = self.state.rate.decide(&checks, &self.state.metrics).await;
        let decision = limiter.decision(tier, budget, &verdicts, fallback);
        ratelimit::count(&self.state.metrics, limiter, &who, &decision);
        let refusal = (!decision.allowed).then(|| {
            ErrorResponse::rate_limited(
                limiter.limited_message(&decision),
                &limiter.tiers[tier].name,
                decision.retry_after,
            )
        });
        ctx.rate_headers = Some(decision.headers);
        refusal
    }

    /// Serves a fresh stored response straight from the memory store, for
    /// GET/HEAD requests that ask nothing special of the cache, on entries
    /// without `Vary`. Pingora's cache path (lock, predictor, meta rebuild,
    /// hit handler, state machine) costs more than the rest of a hit
    /// together; this answers the common case with what that path would
    /// send (`Age`, `Cache-Status: hit`, the LRU touched) and leaves every
    /// other case to it. Measured in docs/BENCHMARKS.md.
    async fn serve_fresh_hit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(route) = ctx.route() else {
            return Ok(false);
        };
        let Some(policy) = route.cache.as_ref() else {
            return Ok(false);
        };
        let req = session.req_header();
        let head = req.method == http::Method::HEAD;
        if !(head || req.method == http::Method::GET)
            || ASKS_MORE_OF_THE_CACHE
                .iter()
                .any(|h| req.headers.contains_key(h))
        {
            return Ok(false);
        }
        let key = cache::key::cache_key(req, policy);
        let now = SystemTime::now();
        let Some(hit) = self
            .state
            .cache
            .store
            .fresh(&pingora::cache::key::CacheHashKey::primary_bin(&key), now)
        else {
            ctx.cache_key = Some(key);
            return Ok(false);
        };
        self.state
            .metrics
            .cache_requests
            .with_label_values(&[&route.name, cache::Outcome::Hit.label()])
            .inc();
        let cache::store::FreshHit {
            header,
            body: stored_body,
            age,
            entry,
        } = hit;
        let mut resp = Box::new(header);
        resp.set_version(http::Version::HTTP_11);
        resp.insert_header(http::header::AGE, age.as_secs())?;
        resp.insert_header("Cache-Status", cache::FRESH_HIT_STATUS)?;
        let stored_len = stored_body.len() as u64;
        let mut body = stored_body;
        let config = ctx.gateway.config.compression.as_ref();
        if let Some((coding, level)) =
            compression::stored_coding(session.req_header(), &resp, config, Some(route.compression))
        {
            let encoded =
                self.state
                    .cache
                    .store
                    .encoded_body(&entry, coding.as_str(), level, |b| {
                        compression::encode(coding, level, b)
                    });
            match encoded {
                Ok(encoded) => {
                    compression::mark_encoded(&mut resp, coding, encoded.len())?;
                    compression::bypass_module(session);
                    body = encoded;
                }
                // The module encodes this one as it would any response.
                Err(e) => log::warn!("encoding a cached body as {}: {e}", coding.as_str()),
            }
        }
        self.finish_response_header(session, &mut resp, ctx)?;
        session.write_response_header(resp, head).await?;
        if !head {
            ctx.body_bytes_in += stored_len;
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }

    /// What every response from an upstream or the cache gets on its way
    /// out: the rate-limit headers, the compression decision, and request
    /// id, timing and `Via`.
    fn finish_response_header(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        if let Some(rate) = &ctx.rate_headers {
            ratelimit::apply_headers(resp, rate)?;
        }
        compression::on_response(
            session,
            resp,
            ctx.gateway.config.compression.as_ref(),
            ctx.route().map(|r| r.compression),
        );
        headers::decorate(resp, ctx.request_id.as_ref(), ctx.started.elapsed(), true)
    }

    async fn send_error(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: &ErrorResponse,
    ) -> Result<()> {
        ctx.error_status = Some(err.status);
        let body = err.body();
        let mut resp = err.header(body.len())?;
        headers::decorate(
            &mut resp,
            ctx.request_id.as_ref(),
            ctx.started.elapsed(),
            false,
        )?;
        if let Some(rate) = &ctx.rate_headers {
            ratelimit::apply_headers(&mut resp, rate)?;
            if err.status == 429 {
                resp.insert_header("Retry-After", rate.retry_after.max(1))?;
            }
        }
        session.set_keepalive(None);
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.state.gateway(), &self.state.metrics.in_flight)
    }

    /// Pingora's compression module, enabled per request by `compression`.
    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        compression::register(modules);
    }

    /// Runs before the modules read the request: compression levels.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        compression::on_request(session, ctx.gateway.config.compression.as_ref());
        Ok(())
    }

    /// Route match, request id; 400 for ambiguous paths, 404 for no route.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = Some(headers::request_id(req.headers.get(headers::X_REQUEST_ID)));
        if let Some(problem) = headers::path_problem(req.uri.path()) {
            self.send_error(session, ctx, &ErrorResponse::bad_request(problem))
                .await?;
            return Ok(true);
        }
        let host = req
            .headers
            .get(http::header::HOST)
            .map(|h| h.as_bytes())
            .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
        ctx.route = ctx.gateway.router.find(host, req.uri.path(), &req.method);
        if ctx.route.is_none() {
            self.send_error(session, ctx, &ErrorResponse::no_route())
                .await?;
            return Ok(true);
        }
        // Before the cache lookup, so cached responses count against budgets
        // too — unless configured to count only what reaches an upstream.
        if self.counts_cached(ctx) {
            if let Some(refusal) = self.rate_limit(session, ctx).await {
                self.send_error(session, ctx, &refusal).await?;
                return Ok(true);
            }
        }
        self.serve_fresh_hit(session, ctx).await
    }

    /// Least-connections choice in the route's pool, with timeouts cut to
    /// what is left of the route's total.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let id = ctx.route.ok_or_else(|| {
            Error::explain(
                pingora::ErrorType::InternalError,
                "upstream_peer without a route",
            )
        })?;
        // Field-level borrows: `route` borrows ctx.gateway, the writes below touch other fields.
        let route = ctx.gateway.route(id);
        let remaining = route.timeouts.total.saturating_sub(ctx.started.elapsed());
        if remaining.is_zero() {
            return Err(Error::explain(
                errors::REQUEST_TIMEOUT,
                "total timeout ran out before connecting",
            ));
        }
        let pool = &route.upstream;
        let avoid = ctx.backend.as_ref().map(|b| b.socket_addr());
        let slot = pool.select(avoid).ok_or_else(|| {
            Error::explain(
                errors::NO_HEALTHY_UPSTREAM,
                format!("upstream {}: no backend may take traffic", pool.name()),
            )
        })?;
        ctx.backend = Some(slot.lease());
        ctx.attempts += 1;
        ctx.timing = UpstreamTiming {
            chosen_at: Some(Instant::now()),
            ..UpstreamTiming::default()
        };
        let mut peer = pool.peer(slot);
        let connect = route.timeouts.connect.min(remaining);
        let read = route.timeouts.read.min(remaining);
        ctx.bound_by_total.connect = remaining < route.timeouts.connect;
        ctx.bound_by_total.read = remaining < route.timeouts.read;
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        peer.options.read_timeout = Some(read);
        peer.options.write_timeout = Some(read);
        Ok(peer)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.timing.connected_at = Some(Instant::now());
        Ok(())
    }

    /// A connect failure: count it against the backend, and retry on
    /// another one (nothing was sent, so any method may be retried).
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let kind = match e.etype() {
            pingora::ErrorType::ConnectTimedout => FailureKind::Timeout,
            _ => FailureKind::Connect,
        };
        let retry = self.note_failure(ctx, kind);
        e.set_retry(retry);
        e
    }

    /// A failure after connecting. Retried on another backend only for an
    /// idempotent request whose body (if any) is fully buffered, when the
    /// connection broke before any response reached the client; timeouts
    /// are not retried (a slow backend must not get the request twice).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if *e.esource() != pingora::ErrorSource::Upstream {
            e.set_retry(false);
            return e;
        }
        let etype = e.etype();
        let kind = if matches!(
            etype,
            pingora::ErrorType::ReadTimedout | pingora::ErrorType::WriteTimedout
        ) || *etype == errors::REQUEST_TIMEOUT
        {
            FailureKind::Timeout
        } else {
            FailureKind::Closed
        };
        let may_replay = kind == FailureKind::Closed
            && session.req_header().method.is_idempotent()
            && !session.as_downstream().retry_buffer_truncated()
            && session.response_written().is_none();
        let retry = self.note_failure(ctx, kind) && may_replay;
        e.set_retry(retry);
        e
    }

    /// Counts 5xx responses against the backend when the pool asks for it,
    /// and notes the time to first byte.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.timing.first_byte_at = Some(Instant::now());
        if upstream_response.status.is_server_error() {
            if let (Some(route), Some(lease)) = (ctx.route(), ctx.backend.as_ref()) {
                let pool = &route.upstream;
                if pool.passive().fail_on_5xx {
                    pool.record_failure(
                        lease.backend(),
                        FailureKind::Status5xx,
                        &self.state.metrics,
                    );
                }
            }
        }
        Ok(())
    }

    /// Turns the cache on for GET/HEAD on routes that have it, unless the
    /// request says `no-store`.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let Some(route) = ctx.route() else {
            return Ok(());
        };
        let req = session.req_header();
        if route.cache.is_none()
            || !(req.method == http::Method::GET || req.method == http::Method::HEAD)
        {
            return Ok(());
        }
        ctx.cache_directives = RequestDirectives::of(req);
        if ctx.cache_directives.no_store {
            return Ok(());
        }
        let c = &self.state.cache;
        session.cache.enable(
            c.storage(),
            Some(c.eviction_manager()),
            Some(c.cache_predictor()),
            Some(c.lock),
            None,
        );
        session.cache.set_max_file_size_bytes(
            usize::try_from(c.limits.max_object_size).unwrap_or(usize::MAX),
        );
        Ok(())
    }

    /// The key is built in one place, `cache::key`, where its parts are documented.
    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        if let Some(key) = ctx.cache_key.take() {
            return Ok(key);
        }
        let policy = ctx.route().and_then(|r| r.cache.as_ref()).ok_or_else(|| {
            Error::explain(
                pingora::ErrorType::InternalError,
                "cache key for a route without cache",
            )
        })?;
        Ok(cache::key::cache_key(session.req_header(), policy))
    }

    /// RFC 9111 storability and freshness, in `cache::policy`.
    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        Ok(match ctx.route().and_then(|r| r.cache.as_ref()) {
            Some(policy) => cache::policy::response_cacheable(session.req_header(), resp, policy),
            None => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
        })
    }

    /// `Vary` (RFC 9111 §4.1): the listed request headers select the variant.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let mut variance = VarianceBuilder::new();
        for value in meta.headers().get_all(http::header::VARY) {
            for name in value.to_str().unwrap_or("").split(',') {
                let name = name.trim().to_ascii_lowercase();
                if name.is_empty() {
                    continue;
                }
                let value = req
                    .headers
                    .get(name.as_str())
                    .map(|v| v.as_bytes().to_vec())
                    .unwrap_or_default();
                variance.add_owned_name_value(name, value);
            }
        }
        variance.finalize()
    }

    /// A request with `no-cache` / `max-age=0` revalidates a fresh entry (§5.2.1).
    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        _meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        Ok((is_fresh && ctx.cache_directives.revalidate).then_some(ForcedFreshness::ForceExpired))
    }

    /// `only-if-cached` (§5.2.1.7): a miss is a 504, not an upstream request.
    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        if ctx.cache_directives.only_if_cached {
            self.send_error(session, ctx, &ErrorResponse::not_cached())
                .await?;
            return Ok(false);
        }
        // Budgets that count only requests reaching an upstream.
        if !self.counts_cached(ctx) {
            if let Some(refusal) = self.rate_limit(session, ctx).await {
                self.send_error(session, ctx, &refusal).await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Stale-while-revalidate (`error` is `None`) and stale-if-error on
    /// upstream failures; Pingora checks the entry's windows first.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        error.is_none_or(|e| *e.esource() == pingora::ErrorSource::Upstream)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(request_id) = ctx.request_id.as_ref() else {
            return Ok(());
        };
        let forwarding = headers::Forwarding {
            request_id,
            client_ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
            host: ctx.route().and_then(|r| r.upstream.host_header()),
        };
        headers::forward(upstream_request, &forwarding)
    }

    /// `Cache-Status` (RFC 9211) on cached routes, then the usual headers.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(route) = ctx.route().filter(|r| r.cache.is_some()) {
            let described = cache::describe(session.cache.phase(), &session.req_header().method);
            if let Some((outcome, cache_status)) = described {
                upstream_response.insert_header("Cache-Status", cache_status)?;
                self.state
                    .metrics
                    .cache_requests
                    .with_label_values(&[&route.name, outcome.label()])
                    .inc();
            }
        }
        self.finish_response_header(session, upstream_response, ctx)
    }

    /// Counts body bytes before compression.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(b) = body {
            ctx.body_bytes_in += b.len() as u64;
        }
        Ok(None)
    }

    /// Frees the backend's least-connections slot as soon as it has sent
    /// everything, and enforces the total timeout while the body streams: a
    /// backend that trickles bytes cannot hold the request past its deadline.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            if let Some(lease) = ctx.backend.as_mut() {
                lease.release();
            }
            self.observe_upstream_duration(ctx);
        }
        if let Some(route) = ctx.route() {
            if ctx.started.elapsed() > route.timeouts.total {
                return Err(Error::explain(
                    errors::REQUEST_TIMEOUT,
                    "total timeout ran out while streaming the response",
                ));
            }
        }
        Ok(None)
    }

    /// Turns any failure into our JSON error (or nothing, if the client left).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let route = ctx.route();
        let cx = FailureContext {
            upstream: route.map(|r| r.upstream.name()),
            timeouts: route.map(|r| r.timeouts),
            connect_bound_by_total: ctx.bound_by_total.connect,
            read_bound_by_total: ctx.bound_by_total.read,
        };
        let code = match errors::classify(e, &cx) {
            Some(resp) if session.response_written().is_none() => {
                if let Err(write_err) = self.send_error(session, ctx, &resp).await {
                    log::debug!("could not send {} to the client: {write_err}", resp.status);
                }
                resp.status
            }
            Some(resp) => resp.status, // headers already sent: the stream is cut
            None => 0,
        };
        ctx.error_status = Some(code);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Metrics, the access log and the slow-request log; the backend lease
    /// and in-flight guard are released when `ctx` drops right after this.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.timing.first_byte_at.is_some() {
            self.observe_upstream_duration(ctx);
        }
        crate::request_log::finish(&self.state.metrics, session, e, ctx);
        compression::count(&self.state.metrics, session, ctx.body_bytes_in);
        cache::invalidate::after_unsafe_request(&self.state, session, ctx);
    }

    /// Client disconnects are counted as 499, not logged as errors.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        ctx.error_status == Some(0)
    }
}
