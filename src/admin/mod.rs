//! The admin listener: the status page (`/`, `/status.json`, in
//! `status_page`), `/metrics`, `/health`, `/ready`, and the
//! token-protected `POST /config/reload` and `POST /cache/purge`. It runs on its own address
//! (default 127.0.0.1:9090) so it is never reachable through a route, and
//! answers from shared state without touching upstreams.

mod origin;
mod rebinding;
mod status_page;

use crate::cache::invalidation::{purge_everywhere, Purge, Selection};

use crate::state::AppState;
use crate::upstream::BackendOrigin;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
// Constant-time comparison of the admin token: where two secrets differ
// must not show in how long the comparison takes.
use subtle::ConstantTimeEq;

/// The admin HTTP application.
pub struct AdminApp {
    state: Arc<AppState>,
}

impl AdminApp {
    /// An admin app reading `state`.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// `/health`: per-component status. Always 200 while the process can
    /// answer; `"status": "degraded"` when a pool has no backend that may
    /// take traffic (restarting the proxy would not fix that).
    pub fn health(&self) -> serde_json::Value {
        let gateway = self.state.gateway();
        let mut degraded = false;
        let mut upstreams = serde_json::Map::new();
        for pool in gateway.pools.iter() {
            let members = pool.members();
            let backends: Vec<_> = members
                .slots()
                .iter()
                .map(|s| {
                    let (source, since) = match s.origin() {
                        BackendOrigin::Config => ("config".to_owned(), None),
                        BackendOrigin::Dns { name, since, .. } => (
                            format!("dns {name}"),
                            since.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs()),
                        ),
                    };
                    json!({
                        "address": s.addr().to_string(),
                        "source": source,
                        "since_unix": since,
                        "priority": s.priority(),
                        "weight": s.weight(),
                        "healthy": pool.is_ready(s),
                        "active_check": if pool.active_health().is_none() {
                            "none"
                        } else if pool.actively_healthy(s) {
                            "passing"
                        } else {
                            "failing"
                        },
                        "passive_down_for_ms": s.state().down_for().map(|d| d.as_millis() as u64),
                        "in_flight": s.in_flight(),
                    })
                })
                .collect();
            let healthy = members.slots().iter().filter(|s| pool.is_ready(s)).count();
            degraded |= healthy == 0;
            let names: Vec<_> = pool.dns_targets().map(|t| t.report()).collect();
            degraded |= pool.dns_targets().any(|t| t.is_failing());
            // Panic: passive health has them all out, so all take traffic.
            let status = match (healthy, pool.in_panic()) {
                (0, true) => "panic",
                (0, false) => "down",
                _ => "ok",
            };
            upstreams.insert(
                pool.name().to_owned(),
                json!({
                    "status": status,
                    "healthy": healthy,
                    "total": members.slots().len(),
                    "backends": backends,
                    "dns": names,
                }),
            );
        }
        let config = &gateway.config;
        let mut components = serde_json::Map::new();
        if let Some(redis) = &self.state.rate.redis {
            let down = redis.is_degraded();
            degraded |= down;
            components.insert(
                "redis".into(),
                json!({
                    "status": if down { "degraded" } else { "ok" },
                    "detail": if down { "rate limits are decided per instance until Redis answers" } else { "rate limits are shared" },
                    "error": redis.last_error(),
                    "breaker": if redis.breaker_is_open() { "open" } else { "closed" },
                }),
            );
        }
        let jwks = self.state.keys.health();
        let last_reload = self.state.last_reload();
        let refused = last_reload.as_ref().is_some_and(|r| !r.ok);
        degraded |= self.state.keys.is_degraded();
        json!({
            "status": if degraded { "degraded" } else { "ok" },
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.state.started.elapsed().as_secs(),
            "components": {
                "config": {
                    // `refused`: the file on disk was refused by the last
                    // reload (SIGHUP, admin, watch); the config shown serves.
                    "status": if refused { "refused" } else { "ok" },
                    "file": config.source,
                    "watch": config.server.watch_config,
                    "last_reload": last_reload.as_ref().map(|r| json!({
                        "at_unix": r.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                        "result": if r.ok { "ok" } else { "error" },
                        "message": r.message,
                    })),
                    "loaded_at_unix": gateway.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "routes": config.routes.len(),
                    "upstreams": config.upstreams.len(),
                    "warnings": config.warnings,
                },
                "upstreams": upstreams,
                "redis": components.remove("redis"),
                "jwks": if jwks.is_empty() { serde_json::Value::Null } else { jwks.into() },
                "cache_redis": self.state.cache.redis().map(|tier| json!({
                    "status": if tier.is_answering() { "ok" } else { "degraded" },
                    "detail": match tier.too_old() {
                        Some(version) => format!("Redis {version} is older than 7.0, which the cache tier needs: memory only"),
                        None if tier.is_answering() => "cache tier shared".to_owned(),
                        None => "memory only until Redis answers".to_owned(),
                    },
                    "breaker": if tier.breaker_is_open() { "open" } else { "closed" },
                    "invalidations_queued": tier.outbox().len(),
                })),
            }
        })
    }
}

/// Whether the request carries `token`, as `Bearer <token>` or as the
/// password of `Basic` credentials; compared in constant time.
fn presents(session: &ServerSession, token: &str) -> bool {
    use base64::Engine as _;
    let Some(value) = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let presented = if let Some(bearer) = value.strip_prefix("Bearer ") {
        bearer.as_bytes().to_vec()
    } else if let Some(basic) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .unwrap_or_default();
        match decoded.iter().position(|b| *b == b':') {
            Some(colon) => decoded[colon + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    presented.ct_eq(token.as_bytes()).into()
}

/// Headers of the status page: nothing from elsewhere may load or frame it.
const PAGE_HEADERS: [(http::header::HeaderName, &str); 4] = [
    (
        http::header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'",
    ),
    (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (http::header::X_FRAME_OPTIONS, "DENY"),
    (http::header::REFERRER_POLICY, "no-referrer"),
];

/// Largest admin request body read.
const MAX_ADMIN_BODY: usize = 64 * 1024;

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let builder = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store");
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn respond_json(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", value.to_string().into_bytes())
}

impl AdminApp {
    /// Brings scrape-time gauges up to date: backend health (so it can never
    /// disagree with what selection sees) and the cache's size and evictions.
    fn refresh_gauges(&self) {
        let metrics = &self.state.metrics;
        let cache = &self.state.cache;
        metrics
            .cache_size
            .set(i64::try_from(cache.store.size_bytes()).unwrap_or(i64::MAX));
        metrics
            .cache_entries
            .set(i64::try_from(cache.store.entries()).unwrap_or(i64::MAX));
        metrics
            .cache_unreclaimed
            .set(i64::try_from(cache.store.unreclaimed()).unwrap_or(i64::MAX));
        let too_old = cache.store.fills_too_old() as u64;
        let counted = metrics.cache_fills_too_old.get();
        if too_old > counted {
            metrics.cache_fills_too_old.inc_by(too_old - counted);
        }
        let evicted = cache.evicted_items() as u64;
        let counted = metrics.cache_evictions.get();
        if evicted > counted {
            metrics.cache_evictions.inc_by(evicted - counted);
        }
        let evicted = self.state.rate.local.evicted();
        let counted = metrics.ratelimit_buckets_evicted.get();
        if evicted > counted {
            metrics.ratelimit_buckets_evicted.inc_by(evicted - counted);
        }
        if let Some(redis) = &self.state.rate.redis {
            metrics
                .redis_breaker_open
                .set(i64::from(redis.breaker_is_open()));
        }
        let gateway = self.state.gateway();
        for pool in gateway.pools.iter() {
            for slot in pool.members().slots() {
                let backend = slot.addr().to_string();
                self.state
                    .metrics
                    .upstream_healthy
                    .with_label_values(&[pool.name(), backend.as_str()])
                    .set(i64::from(pool.is_ready(slot)));
            }
        }
    }

    /// Checks `Authorization: Bearer <admin token>` for state-changing
    /// endpoints; `Some(refusal)` to send when it fails.
    fn refusal(&self, session: &ServerSession) -> Option<Response<Vec<u8>>> {
        let Some(token) = self.state.gateway().config.admin_token.clone() else {
            return Some(respond_json(
                StatusCode::FORBIDDEN,
                &json!({"error": "forbidden", "message": "Set admin.token_env to enable the admin POST endpoints (SIGHUP still reloads)"}),
            ));
        };
        (!presents(session, token.expose())).then(|| {
            respond_json(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "unauthorized", "message": "Send Authorization: Bearer <admin token>"}),
            )
        })
    }

    /// With `admin.require_token_for_reads`, the read-only pages ask for the
    /// token too: as a Bearer token, or as the password of HTTP Basic
    /// credentials (what a browser can send for the status page).
    fn read_refusal(&self, session: &ServerSession) -> Option<Response<Vec<u8>>> {
        let gateway = self.state.gateway();
        let config = &gateway.config;
        let token = config
            .admin_token
            .as_ref()
            .filter(|_| config.admin_reads_need_token)?;
        if presents(session, token.expose()) {
            return None;
        }
        let mut refusal = respond_json(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "unauthorized", "message": "Send the admin token: Authorization: Bearer <token>, or as the Basic password"}),
        );
        refusal.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"tollgate admin\", charset=\"UTF-8\""),
        );
        Some(refusal)
    }

    /// `/status.json`.
    fn status_report(&self) -> serde_json::Value {
        status_page::report(&self.state, &self.health())
    }

    /// `POST /config/reload`.
    async fn reload(&self) -> Response<Vec<u8>> {
        let state = self.state.clone();
        match tokio::task::spawn_blocking(move || crate::reload::reload(&state)).await {
            Ok(Ok(report)) => {
                respond_json(StatusCode::OK, &json!({"result": "ok", "loaded": report}))
            }
            Ok(Err(e)) => respond_json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({"error": "reload_refused", "message": e.to_string()}),
            ),
            Err(e) => respond_json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "internal_error", "message": format!("reload task failed: {e}")}),
            ),
        }
    }

    /// `POST /cache/purge` with one of `{"url": "http://host/path?q"}`,
    /// `{"prefix": "/path/", "host": "optional"}` or `{"route": "name"}`:
    /// this instance's memory, then, with the Redis tier, Redis and every
    /// other instance (`cache::invalidation`).
    async fn purge(&self, body: &[u8]) -> Response<Vec<u8>> {
        let purge = match self.purge_target(body) {
            Ok(purge) => purge,
            Err(refusal) => return *refusal,
        };
        let state = &self.state;
        let count = |removed: usize| {
            state
                .metrics
                .cache_purges
                .with_label_values(&["admin"])
                .inc_by(removed as u64);
            removed
        };
        let done = purge_everywhere(
            state.cache.store,
            state.cache.redis().map(|t| &**t),
            &state.instance,
            &purge,
        )
        .await;
        let removed = count(done.memory);
        let Some(shared) = done.shared else {
            return respond_json(StatusCode::OK, &json!({"purged": removed}));
        };
        match shared {
            Ok(shared) => respond_json(
                StatusCode::OK,
                &json!({"purged": removed, "redis_purged": shared, "published": true}),
            ),
            Err(e) => respond_json(
                StatusCode::BAD_GATEWAY,
                &json!({"error": "purge_incomplete", "message": format!("purged here, but not in Redis or on the other instances: {e}"), "purged": removed}),
            ),
        }
    }

    /// What a purge request asks for, or the answer refusing it.
    fn purge_target(&self, body: &[u8]) -> Result<Purge, Box<Response<Vec<u8>>>> {
        let bad = |message: &str| {
            Box::new(respond_json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "bad_request", "message": message}),
            ))
        };
        let Ok(request) = serde_json::from_slice::<PurgeRequest>(body) else {
            return Err(bad(
                "Send JSON: {\"url\": ...}, {\"prefix\": ..., \"host\": ...} or {\"route\": ...}",
            ));
        };
        let soft = request.soft.unwrap_or(false);
        let target = match request {
            PurgeRequest {
                url: Some(url),
                prefix: None,
                route: None,
                tag: None,
                ..
            } => crate::cache::key::uri_of_url(&url, &self.state.gateway().config.hygiene)
                .map(Selection::Uri)
                .ok_or_else(|| bad("url must be absolute: http://host/path"))?,
            PurgeRequest {
                prefix: Some(prefix),
                url: None,
                route: None,
                tag: None,
                host,
                ..
            } => {
                // The prefix is a path: normalised as requests' paths are.
                let Ok(prefix) = crate::values::hygiene::normalise_path(&prefix).map(|p| p.into_owned())
                else {
                    return Err(bad("prefix must be a path starting with / (no dot segments)"));
                };
                let host = match host.as_deref().map(crate::values::host::Host::parse_str) {
                    Some(Some(host)) => Some(host.as_str().to_owned()),
                    Some(None) => return Err(bad("host is not a valid host name")),
                    None => None,
                };
                Selection::Prefix { prefix, host }
            }
            PurgeRequest {
                route: Some(name),
                url: None,
                prefix: None,
                tag: None,
                ..
            } => {
                let gateway = self.state.gateway();
                if !gateway.config.routes.iter().any(|r| r.name == name) {
                    return Err(Box::new(respond_json(
                        StatusCode::NOT_FOUND,
                        &json!({"error": "not_found", "message": format!("no route named {name:?}")}),
                    )));
                }
                Selection::Route(name)
            }
            PurgeRequest {
                tag: Some(tag),
                url: None,
                prefix: None,
                route: None,
                ..
            } if !tag.is_empty() && !tag.contains([' ', ',']) => Selection::Tag(tag),
            PurgeRequest {
                tag: Some(_),
                url: None,
                prefix: None,
                route: None,
                ..
            } => return Err(bad("tag must be one tag: no spaces or commas")),
            _ => return Err(bad("Send exactly one of url, prefix, route or tag (and soft: true to mark stale instead of removing)")),
        };
        Ok(Purge {
            selection: target,
            soft,
        })
    }
}

/// The body of `POST /cache/purge`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    url: Option<String>,
    prefix: Option<String>,
    host: Option<String>,
    route: Option<String>,
    tag: Option<String>,
    soft: Option<bool>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if !rebinding::host_allowed(
            session.req_header(),
            &self.state.gateway().config.admin_hosts,
        ) {
            return respond_json(
                StatusCode::MISDIRECTED_REQUEST,
                &json!({"error": "misdirected", "message": "The admin listener answers to its IP addresses, localhost and the names in admin.hosts"}),
            );
        }
        if session.req_header().method == Method::POST {
            if let Err(refused) = origin::check(session.req_header()) {
                let status = match refused {
                    origin::CrossSite::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    origin::CrossSite::ForeignOrigin => StatusCode::FORBIDDEN,
                };
                return respond_json(
                    status,
                    &json!({"error": "refused", "message": refused.message()}),
                );
            }
            let path = session.req_header().uri.path().to_owned();
            let mut body = Vec::new();
            while let Ok(Some(chunk)) = session.read_request_body().await {
                if body.len() + chunk.len() > MAX_ADMIN_BODY {
                    return respond_json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &json!({"error": "too_large", "message": "Admin request bodies are limited to 64 KiB"}),
                    );
                }
                body.extend_from_slice(&chunk);
            }
            if let Some(refusal) = self.refusal(session) {
                return refusal;
            }
            match path.as_str() {
                "/config/reload" => return self.reload().await,
                "/cache/purge" => return self.purge(&body).await,
                _ => {}
            }
        }
        let req = session.req_header();
        if req.method != Method::GET && req.method != Method::HEAD {
            return respond_json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method_not_allowed", "message": "The admin endpoints answer GET, and POST /config/reload and /cache/purge"}),
            );
        }
        let path = req.uri.path();
        if matches!(path, "/" | "/status.json" | "/metrics") {
            if let Some(refusal) = self.read_refusal(session) {
                return refusal;
            }
        }
        match path {
            "/" => {
                let summary = status_page::text_summary(&self.status_report());
                let mut page = respond(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    status_page::page(&summary).into_bytes(),
                );
                for (name, value) in PAGE_HEADERS {
                    page.headers_mut()
                        .insert(name, http::HeaderValue::from_static(value));
                }
                page
            }
            "/status.json" => respond_json(StatusCode::OK, &self.status_report()),
            "/metrics" => {
                self.refresh_gauges();
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.state.metrics.render(),
                )
            }
            "/health" => {
                let health = self.health();
                // The document names the config file, backends and
                // warnings: with `require_token_for_reads` a caller without
                // the token (a load balancer's probe) gets the status only.
                if self.read_refusal(session).is_some() {
                    return respond_json(StatusCode::OK, &json!({"status": health["status"]}));
                }
                respond_json(StatusCode::OK, &health)
            }
            "/ready" if self.state.is_ready() => {
                respond_json(StatusCode::OK, &json!({"ready": true}))
            }
            "/ready" => respond_json(StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false})),
            _ => respond_json(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "message": "Admin endpoints: GET / (status page), /status.json, /metrics, /health, /ready; POST /config/reload, /cache/purge"}),
            ),
        }
    }
}
