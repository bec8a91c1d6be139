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
    // Certificate, key, CA and CRL files are read again by every reload.
    let sockets = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| (l.addr, l.h2c, l.tls.is_some()))
            .collect::<Vec<_>>()
    };
    if sockets(old) != sockets(new) {
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
    // The export queue is made once, when tracing first starts.
    let queue_of = |c: &Config| c.tracing.as_ref().map(|t| t.queue_size);
    if let (Some(old_queue), Some(new_queue)) = (queue_of(old), queue_of(new)) {
        if old_queue != new_queue {
            out.push(
                "tracing.queue_size changed: takes effect after a restart or graceful upgrade"
                    .to_owned(),
            );
        }
    }
    // `trusted_proxies` and `keep_override_headers` are read per request
    // from the live generation: they apply at once.
    let process_settings = |c: &Config| {
        let s = &c.server;
        (
            s.threads,
            s.work_stealing,
            s.grace_period,
            s.graceful_shutdown_timeout,
            s.upgrade_sock.clone(),
            s.pid_file.clone(),
            s.upstream_keepalive_pool_size,
        )
    };
    if process_settings(old) != process_settings(new) {
        out.push(
            "server threads, work_stealing, grace periods, upgrade_sock, pid_file or upstream_keepalive_pool_size changed: take effect after a restart or graceful upgrade"
                .to_owned(),
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
    tls_listeners_kept(&state.running_listeners, &config).map_err(ReloadError::Build)?;
    let current = state.gateway();
    let mut warnings = restart_only_changes(&current.config, &config);
    warnings.extend(config.warnings.iter().cloned());
    // New backend names get their first answers before the generation that
    // uses them is built, so their pools do not start empty.
    warnings.extend(crate::upstream::refresh::resolve_first(
        &config,
        &state.memory,
        Some(&state.metrics),
    ));
    let report = ReloadReport {
        routes: config.routes.len(),
        upstreams: config.upstreams.len(),
        warnings,
    };
    let gateway = match Gateway::build(config, &state.metrics, &state.memory, &state.keys) {
        Ok(gateway) => gateway,
        Err(e) => {
            // A refused reload changes nothing: the upstream memory goes
            // back to what the live generation uses (health states it
            // replaced, backends and metric series it created).
            state
                .memory
                .revert_to(&current.config, &current.pools, &state.metrics);
            state.keys.schedule(current.key_sets());
            return Err(ReloadError::Build(e));
        }
    };
    let config = gateway.config.clone();
    state.replace_gateway(gateway);
    state.memory.retain(&config, &state.metrics);
    Ok(report)
}

/// Every TLS listener the process runs keeps TLS, and asks for client
/// certificates exactly when it did at start, in the new config: its
/// handshakes take their certificate from the live generation, and
/// whether sessions may resume (never where client certificates are
/// asked for) was fixed when it was bound. Files and CAs may change.
fn tls_listeners_kept(
    running: &[crate::config::model::Listener],
    new: &Config,
) -> Result<(), String> {
    for listener in running {
        let Some(tls) = &listener.tls else { continue };
        let now = new.listeners.iter().find(|l| l.addr == listener.addr);
        match now.and_then(|l| l.tls.as_ref()) {
            None => {
                return Err(format!(
                    "listen: {} serves TLS; dropping it or its tls needs a restart or graceful upgrade",
                    listener.addr
                ))
            }
            Some(new_tls) if new_tls.client.is_some() != tls.client.is_some() => {
                return Err(format!(
                    "listen: {}: turning tls.client_certificates on or off needs a restart or graceful upgrade",
                    listener.addr
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(server: &str) -> Config {
        crate::config::parse(
            &format!(
                "listen: [\"127.0.0.1:1\"]\nserver: {{ {server} }}\nupstreams: {{ api: {{ backends: [\"127.0.0.1:2\"] }} }}\nroutes: [{{ name: all, upstream: api }}]\n"
            ),
            "test.yaml",
        )
        .expect("config")
    }

    /// Issue 24: a generation that was built and then refused leaves no
    /// trace: the live pools keep their health state, and the pools and
    /// backends only it had are forgotten with their metric series.
    #[test]
    fn a_refused_build_leaves_the_upstream_memory_as_the_live_generation_uses_it() {
        let metrics = crate::metrics::Metrics::new().expect("metrics");
        let memory = crate::upstream::UpstreamMemory::default();
        let file = |interval: &str, extra: &str| {
            crate::config::parse(
                &format!(
                    "listen: [\"127.0.0.1:1\"]\nupstreams:\n  api: {{ backends: [\"127.0.0.1:2\"], health_check: {{ type: tcp, interval: {interval} }} }}\n{extra}routes: [{{ name: all, upstream: api }}]\n"
                ),
                "test.yaml",
            )
            .expect("config")
        };
        let keys = Arc::new(crate::auth::keyring::KeyRing::default());
        let live = Gateway::build(file("5s", ""), &metrics, &memory, &keys).expect("live");
        let refused = Gateway::build(
            file("7s", "  extra: { backends: [\"127.0.0.1:3\"] }\n"),
            &metrics,
            &memory,
            &keys,
        )
        .expect("built, then refused");
        drop(refused);
        memory.revert_to(&live.config, &live.pools, &metrics);
        let again = Gateway::build(file("5s", ""), &metrics, &memory, &keys).expect("rebuilt");
        let health = |g: &Gateway| g.pools[0].active_health().cloned().expect("checked");
        assert!(
            Arc::ptr_eq(&health(&live), &health(&again)),
            "the live pool's health state was kept, not started over"
        );
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        assert!(!text.contains("extra"), "{text}");
        assert!(!text.contains("127.0.0.1:3"), "{text}");
    }

    #[test]
    fn settings_read_per_request_are_not_reported_as_needing_a_restart() {
        let old = config("threads: 2");
        let trusted = config("threads: 2, trusted_proxies: [\"10.0.0.0/8\"], keep_override_headers: [X-HTTP-Method-Override]");
        assert_eq!(restart_only_changes(&old, &trusted), Vec::<String>::new());
        let threads = config("threads: 4");
        assert_eq!(restart_only_changes(&old, &threads).len(), 1);
    }
}
