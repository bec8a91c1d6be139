//! A deterministic simulation of the invalidation protocol
//! (`cache::invalidation`): three instances — each a memory store, a
//! Redis tier, an outbox sender and a purge listener, built from the
//! library as the server builds them — over one real `redis-server`, each
//! through a relay of its own that can be cut like a network partition.
//! A seeded schedule interleaves fills that begin before and end after
//! other steps, lookups, admin purges, writes (unsafe requests), and
//! faults: Redis hung, Redis restarted empty, one instance partitioned.
//!
//! The model: each key's content has a version; a purge or a write makes
//! a new one. After every step it checks what an instance serves:
//! - once a purge or write has answered on an instance, that instance
//!   never serves an older version of what it named (an admin purge whose
//!   shared part failed is reported as failed and promises nothing);
//! - on every other instance, the same holds once the shared part is sent
//!   and heard (a "settle" step heals every fault and waits for it: the
//!   propagation bound the book's Running several instances states).
//!
//! Seeds: `TOLLGATE_SIM_SEEDS` (default 6) seeds of `TOLLGATE_SIM_STEPS`
//! (default 60) steps, from `TOLLGATE_SIM_SEED` (default 1). A failure
//! names its seed and step; the same seed replays the same schedule.

mod common;
use bytes::Bytes;
use common::redis::{RedisServer, Relay};
use common::wait_until;
use pingora::cache::key::CacheKey;
use pingora::cache::trace::Span;
use pingora::cache::{CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::services::background::BackgroundService;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tollgate::breaker::CircuitBreaker;
use tollgate::cache::invalidation::listener::PurgeListener;
use tollgate::cache::invalidation::sender::OutboxSender;
use tollgate::cache::invalidation::{self, purge_everywhere, Purge, Selection};
use tollgate::cache::l2::markers::{self, MarkedWrite};
use tollgate::cache::l2::{L2Settings, RedisTier};
use tollgate::cache::store::{FillTicket, MemoryStore};
use tollgate::cache::tiered::TieredStorage;
use tollgate::metrics::Metrics;
use tollgate::redis_link::RedisEndpoint;

const INSTANCES: usize = 3;
const KEYS: usize = 4;

/// One simulated tollgate.
struct Instance {
    id: String,
    store: &'static MemoryStore,
    tier: Arc<RedisTier>,
    tiered: &'static TieredStorage,
    metrics: Arc<Metrics>,
    relay: Relay,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

fn settings() -> L2Settings {
    L2Settings {
        max_object_size: 1 << 20,
        key_prefix: "sim:".into(),
        lookup_timeout: Duration::from_millis(150),
        write_timeout: Duration::from_millis(300),
        purge_timeout: Duration::from_millis(600),
        listen_timeout: Duration::from_millis(300),
        purge_marker_ttl: Duration::from_secs(60),
    }
}

impl Instance {
    fn start(redis: &RedisServer, n: usize) -> Self {
        let relay = Relay::start(redis.addr);
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let breaker = CircuitBreaker::new(3, Duration::from_millis(300));
        let tier = RedisTier::start(
            &RedisEndpoint::Url(relay.url()),
            settings(),
            breaker,
            metrics.clone(),
        )
        .expect("tier");
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new()));
        let tiered: &'static TieredStorage =
            Box::leak(Box::new(TieredStorage::new(store, tier.clone())));
        let id = format!("sim-{n}");
        let (shutdown, watch) = tokio::sync::watch::channel(false);
        let listener = PurgeListener::new(tier.clone(), store, metrics.clone(), id.clone());
        let listening = watch.clone();
        tokio::spawn(async move { listener.start(listening).await });
        let sender = OutboxSender::new(tier.clone(), store, id.clone());
        tokio::spawn(async move { sender.start(watch).await });
        Self {
            id,
            store,
            tier,
            tiered,
            metrics,
            relay,
            _shutdown: shutdown,
        }
    }

    /// The cache key of `k` on this instance, with a ticket from now.
    fn key(&self, k: usize) -> CacheKey {
        let primary = format!("{}\nhttp items up", uri(k));
        let hash = pingora::cache::key::hash_key(&primary);
        let mut key = CacheKey::new(primary, "");
        key.set_primary_bin_override(hash);
        key.extensions.insert(self.store.ticket());
        key
    }

    /// Stores `body` under `key` as a miss does (memory, Redis queued).
    async fn fill(&self, key: &CacheKey, body: String) {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.insert_header("content-length", body.len().to_string())
            .expect("length");
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + Duration::from_secs(300), now, 0, 0, resp);
        let span = Span::inactive().handle();
        let mut miss = self
            .tiered
            .get_miss_handler(key, &meta, &span)
            .await
            .expect("miss handler");
        miss.write_body(Bytes::from(body), true)
            .await
            .expect("body");
        miss.finish().await.expect("finish");
    }

    /// The version a lookup of `k` is served, if any.
    async fn lookup(&self, k: usize) -> Option<u64> {
        let span = Span::inactive().handle();
        let (_, mut hit) = self.tiered.lookup(&self.key(k), &span).await.ok()??;
        let mut body = Vec::new();
        while let Some(chunk) = hit.read_body().await.expect("body") {
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body).expect("utf-8");
        let (key, version) = text.split_once(" v").expect("a versioned body");
        assert_eq!(key, uri(k), "the body of another key was served");
        Some(version.parse().expect("a version"))
    }

    /// Whether this instance has sent its queued shared parts and hears
    /// the purge channel.
    fn settled(&self) -> bool {
        self.tier.outbox().is_empty() && self.metrics.cache_purge_channel_listening.get() == 1
    }
}

fn uri(k: usize) -> String {
    format!("sim.test/k{k}")
}

/// A fill whose request has begun: its key (with the ticket of then) and
/// the version the upstream answered then.
struct InFlight {
    on: usize,
    key: CacheKey,
    k: usize,
    body: String,
}

/// What the model knows.
struct Model {
    /// Each key's newest version.
    version: [u64; KEYS],
    /// The oldest version each instance may still serve, per key.
    floor: [[u64; KEYS]; INSTANCES],
    /// Floors every instance owes once the shared parts are heard.
    owed: Vec<(usize, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    Hung,
    Partitioned(usize),
}

async fn run(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut redis = RedisServer::start();
    let nodes: Vec<Instance> = (0..INSTANCES).map(|n| Instance::start(&redis, n)).collect();
    tokio::task::block_in_place(|| {
        wait_until("every instance hears the purge channel", || {
            nodes.iter().all(Instance::settled)
        })
    });
    let mut model = Model {
        version: [1; KEYS],
        floor: [[0; KEYS]; INSTANCES],
        owed: Vec::new(),
    };
    let mut in_flight: Vec<InFlight> = Vec::new();
    let mut fault = Fault::None;
    for step in 0..steps {
        let at = format!("seed {seed}, step {step}");
        let on = rng.gen_range(0..INSTANCES);
        let k = rng.gen_range(0..KEYS);
        match rng.gen_range(0..100) {
            0..=19 => {
                let key = nodes[on].key(k);
                let body = format!("{} v{}", uri(k), model.version[k]);
                in_flight.push(InFlight { on, key, k, body });
            }
            20..=39 if !in_flight.is_empty() => {
                let fill = in_flight.swap_remove(rng.gen_range(0..in_flight.len()));
                nodes[fill.on].fill(&fill.key, fill.body).await;
                let _ = fill.k;
            }
            20..=59 => {
                if let Some(v) = nodes[on].lookup(k).await {
                    assert!(
                        v >= model.floor[on][k],
                        "{at}: instance {on} served v{v} of key {k}, purged up to v{}",
                        model.floor[on][k]
                    );
                }
            }
            60..=69 => {
                // An admin purge: the content changed, and this is said.
                model.version[k] += 1;
                let purge = hard(k);
                let node = &nodes[on];
                let done = purge_everywhere(node.store, Some(&node.tier), &node.id, &purge).await;
                if matches!(done.shared, Some(Ok(_))) {
                    model.floor[on][k] = model.version[k];
                    model.owed.push((k, model.version[k]));
                }
            }
            70..=79 => {
                // A write: answered once memory is purged, shared later.
                model.version[k] += 1;
                let purge = hard(k);
                let node = &nodes[on];
                node.tier.outbox().push(purge.clone());
                invalidation::purge_memory(node.store, &purge);
                model.floor[on][k] = model.version[k];
                model.owed.push((k, model.version[k]));
                // The writer reads its write at once, as clients do: the
                // shared part is still on its way.
                if let Some(v) = node.lookup(k).await {
                    assert!(
                        v >= model.floor[on][k],
                        "{at}: instance {on} served v{v} of key {k} right after its write of v{}",
                        model.floor[on][k]
                    );
                }
            }
            80..=87 => {
                fault = heal(fault, &redis, &nodes);
                match rng.gen_range(0..3) {
                    0 => {
                        redis.hang();
                        fault = Fault::Hung;
                    }
                    1 => tokio::task::block_in_place(|| redis.restart()),
                    _ => {
                        nodes[on].relay.set_cut(true);
                        fault = Fault::Partitioned(on);
                    }
                }
            }
            _ => {
                fault = heal(fault, &redis, &nodes);
                settle(&nodes, &mut model, &at).await;
            }
        }
    }
    heal(fault, &redis, &nodes);
    settle(&nodes, &mut model, &format!("seed {seed}, end")).await;
    for k in 0..KEYS {
        for (n, node) in nodes.iter().enumerate() {
            if let Some(v) = node.lookup(k).await {
                assert!(
                    v >= model.floor[n][k],
                    "seed {seed}, end: instance {n} served v{v} of key {k}, purged up to v{}",
                    model.floor[n][k]
                );
            }
        }
    }
    redis.kill();
}

fn hard(k: usize) -> Purge {
    Purge {
        selection: Selection::Uri(uri(k)),
        soft: false,
    }
}

/// Ends the current fault.
fn heal(fault: Fault, redis: &RedisServer, nodes: &[Instance]) -> Fault {
    match fault {
        Fault::None => {}
        Fault::Hung => redis.resume(),
        Fault::Partitioned(n) => nodes[n].relay.set_cut(false),
    }
    Fault::None
}

/// Waits until every instance has sent its shared parts and hears the
/// channel, then publishes a purge of a key nobody uses through instance
/// 0 and waits until every instance heard it: the channel keeps its
/// order, so each has applied every purge published before. Then every
/// floor owed holds everywhere.
async fn settle(nodes: &[Instance], model: &mut Model, at: &str) {
    tokio::task::block_in_place(|| {
        wait_until(
            &format!("{at}: every outbox sent and every listener hearing"),
            || nodes.iter().all(Instance::settled),
        )
    });
    let probe = Purge {
        selection: Selection::Uri("sim.test/probe".into()),
        soft: false,
    };
    let node = &nodes[0];
    let done = purge_everywhere(node.store, Some(&node.tier), &node.id, &probe).await;
    assert!(
        matches!(done.shared, Some(Ok(_))),
        "{at}: the probe purge failed"
    );
    let newest = node.store.shared_generation();
    tokio::task::block_in_place(|| {
        wait_until(
            &format!("{at}: every instance heard generation {newest}"),
            || nodes.iter().all(|n| n.store.shared_generation() >= newest),
        )
    });
    for (k, version) in model.owed.drain(..) {
        for floor in model.floor.iter_mut() {
            floor[k] = floor[k].max(version);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_win_over_fills_on_every_instance_under_any_schedule_of_faults() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let first = env("TOLLGATE_SIM_SEED", 1);
    let seeds = env("TOLLGATE_SIM_SEEDS", 6);
    let steps = env("TOLLGATE_SIM_STEPS", 60) as usize;
    for seed in first..first + seeds {
        run(seed, steps).await;
    }
}

/// A write whose request began before Redis lost its data is not stored
/// after the loss: the markers it should be checked against went with the
/// data. (An instance that hears the loss drops such fills from memory
/// too; this is the write already on its way, e.g. queued behind others.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stamped_before_redis_lost_its_data_is_dropped() {
    let mut redis = RedisServer::start();
    let node = Instance::start(&redis, 0);
    tokio::task::block_in_place(|| {
        wait_until("the instance knows Redis's epoch", || {
            node.settled() && node.store.redis_epoch() != 0
        })
    });
    let before = node.store.redis_epoch();
    let stamped_before = node.store.ticket();
    tokio::task::block_in_place(|| {
        redis.restart();
        wait_until("the instance learned the new epoch", || {
            let now = node.store.redis_epoch();
            now != 0 && now != before
        })
    });
    let now = node.store.redis_epoch();
    let write = |ticket: FillTicket| MarkedWrite {
        key: "sim:c:00".into(),
        value: b"TGC3 not decoded here".to_vec(),
        ttl_ms: 60_000,
        uri: uri(0),
        markers: vec![node.tier.marker('u', &uri(0))],
        prefix_markers: node.tier.prefix_markers(),
        epoch_key: node.tier.epoch_key(),
        indexes: vec![node.tier.uri_index(&uri(0))],
        ticket,
    };
    let conn = node.tier.link().conn().expect("connected");
    let send = |w: MarkedWrite, epoch: u64| {
        let mut conn = conn.clone();
        async move {
            // The first command after the restart may meet the old
            // connection: once more on a connection error.
            match markers::write(&mut conn, &w, epoch, false).await {
                Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                    markers::write(&mut conn, &w, epoch, false).await
                }
                sent => sent,
            }
        }
    };
    assert_eq!(
        send(write(stamped_before), before).await.ok(),
        Some(false),
        "stamped in the epoch before: refused"
    );
    assert_eq!(redis.cli(&["EXISTS", "sim:c:00"]).trim(), "0");
    let fresh = node.store.ticket();
    assert_eq!(fresh.epoch, now);
    assert_eq!(send(write(fresh), now).await.ok(), Some(true));
    assert_eq!(redis.cli(&["EXISTS", "sim:c:00"]).trim(), "1");
}
