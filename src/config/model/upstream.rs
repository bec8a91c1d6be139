//! The validated upstreams: pools, how their backends are found (addresses,
//! DNS names), what they speak, and how their health is judged.

use super::defaults;
use http::HeaderValue;
use std::net::SocketAddr;
use std::time::Duration;

/// A named pool of backends.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The name routes refer to; also a metrics label.
    pub name: String,
    /// The servers given as IP addresses, in file order.
    pub backends: Vec<BackendConfig>,
    /// The servers given as DNS names (A/AAAA or SRV), re-resolved while
    /// the process runs; their addresses join the pool as they appear.
    pub names: Vec<NamedBackend>,
    /// TLS towards the servers.
    pub tls: Option<UpstreamTls>,
    /// `Host` header to send instead of the client's.
    pub host_header: Option<HeaderValue>,
    /// Active health check.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive health policy.
    pub passive: PassiveHealth,
    /// Extra attempts on another backend.
    pub retries: usize,
    /// Retry idempotent requests answered 502/503/504 on another backend.
    pub retry_on_5xx: bool,
    /// What the backends speak.
    pub protocol: UpstreamProtocol,
    /// Concurrent streams on one HTTP/2 connection to a backend.
    pub max_streams: usize,
}

/// What an upstream's backends speak, and so how tollgate connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over TLS when `tls` is set).
    #[default]
    Http1,
    /// HTTP/2 over TLS, ALPN `h2` only.
    H2,
    /// HTTP/2 over cleartext TCP, prior knowledge (RFC 9113 §3.3).
    H2c,
    /// TLS offering `h2` and `http/1.1`; the backend picks.
    Auto,
}

impl UpstreamProtocol {
    /// Whether connections may carry HTTP/2, so several requests share
    /// one connection (no per-connection deadline timer; see
    /// `upstream::deadline`).
    pub fn multiplexed(self) -> bool {
        !matches!(self, UpstreamProtocol::Http1)
    }

    /// The name used in config, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::Auto => "auto",
        }
    }
}

/// An active health check with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// HTTP `GET path` expecting `expect_status`, or a TCP connect.
    pub probe: Probe,
    /// Time between checks.
    pub interval: Duration,
    /// Timeout of one check (connect and response).
    pub timeout: Duration,
    /// Consecutive successes to come back.
    pub healthy_threshold: usize,
    /// Consecutive failures to go out.
    pub unhealthy_threshold: usize,
}

/// What a health check sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET path` with `Host: host`, healthy if the status is in `expect_status`.
    Http {
        /// Request path.
        path: String,
        /// Host header.
        host: String,
        /// Healthy statuses.
        expect_status: Vec<u16>,
    },
    /// A TCP (and TLS, if the upstream uses TLS) connection.
    Tcp,
    /// The standard gRPC health check of `service` (empty: the server),
    /// healthy when it answers `SERVING`.
    Grpc {
        /// The service asked about.
        service: String,
        /// `:authority` of the check.
        host: String,
    },
}

/// nginx-style passive health: `max_fails` within `fail_timeout` take a
/// backend out of rotation for `fail_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Failures that take a backend out; 0 disables passive health.
    pub max_fails: u32,
    /// Counting window and time out of rotation.
    pub fail_timeout: Duration,
    /// Whether 5xx responses count as failures.
    pub fail_on_5xx: bool,
}

/// One server of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Resolved address.
    pub addr: SocketAddr,
    /// Relative weight (≥ 1).
    pub weight: usize,
}

/// A backend given by name: its addresses come from DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedBackend {
    /// What to ask.
    pub query: DnsQuery,
    /// Relative weight (≥ 1) of each of its addresses; an SRV record's own
    /// weight multiplies it.
    pub weight: usize,
}

/// A DNS question that yields backend addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DnsQuery {
    /// Every A/AAAA address of `name`, on `port`.
    Host {
        /// The host name, as written.
        name: String,
        /// The port every address gets.
        port: u16,
    },
    /// The targets of an SRV record, with their ports, priorities, weights.
    Srv {
        /// The SRV owner name, e.g. `_http._tcp.users.internal`.
        name: String,
    },
}

impl std::fmt::Display for DnsQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsQuery::Host { name, port } => write!(f, "{name}:{port}"),
            DnsQuery::Srv { name } => write!(f, "srv {name}"),
        }
    }
}

/// `dns`, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Name servers; empty means the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// Lower bound on a record's TTL.
    pub min_ttl: Duration,
    /// Upper bound on a record's TTL.
    pub max_ttl: Duration,
    /// Timeout of one query.
    pub timeout: Duration,
    /// Refuse to start while a name has never resolved.
    pub require_at_start: bool,
    /// Which address records count.
    pub family: AddressFamily,
    /// tollgate's own listeners (proxy and admin): an answer may not aim
    /// a pool at them (a request would loop, or reach the admin port).
    pub own_addresses: Vec<SocketAddr>,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            min_ttl: defaults::DNS_MIN_TTL,
            max_ttl: defaults::DNS_MAX_TTL,
            timeout: defaults::DNS_TIMEOUT,
            require_at_start: false,
            family: AddressFamily::Any,
            own_addresses: Vec::new(),
        }
    }
}

/// `dns.family`: which address records a name contributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressFamily {
    /// A and AAAA.
    Any,
    /// A only.
    Ipv4,
    /// AAAA only.
    Ipv6,
}

/// TLS settings towards a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// SNI and expected certificate name.
    pub sni: String,
    /// Verify the certificate.
    pub verify: bool,
    /// CAs trusted for the backends' certificates instead of the system's.
    pub ca: Option<std::path::PathBuf>,
    /// The certificate chain and key tollgate presents (mutual TLS).
    pub client_cert: Option<CertKeyFiles>,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyFiles {
    /// Certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// Private key.
    pub key: std::path::PathBuf,
}
