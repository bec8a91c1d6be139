//! One Redis connection that never costs a request its start-up: it is
//! made, and re-made, on a thread and runtime of its own (so it does not
//! depend on which Pingora runtime asks first), and requests take a clone
//! of the multiplexed connection or nothing. Shared by the rate limiter's
//! buckets and the cache's Redis tier (each has its own link and circuit
//! breaker: a slow limiter script must not open the cache's breaker).
//!
//! A standalone Redis (`redis.url`, `redis://` or `rediss://`) or a Redis
//! Cluster (`redis.cluster`, through the `redis` crate's cluster client,
//! which follows slot moves and node failures itself).

use crate::breaker::{CircuitBreaker, Transition};
use crate::config::model::RedisConfig;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisEndpoint {
    /// One Redis (or a proxy in front of a primary).
    Url(String),
    /// Seed nodes of a Redis Cluster (`redis://host:port` each).
    Cluster(Vec<String>),
}

impl RedisEndpoint {
    /// Where a configured Redis's connections go.
    pub fn of(config: &RedisConfig) -> Self {
        if config.cluster.is_empty() {
            RedisEndpoint::Url(config.url.expose().to_owned())
        } else {
            RedisEndpoint::Cluster(config.cluster.clone())
        }
    }
}

/// A connection to either kind; cheap to clone.
#[derive(Clone)]
pub enum RedisConn {
    /// Standalone, reconnecting by itself.
    Single(ConnectionManager),
    /// Cluster, routing each command to its slot's node.
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

static NEXT_LINK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// Per link (by id): this thread's connection, `None` while being made.
    static LOCAL_CONNS: std::cell::RefCell<Vec<(u64, Option<RedisConn>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Makes one connection to `target` on the current runtime.
async fn make(target: &RedisEndpoint, timeout: Duration) -> redis::RedisResult<RedisConn> {
    match target {
        RedisEndpoint::Url(url) => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(timeout.max(Duration::from_millis(10))))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            redis::Client::open(url.as_str())?
                .get_connection_manager_with_config(config)
                .await
                .map(RedisConn::Single)
        }
        RedisEndpoint::Cluster(nodes) => redis::cluster::ClusterClient::builder(nodes.clone())
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(timeout.max(Duration::from_millis(10)))
            .build()?
            .get_async_connection()
            .await
            .map(RedisConn::Cluster),
    }
}

/// A Redis connection being made or kept.
///
/// Requests on one of Pingora's single-threaded worker runtimes get a
/// connection of that runtime's own, made there on first use: its driver
/// task then runs on the request's own thread, so a decision or lookup is
/// a socket round trip with no hop to another thread and back (two
/// cross-thread wake-ups per call otherwise). Until it is made, and on
/// multi-threaded runtimes, the shared connection serves.
pub struct RedisLink {
    id: u64,
    target: RedisEndpoint,
    slot: Mutex<Option<RedisConn>>,
    /// A client for one node: pub/sub (on a cluster, any node hears every
    /// `PUBLISH`).
    client: redis::Client,
    cluster: bool,
    timeout: Duration,
}

impl RedisLink {
    /// Connects to `target` in the background; `name` says who uses it in
    /// the log, `on_connect` runs once connected. Fails only on a
    /// malformed URL.
    pub fn connect(
        target: &RedisEndpoint,
        timeout: Duration,
        name: &'static str,
        on_connect: impl Fn() + Send + 'static,
    ) -> Result<Arc<Self>, String> {
        let (first, cluster) = match target {
            RedisEndpoint::Url(url) => (url.as_str(), false),
            RedisEndpoint::Cluster(nodes) => {
                let first = nodes.first().ok_or("redis.cluster lists no node")?;
                // Checked now, so a bad list fails the start, not later.
                redis::cluster::ClusterClient::new(nodes.clone())
                    .map_err(|e| format!("redis cluster: {e}"))?;
                (first.as_str(), true)
            }
        };
        let client = redis::Client::open(first).map_err(|e| format!("redis url: {e}"))?;
        let link = Arc::new(Self {
            id: NEXT_LINK.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            target: target.clone(),
            slot: Mutex::new(None),
            client,
            cluster,
            timeout,
        });
        let target = target.clone();
        let weak: Weak<Self> = Arc::downgrade(&link);
        spawn_runtime_thread(format!("tollgate-redis-{name}"), move || async move {
            let mut attempts = 0u64;
            loop {
                let Some(link) = weak.upgrade() else {
                    return;
                };
                attempts += 1;
                let made = make(&target, timeout).await;
                match made {
                    Ok(conn) => {
                        *link.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                        drop(link);
                        log::info!("redis ({name}): connected");
                        on_connect();
                        // This runtime drives the connection: keep it alive.
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        drop(link);
                        // Once a minute is enough to say it is still down.
                        if attempts % 60 == 1 {
                            log::warn!("redis ({name}): cannot connect yet: {e}");
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
        .map_err(|e| format!("redis: cannot start the connection thread: {e}"))?;
        Ok(link)
    }

    /// Whether the shared connection has been made (it is then kept:
    /// the connection reconnects by itself).
    pub fn is_connected(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Whether it talks to a Redis Cluster (multi-key commands must then
    /// keep their keys in one slot).
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The connection, once made (a cheap clone of a multiplexed handle):
    /// this worker runtime's own when it has one, else the shared one.
    pub fn conn(&self) -> Option<RedisConn> {
        if let Some(local) = self.local_conn() {
            return Some(local);
        }
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This thread's connection, on a single-threaded runtime; starts
    /// making one (a task on this runtime, so on this thread) when there
    /// is none yet.
    fn local_conn(&self) -> Option<RedisConn> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return None;
        }
        LOCAL_CONNS.with(|local| {
            let mut local = local.borrow_mut();
            match local.iter().find(|(id, _)| *id == self.id) {
                Some((_, Some(conn))) => return Some(conn.clone()),
                Some((_, None)) => return None, // being made
                None => local.push((self.id, None)),
            }
            let (id, target, timeout) = (self.id, self.target.clone(), self.timeout);
            handle.spawn(async move {
                let made = make(&target, timeout).await;
                LOCAL_CONNS.with(|local| {
                    let mut local = local.borrow_mut();
                    match made {
                        Ok(conn) => {
                            if let Some(slot) = local.iter_mut().find(|(i, _)| *i == id) {
                                slot.1 = Some(conn);
                            }
                        }
                        // Tried again by the next call; the shared one serves.
                        Err(_) => local.retain(|(i, _)| *i != id),
                    }
                });
            });
            None
        })
    }

    /// The client, for connections of another kind (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The per-call timeout it was opened with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `breaker`'s one probe, a `PING`, on a task of its own: no
    /// request waits for it. Its answer closes or reopens the breaker.
    pub fn probe(&self, breaker: Arc<CircuitBreaker>, what: &'static str) {
        let conn = self.conn();
        let timeout = self.timeout;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            breaker.record(false);
            return;
        };
        runtime.spawn(async move {
            let ok = match conn {
                None => false,
                Some(mut conn) => matches!(
                    tokio::time::timeout(
                        timeout,
                        redis::cmd("PING").query_async::<String>(&mut conn)
                    )
                    .await,
                    Ok(Ok(_))
                ),
            };
            if breaker.record(ok) == Transition::Closed {
                log::info!("redis ({what}): probe answered, circuit breaker closed");
            }
        });
    }
}

/// Thread starts asked for while the server has not forked yet
/// (`--daemon`), run once it has ([`start_deferred_threads`]): a thread
/// started before the fork does not exist in the process that serves.
type DeferredStart = Box<dyn FnOnce() + Send>;
static DEFERRED: Mutex<Option<Vec<DeferredStart>>> = Mutex::new(None);

/// From now until [`start_deferred_threads`], [`spawn_runtime_thread`]
/// queues its threads instead of starting them: `tollgate run --daemon`
/// builds everything, then forks.
pub fn defer_threads() {
    *DEFERRED.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
}

/// Starts the queued threads, in the process that serves (a background
/// service calls it: Pingora starts those after the fork), and stops
/// deferring.
pub fn start_deferred_threads() {
    let queued = DEFERRED.lock().unwrap_or_else(|p| p.into_inner()).take();
    for start in queued.into_iter().flatten() {
        start();
    }
}

/// Runs the future `task` makes on a thread of its own, under a
/// single-threaded runtime: the Redis connection driver and the cache
/// tier's writer live there, off the proxy's worker threads. Queued
/// instead while threads are deferred (`defer_threads`).
pub fn spawn_runtime_thread<F, Fut>(name: String, task: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let mut deferred = DEFERRED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(queue) = deferred.as_mut() {
        queue.push(Box::new(move || {
            if let Err(e) = start_runtime_thread(name.clone(), task) {
                log::error!("{name}: cannot start its thread: {e}");
            }
        }));
        return Ok(());
    }
    drop(deferred);
    start_runtime_thread(name, task)
}

fn start_runtime_thread<F, Fut>(name: String, task: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let thread_name = name.clone();
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(task()),
                Err(e) => log::error!("{name}: cannot start its runtime: {e}"),
            }
        })?;
    Ok(())
}
