//! The validated configuration: what the rest of tollgate reads.
//!
//! Addresses are parsed, names resolved, durations are `Duration`s, and every
//! cross-reference has been checked. Nothing in here can be wrong in a way
//! the file could have told us about.

pub use super::secret::Secret;
use crate::values::host::HostPattern;
use crate::values::methods::MethodSet;
use http::HeaderValue;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::time::Duration;

mod listener;
mod tracing;
mod upstream;
pub use listener::*;
pub use tracing::*;
pub use upstream::*;

/// A complete, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, as given on the command line.
    pub source: String,
    /// Client-facing listeners.
    pub listeners: Vec<Listener>,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Token required by state-changing admin endpoints; `None` disables them.
    pub admin_token: Option<Secret>,
    /// `admin.require_token_for_reads`: the status page and `/metrics`
    /// need the token too.
    pub admin_reads_need_token: bool,
    /// `admin.hosts`, normalised: names the admin listener answers to
    /// besides IP addresses and `localhost`.
    pub admin_hosts: Vec<String>,
    /// Process settings.
    pub server: ServerSettings,
    /// Logging settings.
    pub logging: LoggingSettings,
    /// Global cache limits.
    pub cache: CacheLimits,
    /// Response compression; `None` when off.
    pub compression: Option<CompressionConfig>,
    /// Tenants, tiers and where keys come from; `None` when no tiers are configured.
    pub rate_limit: Option<RateLimitConfig>,
    /// `auth.client_certificate_header`: the field carrying a verified
    /// client certificate to the upstream (a client's copy always removed).
    pub client_certificate_header: Option<http::HeaderName>,
    /// The top-level `redis` connection (rate limits and the cache tier).
    pub redis: Option<RedisConfig>,
    /// The cache's Redis tier; `None` when off.
    pub cache_redis: Option<CacheRedisConfig>,
    /// Cache tags: where they come from, whether clients see them.
    pub cache_tags: CacheTags,
    /// `response_headers.response_time`: add `X-Response-Time`.
    pub response_time_header: bool,
    /// `response_headers.via`: add `Via` to proxied responses.
    pub via_header: bool,
    /// Size, time and connection limits on clients.
    pub limits: RequestLimits,
    /// How paths and field names backends read differently are treated.
    pub hygiene: Hygiene,
    /// How backend names are resolved.
    pub dns: DnsSettings,
    /// OpenTelemetry traces; `None` when off.
    pub tracing: Option<TracingConfig>,
    /// Upstream pools, sorted by name.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
    /// Things that are legal but probably not meant (e.g. a shadowed route).
    pub warnings: Vec<String>,
}

/// `limits`, with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Request line plus header fields, in bytes (431 beyond).
    pub max_header_size: usize,
    /// Header fields (431 beyond).
    pub max_headers: usize,
    /// Request-target bytes (414 beyond).
    pub max_uri_length: usize,
    /// Default request body limit of routes (413 beyond).
    pub max_body_size: u64,
    /// Longest time to receive a request head: from accept for a
    /// connection's first, from the first byte for later ones.
    pub header_timeout: Duration,
    /// Longest wait between two reads of a request body.
    pub body_timeout: Duration,
    /// Longest idle time of a kept-alive connection between requests.
    pub keepalive_timeout: Duration,
    /// Client connections open at once; 0 = no limit.
    pub max_connections: usize,
    /// Client connections open at once per IP address; 0 = no limit.
    pub max_connections_per_ip: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_header_size: 32 * 1024,
            max_headers: 100,
            max_uri_length: 8 * 1024,
            max_body_size: 10 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_ip: 0,
        }
    }
}

/// Process settings with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Proxy worker threads.
    pub threads: usize,
    /// Tokio work stealing between worker threads.
    pub work_stealing: bool,
    /// How long a graceful shutdown lets in-flight requests finish.
    pub grace_period: Duration,
    /// How long runtimes get to stop afterwards.
    pub graceful_shutdown_timeout: Duration,
    /// Socket for handing listeners to a new binary.
    pub upgrade_sock: String,
    /// PID file path.
    pub pid_file: String,
    /// Idle upstream connections kept.
    pub upstream_keepalive_pool_size: usize,
    /// Peers whose forwarding headers are believed (`server.trusted_proxies`,
    /// merged with the older `rate_limit.trusted_proxies`).
    pub trusted_proxies: Vec<IpNet>,
    /// Override/rewrite headers passed upstream (lower-case names).
    pub keep_override_headers: Vec<http::HeaderName>,
    /// Reload when the config file or a key-set file it names changes.
    pub watch_config: bool,
    /// How often the watched files are looked at.
    pub watch_interval: Duration,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingSettings {
    /// Default level filter when `RUST_LOG` is not set.
    pub level: log::LevelFilter,
    /// Whether to write one access-log line per request.
    pub access_log: bool,
    /// Requests slower than this get a warn line with timings.
    pub slow_request_threshold: Duration,
    /// Text or JSON access-log lines.
    pub access_log_format: super::file::AccessLogFormat,
    /// `access_log_path`: a file instead of stderr.
    pub access_log_path: Option<std::path::PathBuf>,
}

/// One route, with its upstream resolved to an index into `Config::upstreams`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Unique name; the metrics label.
    pub name: String,
    /// Host condition.
    pub host: Option<HostPattern>,
    /// Path prefix.
    pub path_prefix: String,
    /// Whether the prefix matches without regard to ASCII case.
    pub case_insensitive: bool,
    /// Request fields that must each have this exact value.
    pub match_headers: Vec<(http::HeaderName, HeaderValue)>,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_size: u64,
    /// Allowed methods.
    pub methods: MethodSet,
    /// Where its requests go.
    pub destination: RouteDestination,
    /// Timeouts.
    pub timeouts: RouteTimeouts,
    /// Response caching, when enabled for this route.
    pub cache: Option<RouteCache>,
    /// Rate-limit settings of this route.
    pub rate_limit: RouteRateLimit,
    /// Compression: off for this route, or its own minimum size.
    pub compression: RouteCompression,
    /// `encoded_slash` for this route, when it overrides the global one.
    pub encoded_slash: Option<crate::values::hygiene::EncodedSlash>,
    /// The upstream's path, when it differs from the client's.
    pub rewrite: Option<crate::values::rewrite::Rewrite>,
    /// Field changes to the request.
    pub request_headers: crate::values::header_policy::HeaderPolicy,
    /// Field changes to the response.
    pub response_headers: crate::values::header_policy::HeaderPolicy,
    /// Client addresses that may use the route; `None`: any.
    pub addresses: Option<std::sync::Arc<crate::values::address_policy::AddressPolicy>>,
    /// Cross-origin reads from browsers; `None`: no CORS handling.
    pub cors: Option<std::sync::Arc<crate::values::cors::CorsPolicy>>,
    /// The auth service asked before proxying; `None`: none.
    pub forward_auth: Option<std::sync::Arc<ForwardAuthConfig>>,
}

/// How a split keeps a client on one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// A cookie holding the pool's name.
    Cookie(String),
    /// A request field whose value picks the pool.
    Header(http::HeaderName),
}

/// Where a route's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDestination {
    /// One pool (index into `Config::upstreams`).
    Pool(usize),
    /// Pools by weight, optionally sticky.
    Split {
        /// (pool index, weight ≥ 1).
        members: Vec<(usize, u32)>,
        /// How a client stays on the pool it got first.
        sticky: Option<Sticky>,
    },
    /// No upstream: a redirect.
    Redirect(RedirectConfig),
}

impl RouteDestination {
    /// What the route sends to, for people: `api`, `v1 (90), v2 (10)`,
    /// `redirect 308 https://new.example.com{uri}`.
    pub fn describe(&self, upstreams: &[UpstreamConfig]) -> String {
        let name = |i: usize| upstreams.get(i).map_or("?", |u| u.name.as_str());
        match self {
            RouteDestination::Pool(i) => name(*i).to_owned(),
            RouteDestination::Split { members, .. } => members
                .iter()
                .map(|(i, w)| format!("{} ({w})", name(*i)))
                .collect::<Vec<_>>()
                .join(", "),
            RouteDestination::Redirect(r) => format!("redirect {} {}", r.status, r.to),
        }
    }

    /// The pools it may send to.
    pub fn pools(&self) -> Vec<usize> {
        match self {
            RouteDestination::Pool(i) => vec![*i],
            RouteDestination::Split { members, .. } => members.iter().map(|(i, _)| *i).collect(),
            RouteDestination::Redirect(_) => Vec::new(),
        }
    }
}

/// A redirect route's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    /// `Location`, with `{uri}`, `{path}`, `{host}`.
    pub to: crate::values::template::Template,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// `Cache-Control: public, max-age` when set; `no-store` otherwise.
    pub max_age: Option<Duration>,
}

/// `hygiene`: what tollgate does with parts of a request that backends
/// read differently from how tollgate routes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hygiene {
    /// `%2F`, `%5C` and `\\` in paths.
    pub encoded_slash: crate::values::hygiene::EncodedSlash,
    /// `;` path parameters.
    pub path_parameters: crate::values::hygiene::PathParameters,
    /// Request fields with `_` in the name.
    pub underscore_headers: crate::values::hygiene::UnderscoreHeaders,
}

/// Global compression settings with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionConfig {
    /// Smallest `Content-Length` compressed.
    pub min_size: u64,
    /// gzip level.
    pub gzip_level: u32,
    /// brotli quality (default 4); `None` when `brotli_quality: 0`.
    pub brotli_quality: Option<u32>,
    /// zstd level.
    pub zstd_level: u32,
    /// Compressible media types (lower-case): exact, `type/*`, or `+suffix`.
    pub content_types: Vec<String>,
}

impl CompressionConfig {
    /// Whether a `Content-Type` value is in the compressible list.
    pub fn compressible(&self, content_type: &str) -> bool {
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.content_types.iter().any(|t| {
            if let Some(prefix) = t.strip_suffix('*') {
                mime.starts_with(prefix)
            } else if t.starts_with('+') {
                mime.ends_with(t.as_str())
            } else {
                mime == *t
            }
        })
    }
}

/// A route's compression settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteCompression {
    /// `false` turns compression off for the route.
    pub enabled: bool,
    /// Overrides the global minimum size.
    pub min_size: Option<u64>,
}

/// A route's rate-limit settings with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteRateLimit {
    /// Not limited, no key needed.
    pub exempt: bool,
    /// Tokens per request (≥ 1).
    pub cost: u64,
    /// Extra route-level windows: (quota, seconds).
    pub windows: Vec<(u64, u64)>,
}

/// Rate limiting, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Tiers, sorted by name.
    pub tiers: Vec<TierConfig>,
    /// Tenants, sorted by name.
    pub tenants: Vec<TenantConfig>,
    /// Anonymous policy.
    pub anonymous: Anonymous,
    /// Where keys are read, in order.
    pub key_sets: Vec<ApiKeyField>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Decide before the cache lookup (true) or only for requests that go upstream.
    pub count_cached_responses: bool,
    /// Whether the API key header is sent upstream.
    pub forward_api_key: bool,
    /// Header carrying the tenant's name upstream.
    pub tenant_header: http::HeaderName,
    /// Prefix length anonymous IPv6 clients are grouped by.
    pub ipv6_prefix: u8,
    /// Most in-process buckets held.
    pub max_local_buckets: usize,
    /// Shared state, if configured.
    pub redis: Option<RedisConfig>,
    /// Tenants from JSON Web Tokens, if configured.
    pub jwt: Option<JwtConfig>,
}

/// `auth.jwt`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// Trusted issuers.
    pub issuers: Vec<IssuerConfig>,
    /// The claim naming the tenant.
    pub tenant_claim: String,
    /// The claim naming a tier, if any.
    pub tier_claim: Option<String>,
    /// Index into `RateLimitConfig::tiers` for tenants nothing else places.
    pub default_tier: usize,
    /// Clock skew allowed for `exp`, `nbf`, `iat`.
    pub leeway: Duration,
    /// Claims sent upstream, and the header each goes in.
    pub forward_claims: Vec<(String, http::HeaderName)>,
    /// Most verified tokens remembered.
    pub cache_size: usize,
}

/// One trusted issuer, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// Its exact `iss`.
    pub issuer: String,
    /// Accepted audiences (empty: `aud` not checked).
    pub audiences: Vec<String>,
    /// Its published keys, if any.
    pub jwks: Option<JwksConfig>,
    /// Algorithms accepted from it (never `none`; HMAC only with `secret`).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// The HMAC secret, from `secret_env`.
    pub secret: Option<Secret>,
    /// `unlisted_tenants`: its tokens may name tenants `tenants` does not
    /// list.
    pub unlisted_tenants: bool,
    /// Accepted `typ` values, lower-cased without `application/` (empty:
    /// not checked).
    pub types: Vec<String>,
}

/// A `typ` value as compared (RFC 7515 §4.1.9: media types, `application/`
/// may be left out, case-insensitive).
pub fn normal_typ(typ: &str) -> String {
    let lower = typ.trim().to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

/// Where and how often an issuer's JSON Web Key Set is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwksConfig {
    /// URL or file.
    pub source: JwksSource,
    /// Time between two scheduled fetches.
    pub refresh: Duration,
    /// Least time between two fetches caused by unknown key ids.
    pub unknown_kid_cooldown: Duration,
    /// Longest wait for one fetch.
    pub timeout: Duration,
}

/// Where a key set is published.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwksSource {
    /// Fetched with a GET (`http` or `https`).
    Url(String),
    /// Read from disk.
    File(std::path::PathBuf),
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::Url(url) => f.write_str(url),
            JwksSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// A tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierConfig {
    /// Name (metric label, 429 message).
    pub name: String,
    /// Windows: (quota, seconds), shortest first.
    pub windows: Vec<(u64, u64)>,
    /// Burst of the shortest window.
    pub burst: Option<u64>,
    /// Whether its tenants are labelled by name in metrics.
    pub tenant_metrics: bool,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// Name.
    pub name: String,
    /// Index into `RateLimitConfig::tiers`.
    pub tier: usize,
    /// SHA-256 digests of its API keys.
    pub key_hashes: Vec<[u8; 32]>,
    /// Which JWT issuers may name it (RFC 8725 §3.8: a name is only
    /// meaningful with its issuer).
    pub claimable_by: ClaimableBy,
    /// Client addresses its requests may come from; `None`: any.
    pub addresses: Option<std::sync::Arc<crate::values::address_policy::AddressPolicy>>,
    /// Names of verified client certificates that identify it.
    pub certificates: Vec<crate::values::cert_name::CertName>,
}

/// The JWT issuers whose tokens may name a configured tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimableBy {
    /// Every configured issuer (a tenant without API keys, no `issuers`).
    AnyIssuer,
    /// These `iss` values only (none: API keys only).
    Issuers(Vec<String>),
}

/// What happens to a request without an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymous {
    /// 401 `api_key_required`.
    Reject,
    /// This tier (index), per client IP.
    Tier(usize),
}

/// Where an API key may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyField {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// A header whose whole value is the key.
    Header(http::HeaderName),
}

/// Redis settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Connection URL (may hold a password: never logged); empty with
    /// `cluster`.
    pub url: Secret,
    /// Redis Cluster seed node URLs; empty for a standalone Redis.
    pub cluster: Vec<String>,
    /// Per-decision timeout.
    pub timeout: Duration,
    /// Key prefix.
    pub key_prefix: String,
    /// Consecutive timeouts/errors that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the open breaker keeps requests away from Redis before a probe.
    pub breaker_open_for: Duration,
}

/// Cache tags (surrogate keys) with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTags {
    /// Response fields listing tags.
    pub headers: Vec<http::HeaderName>,
    /// Remove them before responses reach clients.
    pub strip: bool,
    /// The field an upstream names tags to purge in (on a successful
    /// unsafe request); `None` when off.
    pub invalidation_header: Option<http::HeaderName>,
}

/// `cache.redis` with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRedisConfig {
    /// Larger bodies stay in memory only.
    pub max_object_size: u64,
    /// Prefix of the tier's keys and purge channel.
    pub key_prefix: String,
    /// A lookup slower than this is a miss.
    pub lookup_timeout: Duration,
    /// Bound on one write.
    pub write_timeout: Duration,
    /// Bound on a purge of the tier, all batches together.
    pub purge_timeout: Duration,
    /// Bound on connecting the purge channel and on hearing its heartbeat.
    pub listen_timeout: Duration,
    /// How long purge markers live: the oldest write they can still drop.
    pub purge_marker_ttl: Duration,
}

/// Global cache limits with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Bytes of bodies and headers kept.
    pub max_size: u64,
    /// Larger responses are not stored.
    pub max_object_size: u64,
    /// Cache-lock wait for concurrent misses.
    pub lock_timeout: Duration,
}

/// A route's cache policy with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCache {
    /// Used only when the upstream gives no freshness information.
    pub default_ttl: Option<Duration>,
    /// Cap on freshness.
    pub max_ttl: Option<Duration>,
    /// Default stale-while-revalidate window.
    pub stale_while_revalidate: Duration,
    /// Default stale-if-error window.
    pub stale_if_error: Duration,
    /// Statuses that may be stored without explicit freshness (with
    /// `default_ttl` or a heuristic lifetime); any final status with
    /// explicit freshness may be stored.
    pub statuses: Vec<u16>,
    /// Heuristic freshness (RFC 9111 §4.2.2) for responses with
    /// `Last-Modified` and no explicit freshness, when no `default_ttl`.
    pub heuristic_freshness: bool,
    /// Targeted cache-control fields (RFC 9213), most specific first.
    pub targeted_fields: Vec<http::HeaderName>,
    /// Whether the targeted fields are removed from responses to clients.
    pub strip_targeted_fields: bool,
    /// Store responses with `Set-Cookie` without the field (else never).
    pub strip_set_cookie: bool,
    /// Show the cache key in `Cache-Status` (`key=`).
    pub expose_key: bool,
    /// Query parameters left out of the key.
    pub exclude_query: Vec<String>,
    /// Ignore the query entirely.
    pub ignore_query: bool,
    /// Sort query parameters in the key.
    pub sort_query: bool,
    /// Request headers that go into the key (lower-case).
    pub key_headers: Vec<http::HeaderName>,
}

impl Default for RouteCache {
    /// What an empty `cache: {}` block means.
    fn default() -> Self {
        Self {
            default_ttl: None,
            max_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            statuses: defaults::CACHEABLE_STATUSES.to_vec(),
            heuristic_freshness: true,
            targeted_fields: vec![
                http::HeaderName::from_static("tollgate-cache-control"),
                http::HeaderName::from_static("cdn-cache-control"),
            ],
            strip_targeted_fields: false,
            strip_set_cookie: false,
            expose_key: false,
            exclude_query: Vec::new(),
            ignore_query: false,
            sort_query: true,
            key_headers: Vec::new(),
        }
    }
}

/// A route's timeouts with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTimeouts {
    /// Connect (TCP and TLS) to a backend.
    pub connect: Duration,
    /// Longest silence from the backend while waiting for or reading its response.
    pub read: Duration,
    /// The whole request; exceeded → 504 `request_timeout`.
    pub total: Duration,
    /// An upgraded tunnel (WebSocket) closes after this long without a
    /// byte from the backend.
    pub idle: Duration,
}

/// Defaults, kept together so the configuration reference can quote them.
pub mod defaults {
    use std::time::Duration;
    /// Default connect timeout.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default total timeout.
    pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default idle timeout of an upgraded tunnel (WebSocket).
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// Default concurrent streams per HTTP/2 connection to a backend.
    pub const MAX_STREAMS: usize = 100;
    /// Default graceful-shutdown grace period.
    pub const GRACE_PERIOD: Duration = Duration::from_secs(10);
    /// Default time runtimes get to stop.
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default upgrade socket.
    pub const UPGRADE_SOCK: &str = "/tmp/tollgate_upgrade.sock";
    /// Default PID file.
    pub const PID_FILE: &str = "/tmp/tollgate.pid";
    /// Default upstream keep-alive pool size.
    pub const KEEPALIVE_POOL: usize = 128;
    /// How often `server.watch_config` looks at the files by default.
    pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
    /// The shortest `server.watch_interval`: a few `stat`s per look.
    pub const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);
    /// Default slow-request threshold.
    pub const SLOW_REQUEST: Duration = Duration::from_secs(1);
    /// Default passive `max_fails`.
    pub const MAX_FAILS: u32 = 3;
    /// Default passive `fail_timeout`.
    pub const FAIL_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default retries.
    pub const RETRIES: usize = 1;
    /// Default compression minimum size.
    pub const COMPRESSION_MIN_SIZE: u64 = 1000;
    /// Media types compressed by default.
    pub const COMPRESSIBLE_TYPES: [&str; 7] = [
        "text/*",
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
        "+json",
        "+xml",
    ];
    /// Default cache memory.
    pub const CACHE_MAX_SIZE: u64 = 256 * 1024 * 1024;
    /// Default largest cached object.
    pub const CACHE_MAX_OBJECT: u64 = 8 * 1024 * 1024;
    /// Default cache-lock wait.
    pub const CACHE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
    /// Statuses a shared cache may store by default: the heuristically
    /// cacheable ones of RFC 9110 §15.1, less 206 (no range caching).
    pub const CACHEABLE_STATUSES: [u16; 11] =
        [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];
    /// Default health-check interval.
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    /// Default health-check timeout.
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default lower bound on a DNS record's TTL.
    pub const DNS_MIN_TTL: Duration = Duration::from_secs(1);
    /// Default upper bound on a DNS record's TTL.
    pub const DNS_MAX_TTL: Duration = Duration::from_secs(60);
    /// Default timeout of one DNS query.
    pub const DNS_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default consecutive successes to come back.
    pub const HEALTHY_THRESHOLD: usize = 2;
    /// Default consecutive failures to go out.
    pub const UNHEALTHY_THRESHOLD: usize = 3;
    /// Default share of new traces recorded.
    pub const TRACE_SAMPLE_RATIO: f64 = 0.01;
    /// Default finished requests waiting for export.
    pub const TRACE_QUEUE: usize = 2048;
    /// Default spans per export request.
    pub const TRACE_BATCH: usize = 512;
    /// Default wait before a partial batch is exported.
    pub const TRACE_BATCH_INTERVAL: Duration = Duration::from_secs(1);
    /// Default limit on one export.
    pub const TRACE_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
}

/// `routes[].forward_auth`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAuthConfig {
    /// Index of the auth service's pool in `Config::upstreams`.
    pub upstream: usize,
    /// Path and query asked (GET), starting with `/`.
    pub path: String,
    /// Client request fields sent along.
    pub request_fields: Vec<http::HeaderName>,
    /// Fields of an admitting answer copied into the upstream request.
    pub upstream_fields: Vec<http::HeaderName>,
    /// Field of an admitting answer naming the tenant.
    pub tenant_field: Option<http::HeaderName>,
    /// Longest wait for the answer.
    pub timeout: Duration,
    /// Largest answer body read.
    pub max_answer_size: usize,
    /// How long a decision is remembered (zero: not at all).
    pub cache_ttl: Duration,
    /// Remembered per request (credential, method, host, URI) rather
    /// than per credential alone.
    pub cache_per_request: bool,
    /// Most decisions remembered.
    pub cache_size: usize,
    /// Admit when the auth service fails.
    pub fail_open: bool,
}
