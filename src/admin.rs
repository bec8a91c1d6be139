//! The admin listener: `/metrics`, `/health`, `/ready`. It runs on its own
//! address (default 127.0.0.1:9090) so it is never reachable through a
//! route, and answers from shared state without touching upstreams.

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

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != Method::GET && req.method != Method::HEAD {
            return respond_json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method_not_allowed", "message": "The admin endpoints answer GET"}),
            );
        }
        match req.uri.path() {
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.state.metrics.render(),
            ),
            "/health" => respond_json(StatusCode::OK, &self.health()),
            "/ready" if self.state.is_ready() => {
                respond_json(StatusCode::OK, &json!({"ready": true}))
            }
            "/ready" => respond_json(StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false})),
            _ => respond_json(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "message": "Admin endpoints: /metrics, /health, /ready"}),
            ),
        }
    }
}
