//! Hot reload: re-read the config file, validate it fully, build a new
//! generation and swap it in atomically. In-flight requests finish on the
//! generation they started with; backends that stay keep their in-flight
//! counts and health. A bad file changes nothing.
//!
//! Triggered by SIGHUP ([`ReloadOnSignal`]) and by `POST /config/reload` on
//! the admin listener.

use crate::config::{self, Config, ConfigError};
use crate::gateway::Gateway;
use crate::state::{AppState, ConfigSource};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;

/// What a successful reload loaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// Routes now served.
    pub routes: usize,
    /// Upstream pools now configured.
    pub upstreams: usize,
    /// Config warnings, and settings that need a restart to change.
    pub warnings: Vec<String>,
}

/// Why a reload was refused; the old config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is unreadable or invalid (every problem, with file:line).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The config is valid but could not be built (e.g. a health check).
    #[error("{0}")]
    Build(String),
    /// `tollgate demo` runs a built-in config.
    #[error("the built-in demo config cannot be reloaded; run with -c FILE")]
    NotAFile,
}

/// Settings a running process cannot change: sockets and runtime threads.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.listeners != new.listeners {
        out.push("listen changed: takes effect after a restart or graceful upgrade".to_owned());
    }
    if old.admin_listen != new.admin_listen {
        out.push(
            "admin.listen changed: takes effect after a restart or graceful upgrade".to_owned(),
        );
    }
    let redis_of = |c: &Config| c.rate_limit.as_ref().and_then(|r| r.redis.clone());
    if redis_of(old) != redis_of(new) {
        out.push(
            "redis settings changed: take effect after a restart or graceful upgrade".to_owned(),
        );
    }
    if old.cache_redis != new.cache_redis || old.cache_tags.headers != new.cache_tags.headers {
        out.push(
            "cache.redis / cache.tag_headers changed: take effect after a restart or graceful upgrade"
                .to_owned(),
        );
    }
    if old.cache != new.cache {
        out.push(
            "cache limits changed: take effect after a restart or graceful upgrade".to_owned(),
        );
    }
    if old.logging.access_log_path != new.logging.access_log_path
        || old.logging.level != new.logging.level
    {
        out.push(
            "logging.level / access_log_path changed: take effect after a restart or graceful upgrade"
                .to_owned(),
        );
    }
    if old.server != new.server {
        out.push(
            "server settings changed: take effect after a restart or graceful upgrade".to_owned(),
        );
    }
    out
}

/// Reloads the config file into `state`. Blocking (file read, DNS): call it
/// from a blocking context.
pub fn reload(state: &AppState) -> Result<ReloadReport, ReloadError> {
    let _one_at_a_time = state.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
    let result = load_and_swap(state);
    let metrics = &state.metrics;
    match &result {
        Ok(report) => {
            metrics.config_reloads.with_label_values(&["ok"]).inc();
            state.record_reload(true, String::new());
            log::info!(
                "config reloaded: {} routes, {} upstreams",
                report.routes,
                report.upstreams
            );
            for w in &report.warnings {
                log::warn!("config reload: {w}");
            }
        }
        Err(e) => {
            metrics.config_reloads.with_label_values(&["error"]).inc();
            state.record_reload(false, e.to_string());
            log::error!("config reload refused, the previous config keeps serving:\n{e}");
        }
    }
    result
}

fn load_and_swap(state: &AppState) -> Result<ReloadReport, ReloadError> {
    let ConfigSource::File(path) = &state.source else {
        return Err(ReloadError::NotAFile);
    };
    let config = config::load(path)?;
    let current = state.gateway();
    let mut warnings = restart_only_changes(&current.config, &config);
    warnings.extend(config.warnings.iter().cloned());
    let report = ReloadReport {
        routes: config.routes.len(),
        upstreams: config.upstreams.len(),
        warnings,
    };
    let gateway =
        Gateway::build(config, &state.metrics, &state.memory).map_err(ReloadError::Build)?;
    let config = gateway.config.clone();
    state.replace_gateway(gateway);
    state.memory.retain(&config, &state.metrics);
    Ok(report)
}

/// Reloads on SIGHUP.
pub struct ReloadOnSignal {
    state: Arc<AppState>,
}

impl ReloadOnSignal {
    /// Reloads `state` on every SIGHUP.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

#[async_trait]
impl BackgroundService for ReloadOnSignal {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload only through the admin API: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => {}
                _ = shutdown.changed() => return,
            }
            log::info!("SIGHUP: reloading the config");
            let state = self.state.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || reload(&state)).await {
                log::error!("config reload task failed: {e}");
            }
        }
    }
}
