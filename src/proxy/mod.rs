//! The `ProxyHttp` implementation: the order of things, and nothing else.
//! Each phase is a few calls into the module that owns the behaviour
//! (docs/book/src/architecture.md maps phase → module). `steps` holds the two
//! composite steps (rate-limit admission, fresh hit), `respond` how
//! responses and errors are written.

mod client;
mod respond;
mod steps;

use crate::cache::{self, invalidation::answered as invalidate, vary};
use crate::compression;
use crate::ctx::RequestCtx;
use crate::errors::ErrorResponse;
use crate::headers;
use crate::ratelimit::admission::Stage;
use crate::state::AppState;
use crate::upstream::replay::Replay;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::{CacheKey, HashBinary};
use pingora::cache::{CacheMeta, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;
use std::time::Duration;
use steps::no_route;

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

/// The proxy service logic.
pub struct Proxy {
    state: Arc<AppState>,
}

impl Proxy {
    /// A proxy serving whatever config generation `state` holds.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
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

    /// Runs before the modules read the request: the fields the client's
    /// `Connection` nominates go (RFC 9110 §7.6.1; refused in `accept`
    /// when they cannot), compression levels, and in-order answers to
    /// pipelined requests.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.connection_problem =
            crate::connection_options::strip_nominated(session.req_header_mut()).err();
        compression::on_request(session, ctx.gateway.config.compression.as_ref());
        // Pipelined HTTP/1.1 requests are answered in order (RFC 9112
        // §9.3.2) rather than dropped after the first response.
        session.set_pipelining_enabled(true);
        Ok(())
    }

    /// Request hygiene and host (400), route (404), declared body (413),
    /// then identity (401), the budget when cached responses count (429),
    /// the request as forwarded, and the fresh-hit path (`steps`).
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        steps::protocol(session, ctx, &self.state.metrics);
        if let Err(refusal) = steps::accept(session, ctx) {
            respond::error(session, ctx, &refusal).await?;
            return Ok(true);
        }
        let req = session.req_header();
        ctx.route =
            ctx.gateway
                .router
                .find(ctx.host.as_ref(), req.uri.path(), &req.method, &req.headers);
        let Some(max_body) = ctx.route().map(|r| r.max_body_size) else {
            respond::error(session, ctx, &ErrorResponse::no_route()).await?;
            return Ok(true);
        };
        // A route's one pool is known now; a split picks its pool on the
        // request as forwarded (`steps::forward`), so a sticky field is
        // the one the upstream receives.
        if let Some(choice) = ctx
            .route()
            .filter(|r| !r.splits())
            .and_then(|r| r.choose(session.req_header(), ctx.tls))
        {
            ctx.pool = Some(choice.pool);
            ctx.set_cookie = choice.set_cookie;
        }
        let checks = steps::encoded_slash_allowed(session, ctx)
            .and_then(|()| steps::declared_body_fits(session, max_body));
        if let Err(refusal) = checks {
            respond::error(session, ctx, &refusal).await?;
            return Ok(true);
        }
        self.identify_admit_and_serve(session, ctx).await
    }

    /// Least-connections choice in the route's pool (`upstream::attempt`).
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let started = ctx.started;
        // Each attempt sends the body from its start: Pingora replays its
        // retry buffer through `request_body_filter` (pingora-proxy
        // `proxy_h1.rs`), so the route's body limit counts this attempt's
        // bytes, not the same bytes once per attempt.
        ctx.request_body_bytes = 0;
        let upgrade = ctx.upgrade;
        let (route, attempts) = ctx.timeouts_and_attempts();
        let (timeouts, pool) = route.ok_or_else(no_route)?;
        let mut peer = attempts.start(pool, &timeouts, started)?;
        if upgrade {
            crate::tunnel::bound_by_idle(&mut peer, timeouts.idle);
        }
        Ok(peer)
    }

    /// The route's total deadline is armed on the connection (see
    /// `upstream::deadline`).
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let started = ctx.started;
        if let (Some((timeouts, pool)), attempts) = ctx.timeouts_and_attempts() {
            // On HTTP/2 the descriptor is the connection every stream to
            // that backend shares: cutting it would end them all, so those
            // requests keep their per-read bounds and the body's deadline
            // check (`upstream_response_body_filter`) instead.
            let shared = pool.protocol().multiplexed();
            attempts.connected(fd, started, timeouts.total, shared);
        }
        Ok(())
    }

    /// A connect failure: passive health, and a retry when allowed.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        let started = ctx.started;
        let (Some((timeouts, pool)), attempts) = ctx.timeouts_and_attempts() else {
            return e;
        };
        attempts.connect_failed(pool, &timeouts, started, e, &self.state.metrics)
    }

    /// A failure after connecting: passive health, and a replay when allowed.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        upstream_reused: bool, // Pingora's `client_reused`: tollgate is the client here
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        let replay = replay_of(session, upstream_reused);
        let started = ctx.started;
        let (Some((timeouts, pool)), attempts) = ctx.timeouts_and_attempts() else {
            return e;
        };
        attempts.proxy_failed(pool, &timeouts, started, e, replay, &self.state.metrics)
    }

    /// Hop-by-hop fields go (before the cache stores anything); time to
    /// first byte; a 5xx counts against the backend if configured.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            steps::switch_protocols(session, ctx, &self.state.metrics)?;
        }
        headers::strip_response_hop_by_hop(upstream_response);
        let status = upstream_response.status.as_u16();
        if status == 304 && session.cache.enabled() {
            ctx.not_modified = Some(upstream_response.headers.clone());
        }
        let started = ctx.started;
        let body_expected = response_has_body(session, upstream_response);
        if let (Some((timeouts, pool)), attempts) = ctx.timeouts_and_attempts() {
            attempts.response_header(pool, status, body_expected, &self.state.metrics);
            // Pingora retries what `error_while_proxy` marks retryable: a
            // 5xx the pool retries becomes such an error, before any of it
            // is sent or stored.
            let replay = replay_of(session, false);
            if attempts.should_retry_status(pool, &timeouts, started, status, replay) {
                return Err(Error::explain(
                    crate::errors::RETRY_STATUS,
                    format!("upstream {} answered {status}: retrying", pool.name()),
                ));
            }
        }
        if !crate::values::methods::is_safe(&session.req_header().method) {
            self.invalidate_before_answering(session, ctx, upstream_response)
                .await;
        }
        // A HEAD reached the upstream as a HEAD only with the cache off
        // (with it on, Pingora sent a GET and the answer is stored).
        if session.req_header().method == http::Method::HEAD && !session.cache.enabled() {
            let answered = invalidate::Finished {
                req: session.req_header(),
                host: ctx.host.as_ref(),
                resp: Some(upstream_response),
                policy: ctx.route().and_then(|r| r.cache.as_ref()),
            };
            invalidate::after_head_response(self.state.cache.store, &self.state.metrics, &answered);
        }
        Ok(())
    }

    /// Turns the cache on for GET/HEAD on routes that have it.
    /// Never for an upgrade (its 101 is a connection, not a representation).
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let policy = ctx
            .route()
            .filter(|_| !ctx.upgrade)
            .and_then(|r| r.cache.as_ref());
        ctx.cache_directives = self.state.cache.enable_for(session, policy);
        Ok(())
    }

    /// The key is built in one place, `cache::key`, where its parts are documented.
    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        if let Some(key) = ctx.cache_key.take() {
            return Ok(key);
        }
        let route = ctx.route();
        let cached =
            route.and_then(|r| Some((r.key_scope(ctx.tls, ctx.pool_name()), r.cache.as_ref()?)));
        let (scope, policy) = cached.ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "cache key for a route without cache",
            )
        })?;
        let mut key = cache::key::cache_key(session.req_header(), ctx.host.as_ref(), scope, policy);
        // What this request fetches is dropped if a purge naming it is
        // recorded before it is stored (cache::store::purges).
        key.extensions.insert(self.state.cache.store.ticket());
        Ok(key)
    }

    /// RFC 9111 storability and freshness, in `cache::policy`.
    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        // A 304 updates every stored field it carries (§4.3.4); Pingora's
        // merge copies only a few of them.
        let not_modified = ctx.not_modified.take();
        Ok(match ctx.route().and_then(|r| r.cache.as_ref()) {
            Some(policy) => {
                let req = session.req_header();
                let exchange = cache::policy::Exchange {
                    credentialed: ctx.credentialed,
                    response_delay: ctx
                        .upstream
                        .timing()
                        .chosen_at
                        .map_or(Duration::ZERO, |t| t.elapsed()),
                };
                let merged =
                    not_modified.map(|fields| cache::revalidation::updated_header(resp, &fields));
                let resp = merged.as_ref().unwrap_or(resp);
                cache::policy::response_cacheable(req, resp, policy, exchange)
            }
            None => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
        })
    }

    /// `Vary` (RFC 9111 §4.1), in `cache::vary`.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        vary::variance(meta, req)
    }

    /// The request's own directives (§5.2.1): `no-cache`, `max-age`,
    /// `min-fresh` revalidate a fresh entry; `max-stale` takes a stale one
    /// as it is unless the stored response forbids it (§4.2.4).
    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        let directives = ctx.cache_directives;
        if is_fresh {
            let revalidate = directives.asks_to_revalidate(meta);
            return Ok(revalidate.then_some(ForcedFreshness::ForceExpired));
        }
        // `max-stale` (§5.2.1.2): the client takes it stale, if allowed.
        let accepts_stale = ctx
            .route()
            .and_then(|r| r.cache.as_ref())
            .is_some_and(|policy| {
                directives.accepts_stale(meta, policy, std::time::SystemTime::now())
            });
        Ok(accepts_stale.then_some(ForcedFreshness::ForceFresh))
    }

    /// `only-if-cached` (§5.2.1.7) misses get 504; budgets that count only
    /// requests reaching an upstream are decided here.
    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        if ctx.cache_directives.only_if_cached {
            respond::error(session, ctx, &ErrorResponse::not_cached()).await?;
            return Ok(false);
        }
        Ok(!self.admit(session, ctx, Stage::BeforeUpstream).await?)
    }

    /// Stale-while-revalidate (`error` is `None`) and stale-if-error on
    /// upstream failures (unreachable, timed out, closed, or a 500, 502,
    /// 503, 504 answer), and when the pool has no backend that may take
    /// traffic (tollgate's own 503, the case stale-if-error exists for);
    /// Pingora checks the entry's windows first.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        error.is_none_or(|e| match e.etype() {
            // RFC 5861 §4: the error statuses are 500, 502, 503 and 504.
            ErrorType::HTTPStatus(status) => matches!(status, 500 | 502 | 503 | 504),
            etype if *etype == crate::errors::NO_HEALTHY_UPSTREAM => true,
            _ => *e.esource() == pingora::ErrorSource::Upstream,
        })
    }

    /// `Host`: the pool's override, else the normalised host that was
    /// routed and keyed — already in an HTTP/1 request (`forwarded`);
    /// Pingora has just written an HTTP/2 request's `:authority` into it
    /// as received. Everything else the upstream receives was written into
    /// the request once, in `request_filter`, so the cache reads the same
    /// fields.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
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

    /// `Cache-Status` (RFC 9211) and, when configured, no targeted
    /// cache-control fields on cached routes; then the usual headers.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some((route, policy)) = ctx.route().and_then(|r| Some((r, r.cache.as_ref()?))) {
            let metrics = &self.state.metrics;
            cache::annotate(session, upstream_response, &route.name, policy, metrics)?;
            if policy.strip_targeted_fields {
                cache::policy::strip_targeted(upstream_response, policy);
            }
        }
        respond::finish_header(session, upstream_response, ctx)
    }

    /// A streamed (chunked) request body is stopped at the route's limit;
    /// a tunnel's bytes are counted, not limited (they are a connection's
    /// traffic, not a body).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if crate::tunnel::count_to_backend(ctx.tunnel.as_ref(), body.as_ref()) {
            return Ok(());
        }
        match body {
            Some(chunk) => steps::body_within_limit(ctx, chunk.len()),
            None => Ok(()),
        }
    }

    /// Counts body bytes before compression, and encodes them as brotli
    /// or decodes them when `response_filter` chose it.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(b) = body {
            ctx.body_bytes_in += b.len() as u64;
        }
        if let Some(coding) = ctx.body_coding.as_mut() {
            let input = body.take().unwrap_or_default();
            let coded = coding.chunk(&input, end_of_stream)?;
            // An empty chunk would end a chunked body early.
            *body = (!coded.is_empty()).then_some(coded);
        }
        Ok(None)
    }

    /// Frees the backend's least-connections slot as soon as it has sent
    /// everything, and enforces the total timeout while the body streams.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let started = ctx.started;
        let tunnel = crate::tunnel::count_from_backend(ctx.tunnel.as_ref(), body.as_ref());
        let (Some((timeouts, pool)), attempts) = ctx.timeouts_and_attempts() else {
            return Ok(None);
        };
        if end_of_stream {
            attempts.response_finished(pool);
            return Ok(None);
        }
        if tunnel {
            return Ok(None); // bounded by `timeouts.idle`, not the total
        }
        attempts
            .check_deadline(started, timeouts.total)
            .map(|()| None)
    }

    /// A gRPC call's status, from the backend's trailers.
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        upstream_trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        if ctx.grpc {
            ctx.grpc_status = crate::grpc::status_in(upstream_trailers);
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
        respond::failure(session, e, ctx).await
    }

    /// Metrics, the access log, the slow-request log, and invalidation after
    /// unsafe requests; the backend lease and in-flight guard are released
    /// when `ctx` drops right after this.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        respond::limit_keepalive(session, ctx);
        if let (Some((_, pool)), attempts) = ctx.timeouts_and_attempts() {
            attempts.request_finished(pool);
        }
        let state = &self.state;
        crate::request_log::finish(&state.metrics, &state.access_log, session, e, ctx);
        compression::count(&state.metrics, session, ctx.body_bytes_in);
    }

    /// Client disconnects are counted as 499, not logged as errors.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        ctx.error_status == Some(0)
    }
}
