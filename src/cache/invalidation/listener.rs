//! Purges that reach every instance. An admin purge on any instance
//! removes the matching entries from its memory, from the Redis tier (by
//! the URI and route index sets the tier keeps), and publishes the purge on
//! the channel `{key_prefix}purge`; every other instance, subscribed,
//! removes the same entries from its memory within a round trip.
//!
//! An instance that cannot hear the channel (Redis down, subscription
//! lost) could keep serving an entry another instance purged meanwhile. The
//! bound: while it is not subscribed, its memory keeps no entry longer
//! than [`DEAF_GRACE`] (a sweep every second removes older ones, so
//! misses refill from Redis or the upstream), and when it hears the
//! channel again it drops every entry it stored before, once.

use super::shared::channel;
use super::{purge_memory_off_runtime, Announcement};
use crate::cache::l2::generation;
use crate::cache::l2::RedisTier;
use crate::cache::store::MemoryStore;
use crate::metrics::Metrics;
use futures::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The longest an instance serves a memory entry while it cannot hear
/// other instances' purges.
pub const DEAF_GRACE: Duration = Duration::from_secs(5);

/// How often the purge channel's connection is asked to prove it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Listens for other instances' purges and applies them to memory; keeps
/// memory within [`DEAF_GRACE`] while it cannot listen.
pub struct PurgeListener {
    tier: Arc<RedisTier>,
    store: &'static MemoryStore,
    metrics: Arc<Metrics>,
    instance: String,
    /// How this instance's own announcements begin.
    own_prefix: String,
}

impl PurgeListener {
    /// A listener for this instance (`instance`, its id on the channel).
    pub fn new(
        tier: Arc<RedisTier>,
        store: &'static MemoryStore,
        metrics: Arc<Metrics>,
        instance: String,
    ) -> Self {
        let own_prefix = own_prefix(&instance);
        Self {
            tier,
            store,
            metrics,
            instance,
            own_prefix,
        }
    }

    async fn apply(&self, payload: &[u8]) {
        // This instance's own purges (every write's, under a write load)
        // are known here already: not parsed again.
        if payload.starts_with(self.own_prefix.as_bytes()) {
            return;
        }
        let Ok(announcement) = serde_json::from_slice::<Announcement>(payload) else {
            log::warn!("cache purge channel: a message that is not a purge; ignored");
            return;
        };
        let mut removed = 0;
        if announcement.from != self.instance {
            for purge in std::iter::once(&announcement.purge).chain(&announcement.purges) {
                removed += purge_memory_off_runtime(self.store, purge).await;
            }
        }
        // After the memory purge: requests beginning from now on may write
        // what this purge named to Redis again.
        if let Some(generation) = announcement.generation {
            self.hear(generation, "announced on the purge channel");
        }
        self.metrics
            .cache_purges
            .with_label_values(&["remote"])
            .inc_by(removed as u64);
    }

    /// Raises the shared generation this instance stamps its writes with
    /// to `generation`, unless it is implausibly far ahead of the clock
    /// (`generation::MAX_AHEAD`): believed, it would keep every later
    /// purge marker from hiding what is written meanwhile.
    fn hear(&self, generation: u64, source: &str) {
        if generation::plausible(generation, SystemTime::now()) {
            self.store.heard_shared_generation(generation);
        } else {
            self.metrics.cache_implausible_generations.inc();
            log::warn!(
                "cache: ignored a purge generation {source} ({generation}) more than {:?} ahead of this clock",
                generation::MAX_AHEAD
            );
        }
    }

    /// Reads the epoch of Redis's data (making one when it has none) for
    /// this instance's tickets and writer: a change means Redis lost its
    /// data, and writes stamped before are dropped (`generation`).
    async fn learn_epoch(&self) {
        let Some(mut conn) = self.tier.link().conn() else {
            return;
        };
        let key = self.tier.epoch_key();
        let asked = generation::epoch(&mut conn, &key);
        let Ok(Ok(epoch)) = tokio::time::timeout(self.tier.settings().listen_timeout, asked).await
        else {
            return;
        };
        self.tier.learn_epoch(epoch);
        let before = self.store.learn_redis_epoch(epoch);
        if before != 0 && before != epoch {
            log::warn!("cache: Redis's data began a new epoch (restarted empty, flushed, or failed over to a server without it); Redis writes of requests that began before are dropped");
        }
    }

    /// Removes memory entries stored before `cutoff`, off the runtime.
    async fn drop_created_before(&self, cutoff: SystemTime) -> usize {
        let store = self.store;
        tokio::task::spawn_blocking(move || store.purge_created_before(cutoff))
            .await
            .unwrap_or(0)
    }

    /// Removes memory entries older than the grace, while deaf.
    async fn sweep(&self) {
        let Some(cutoff) = SystemTime::now().checked_sub(DEAF_GRACE) else {
            return;
        };
        let removed = self.drop_created_before(cutoff).await;
        if removed > 0 {
            log::debug!("cache: {removed} memory entries dropped while purges cannot be heard");
        }
    }

    /// Connects and subscribes, within `listen_timeout`.
    async fn subscribe(&self) -> Result<redis::aio::PubSub, String> {
        let connect = async {
            let mut pubsub = self.tier.link().client().get_async_pubsub().await?;
            pubsub.subscribe(channel(&self.tier)).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let bound = self.tier.settings().listen_timeout;
        match tokio::time::timeout(bound, connect).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within listen_timeout ({bound:?})")),
        }
    }

    /// The shared purge generation now (after subscribing, so no purge
    /// falls between it and the first message); `None` if Redis does not
    /// say, which only keeps older tickets (more writes dropped).
    async fn current_generation(&self) -> Option<u64> {
        let mut conn = self.tier.link().conn()?;
        let mut get = redis::cmd("GET");
        get.arg(self.tier.generation_key());
        let get = get.query_async::<Option<u64>>(&mut conn);
        match tokio::time::timeout(self.tier.settings().listen_timeout, get).await {
            Ok(Ok(generation)) => Some(generation.unwrap_or(0)),
            _ => None,
        }
    }

    /// One subscription, until it breaks, stops answering its heartbeat
    /// (a `PING` every [`HEARTBEAT`], answered within `listen_timeout`:
    /// a half-open or black-holed connection is noticed), or shutdown.
    async fn listen(
        &self,
        shutdown: &mut ShutdownWatch,
        deaf_since: &mut Option<SystemTime>,
    ) -> bool {
        let pubsub = match self.subscribe().await {
            Ok(p) => p,
            Err(e) => {
                log::debug!("cache purge channel: cannot subscribe: {e}");
                return false;
            }
        };
        log::info!(
            "cache: listening for other instances' purges on {}",
            channel(&self.tier)
        );
        self.tier.check_version().await;
        self.learn_epoch().await;
        if let Some(generation) = self.current_generation().await {
            self.hear(generation, "stored in Redis");
        }
        if let Some(since) = deaf_since.take() {
            // Whatever was stored before may have been purged unheard.
            let removed = self.drop_created_before(SystemTime::now()).await;
            log::info!(
                "cache: hearing purges again after {:?}; dropped {removed} memory entries stored meanwhile",
                since.elapsed().unwrap_or_default()
            );
        }
        self.metrics.cache_purge_channel_listening.set(1);
        let (mut sink, mut messages) = pubsub.split();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let bound = self.tier.settings().listen_timeout;
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(m) => self.apply(m.get_payload_bytes()).await,
                    None => return false,
                },
                _ = heartbeat.tick() => {
                    let ping = tokio::time::timeout(bound, sink.ping::<redis::Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        log::warn!("cache purge channel: no heartbeat answer within {bound:?}; reconnecting");
                        return false;
                    }
                    self.learn_epoch().await;
                }
                _ = shutdown.changed() => return true,
            }
        }
    }
}

/// The start of `instance`'s announcements as serialized: `from` comes
/// first (the field order of `Announcement`).
fn own_prefix(instance: &str) -> String {
    let from = serde_json::to_string(instance).unwrap_or_default();
    format!("{{\"from\":{from},")
}

#[async_trait::async_trait]
impl BackgroundService for PurgeListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut deaf_since: Option<SystemTime> = None;
        loop {
            if self.listen(&mut shutdown, &mut deaf_since).await {
                return;
            }
            self.metrics.cache_purge_channel_listening.set(0);
            deaf_since.get_or_insert_with(|| {
                log::warn!("cache: cannot hear other instances' purges; memory entries live at most {DEAF_GRACE:?} until it can");
                SystemTime::now()
            });
            self.sweep().await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::invalidation::{Purge, Selection};

    #[test]
    fn announcements_round_trip() {
        let a = Announcement {
            from: "i1".into(),
            purge: Purge {
                selection: Selection::Prefix {
                    prefix: "/p/".into(),
                    host: None,
                },
                soft: true,
            },
            purges: vec![Purge {
                selection: Selection::Tag("t".into()),
                soft: false,
            }],
            generation: Some(7),
        };
        let text = serde_json::to_string(&a).expect("json");
        assert!(text.starts_with(&own_prefix("i1")), "{text}");
        assert!(
            !text.starts_with(&own_prefix("i")),
            "a prefix of another id"
        );
        let back: Announcement = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.purge, a.purge);
        assert_eq!(back.generation, Some(7));
        assert_eq!(back.purges.len(), 1, "a batch");
        // An earlier version's announcement (no generation) is still heard.
        let old = r#"{"from":"i0","purge":{"target":{"uri":"h/a"},"soft":false}}"#;
        let back: Announcement = serde_json::from_str(old).expect("parse");
        assert_eq!(back.generation, None);
        assert!(back.purges.is_empty());
        assert_eq!(back.purge.selection, Selection::Uri("h/a".into()));
    }
}
