//! The `ProxyHttp` implementation: the order of things, and nothing else.
//! Each phase is a few calls into the module that owns the behaviour
//! (docs/book/src/architecture.md maps phase → module): `steps` the
//! request's own steps (acceptance, routing, identity and admission, the
//! request as forwarded, the fresh hit, invalidation on the answer),
//! `attempt` the upstream side (peer, deadline, failures, heads, body),
//! `caching` the cache's phases, `client` who the client is, `respond`
//! how responses and errors are written.

mod attempt;
mod caching;
mod client;
mod forward_auth;
mod respond;
mod steps;
mod traced;

use crate::cache::{self, vary};
use crate::compression;
use crate::ctx::RequestCtx;
use crate::errors::ErrorResponse;
use crate::headers;
use crate::ratelimit::admission::Stage;
use crate::state::AppState;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::{CacheKey, HashBinary};
use pingora::cache::{CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

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
        traced::begin(session, ctx);
        steps::protocol(session, ctx, &self.state.metrics);
        if let Err(refusal) = steps::accept(session, ctx) {
            respond::error(session, ctx, &refusal).await?;
            return Ok(true);
        }
        if let Err(refusal) = steps::route(session, ctx) {
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
        attempt::peer(ctx)
    }

    /// The route's total deadline is armed on the connection.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        attempt::connected(ctx, fd, reused);
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
        attempt::connect_failed(ctx, e, &self.state.metrics)
    }

    /// A failure after connecting: passive health, and a replay when allowed.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        upstream_reused: bool,
    ) -> Box<Error> {
        attempt::proxy_failed(session, peer, ctx, e, upstream_reused, &self.state.metrics)
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
        if upstream_response.status == http::StatusCode::NOT_MODIFIED && session.cache.enabled() {
            ctx.not_modified = Some(upstream_response.headers.clone());
        }
        attempt::response_header(session, upstream_response, ctx, &self.state.metrics)?;
        self.invalidate_on_answer(session, ctx, upstream_response)
            .await;
        Ok(())
    }

    /// Turns the cache on for GET/HEAD on routes that have it.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        caching::enable(&self.state, session, ctx);
        Ok(())
    }

    /// The key is built in one place, `cache::key`, where its parts are documented.
    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        caching::key(&self.state, session, ctx)
    }

    /// RFC 9111 storability and freshness, in `cache::policy`.
    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        Ok(caching::cacheable(session, resp, ctx))
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

    /// The request's own directives (§5.2.1) on a hit.
    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        Ok(caching::on_hit(meta, is_fresh, ctx))
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

    /// Stale-while-revalidate and stale-if-error (`caching::may_serve_stale`).
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        caching::may_serve_stale(error)
    }

    /// `Host` and the path rewrite (`attempt::request_header`), and the
    /// trace context this attempt passes on (`traced`).
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        attempt::request_header(session, upstream_request, ctx)?;
        traced::attempt_fields(upstream_request, ctx)
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
        if let Some(trace) = ctx.recording() {
            trace.body_chunk();
        }
        if let Some(coding) = ctx.body_coding.as_mut() {
            let input = body.take().unwrap_or_default();
            let coded = coding.chunk(&input, end_of_stream)?;
            // An empty chunk would end a chunked body early.
            *body = (!coded.is_empty()).then_some(coded);
        }
        Ok(None)
    }

    /// Frees the backend's slot at the end, and holds the total timeout
    /// while the body streams (`attempt::response_body`).
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        attempt::response_body(body.as_ref(), end_of_stream, ctx).map(|()| None)
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

    /// Metrics, the access log, the slow-request log, the request's trace;
    /// the backend lease and in-flight guard are released
    /// when `ctx` drops right after this.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        respond::limit_keepalive(session, ctx);
        if let (Some((_, pool)), attempts) = ctx.timeouts_and_attempts() {
            attempts.request_finished(pool);
        }
        let state = &self.state;
        let status = crate::request_log::finish(&state.metrics, &state.access_log, session, e, ctx);
        compression::count(&state.metrics, session, ctx.body_bytes_in);
        traced::finish(state, session, e, ctx, status);
    }

    /// Client disconnects are counted as 499, not logged as errors.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        ctx.error_status == Some(0)
    }
}
