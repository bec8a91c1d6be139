//! Turns a validated config into a running Pingora server: the proxy
//! service on the configured listeners, the admin service, and a small
//! lifecycle service that flips readiness on start and shutdown.

use crate::access_log::{AccessLog, Destination, ReopenOnSignal};
use crate::admin::AdminApp;
use crate::auth::keyring::{KeyRefresher, KeyRing};
use crate::breaker::CircuitBreaker;
use crate::cache::invalidation::listener::PurgeListener;
use crate::cache::invalidation::sender::OutboxSender;
use crate::cache::l2::{L2Settings, RedisTier};
use crate::cache::CacheRuntime;
use crate::config::model::ServerSettings;
use crate::config::Config;
use crate::connections::ConnectionGate;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::ratelimit::{BucketSweeper, RateStore};
use crate::redis_link::RedisEndpoint;
use crate::reload::ReloadOnSignal;
use crate::state::{AppState, ConfigSource};
use crate::upstream::health::HealthChecker;
use crate::upstream::UpstreamMemory;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::sync::Arc;

/// Command-line switches that affect how the server starts.
#[derive(Debug, Default, Clone)]
pub struct StartOptions {
    /// Take the listening sockets over from a running tollgate (graceful upgrade).
    pub upgrade: bool,
    /// Detach and run in the background.
    pub daemon: bool,
}

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address is taken or not ours to bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Setting up a TLS listener failed (unreadable or mismatched cert/key).
    #[error("TLS listener {addr}: {message}")]
    Tls {
        /// The address.
        addr: SocketAddr,
        /// Pingora's error.
        message: String,
    },
    /// Metrics could not be registered or pools could not be built.
    #[error("{0}")]
    Setup(String),
}

/// A built server, ready for [`Server::run_forever`].
pub struct Built {
    /// The Pingora server with every service added.
    pub server: Server,
    /// The state shared by proxy and admin.
    pub state: Arc<AppState>,
}

fn server_conf(s: &ServerSettings, daemon: bool) -> ServerConf {
    ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        upgrade_sock: s.upgrade_sock.clone(),
        pid_file: s.pid_file.clone(),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        daemon,
        ..ServerConf::default()
    }
}

/// Pingora binds inside its runtime threads and cannot report a failed bind
/// to us, so check each address first and fail with a clear message.
/// Skipped on upgrade, where the sockets come from the old process.
fn check_bindable(addr: SocketAddr, what: &'static str) -> Result<(), StartError> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| StartError::Bind { addr, what, source })
}

/// Socket buffering of client connections.
///
/// Writes: Pingora's default write buffer is 1460 bytes (one MSS): a
/// response whose header and body pass that is written in two syscalls
/// (header, then body) — a ~1 KiB API answer with tollgate's headers lands
/// just past it (30 % fewer hits per second in `benches/load`). 16 KiB
/// keeps typical API responses to one write; Pingora still flushes at the
/// end of each response and at once for streamed (no `Content-Length`)
/// ones, so nothing is held back. The buffer is allocated at the first
/// write and freed by the flush (Pingora patch 0007), so an idle
/// connection holds none.
///
/// Reads: on cleartext listeners none. Pingora's HTTP/1 reader and the
/// HTTP/2 codec read into buffers of their own, so a read buffer under
/// them only adds a copy — and 64 KiB (Pingora's default) allocated for
/// the connection's whole life, most of what an idle keep-alive
/// connection cost. Over TLS OpenSSL reads a record's 5-byte header and
/// then its body: without a buffer under it that is two syscalls per
/// record, so TLS listeners keep one the size of the largest record.
fn client_buffers(tls: bool) -> L4BufferSettings {
    let read = if tls { TLS_RECORD_READ_BUFFER } else { 0 };
    L4BufferSettings::new(read, 16 * 1024)
}

/// The largest TLS record (16 KiB of plaintext, RFC 8446 §5.1) with its
/// header and the most expansion a cipher may add (256 bytes).
const TLS_RECORD_READ_BUFFER: usize = 16 * 1024 + 5 + 256;

/// Client connection window of HTTP/2 connections (RFC 9113 §6.9.2).
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// HTTP/2 settings towards clients: Pingora's bounded defaults (100
/// concurrent streams, 64 KiB header list) with a 1 MiB connection
/// window. The h2 crate closes a connection (`ENHANCE_YOUR_CALM`) whose
/// small DATA frames wait unread beyond a budget of half that window; at
/// the 64 KiB default, a gRPC client streaming ~150 small messages while
/// the upstream connection is still being made was cut off. 1 MiB allows
/// ~2,000 such frames, and bounds what one connection can make us buffer.
fn h2_server_options() -> pingora::protocols::http::v2::server::H2Options {
    let mut options = pingora::protocols::http::v2::server::default_h2_options();
    options.initial_connection_window_size(H2_CONNECTION_WINDOW);
    options
}

/// Builds the server for `config`, read from `source`.
pub fn build(
    config: Config,
    source: ConfigSource,
    opts: &StartOptions,
) -> Result<Built, StartError> {
    if !opts.upgrade {
        for l in &config.listeners {
            check_bindable(l.addr, "proxy listener")?;
        }
        check_bindable(config.admin_listen, "admin listener")?;
    }
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config.server, opts.daemon));
    server.bootstrap();
    if opts.daemon {
        // Pingora forks after everything below is built: threads made
        // now (Redis connections, the cache tier's writer) start after
        // the fork, in `Lifecycle` (other threads start on first use).
        crate::redis_link::defer_threads();
    }

    let metrics = Arc::new(Metrics::new().map_err(|e| StartError::Setup(format!("metrics: {e}")))?);
    let listeners = config.listeners.clone();
    let admin_listen = config.admin_listen;
    let memory = Arc::new(UpstreamMemory::default());
    let unresolved = crate::upstream::refresh::resolve_first(&config, &memory, Some(&metrics));
    if config.dns.require_at_start && !unresolved.is_empty() {
        return Err(StartError::Setup(format!(
            "dns.require_at_start is set and backend names did not resolve:\n{}",
            unresolved.join("\n")
        )));
    }
    for problem in &unresolved {
        log::warn!("{problem}");
    }
    let keys = Arc::new(KeyRing::default());
    let gateway = Gateway::build(config, &metrics, &memory, &keys).map_err(StartError::Setup)?;
    let redis_tier = cache_redis_tier(&gateway.config, &metrics).map_err(StartError::Setup)?;
    let cache = CacheRuntime::new(gateway.config.cache, redis_tier.clone());
    cache
        .store
        .set_tag_headers(gateway.config.cache_tags.headers.clone());
    let rate =
        Arc::new(RateStore::new(gateway.config.rate_limit.as_ref()).map_err(StartError::Setup)?);
    let destination = match &gateway.config.logging.access_log_path {
        Some(path) => Destination::File(path.clone()),
        None => Destination::Stderr,
    };
    let access_log = Arc::new(
        AccessLog::start(destination, metrics.access_log_dropped.clone())
            .map_err(|e| StartError::Setup(e.to_string()))?,
    );
    let state = Arc::new(AppState::new(
        gateway,
        metrics,
        memory,
        keys.clone(),
        cache,
        rate,
        source,
        access_log.clone(),
    ));

    let mut app = pingora::proxy::http_proxy(&server.configuration, Proxy::new(state.clone()));
    app.h2_options = Some(h2_server_options());
    let gate = ConnectionGate::new(app, state.clone());
    let client_hello = std::sync::Arc::new(gate.client_hello_deadline());
    // Cleartext HTTP/2 is a setting of Pingora's HTTP app, not of a
    // listener: `h2c` listeners get a service of their own (same proxy
    // logic, same connection limits).
    let h2c_listeners: Vec<_> = listeners.iter().filter(|l| l.h2c).collect();
    let h2c_handle = (!h2c_listeners.is_empty()).then(|| {
        let mut app = pingora::proxy::http_proxy(&server.configuration, Proxy::new(state.clone()));
        app.h2_options = Some(h2_server_options());
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = true;
        app.server_options = Some(options);
        let mut service = Service::new("tollgate proxy (h2c)".to_owned(), gate.h2c_sibling(app));
        for l in &h2c_listeners {
            service.add_listener(
                ListenerConfig::tcp(l.addr.to_string()).l4_buffer(client_buffers(false)),
            );
        }
        server.add_service(service)
    });
    let mut proxy = Service::new("tollgate proxy".to_owned(), gate);
    proxy.endpoints().set_pre_tls_callback(client_hello);
    // (A service with no listeners, when every listener is h2c, just exits.)
    for l in listeners.iter().filter(|l| !l.h2c) {
        let addr = l.addr.to_string();
        let endpoint = ListenerConfig::tcp(addr.clone()).l4_buffer(client_buffers(l.tls.is_some()));
        match &l.tls {
            None => proxy.add_listener(endpoint),
            Some(tls) => {
                let tls_err = |e: Box<pingora::Error>| StartError::Tls {
                    addr: l.addr,
                    message: e.to_string(),
                };
                // The certificate comes from the live generation at each
                // handshake (`ListenerHandshake`); built here once, to
                // refuse a bad one at start-up with the listener's name.
                crate::certificates::listener::build(tls).map_err(|message| StartError::Tls {
                    addr: l.addr,
                    message,
                })?;
                let handshake = crate::connections::tls::ListenerHandshake {
                    addr: l.addr,
                    state: state.clone(),
                };
                let mut settings =
                    TlsSettings::with_callbacks(Box::new(handshake)).map_err(tls_err)?;
                settings.enable_h2();
                if tls.client.is_some() {
                    // No resumed sessions where client certificates are
                    // asked for: a resumed handshake skips the certificate
                    // callback, so it would keep a certificate verified
                    // against the CAs and CRLs of an earlier generation.
                    settings.set_options(pingora::tls::ssl::SslOptions::NO_TICKET);
                    settings.set_session_cache_mode(pingora::tls::ssl::SslSessionCacheMode::OFF);
                }
                proxy.add_listener(endpoint.tls(settings));
            }
        }
    }
    let proxy_handle = server.add_service(proxy);

    let mut admin = Service::new(
        "tollgate admin".to_owned(),
        ConnectionGate::heads_only(AdminApp::new(state.clone()), state.clone()),
    );
    admin.add_tcp(&admin_listen.to_string());
    admin.threads = Some(1);
    let admin_handle = server.add_service(admin);

    let mut probe: Vec<SocketAddr> = listeners.iter().map(|l| l.addr).collect();
    probe.push(admin_listen);
    let lifecycle = server.add_service(background_service(
        "tollgate lifecycle",
        Lifecycle {
            state: state.clone(),
            listeners: probe,
        },
    ));
    lifecycle.add_dependency(&proxy_handle);
    if let Some(h2c) = &h2c_handle {
        lifecycle.add_dependency(h2c);
    }
    lifecycle.add_dependency(&admin_handle);
    // Background services get the narrow handle they work on, not AppState.
    server.add_service(background_service(
        "tollgate health checks",
        HealthChecker::new(state.memory.clone()),
    ));
    server.add_service(background_service(
        "tollgate DNS refresher",
        crate::upstream::refresh::DnsRefresher::new(state.memory.clone(), state.metrics.clone()),
    ));
    server.add_service(background_service(
        "tollgate JWT key sets",
        KeyRefresher::new(keys, state.metrics.clone()),
    ));
    server.add_service(background_service(
        "tollgate rate-limit bucket sweeper",
        BucketSweeper::new(state.rate.clone(), state.metrics.ratelimit_buckets.clone()),
    ));
    server.add_service(background_service(
        "tollgate access log reopen on SIGUSR1",
        ReopenOnSignal::new(access_log),
    ));
    if let Some(tier) = redis_tier {
        server.add_service(background_service(
            "tollgate cache invalidation outbox",
            OutboxSender::new(tier.clone(), state.cache.store, state.instance.clone()),
        ));
        server.add_service(background_service(
            "tollgate cache purge listener",
            PurgeListener::new(
                tier,
                state.cache.store,
                state.metrics.clone(),
                state.instance.clone(),
            ),
        ));
    }
    server.add_service(background_service(
        "tollgate status sampler",
        crate::status::Sampler::new(state.status.clone(), state.metrics.clone()),
    ));
    server.add_service(background_service(
        "tollgate reload on SIGHUP",
        ReloadOnSignal::new(state.clone()),
    ));
    server.add_service(background_service(
        "tollgate config watch",
        crate::config_watch::ConfigWatch::new(state.clone()),
    ));

    Ok(Built { server, state })
}

/// The cache's Redis tier, when `cache.redis` is on.
fn cache_redis_tier(
    config: &crate::config::model::Config,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<RedisTier>>, String> {
    let (Some(settings), Some(redis)) = (&config.cache_redis, &config.redis) else {
        return Ok(None);
    };
    let l2 = L2Settings {
        max_object_size: usize::try_from(settings.max_object_size).unwrap_or(usize::MAX),
        key_prefix: settings.key_prefix.clone(),
        lookup_timeout: settings.lookup_timeout,
        write_timeout: settings.write_timeout,
        purge_timeout: settings.purge_timeout,
        listen_timeout: settings.listen_timeout,
        purge_marker_ttl: settings.purge_marker_ttl,
    };
    let breaker = CircuitBreaker::new(redis.breaker_failures, redis.breaker_open_for);
    RedisTier::start(&RedisEndpoint::of(redis), l2, breaker, metrics.clone()).map(Some)
}

/// Marks the process ready once every listener accepts connections, and not
/// ready as soon as shutdown starts, so load balancers stop sending before
/// we stop taking.
/// Longest wait for the first key-set fetches before `/ready` says yes.
const FIRST_KEY_FETCH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

struct Lifecycle {
    state: Arc<AppState>,
    listeners: Vec<SocketAddr>,
}

impl Lifecycle {
    /// Pingora reports a listening service ready before its sockets are
    /// bound, so readiness is checked the way a client would: by connecting.
    async fn wait_until_listening(&self, shutdown: &mut ShutdownWatch) -> bool {
        for addr in &self.listeners {
            let mut target = *addr;
            if target.ip().is_unspecified() {
                target.set_ip(match target {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            while tokio::net::TcpStream::connect(target).await.is_err() {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
                    _ = shutdown.changed() => return false,
                }
            }
        }
        true
    }
}

#[async_trait]
impl BackgroundService for Lifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        crate::redis_link::start_deferred_threads();
        if !self.wait_until_listening(&mut shutdown).await {
            return;
        }
        // Tokens are verified with fetched keys: not ready before each
        // issuer's key set was tried once (bounded, so an identity
        // provider being down does not hold the whole proxy back).
        self.state.keys.first_fetches(FIRST_KEY_FETCH_WAIT).await;
        self.state.set_ready(true);
        log::info!("tollgate is ready");
        let _ = shutdown.changed().await;
        self.state.set_ready(false);
        log::info!("shutting down: /ready now answers 503");
    }
}
