//! Validation of where tollgate listens and how it runs: listeners (and
//! their TLS files), the admin address, server settings, logging.

use super::file::{self, ListenerSpec};
use super::locate::FieldPath;
use super::model::*;
use super::Checker;
use crate::values::address_policy::{self, AddressPolicy};
use crate::values::pem;
use std::net::SocketAddr;

impl Checker<'_> {
    pub(super) fn socket_addr(&mut self, raw: &str, path: &FieldPath) -> Option<SocketAddr> {
        match raw.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    path.clone(),
                    format!("invalid listen address {raw:?} (write ip:port, e.g. 0.0.0.0:8080 or [::]:8080)"),
                );
                None
            }
        }
    }

    pub(super) fn listeners(&mut self, specs: &[ListenerSpec], path: &FieldPath) -> Vec<Listener> {
        if specs.is_empty() {
            self.problem(path.clone(), "at least one listener is needed");
        }
        let mut out: Vec<Listener> = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let item = path.index(i);
            let Some(addr) = self.socket_addr(&spec.address, &item) else {
                continue;
            };
            if out.iter().any(|l| l.addr == addr) {
                self.problem(item, format!("listener {addr} is listed twice"));
                continue;
            }
            let tls = spec
                .tls
                .as_ref()
                .map(|t| self.listener_tls(t, &item.key("tls")));
            if spec.h2c && tls.is_some() {
                self.problem(
                    item.key("h2c"),
                    "h2c is cleartext HTTP/2; a TLS listener already offers HTTP/2 through ALPN",
                );
            }
            out.push(Listener {
                addr,
                tls,
                h2c: spec.h2c,
            });
        }
        out
    }

    /// A listener's certificate, key and client-certificate policy, each
    /// file read as the listener will read it.
    fn listener_tls(&mut self, spec: &file::ListenerTlsSpec, path: &FieldPath) -> ListenerTls {
        let tls = ListenerTls {
            cert: spec.cert.clone().into(),
            key: spec.key.clone().into(),
            client: spec
                .client_certificates
                .as_ref()
                .map(|c| ClientCertificates {
                    ca: c.ca.clone().into(),
                    crl: c.crl.clone().map(Into::into),
                    required: c.mode == file::ClientCertificateModeSpec::Require,
                }),
        };
        let chain = pem::certificates(&tls.cert).map_err(|m| self.problem(path.key("cert"), m));
        let key = pem::private_key(&tls.key).map_err(|m| self.problem(path.key("key"), m));
        if let (Ok(chain), Ok(key)) = (chain, key) {
            if let Err(message) = pem::belong_together(&chain, &key, &tls.cert, &tls.key) {
                self.problem(path.key("key"), message);
            }
        }
        if let Some(client) = &tls.client {
            let path = path.key("client_certificates");
            if let Err(message) = pem::certificates(&client.ca) {
                self.problem(path.key("ca"), message);
            }
            if let Some(Err(message)) = client.crl.as_deref().map(pem::revocation_lists) {
                self.problem(path.key("crl"), message);
            }
        }
        tls
    }

    pub(super) fn server(&mut self, spec: &file::ServerSpec, path: &FieldPath) -> ServerSettings {
        let threads = match spec.threads {
            Some(0) => {
                self.problem(path.key("threads"), "threads must be at least 1");
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let trusted_proxies = self.networks(&spec.trusted_proxies, &path.key("trusted_proxies"));
        let mut keep_override_headers = Vec::new();
        for (i, name) in spec.keep_override_headers.iter().enumerate() {
            let lower = name.to_ascii_lowercase();
            if !crate::values::fields::OVERRIDE_HEADERS.contains(&lower.as_str()) {
                self.problem(
                    path.key("keep_override_headers").index(i),
                    format!(
                        "{name:?} is not one of the headers dropped by default ({})",
                        crate::values::fields::OVERRIDE_HEADERS.join(", ")
                    ),
                );
                continue;
            }
            if let Ok(name) = http::HeaderName::from_bytes(lower.as_bytes()) {
                keep_override_headers.push(name);
            }
        }
        let watch_interval = spec
            .watch_interval
            .map_or(defaults::WATCH_INTERVAL, |d| d.0);
        if watch_interval < defaults::MIN_WATCH_INTERVAL {
            self.problem(
                path.key("watch_interval"),
                format!(
                    "watch_interval must be at least {:?} (the watch looks at the files this often)",
                    defaults::MIN_WATCH_INTERVAL
                ),
            );
        }
        ServerSettings {
            trusted_proxies,
            keep_override_headers,
            threads,
            work_stealing: spec.work_stealing.unwrap_or(false),
            grace_period: spec.grace_period.map_or(defaults::GRACE_PERIOD, |d| d.0),
            graceful_shutdown_timeout: spec
                .graceful_shutdown_timeout
                .map_or(defaults::SHUTDOWN_TIMEOUT, |d| d.0),
            upgrade_sock: spec
                .upgrade_sock
                .clone()
                .unwrap_or_else(|| defaults::UPGRADE_SOCK.to_owned()),
            pid_file: spec
                .pid_file
                .clone()
                .unwrap_or_else(|| defaults::PID_FILE.to_owned()),
            upstream_keepalive_pool_size: spec
                .upstream_keepalive_pool_size
                .unwrap_or(defaults::KEEPALIVE_POOL),
            watch_config: spec.watch_config.unwrap_or(false),
            watch_interval,
        }
    }

    pub(super) fn limits(&mut self, spec: &file::LimitsSpec, path: &FieldPath) -> RequestLimits {
        let defaults = RequestLimits::default();
        let mut positive = |field: &str, value: Option<u64>, default: u64| match value {
            Some(0) => {
                self.problem(path.key(field), "must be greater than zero");
                default
            }
            Some(n) => n,
            None => default,
        };
        let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let max_header_size = as_usize(positive(
            "max_header_size",
            spec.max_header_size.map(|s| s.0),
            defaults.max_header_size as u64,
        ));
        let max_headers = as_usize(positive(
            "max_headers",
            spec.max_headers.map(|n| n as u64),
            defaults.max_headers as u64,
        ));
        let max_uri_length = as_usize(positive(
            "max_uri_length",
            spec.max_uri_length.map(|s| s.0),
            defaults.max_uri_length as u64,
        ));
        let max_body_size = positive(
            "max_body_size",
            spec.max_body_size.map(|s| s.0),
            defaults.max_body_size,
        );
        let header_timeout = spec.header_timeout.map_or(defaults.header_timeout, |d| d.0);
        if header_timeout.is_zero() {
            self.problem(path.key("header_timeout"), "must be longer than zero");
        }
        let mut duration = |field: &str,
                            value: Option<&crate::config::units::HumanDuration>,
                            default: std::time::Duration| {
            match value.map(|d| d.0) {
                Some(d) if d.is_zero() => {
                    self.problem(path.key(field), "must be greater than zero");
                    default
                }
                Some(d) => d,
                None => default,
            }
        };
        let body_timeout = duration(
            "body_timeout",
            spec.body_timeout.as_ref(),
            defaults.body_timeout,
        );
        let keepalive_timeout = duration(
            "keepalive_timeout",
            spec.keepalive_timeout.as_ref(),
            defaults.keepalive_timeout,
        );
        RequestLimits {
            max_header_size,
            max_headers,
            max_uri_length,
            max_body_size,
            header_timeout,
            body_timeout,
            keepalive_timeout,
            max_connections: spec.max_connections.unwrap_or(defaults.max_connections),
            max_connections_per_ip: spec
                .max_connections_per_ip
                .unwrap_or(defaults.max_connections_per_ip),
        }
    }

    /// A list of networks (`10.0.0.0/8`) or single addresses (`192.0.2.7`).
    /// An `addresses` block (a route's or a tenant's) compiled into its
    /// trie; each bad entry is a problem at its line.
    pub(super) fn addresses(
        &mut self,
        spec: Option<&file::AddressesSpec>,
        path: &FieldPath,
    ) -> Option<std::sync::Arc<AddressPolicy>> {
        let spec = spec?;
        let mut lists = [Vec::new(), Vec::new()];
        for (list, (field, entries)) in lists
            .iter_mut()
            .zip([("allow", &spec.allow), ("deny", &spec.deny)])
        {
            for (i, entry) in entries.iter().enumerate() {
                match address_policy::parse_network(entry) {
                    Ok(net) => list.push(net),
                    Err(problem) => self.problem(path.key(field).index(i), problem.message()),
                }
            }
        }
        match AddressPolicy::new(&lists[0], &lists[1]) {
            Ok(policy) => Some(std::sync::Arc::new(policy)),
            Err(problem) => {
                self.problem(path.key("deny"), problem.message());
                None
            }
        }
    }

    pub(super) fn networks(&mut self, list: &[String], path: &FieldPath) -> Vec<ipnet::IpNet> {
        let mut out = Vec::with_capacity(list.len());
        for (i, p) in list.iter().enumerate() {
            let net = p
                .parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| p.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from));
            match net {
                Some(net) => out.push(net),
                None => self.problem(
                    path.index(i),
                    format!("invalid address or network {p:?} (e.g. 10.0.0.0/8, 192.0.2.7)"),
                ),
            }
        }
        out
    }

    pub(super) fn logging(
        &mut self,
        spec: &file::LoggingSpec,
        path: &FieldPath,
    ) -> LoggingSettings {
        let level = match spec.level.parse::<log::LevelFilter>() {
            Ok(level) => level,
            Err(_) => {
                self.problem(
                    path.key("level"),
                    format!(
                        "unknown log level {:?} (one of error, warn, info, debug, trace, off)",
                        spec.level
                    ),
                );
                log::LevelFilter::Info
            }
        };
        LoggingSettings {
            level,
            access_log: spec.access_log,
            slow_request_threshold: spec
                .slow_request_threshold
                .map_or(defaults::SLOW_REQUEST, |d| d.0),
            access_log_format: spec.access_log_format.unwrap_or_default(),
            access_log_path: spec.access_log_path.as_ref().map(Into::into),
        }
    }
}
