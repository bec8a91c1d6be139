//! The composite steps a phase calls: accepting the request (hygiene,
//! host), identity and the forwarded request, the rate-limit decision at
//! its stage and the fresh-hit fast path, each wiring a module's answer into the request context and the
//! response.

use super::client::{client_ip, peer_trusted, template_values};
use super::{respond, traced, Proxy};
use crate::cache::fresh;
use crate::cache::invalidation::{answered as invalidate, purge_memory_off_runtime, Selection};
use crate::certificates::client::ClientCertificate;
use crate::ctx::RequestCtx;
use crate::errors::ErrorResponse;
use crate::forwarded;
use crate::gateway::Destination;
use crate::headers;
use crate::metrics::Metrics;
use crate::ratelimit::admission::{self, Stage};
use crate::target;
use crate::values::host::Host;
use crate::values::hygiene;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use std::borrow::Cow;

/// What kind of exchange this is, read once before anything answers: a
/// gRPC call (own answers become gRPC statuses, its `grpc-timeout` caps
/// the total) or an upgrade (WebSocket: never cached, a tunnel after 101).
pub(super) fn protocol(session: &Session, ctx: &mut RequestCtx, metrics: &Metrics) {
    let req = session.req_header();
    match req.version {
        _ if session.subrequest_ctx.is_some() => {}
        http::Version::HTTP_2 => metrics.requests_h2.inc(),
        _ => metrics.requests_h1.inc(),
    }
    ctx.grpc = crate::grpc::is_call(req);
    if ctx.grpc {
        ctx.deadline_cap = crate::grpc::timeout(req);
    }
    ctx.upgrade = hygiene::is_websocket_handshake(req);
}

/// The backend answered 101: refused (502) when the request asked for no
/// WebSocket handshake — it would turn the client's connection into a
/// tunnel to the backend (Pingora checks only that both sides agree,
/// pingora-proxy `lib.rs` `reject_mismatched_h1_upgrade_101`); otherwise
/// the tunnel is counted and the client's side bounded by `idle`.
pub(super) fn switch_protocols(
    session: &mut Session,
    ctx: &mut RequestCtx,
    metrics: &Metrics,
) -> Result<()> {
    if !hygiene::is_websocket_handshake(session.req_header()) {
        return Err(Error::explain(
            ErrorType::InvalidHTTPHeader,
            "upstream switched protocols on a request that asked for no upgrade",
        )
        .into_up());
    }
    ctx.tunnel = Some(crate::tunnel::OpenTunnel::open(metrics));
    if let Some(timeouts) = ctx.timeouts() {
        crate::tunnel::bound_client_by_idle(session, timeouts.idle);
    }
    Ok(())
}

/// Reads what every later step relies on — the request id, the target's
/// form, the normalised path (written back into the request, so the
/// upstream gets the path that was routed and keyed), the one normalised
/// host, the scheme — or the 400 that refuses the request. Fields whose
/// names have `_` are dropped here (or refused), before anything reads
/// the request.
pub(super) fn accept(session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ErrorResponse> {
    ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let req = session.req_header();
    ctx.request_id = Some(headers::request_id(req.headers.get(headers::X_REQUEST_ID)));
    if let Some(problem) = ctx.connection_problem {
        return Err(ErrorResponse::bad_request(problem.message()));
    }
    let config = &ctx.gateway.config;
    let limits = &config.limits;
    if req.raw_path().len() > limits.max_uri_length {
        return Err(ErrorResponse::uri_too_long(limits.max_uri_length));
    }
    if req.headers.len() > limits.max_headers {
        return Err(ErrorResponse::header_too_large(
            "The request has more header fields than allowed",
        ));
    }
    if hygiene::head_size(req) > limits.max_header_size {
        return Err(ErrorResponse::header_too_large(
            "The request header is larger than allowed",
        ));
    }
    let form = target::form(req, ctx.tls).map_err(|p| match p {
        target::TargetProblem::Connect => ErrorResponse::method_not_allowed(p.message()),
        _ => ErrorResponse::bad_request(p.message()),
    })?;
    if hygiene::safe_method_with_body(req) {
        return Err(ErrorResponse::bad_request(
            "GET and HEAD requests may not carry a body",
        ));
    }
    let framing = hygiene::content_length_framing(req);
    if framing == hygiene::Framing::Ambiguous {
        return Err(ErrorResponse::bad_request(
            "Content-Length is ambiguous (repeated with different values, or sent with Transfer-Encoding)",
        ));
    }
    let underscored = underscored_fields(req, config.hygiene.underscore_headers)?;
    let body_timeout = limits.body_timeout;
    let rules = config.hygiene;
    let normal = hygiene::normalise_path(req.uri.path())
        .and_then(|path| match path {
            Cow::Borrowed(path) => {
                hygiene::apply_path_rules(path, rules.encoded_slash, rules.path_parameters)
            }
            Cow::Owned(path) => {
                hygiene::apply_path_rules(&path, rules.encoded_slash, rules.path_parameters)
                    .map(|p| Cow::Owned(p.into_owned()))
            }
        })
        .map_err(|problem| ErrorResponse::bad_request(problem.message()))?;
    // An absolute-form target is served as origin-form; the path is
    // written back when normalising changed it.
    let rewritten = match normal {
        Cow::Owned(path) => Some(with_path(&req.uri, &path)?),
        Cow::Borrowed(_) if form == target::Form::Absolute => {
            Some(with_path(&req.uri, req.uri.path())?)
        }
        Cow::Borrowed(_) => None,
    };
    ctx.host = Host::of_request(req).map_err(|p| ErrorResponse::bad_request(p.message()))?;
    // Between two reads of the body (HTTP/1; the route's total deadline
    // bounds HTTP/2 bodies).
    session.as_mut().set_read_timeout(Some(body_timeout));
    let req = session.req_header_mut();
    for name in &underscored {
        req.remove_header(name);
    }
    if let Some(uri) = rewritten {
        req.set_uri(uri);
    }
    if let hygiene::Framing::Collapse(length) = framing {
        req.insert_header(http::header::CONTENT_LENGTH, length)
            .map_err(|_| ErrorResponse::internal())?;
    }
    Ok(())
}

/// The fields of `req` whose names have `_`, to drop; a 400 when they are
/// refused; none when they are allowed.
fn underscored_fields(
    req: &pingora::http::RequestHeader,
    policy: hygiene::UnderscoreHeaders,
) -> Result<Vec<http::HeaderName>, ErrorResponse> {
    if policy == hygiene::UnderscoreHeaders::Allow {
        return Ok(Vec::new());
    }
    let found: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|name| hygiene::has_underscore(name))
        .cloned()
        .collect();
    if !found.is_empty() && policy == hygiene::UnderscoreHeaders::Reject {
        return Err(ErrorResponse::bad_request(
            "Header field names with underscores are not allowed",
        ));
    }
    Ok(found)
}

/// 400 when the normalised path still has `%2F`, `%5C` or `\` and the
/// route (or the global `hygiene.encoded_slash`) refuses them: checked
/// after routing, so a route whose upstream wants them encoded can say
/// `encoded_slash: keep`.
pub(super) fn encoded_slash_allowed(
    session: &Session,
    ctx: &RequestCtx,
) -> Result<(), ErrorResponse> {
    let global = ctx.gateway.config.hygiene.encoded_slash;
    let policy = ctx.route().and_then(|r| r.encoded_slash).unwrap_or(global);
    if policy == hygiene::EncodedSlash::Reject
        && hygiene::has_encoded_separator(session.req_header().uri.path())
    {
        return Err(ErrorResponse::bad_request(
            hygiene::PathProblem::EncodedSlash.message(),
        ));
    }
    Ok(())
}

/// 413 when the declared body is larger than the route allows: refused
/// before a byte of it is read. A chunked body is counted as it streams
/// (`body_within_limit`).
pub(super) fn declared_body_fits(session: &Session, max: u64) -> Result<(), ErrorResponse> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > max => Err(ErrorResponse::payload_too_large(max)),
        _ => Ok(()),
    }
}

/// Counts a streamed body chunk; an error once the route's limit is passed.
pub(super) fn body_within_limit(ctx: &mut RequestCtx, chunk: usize) -> Result<()> {
    ctx.request_body_bytes += chunk as u64;
    let max = ctx.route().map_or(u64::MAX, |r| r.max_body_size);
    if ctx.request_body_bytes > max {
        return Err(Error::explain(
            crate::errors::PAYLOAD_TOO_LARGE,
            format!("request body passed {max} bytes"),
        ));
    }
    Ok(())
}

/// The request URI with its path replaced and the query kept as received,
/// in origin-form — except that an HTTP/2 request keeps its scheme and
/// authority (`:scheme`, `:authority`), which Pingora turns into the
/// upstream's `Host`.
fn with_path(uri: &http::Uri, path: &str) -> Result<http::Uri, ErrorResponse> {
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut builder = http::Uri::builder();
    if let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) {
        builder = builder.scheme(scheme.clone()).authority(authority.clone());
    }
    builder
        .path_and_query(target)
        .build()
        .map_err(|_| ErrorResponse::bad_request("The request path is not a valid URI path"))
}

/// The route (404 if none) and, for a route with one pool, its pool; a
/// split picks its pool on the request as forwarded (`forward`), so a
/// sticky field is the one the upstream receives. Then the route's own
/// checks: an encoded slash it refuses (400), a declared body over its
/// limit (413).
pub(super) fn route(session: &Session, ctx: &mut RequestCtx) -> Result<(), ErrorResponse> {
    let req = session.req_header();
    ctx.route =
        ctx.gateway
            .router
            .find(ctx.host.as_ref(), req.uri.path(), &req.method, &req.headers);
    let Some(max_body) = ctx.route().map(|r| r.max_body_size) else {
        return Err(ErrorResponse::no_route());
    };
    if let Some(choice) = ctx
        .route()
        .filter(|r| !r.splits())
        .and_then(|r| r.choose(req, ctx.tls))
    {
        ctx.pool = Some(choice.pool);
        ctx.set_cookie = choice.set_cookie;
    }
    encoded_slash_allowed(session, ctx).and_then(|()| declared_body_fits(session, max_body))
}

/// 403 when the client's address may not use the route, or (`tenant`
/// true, after identity) when the identified tenant's requests may not
/// come from it — before any budget is spent. The address is the one
/// rate limiting reads: the peer's, or what a trusted proxy forwarded.
pub(super) fn address_allowed(
    session: &Session,
    ctx: &RequestCtx,
    metrics: &Metrics,
    tenant: bool,
) -> Result<(), ErrorResponse> {
    let Some(route) = ctx.route() else {
        return Ok(());
    };
    let limiter = ctx.gateway.rate_limiter.as_ref();
    let applies = match tenant {
        false => route.addresses.is_some(),
        true => limiter.is_some_and(|l| !l.tenant_addresses.is_empty()) && ctx.identity.is_some(),
    };
    if !applies {
        return Ok(());
    }
    let trusted = &ctx.gateway.config.server.trusted_proxies;
    let ip =
        crate::ratelimit::identity::client_ip(session.req_header(), client_ip(session), trusted);
    let admitted = match (tenant, &route.addresses, limiter, &ctx.identity) {
        (false, Some(policy), _, _) => ip.is_some_and(|ip| policy.admits(ip)),
        (true, _, Some(limiter), Some(who)) => limiter.tenant_admits(who, ip).unwrap_or(true),
        _ => true,
    };
    if admitted {
        return Ok(());
    }
    metrics
        .address_refusals
        .with_label_values(&[&*route.name, if tenant { "tenant" } else { "route" }])
        .inc();
    Err(ErrorResponse::address_refused())
}

pub(super) fn no_route() -> Box<Error> {
    Error::explain(ErrorType::InternalError, "upstream phase without a route")
}

/// The verified client certificate of the request's connection (mutual
/// TLS), read at the end of its handshake.
pub(super) fn client_certificate(session: &Session) -> Option<&ClientCertificate> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<ClientCertificate>()
}

/// Who sent the request, decided once and before the cache is asked — a
/// missing or bad key is a 401 here whatever stage the budget is counted
/// at. On an exempt route a key that identifies nobody refuses nothing.
fn identify(
    session: &Session,
    ctx: &mut RequestCtx,
    metrics: &crate::metrics::Metrics,
) -> Result<(), ErrorResponse> {
    let gateway = &ctx.gateway;
    let limiter = gateway.rate_limiter.as_ref();
    let req = session.req_header();
    ctx.credentialed = ctx.credentialed
        || req.headers.contains_key(http::header::AUTHORIZATION)
        || limiter.is_some_and(|l| l.carries_credentials(req));
    let Some(limiter) = limiter else {
        return Ok(());
    };
    if ctx.identity.is_some() {
        return Ok(()); // named by the route's auth service
    }
    let budgeted = ctx
        .route
        .is_some_and(|id| gateway.route(id).rate_budget.is_some());
    let cert = client_certificate(session);
    if ctx.auth_admitted {
        // The route's auth service admitted the request without naming a
        // tenant: a key or token tollgate reads identifies the caller,
        // anything else is the auth service's credential, not a bad key.
        let peer = client_ip(session);
        ctx.identity = limiter
            .identify(req, peer, cert)
            .ok()
            .or_else(|| limiter.anonymous(req, peer));
        return Ok(());
    }
    match admission::identify(limiter, metrics, req, client_ip(session), cert) {
        Ok(who) => ctx.identity = Some(who),
        Err(refusal) if budgeted => return Err(refusal),
        Err(_) => {}
    }
    Ok(())
}

/// Rewrites the request into what the upstream receives (`forwarded`),
/// so that the cache key and `Vary` read what the upstream reads. Once per
/// request, after `identify`, before anything reads those fields.
fn forward(session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ErrorResponse> {
    let peer_ip = client_ip(session);
    let server = &ctx.gateway.config.server;
    let Some(request_id) = ctx.request_id.as_ref() else {
        return Err(ErrorResponse::internal());
    };
    let edge = forwarded::Edge {
        request_id,
        host: ctx.host.as_ref().map(Host::as_str),
        peer_ip,
        peer_trusted: peer_trusted(session, ctx),
        tls: ctx.tls,
        keep_overrides: &server.keep_override_headers,
        limiter: ctx.gateway.rate_limiter.as_ref(),
        who: ctx.identity.as_ref(),
        certificate: ctx
            .gateway
            .config
            .client_certificate_header
            .as_ref()
            .map(|field| {
                (
                    field,
                    client_certificate(session).map(|c| c.forward.clone()),
                )
            }),
    };
    forwarded::rewrite(session.req_header_mut(), &edge).map_err(|e| {
        log::error!("rewriting the request for the upstream: {e}");
        ErrorResponse::internal()
    })?;
    super::traced::forwarded_fields(session.req_header_mut(), ctx).map_err(|e| {
        log::error!("writing the trace context for the upstream: {e}");
        ErrorResponse::internal()
    })?;
    // What an admitting auth service said, in place of any client copy.
    if let Some(auth) = ctx.route().and_then(|r| r.forward_auth.as_ref()) {
        let req = session.req_header_mut();
        for name in &auth.config().upstream_fields {
            req.remove_header(name);
        }
        for (name, value) in &ctx.auth_fields {
            req.append_header(name.clone(), value.clone())
                .map_err(|_| ErrorResponse::internal())?;
        }
    }
    // Then the route's own fields (`check` keeps them off the fields the
    // rewrite writes: forwarding, request id, tenant).
    if let Some(route) = ctx.route().filter(|r| !r.request_headers.is_empty()) {
        let values = template_values(session, ctx);
        route
            .request_headers
            .apply(session.req_header_mut(), &values);
    }
    // A split picks its pool once per request, here, on the request as
    // the upstream receives it: `sticky.header` reads the field tollgate
    // wrote (a verified claim, the tenant), not the client's copy.
    // Retries stay in the pool.
    if let Some(choice) = ctx
        .route()
        .filter(|r| r.splits())
        .and_then(|r| r.choose(session.req_header(), ctx.tls))
    {
        ctx.pool = Some(choice.pool);
        ctx.set_cookie = choice.set_cookie;
    }
    Ok(())
}

/// Whether the fresh-hit lookup needs the request as forwarded: when the
/// route's cache key reads request fields (`key.headers`), or the route
/// splits (the key is scoped by the pool, chosen on the rewritten
/// request). Otherwise the fresh-hit path reads no field the rewrite
/// touches (it serves only entries without `Vary`), and the rewrite waits
/// until the request goes further — a hit never pays for it.
fn key_reads_fields(ctx: &RequestCtx) -> bool {
    ctx.route()
        .is_some_and(|r| r.splits() || r.cache.as_ref().is_some_and(|c| !c.key_headers.is_empty()))
}

impl Proxy {
    /// What happens between routing and the cache: identity (401), the
    /// budget when cached responses count (429), the one rewrite into the
    /// upstream's request, and the fresh-hit path; true when the request
    /// was answered. Pingora's stale-while-revalidate refresh runs this
    /// phase again as a subrequest (pingora-proxy `proxy_cache.rs`): it is
    /// identified and forwarded like its client, never admitted, counted
    /// or answered from the fast path.
    pub(super) async fn identify_admit_and_serve(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        if session.subrequest_ctx.is_some() {
            ctx.mark_subrequest();
        }
        if let Err(refusal) = address_allowed(session, ctx, &self.state.metrics, false) {
            return respond::error(session, ctx, &refusal).await.map(|()| true);
        }
        // A CORS preflight carries no credentials: answered here, before
        // identity and any budget, counted on its own.
        if !ctx.subrequest && respond::is_cors_preflight(session, ctx) {
            return respond::cors_preflight(session, ctx, &self.state.metrics)
                .await
                .map(|()| true);
        }
        if !ctx.subrequest && self.ask_auth_service(session, ctx).await? {
            return Ok(true);
        }
        let jwt = ctx
            .gateway
            .rate_limiter
            .as_ref()
            .and_then(|l| l.jwt.as_ref())
            .filter(|_| ctx.identity.is_none());
        if let Some(jwt) = jwt {
            let bearer = session
                .req_header()
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim);
            if let Some(bearer) = bearer {
                let began = traced::clock(ctx);
                if jwt.await_first_keys(bearer).await {
                    traced::jwks_waited(ctx, began);
                }
            }
        }
        let began = traced::clock(ctx);
        let identified = identify(session, ctx, &self.state.metrics);
        traced::identity(ctx, began, identified.is_ok());
        if let Err(refusal) =
            identified.and_then(|()| address_allowed(session, ctx, &self.state.metrics, true))
        {
            return respond::error(session, ctx, &refusal).await.map(|()| true);
        }
        if self.admit(session, ctx, Stage::BeforeCache).await? {
            return Ok(true);
        }
        // A redirect route answers here: identified and counted like any
        // request, never sent upstream.
        let gateway = ctx.gateway.clone();
        if let Some(Destination::Redirect(redirect)) =
            ctx.route.map(|id| &gateway.route(id).destination)
        {
            return respond::redirect(session, ctx, redirect)
                .await
                .map(|()| true);
        }
        let rewrite_first = ctx.subrequest || key_reads_fields(ctx);
        if rewrite_first {
            if let Err(refusal) = forward(session, ctx) {
                return respond::error(session, ctx, &refusal).await.map(|()| true);
            }
        }
        if !ctx.subrequest && self.serve_fresh_hit(session, ctx).await? {
            return Ok(true);
        }
        if !rewrite_first {
            if let Err(refusal) = forward(session, ctx) {
                return respond::error(session, ctx, &refusal).await.map(|()| true);
            }
        }
        Ok(false)
    }

    /// Decides the request's budget if this is the stage that decides it;
    /// true when the request was refused (and the refusal sent). The
    /// requester was identified before (`identify`); Pingora's
    /// background subrequests are never decided (they are not clients).
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        stage: Stage,
    ) -> Result<bool> {
        if ctx.subrequest {
            return Ok(false);
        }
        let (Some(limiter), Some(route), Some(who)) = (
            ctx.gateway.rate_limiter.as_ref(),
            ctx.route(),
            ctx.identity.clone(),
        ) else {
            return Ok(false);
        };
        let Some(budget) = route
            .rate_budget
            .as_ref()
            .filter(|_| limiter.decides_at(stage))
        else {
            return Ok(false);
        };
        let route = admission::Budget {
            route: &route.name,
            budget,
        };
        let state = &self.state;
        let began = traced::clock(ctx);
        let admission = admission::admit(limiter, &state.rate, &state.metrics, route, who).await;
        traced::rate_limit(ctx, began, stage, &admission);
        ctx.rate_headers = admission.headers;
        match admission.refusal {
            Some(refusal) => respond::error(session, ctx, &refusal).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Serves a fresh hit from the memory store when `cache::fresh` finds
    /// one; true when the response was sent.
    pub(super) async fn serve_fresh_hit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let Some(route) = ctx.route().filter(|_| !ctx.upgrade) else {
            return Ok(false);
        };
        let Some(policy) = route.cache.as_ref() else {
            return Ok(false);
        };
        let cached = fresh::CachedRoute {
            name: &route.name,
            policy,
            scope: route.key_scope(ctx.tls, ctx.pool_name()),
            compression: ctx.gateway.config.compression.as_ref(),
            route_compression: route.compression,
        };
        let state = &self.state;
        let began = traced::clock(ctx);
        let lookup = fresh::lookup(
            session,
            ctx.host.as_ref(),
            &cached,
            &state.cache,
            &state.metrics,
        )
        .await?;
        traced::fresh_lookup(ctx, began, &lookup);
        let hit = match lookup {
            fresh::Lookup::Hit(hit) => hit,
            fresh::Lookup::Miss(key) => {
                ctx.cache_key = Some(key);
                return Ok(false);
            }
            fresh::Lookup::NotEligible => return Ok(false),
        };
        respond::fresh_hit(session, ctx, hit).await.map(|()| true)
    }

    /// What an answered request invalidates: an unsafe request's targets
    /// (below), and a HEAD's mismatch with the stored GET — a HEAD reaches
    /// the upstream as a HEAD only with the cache off (with it on, Pingora
    /// sent a GET and the answer is stored).
    pub(super) async fn invalidate_on_answer(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        upstream_response: &pingora::http::ResponseHeader,
    ) {
        let method = &session.req_header().method;
        if !crate::values::methods::is_safe(method) {
            self.invalidate_before_answering(session, ctx, upstream_response)
                .await;
        }
        if *method == http::Method::HEAD && !session.cache.enabled() {
            let answered = invalidate::Finished {
                req: session.req_header(),
                host: ctx.host.as_ref(),
                resp: Some(upstream_response),
                policy: ctx.route().and_then(|r| r.cache.as_ref()),
            };
            invalidate::after_head_response(self.state.cache.store, &self.state.metrics, &answered);
        }
    }

    /// RFC 9111 §4.4 for an unsafe request whose upstream answered: the
    /// stored responses it makes stale, and the tags its upstream named in
    /// `cache.invalidation_header`, are purged from memory before the
    /// answer is sent, so a client that sees its write done never reads
    /// what it replaced — and a fill in flight for them is dropped. With
    /// the Redis tier, their shared part (Redis and the other instances)
    /// is queued first, never waited for (`cache::l2::outbox`);
    /// a URI that no caching route serves is not shared at all.
    async fn invalidate_before_answering(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        upstream_response: &pingora::http::ResponseHeader,
    ) {
        let state = &self.state;
        let named_tags = ctx
            .gateway
            .config
            .cache_tags
            .invalidation_header
            .as_ref()
            .map(|name| crate::cache::store::tags_in(upstream_response, std::slice::from_ref(name)))
            .unwrap_or_default();
        let finished = invalidate::Finished {
            req: session.req_header(),
            host: ctx.host.as_ref(),
            resp: Some(upstream_response),
            policy: ctx.route().and_then(|r| r.cache.as_ref()),
        };
        let outbox = state.cache.redis().map(|tier| tier.outbox());
        let share = |purge: &crate::cache::invalidation::Purge| {
            let Some(outbox) = outbox else { return };
            let cacheable = match &purge.selection {
                Selection::Uri(uri) => ctx.gateway.may_cache_uri(uri),
                _ => true,
            };
            if cacheable {
                outbox.push(purge.clone());
            } else {
                state
                    .metrics
                    .cache_invalidations_shared
                    .with_label_values(&["local"])
                    .inc();
            }
        };
        let tagged = invalidate::after_request(
            state.cache.store,
            &state.metrics,
            &finished,
            named_tags,
            share,
        );
        for purge in &tagged {
            let removed = purge_memory_off_runtime(state.cache.store, purge).await;
            invalidate::counted(&state.metrics, removed);
        }
    }
}
