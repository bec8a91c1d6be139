//! The admin listener: `/metrics`, `/health`, `/ready`, and the
//! token-protected `POST /config/reload`. It runs on its own address
//! (default 127.0.0.1:9090) so it is never reachable through a route, and
//! answers from shared state without touching upstreams.

use crate::state::AppState;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

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
            let backends: Vec<_> = pool
                .slots()
                .iter()
                .map(|s| {
                    json!({
                        "address": s.addr().to_string(),
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
            let healthy = pool.slots().iter().filter(|s| pool.is_ready(s)).count();
            degraded |= healthy == 0;
            upstreams.insert(
                pool.name().to_owned(),
                json!({
                    "status": if healthy == 0 { "down" } else { "ok" },
                    "healthy": healthy,
                    "total": pool.slots().len(),
                    "backends": backends,
                }),
            );
        }
        let config = &gateway.config;
        json!({
            "status": if degraded { "degraded" } else { "ok" },
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.state.started.elapsed().as_secs(),
            "components": {
                "config": {
                    "status": "ok",
                    "file": config.source,
                    "loaded_at_unix": gateway.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "routes": config.routes.len(),
                    "upstreams": config.upstreams.len(),
                    "warnings": config.warnings,
                },
                "upstreams": upstreams,
            }
        })
    }
}

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
    /// Brings `tollgate_upstream_healthy` up to date; computed at scrape
    /// time so it can never disagree with what selection sees.
    fn refresh_health_gauges(&self) {
        let gateway = self.state.gateway();
        for pool in gateway.pools.iter() {
            for slot in pool.slots() {
                let backend = slot.addr().to_string();
                self.state
                    .metrics
                    .upstream_healthy
                    .with_label_values(&[pool.name(), backend.as_str()])
                    .set(i64::from(pool.is_ready(slot)));
            }
        }
    }

    /// `POST /config/reload`, allowed only with `Authorization: Bearer <admin token>`.
    async fn reload(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // Drain any body so the connection stays usable.
        while let Ok(Some(_)) = session.read_request_body().await {}
        let Some(token) = self.state.gateway().config.admin_token.clone() else {
            return respond_json(
                StatusCode::FORBIDDEN,
                &json!({"error": "forbidden", "message": "Set admin.token_env to enable POST /config/reload (or send SIGHUP)"}),
            );
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            return respond_json(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "unauthorized", "message": "Send Authorization: Bearer <admin token>"}),
            );
        }
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
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method == Method::POST && req.uri.path() == "/config/reload" {
            return self.reload(session).await;
        }
        if req.method != Method::GET && req.method != Method::HEAD {
            return respond_json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method_not_allowed", "message": "The admin endpoints answer GET, and POST /config/reload"}),
            );
        }
        match req.uri.path() {
            "/metrics" => {
                self.refresh_health_gauges();
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.state.metrics.render(),
                )
            }
            "/health" => respond_json(StatusCode::OK, &self.health()),
            "/ready" if self.state.is_ready() => {
                respond_json(StatusCode::OK, &json!({"ready": true}))
            }
            "/ready" => respond_json(StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false})),
            _ => respond_json(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "message": "Admin endpoints: GET /metrics, /health, /ready; POST /config/reload"}),
            ),
        }
    }
}
