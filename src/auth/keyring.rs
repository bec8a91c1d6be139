//! The issuers' key sets for the life of the process: fetched in the
//! background (never on the request path), refreshed every `refresh`, and
//! at once — at most once per `unknown_kid_cooldown` — when a token names
//! a key the set does not have, so a rotation needs no reload. A failed
//! fetch keeps the last good set and shows in `/health`.
//!
//! Sources are kept by their config, so a reload that keeps an issuer's
//! `jwks` block keeps its keys (no gap while the new generation fetches).

use crate::config::model::{JwksConfig, JwksSource};
use crate::metrics::Metrics;
use crate::values::key_set::KeySet;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

/// Largest key-set document read.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// Retry delay after a failed fetch, when `refresh` is longer.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// One published key set and what is known of its fetches.
pub struct PublishedKeySet {
    /// Where and how often.
    pub config: JwksConfig,
    keys: ArcSwap<KeySet>,
    status: Mutex<FetchStatus>,
    /// A token named an unknown key: fetch as soon as the cooldown allows.
    wanted: AtomicBool,
    /// Its file changed on disk (`server.watch_config`): read it at once.
    forced: AtomicBool,
    /// A fetch is running.
    fetching: AtomicBool,
    /// The first fetch has been tried (ready or failed): requests stop
    /// waiting for it ([`PublishedKeySet::first_fetch`]).
    tried: AtomicBool,
    /// Wakes requests waiting for the first fetch.
    first_done: tokio::sync::Notify,
}

#[derive(Default)]
struct FetchStatus {
    last_attempt: Option<Instant>,
    last_ok: Option<SystemTime>,
    last_error: Option<(SystemTime, String)>,
    failed_last: bool,
}

impl PublishedKeySet {
    fn new(config: JwksConfig) -> Self {
        Self {
            config,
            keys: ArcSwap::from_pointee(KeySet::empty()),
            status: Mutex::new(FetchStatus::default()),
            wanted: AtomicBool::new(false),
            forced: AtomicBool::new(false),
            fetching: AtomicBool::new(false),
            tried: AtomicBool::new(false),
            first_done: tokio::sync::Notify::new(),
        }
    }

    /// Waits, at most `bound`, until the first fetch has been tried. A
    /// token that arrives before the set was ever read — right after a
    /// start, or in the process a graceful upgrade just handed the
    /// listening sockets to — would otherwise be refused for a key the
    /// set has; after the first fetch this is one atomic load. True when
    /// it had to wait (the request's trace shows the wait).
    pub async fn first_fetch(&self, bound: Duration) -> bool {
        if self.tried.load(Ordering::Acquire) {
            return false;
        }
        let notified = self.first_done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.tried.load(Ordering::Acquire) {
            return false;
        }
        let _ = tokio::time::timeout(bound, notified).await;
        true
    }

    /// The keys as last read (empty before the first good fetch).
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// Asks for a fetch because a token named an unknown key; the refresher
    /// does it once the cooldown since the last fetch has passed.
    pub fn want_refresh(&self, ring: &KeyRing) {
        if !self.wanted.swap(true, Ordering::Relaxed) {
            ring.wake.notify_one();
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, FetchStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the next fetch is due (`now` if never tried), or `None`
    /// while one runs.
    fn due_at(&self, now: Instant) -> Option<Instant> {
        if self.fetching.load(Ordering::Relaxed) {
            return None;
        }
        let status = self.status();
        let Some(last) = status.last_attempt else {
            return Some(now);
        };
        if self.forced.load(Ordering::Relaxed) {
            return Some(now);
        }
        let mut wait = self.config.refresh;
        if status.failed_last {
            wait = wait.min(RETRY_AFTER_FAILURE);
        }
        if self.wanted.load(Ordering::Relaxed) {
            wait = wait.min(self.config.unknown_kid_cooldown);
        }
        Some(last + wait)
    }

    /// Whether a first fetch has been tried (ready or not).
    fn attempted(&self) -> bool {
        self.status().last_attempt.is_some() && !self.fetching.load(Ordering::Relaxed)
    }

    /// Fetches and installs the set; a failure keeps the last good one.
    async fn refresh(&self, connector: &Connector, metrics: &Metrics) {
        self.wanted.store(false, Ordering::Relaxed);
        self.forced.store(false, Ordering::Relaxed);
        self.status().last_attempt = Some(Instant::now());
        let fetched = match tokio::time::timeout(self.config.timeout, self.read(connector)).await {
            Ok(result) => result.and_then(|body| KeySet::parse(&body)),
            Err(_) => Err(format!(
                "no answer within {}",
                crate::config::units::seconds_one_decimal(self.config.timeout)
            )),
        };
        let mut status = self.status();
        let first = !self.tried.load(Ordering::Acquire);
        match fetched {
            Ok(set) => {
                if set.fingerprint != self.keys.load().fingerprint {
                    // Key ids are the publisher's text: logged quoted and
                    // escaped, so a kid cannot forge log lines.
                    log::info!(
                        "JWKS {}: {} keys {:?}",
                        self.config.source,
                        set.len(),
                        set.kids()
                    );
                    self.keys.store(Arc::new(set));
                }
                status.last_ok = Some(SystemTime::now());
                status.failed_last = false;
                metrics.jwks_fetches.with_label_values(&["ok"]).inc();
            }
            Err(e) => {
                log::warn!(
                    "JWKS {}: {e}; keeping the last good keys",
                    self.config.source
                );
                status.last_error = Some((SystemTime::now(), e));
                status.failed_last = true;
                metrics.jwks_fetches.with_label_values(&["error"]).inc();
            }
        }
        drop(status);
        if first {
            self.tried.store(true, Ordering::Release);
            self.first_done.notify_waiters();
        }
    }

    async fn read(&self, connector: &Connector) -> Result<Vec<u8>, String> {
        match &self.config.source {
            JwksSource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            JwksSource::Url(url) => get(connector, url).await,
        }
    }

    /// What `/health` shows of this source.
    pub fn health(&self) -> serde_json::Value {
        let unix = |t: SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let status = self.status();
        let keys = self.keys.load();
        serde_json::json!({
            "source": self.config.source.to_string(),
            "status": if keys.is_empty() { "down" } else if status.failed_last { "degraded" } else { "ok" },
            "keys": keys.kids(),
            "last_ok_unix": status.last_ok.map(unix),
            "last_error": status.last_error.as_ref().map(|(_, e)| e.clone()),
            "last_error_unix": status.last_error.as_ref().map(|(t, _)| unix(*t)),
        })
    }

    /// Whether the keys are missing or the last fetch failed.
    pub fn is_degraded(&self) -> bool {
        self.keys.load().is_empty() || self.status().failed_last
    }
}

/// A GET of the key set's `http(s)://` URL (`http_client`); the body of a 200.
async fn get(connector: &Connector, url: &str) -> Result<Vec<u8>, String> {
    let url = crate::http_client::Url::parse(url)?;
    let accept = [(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    )];
    let answer = crate::http_client::send(
        connector,
        crate::http_client::Request {
            method: "GET",
            url: &url,
            headers: &accept,
            body: None,
            max_answer: MAX_DOCUMENT,
        },
    )
    .await?;
    if answer.status != 200 {
        return Err(format!("answered {}", answer.status));
    }
    Ok(answer.body)
}

/// Every key source of the process.
pub struct KeyRing {
    sources: Mutex<HashMap<JwksConfig, Arc<PublishedKeySet>>>,
    scheduled: ArcSwap<Vec<Arc<PublishedKeySet>>>,
    wake: Notify,
}

impl Default for KeyRing {
    fn default() -> Self {
        Self {
            sources: Mutex::new(HashMap::new()),
            scheduled: ArcSwap::from_pointee(Vec::new()),
            wake: Notify::new(),
        }
    }
}

impl KeyRing {
    /// The source for `config`: the one already running for an equal
    /// block, or a new one (a file is read at once, so its keys are there
    /// before the first request).
    pub fn source(&self, config: &JwksConfig) -> Arc<PublishedKeySet> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources
            .entry(config.clone())
            .or_insert_with(|| {
                let source = PublishedKeySet::new(config.clone());
                if let JwksSource::File(path) = &config.source {
                    if let Ok(set) = std::fs::read(path)
                        .map_err(|e| e.to_string())
                        .and_then(|body| KeySet::parse(&body))
                    {
                        source.keys.store(Arc::new(set));
                    }
                }
                Arc::new(source)
            })
            .clone()
    }

    /// Publishes the sources of a generation that went live: from now on
    /// these and only these are refreshed; the others are forgotten.
    pub fn schedule(&self, live: Vec<Arc<PublishedKeySet>>) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.retain(|_, s| live.iter().any(|l| Arc::ptr_eq(l, s)));
        self.scheduled.store(Arc::new(live));
        self.wake.notify_one();
    }

    /// The key-set files the live sources read, for the config watch.
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        self.scheduled
            .load()
            .iter()
            .filter_map(|s| match &s.config.source {
                JwksSource::File(path) => Some(std::path::PathBuf::from(path)),
                JwksSource::Url(_) => None,
            })
            .collect()
    }

    /// Re-reads the key-set file `path` now (it changed on disk), without
    /// waiting for its `refresh`: the refresher reads it next, and a file
    /// that does not parse keeps the last good keys and is reported as
    /// any failed fetch is.
    pub fn reread(&self, path: &std::path::Path) {
        for source in self.scheduled.load().iter() {
            if matches!(&source.config.source, JwksSource::File(p) if std::path::Path::new(p) == path)
            {
                source.forced.store(true, Ordering::Relaxed);
            }
        }
        self.wake.notify_one();
    }

    /// `/health`'s view: one entry per scheduled source.
    pub fn health(&self) -> Vec<serde_json::Value> {
        self.scheduled.load().iter().map(|s| s.health()).collect()
    }

    /// Whether any scheduled source has no keys or failed its last fetch.
    pub fn is_degraded(&self) -> bool {
        self.scheduled.load().iter().any(|s| s.is_degraded())
    }

    /// Waits (up to `limit`) until every scheduled source had its first
    /// fetch, so `/ready` does not send traffic to a proxy without keys.
    pub async fn first_fetches(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && !self.scheduled.load().iter().all(|s| s.attempted()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The background service that fetches key sets when they are due.
pub struct KeyRefresher {
    ring: Arc<KeyRing>,
    metrics: Arc<Metrics>,
}

impl KeyRefresher {
    /// A refresher of `ring`'s scheduled sources.
    pub fn new(ring: Arc<KeyRing>, metrics: Arc<Metrics>) -> Self {
        Self { ring, metrics }
    }
}

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Made at the first fetch: a connector loads the system's CA
        // store (megabytes, and tens of milliseconds of CPU), which a
        // proxy without key sets to fetch never needs.
        let mut connector: Option<Arc<Connector>> = None;
        loop {
            let now = Instant::now();
            let scheduled = self.ring.scheduled.load();
            // Without sources there is nothing to look at until a reload
            // schedules some (`wake`).
            let mut next = (!scheduled.is_empty()).then(|| now + Duration::from_secs(1));
            for source in scheduled.iter() {
                match source.due_at(now) {
                    Some(due) if due <= now => {
                        source.fetching.store(true, Ordering::Relaxed);
                        let connector = connector
                            .get_or_insert_with(|| Arc::new(Connector::new(None)))
                            .clone();
                        let (source, metrics) = (source.clone(), self.metrics.clone());
                        tokio::spawn(async move {
                            source.refresh(&connector, &metrics).await;
                            source.fetching.store(false, Ordering::Relaxed);
                        });
                    }
                    Some(due) => next = next.map(|n| n.min(due)),
                    None => {}
                }
            }
            drop(scheduled);
            let sleep = async {
                match next {
                    Some(next) => tokio::time::sleep_until(next.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.ring.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
