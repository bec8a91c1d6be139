//! The YAML file as written by an operator: serde types that mirror it field
//! for field. Nothing here is read on the request path; `config::model`
//! turns these into the validated model after cross-checks.
//!
//! Every struct denies unknown fields so a typo is an error with a line
//! number, never a silently ignored setting.

mod access;
mod auth;
mod cache;
mod ratelimit;
mod route;
mod tracing;

use crate::config::units::HumanDuration;
use serde::de::{self, value::MapAccessDeserializer, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

/// The root of the configuration file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Client-facing listeners. Defaults to `0.0.0.0:8080` (plain HTTP).
    #[serde(
        default = "default_listen",
        deserialize_with = "string_or_struct_vec::deserialize"
    )]
    #[schemars(with = "Vec<StringOr<ListenerSpec>>")]
    pub listen: Vec<ListenerSpec>,
    /// The admin listener (metrics, health, readiness).
    #[serde(default)]
    pub admin: AdminSpec,
    /// Process and runtime settings handed to Pingora's server.
    #[serde(default)]
    pub server: ServerSpec,
    /// Log level and access log.
    #[serde(default)]
    pub logging: LoggingSpec,
    /// The response cache's global limits.
    #[serde(default)]
    pub cache: Option<CacheSpec>,
    /// Response compression (gzip, brotli, zstd); off when absent.
    #[serde(default)]
    pub compression: Option<CompressionSpec>,
    /// Rate-limit tiers: budgets per second/minute/hour/day.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierSpec>,
    /// Tenants: API keys (hashed) and their tier.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSpec>,
    /// How requests without an API key are treated.
    #[serde(default)]
    pub anonymous: Option<AnonymousSpec>,
    /// Tenants identified by JSON Web Tokens.
    #[serde(default)]
    pub auth: AuthSpec,
    /// Where API keys are read and which proxies are trusted for client IPs.
    #[serde(default)]
    pub rate_limit: RateLimitSpec,
    /// Shared rate-limit state for several instances.
    #[serde(default)]
    pub redis: Option<RedisSpec>,
    /// Size, time and connection limits on what clients send.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// How request paths and field names that backends read differently
    /// are treated.
    #[serde(default)]
    pub hygiene: HygieneSpec,
    /// Headers tollgate adds to every response.
    #[serde(default)]
    pub response_headers: ResponseHeadersSpec,
    /// How backend host names are resolved (and re-resolved) through DNS.
    #[serde(default)]
    pub dns: DnsSpec,
    /// OpenTelemetry traces; off when absent.
    #[serde(default)]
    pub tracing: Option<TracingSpec>,
    /// Named pools of backend servers.
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    /// Routes, matched by host, longest path prefix and method.
    pub routes: Vec<RouteSpec>,
}

fn default_listen() -> Vec<ListenerSpec> {
    vec![ListenerSpec {
        address: "0.0.0.0:8080".to_owned(),
        tls: None,
        h2c: false,
    }]
}

/// A client-facing listener: `"0.0.0.0:8080"` or
/// `{ address: "0.0.0.0:8443", tls: { cert: ..., key: ... } }`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// `ip:port` to bind.
    pub address: String,
    /// Serve TLS (with HTTP/2 offered through ALPN) using these PEM files.
    #[serde(default)]
    pub tls: Option<ListenerTlsSpec>,
    /// Accept cleartext HTTP/2 with prior knowledge (gRPC inside a
    /// cluster) beside HTTP/1.1 on this plain listener.
    #[serde(default)]
    pub h2c: bool,
}

/// Certificate and key files for a TLS listener.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSpec {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Ask clients for a certificate signed by these CAs (mutual TLS).
    #[serde(default)]
    pub client_certificates: Option<ClientCertificatesSpec>,
}

/// The admin listener.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// `ip:port` for /metrics, /health, /ready. Keep it private.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Name of the environment variable holding the admin token that
    /// protects state-changing endpoints (`POST /config/reload`).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Ask for the token on the read-only pages too (`/`, `/status.json`,
    /// `/metrics`); `/health` and `/ready` stay open for probes.
    #[serde(default)]
    pub require_token_for_reads: bool,
    /// Host names the admin listener answers to, besides IP addresses and
    /// `localhost` (any other `Host` is a DNS rebinding page's).
    #[serde(default)]
    pub hosts: Vec<String>,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".to_owned()
}

impl Default for AdminSpec {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token_env: None,
            require_token_for_reads: false,
            hosts: Vec::new(),
        }
    }
}

/// Process settings. Defaults suit a small API gateway; see the configuration reference.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Worker threads for the proxy service.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Let idle worker threads steal tasks from busy ones. Off by default:
    /// measured faster for short API requests (see docs/book/src/benchmarks-history.md).
    #[serde(default)]
    pub work_stealing: Option<bool>,
    /// How long a graceful shutdown waits for in-flight requests.
    #[serde(default)]
    pub grace_period: Option<HumanDuration>,
    /// How long runtimes get to stop after the grace period.
    #[serde(default)]
    pub graceful_shutdown_timeout: Option<HumanDuration>,
    /// Unix socket used to hand listeners to a new binary (`--upgrade`).
    #[serde(default)]
    pub upgrade_sock: Option<String>,
    /// PID file (written when running as a daemon).
    #[serde(default)]
    pub pid_file: Option<String>,
    /// Idle upstream connections kept for reuse, across all backends.
    #[serde(default)]
    pub upstream_keepalive_pool_size: Option<usize>,
    /// Proxies (IPs or CIDRs) whose `X-Forwarded-*` / `Forwarded` headers
    /// are believed; from anyone else they are replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Request headers of the override/rewrite family (`X-Original-URL`,
    /// `X-HTTP-Method-Override`, ...) to pass upstream; all are dropped by default.
    #[serde(default)]
    pub keep_override_headers: Vec<String>,
    /// Reload by itself when the config file (or a certificate or key-set
    /// file it names) changes on disk, as SIGHUP would. Default false.
    #[serde(default)]
    pub watch_config: Option<bool>,
    /// How often the watched files are looked at. Default 1s.
    #[serde(default)]
    pub watch_interval: Option<HumanDuration>,
}

/// `response_headers`: what tollgate adds to every response.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseHeadersSpec {
    /// `X-Response-Time: 1.234ms`. Default true.
    #[serde(default = "default_true")]
    pub response_time: bool,
    /// `Via: 1.1 tollgate` (RFC 9110 §7.6.3). Default true.
    #[serde(default = "default_true")]
    pub via: bool,
}

impl Default for ResponseHeadersSpec {
    fn default() -> Self {
        Self {
            response_time: true,
            via: true,
        }
    }
}

/// Logging settings. `RUST_LOG`, when set, overrides `level`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoggingSpec {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default = "default_level")]
    pub level: String,
    /// One line per request at info level, target `tollgate::access`.
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// Requests slower than this are logged at warn with their timings. Default 1s.
    #[serde(default)]
    pub slow_request_threshold: Option<HumanDuration>,
    /// `text` (default) or `json`: one JSON object per access-log line.
    #[serde(default)]
    pub access_log_format: Option<AccessLogFormat>,
    /// Write access-log lines to this file (appended; reopened on
    /// SIGUSR1) instead of stderr.
    #[serde(default)]
    pub access_log_path: Option<String>,
}

/// How access-log lines are written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// `GET /path status=200 route=… duration_ms=…` after the log prefix.
    #[default]
    Text,
    /// One JSON object per line, without the log prefix.
    Json,
}

fn default_level() -> String {
    "info".to_owned()
}

fn default_true() -> bool {
    true
}

impl Default for LoggingSpec {
    fn default() -> Self {
        Self {
            level: default_level(),
            access_log: true,
            slow_request_threshold: None,
            access_log_format: None,
            access_log_path: None,
        }
    }
}

/// A named pool of backends that routes send traffic to.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// `host:port` strings or `{ address, weight }` maps.
    #[serde(deserialize_with = "string_or_struct_vec::deserialize")]
    #[schemars(with = "Vec<StringOr<BackendSpec>>")]
    pub backends: Vec<BackendSpec>,
    /// Connect to the backends over TLS.
    #[serde(default)]
    pub tls: Option<UpstreamTlsSpec>,
    /// Replace the client's `Host` header with this value.
    #[serde(default)]
    pub host_header: Option<String>,
    /// Active health check; none by default.
    #[serde(default)]
    pub health_check: Option<HealthCheckSpec>,
    /// Passive health: failures within `fail_timeout` that take a backend
    /// out for `fail_timeout`. Default 3; 0 disables.
    #[serde(default)]
    pub max_fails: Option<u32>,
    /// Window for counting failures and time out of rotation. Default 30s.
    #[serde(default)]
    pub fail_timeout: Option<HumanDuration>,
    /// Count 5xx responses as passive failures. Default false.
    #[serde(default)]
    pub fail_on_5xx: Option<bool>,
    /// Extra attempts on another backend after a connect failure (any
    /// method) or a reset before any response byte (idempotent methods).
    /// Default 1.
    #[serde(default)]
    pub retries: Option<usize>,
    /// Retry idempotent requests answered 502, 503 or 504 on another
    /// backend (nginx's `proxy_next_upstream http_502 http_503 http_504`).
    /// Default false.
    #[serde(default)]
    pub retry_on_5xx: Option<bool>,
    /// What the backends speak: `http1` (default), `h2` (TLS + ALPN),
    /// `h2c` (cleartext HTTP/2, prior knowledge) or `auto` (TLS, ALPN
    /// picks HTTP/2 or HTTP/1.1).
    #[serde(default)]
    pub protocol: Option<UpstreamProtocolSpec>,
    /// Concurrent streams tollgate opens on one HTTP/2 connection to a
    /// backend before it opens another. Default 100.
    #[serde(default)]
    pub max_streams: Option<usize>,
}

/// `upstreams.<name>.protocol`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocolSpec {
    /// HTTP/1.1, over TLS or not.
    Http1,
    /// HTTP/2 over TLS, negotiated by ALPN; a backend that does not agree fails.
    H2,
    /// HTTP/2 over cleartext TCP with prior knowledge.
    H2c,
    /// TLS, offering HTTP/2 and HTTP/1.1 through ALPN.
    Auto,
}

/// An active health check.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// `http` (default), `tcp` or `grpc`.
    #[serde(default, rename = "type")]
    pub kind: HealthCheckKind,
    /// grpc only: the service name asked about. Default `""` (the server).
    #[serde(default)]
    pub service: Option<String>,
    /// HTTP path to GET. Default `/health`.
    #[serde(default)]
    pub path: Option<String>,
    /// Statuses that count as healthy. Default `[200]`.
    #[serde(default)]
    pub expect_status: Option<Vec<u16>>,
    /// `Host` header of the check. Default: the upstream's `host_header`, else `localhost`.
    #[serde(default)]
    pub host: Option<String>,
    /// Time between checks. Default 5s.
    #[serde(default)]
    pub interval: Option<HumanDuration>,
    /// Connect and response timeout of one check. Default 1s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Consecutive successes that bring a backend back. Default 2.
    #[serde(default)]
    pub healthy_threshold: Option<usize>,
    /// Consecutive failures that take a backend out. Default 3.
    #[serde(default)]
    pub unhealthy_threshold: Option<usize>,
}

/// How a health check probes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// `GET path`, expecting one of `expect_status`.
    #[default]
    Http,
    /// A TCP (and TLS, if the upstream uses TLS) connection.
    Tcp,
    /// `grpc.health.v1.Health/Check`, expecting `SERVING`.
    Grpc,
}

/// One backend: `"10.0.0.1:8000"`, `"api.internal:8080"`,
/// `{ address: "10.0.0.1:8000", weight: 2 }` or `{ srv: "_http._tcp.users" }`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// `ip:port`, or `name:port`: every A/AAAA address of the name,
    /// re-resolved in the background as its records' TTL says.
    #[serde(default)]
    pub address: Option<String>,
    /// An SRV name: its targets, ports, priorities and weights (RFC 2782).
    #[serde(default)]
    pub srv: Option<String>,
    /// Relative share of traffic under equal load, per address. Default 1.
    #[serde(default = "default_weight")]
    pub weight: usize,
}

/// `dns`: how backend names are resolved. Defaults come from
/// `/etc/resolv.conf`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    /// Name servers (`ip` or `ip:port`) instead of the system's.
    #[serde(default)]
    pub servers: Option<Vec<String>>,
    /// Lower bound on a record's TTL. Default 1s.
    #[serde(default)]
    pub min_ttl: Option<HumanDuration>,
    /// Upper bound on a record's TTL, so a long TTL still refreshes. Default 60s.
    #[serde(default)]
    pub max_ttl: Option<HumanDuration>,
    /// Timeout of one query. Default 2s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Refuse to start while a backend name has never resolved. Default false.
    #[serde(default)]
    pub require_at_start: Option<bool>,
    /// Which address records a name contributes: `any` (A and AAAA, the
    /// default), `ipv4` or `ipv6`.
    #[serde(default)]
    pub family: Option<AddressFamilySpec>,
}

/// `dns.family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AddressFamilySpec {
    /// A and AAAA records.
    Any,
    /// A records only.
    Ipv4,
    /// AAAA records only.
    Ipv6,
}

fn default_weight() -> usize {
    1
}

/// TLS towards the backends.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// Server name sent in the TLS handshake and checked in the certificate.
    pub sni: String,
    /// Verify the backend's certificate chain and name. Default true.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// PEM bundle of the CAs trusted for the backends' certificates,
    /// instead of the system's.
    #[serde(default)]
    pub ca: Option<String>,
    /// PEM certificate chain tollgate presents to backends that ask for
    /// one (mutual TLS); needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<String>,
}

/// `hygiene`: what tollgate does with parts of a request that backends
/// read differently from how tollgate routes them.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HygieneSpec {
    /// `%2F`, `%5C` and `\` in paths: `reject` (default), `decode`, `keep`.
    #[serde(default)]
    pub encoded_slash: Option<crate::values::hygiene::EncodedSlash>,
    /// `;` path parameters: `keep` (default), `reject`, `strip`.
    #[serde(default)]
    pub path_parameters: Option<crate::values::hygiene::PathParameters>,
    /// Request fields with `_` in the name: `drop` (default), `reject`, `allow`.
    #[serde(default)]
    pub underscore_headers: Option<crate::values::hygiene::UnderscoreHeaders>,
}

/// `limits`: what a client may send and hold, with production defaults.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Request line plus header fields. Default 32KiB (431 beyond).
    #[serde(default)]
    pub max_header_size: Option<crate::config::units::ByteSize>,
    /// Header fields in a request. Default 100 (431 beyond).
    #[serde(default)]
    pub max_headers: Option<usize>,
    /// Request target length. Default 8KiB (414 beyond).
    #[serde(default)]
    pub max_uri_length: Option<crate::config::units::ByteSize>,
    /// Request body, unless a route says otherwise. Default 10MiB (413 beyond).
    #[serde(default)]
    pub max_body_size: Option<crate::config::units::ByteSize>,
    /// Longest time to receive a request head: the first from the
    /// connection's accept, later ones from their first byte. Default 10s.
    #[serde(default)]
    pub header_timeout: Option<HumanDuration>,
    /// Longest wait between two reads of a request body. Default 60s.
    #[serde(default)]
    pub body_timeout: Option<HumanDuration>,
    /// Longest idle time of a kept-alive connection between requests. Default 60s.
    #[serde(default)]
    pub keepalive_timeout: Option<HumanDuration>,
    /// Client connections open at once. Default 10000.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Client connections open at once from one IP address. Default 0 (off).
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
}

/// Global compression settings.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressionSpec {
    /// Responses with a smaller `Content-Length` are sent as they are. Default 1000 bytes.
    #[serde(default)]
    pub min_size: Option<crate::config::units::ByteSize>,
    /// gzip level 1-9. Default 6.
    #[serde(default)]
    pub gzip_level: Option<u32>,
    /// brotli quality 1-11, default 4; `0` turns brotli off.
    #[serde(default)]
    pub brotli_quality: Option<u32>,
    /// zstd level 1-19. Default 3.
    #[serde(default)]
    pub zstd_level: Option<u32>,
    /// Compressible media types: `application/json`, `text/*`, `+json`.
    #[serde(default)]
    pub content_types: Option<Vec<String>>,
}

/// A route's compression overrides.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteCompressionSpec {
    /// Set false to never compress this route's responses.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Overrides the global `min_size`.
    #[serde(default)]
    pub min_size: Option<crate::config::units::ByteSize>,
}

pub use access::*;
pub use auth::*;
pub use cache::*;
pub use ratelimit::*;
pub use route::*;
pub use tracing::*;

/// Lets a list item be written either as a plain string or as a map, with
/// serde's own error messages (and positions) in both forms.
pub trait FromShorthand: Sized {
    /// Builds the full form from the string shorthand.
    fn from_shorthand(s: &str) -> Self;
}

impl FromShorthand for ListenerSpec {
    fn from_shorthand(s: &str) -> Self {
        Self {
            address: s.to_owned(),
            tls: None,
            h2c: false,
        }
    }
}

impl FromShorthand for BackendSpec {
    fn from_shorthand(s: &str) -> Self {
        Self {
            address: Some(s.to_owned()),
            srv: None,
            weight: default_weight(),
        }
    }
}

/// Wrapper that deserializes `T` from a string or a map.
pub struct StringOr<T>(pub T);

impl<'de, T> Deserialize<'de> for StringOr<T>
where
    T: FromShorthand + Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: FromShorthand + Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a \"host:port\" string or a map")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
                Ok(T::from_shorthand(v))
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<T, M::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_any(V(PhantomData)).map(StringOr)
    }
}

// In the schema, a shorthand item is a string or the map it stands for.
impl<T: schemars::JsonSchema> schemars::JsonSchema for StringOr<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("StringOr{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let map = generator.subschema_for::<T>();
        schemars::json_schema!({ "anyOf": [{ "type": "string" }, map] })
    }
}

/// Serde adapter for `Vec<T>` fields whose items may be shorthand strings.
pub mod string_or_struct_vec {
    use super::{FromShorthand, StringOr};
    use serde::{Deserialize, Deserializer};

    /// Deserializes a sequence of `StringOr<T>` into `Vec<T>`.
    pub fn deserialize<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromShorthand + Deserialize<'de>,
    {
        let items: Vec<StringOr<T>> = Vec::deserialize(d)?;
        Ok(items.into_iter().map(|i| i.0).collect())
    }
}
