//! What the proxy and the admin listener share for the life of the process:
//! the current config generation, upstream memory, the metrics, readiness.

use crate::access_log::AccessLog;
use crate::auth::keyring::KeyRing;
use crate::cache::CacheRuntime;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::ratelimit::RateStore;
use crate::status::StatusBoard;
use crate::upstream::UpstreamMemory;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// Where the running config came from, so a reload knows what to re-read.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file on disk: reloads re-read it.
    File(PathBuf),
    /// The config built into the binary (`tollgate demo`): not reloadable.
    BuiltIn,
}

/// Process-wide state, created once at start-up.
pub struct AppState {
    gateway: ArcSwap<Gateway>,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// Backend and health state that survives reloads.
    pub memory: Arc<UpstreamMemory>,
    /// Issuers' key sets (JWT), fetched in the background; survive reloads.
    pub keys: Arc<KeyRing>,
    /// The response cache (created once; survives reloads).
    pub cache: CacheRuntime,
    /// Rate-limit buckets (created once; survive reloads).
    pub rate: Arc<RateStore>,
    /// Where the config comes from.
    pub source: ConfigSource,
    /// Serialises reloads (SIGHUP and the admin endpoint may race).
    pub reload_lock: Mutex<()>,
    ready: AtomicBool,
    /// When the process started.
    pub started: Instant,
    /// The listeners this process bound at start (a reload cannot change
    /// sockets; it must keep a certificate for each TLS one).
    pub running_listeners: Box<[crate::config::model::Listener]>,
    /// The status page's sampled history.
    pub status: Arc<StatusBoard>,
    /// Where finished requests' access-log lines go.
    pub access_log: Arc<AccessLog>,
    /// This process's id on the cache purge channel and in its traces
    /// (random per start).
    pub instance: String,
    /// Where sampled requests' traces go (`tracing`); idle without it.
    pub traces: crate::trace::exporter::Exporter,
    last_reload: Mutex<Option<ReloadRecord>>,
}

/// The outcome of the most recent reload, for the status page.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    /// When it finished.
    pub at: SystemTime,
    /// Whether the new config is serving.
    pub ok: bool,
    /// Why it was refused (empty when it succeeded).
    pub message: String,
}

impl AppState {
    /// Wraps the first config generation and schedules its health checks
    /// and key-set fetches.
    // Each argument is one process-wide part `server::build` creates before
    // the state that holds them; a builder would only rename the list.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gateway: Gateway,
        metrics: Arc<Metrics>,
        memory: Arc<UpstreamMemory>,
        keys: Arc<KeyRing>,
        cache: CacheRuntime,
        rate: Arc<RateStore>,
        source: ConfigSource,
        access_log: Arc<AccessLog>,
    ) -> Self {
        memory.schedule(&gateway.pools, &gateway.config.dns);
        keys.schedule(gateway.key_sets());
        let instance = format!("{:016x}", rand::random::<u64>());
        let traces = crate::trace::exporter::Exporter::new(&metrics, &instance);
        configure_traces(&traces, &gateway);
        Self {
            running_listeners: gateway.config.listeners.clone().into_boxed_slice(),
            gateway: ArcSwap::from_pointee(gateway),
            metrics,
            memory,
            keys,
            cache,
            rate,
            source,
            reload_lock: Mutex::new(()),
            ready: AtomicBool::new(false),
            started: Instant::now(),
            status: Arc::new(StatusBoard::new()),
            access_log,
            instance,
            traces,
            last_reload: Mutex::new(None),
        }
    }

    /// The most recent reload's outcome, if any since start.
    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a reload's outcome.
    pub fn record_reload(&self, ok: bool, message: String) {
        let record = ReloadRecord {
            at: SystemTime::now(),
            ok,
            message,
        };
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(record);
    }

    /// The current generation; requests keep the `Arc` they got.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.load_full()
    }

    /// Swaps in a new generation atomically (hot reload), and hands its
    /// pools' health checks to the checker.
    pub fn replace_gateway(&self, gateway: Gateway) {
        let gateway = Arc::new(gateway);
        self.gateway.store(gateway.clone());
        self.memory.schedule(&gateway.pools, &gateway.config.dns);
        self.keys.schedule(gateway.key_sets());
        configure_traces(&self.traces, &gateway);
    }

    /// Whether `/ready` should say yes: listeners up and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Set by the lifecycle service at start-up and at shutdown.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

/// Hands a generation's `tracing` section to the exporter.
fn configure_traces(traces: &crate::trace::exporter::Exporter, gateway: &Gateway) {
    traces.configure(gateway.config.tracing.as_ref());
}
