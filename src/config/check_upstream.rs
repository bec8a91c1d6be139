//! Validation of upstream pools: backends (IP addresses, host names and SRV
//! names; names are resolved later, by `discovery`), TLS, the Host
//! override, active health checks and passive health; and the `dns`
//! section that says how names are resolved.

use super::file::{self, DnsSpec, UpstreamSpec};
use super::locate::FieldPath;
use super::model::*;
use super::{name_rule, valid_name, Checker};
use std::net::SocketAddr;

impl Checker<'_> {
    /// `dns`, with defaults applied.
    pub(super) fn dns(&mut self, spec: &DnsSpec, path: &FieldPath) -> DnsSettings {
        let mut servers = Vec::new();
        for (i, raw) in spec.servers.iter().flatten().enumerate() {
            let parsed = raw.parse::<SocketAddr>().ok().or_else(|| {
                raw.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Some(addr) => servers.push(addr),
                None => self.problem(
                    path.key("servers").index(i),
                    format!("invalid name server {raw:?} (write ip or ip:port)"),
                ),
            }
        }
        if spec.servers.as_ref().is_some_and(Vec::is_empty) {
            self.problem(
                path.key("servers"),
                "servers must list at least one name server (leave it out for the system's)",
            );
        }
        let settings = DnsSettings {
            servers,
            min_ttl: spec.min_ttl.map_or(defaults::DNS_MIN_TTL, |d| d.0),
            max_ttl: spec.max_ttl.map_or(defaults::DNS_MAX_TTL, |d| d.0),
            timeout: spec.timeout.map_or(defaults::DNS_TIMEOUT, |d| d.0),
            require_at_start: spec.require_at_start.unwrap_or(false),
            family: match spec.family {
                None | Some(file::AddressFamilySpec::Any) => AddressFamily::Any,
                Some(file::AddressFamilySpec::Ipv4) => AddressFamily::Ipv4,
                Some(file::AddressFamilySpec::Ipv6) => AddressFamily::Ipv6,
            },
            // Filled in by the caller, which knows the listeners.
            own_addresses: Vec::new(),
        };
        if settings.min_ttl.is_zero() {
            self.problem(path.key("min_ttl"), "min_ttl must be greater than zero");
        }
        if settings.max_ttl < settings.min_ttl {
            self.problem(
                path.key("max_ttl"),
                format!(
                    "max_ttl ({:?}) must not be below min_ttl ({:?})",
                    settings.max_ttl, settings.min_ttl
                ),
            );
        }
        if settings.timeout.is_zero() {
            self.problem(path.key("timeout"), "timeout must be greater than zero");
        }
        settings
    }

    pub(super) fn upstream(
        &mut self,
        name: &str,
        spec: &UpstreamSpec,
        path: &FieldPath,
    ) -> UpstreamConfig {
        if !valid_name(name) {
            self.problem(path.clone(), name_rule("upstream", name));
        }
        let backends_path = path.key("backends");
        if spec.backends.is_empty() {
            self.problem(
                backends_path.clone(),
                format!("upstream {name:?} has no backends"),
            );
        }
        let mut backends: Vec<BackendConfig> = Vec::with_capacity(spec.backends.len());
        let mut names: Vec<NamedBackend> = Vec::new();
        for (i, b) in spec.backends.iter().enumerate() {
            let item = backends_path.index(i);
            if b.weight == 0 {
                self.problem(item.key("weight"), "weight must be at least 1");
            }
            let weight = b.weight.max(1);
            let source = match (&b.address, &b.srv) {
                (Some(address), None) => self.backend_address(address, &item),
                (None, Some(srv)) => match dns_name_problem(srv) {
                    None => Some(BackendSource::Name(DnsQuery::Srv { name: srv.clone() })),
                    Some(why) => {
                        self.problem(item.key("srv"), format!("invalid SRV name {srv:?}: {why}"));
                        None
                    }
                },
                _ => {
                    self.problem(
                        item.clone(),
                        "write either address (host:port) or srv (an SRV name), not both",
                    );
                    None
                }
            };
            match source {
                None => {}
                Some(BackendSource::Static(addr)) => {
                    if backends.iter().any(|existing| existing.addr == addr) {
                        self.problem(item, format!("backend {addr} is listed twice"));
                        continue;
                    }
                    backends.push(BackendConfig { addr, weight });
                }
                Some(BackendSource::Name(query)) => {
                    if names.iter().any(|existing| existing.query == query) {
                        self.problem(item, format!("backend {query} is listed twice"));
                        continue;
                    }
                    names.push(NamedBackend { query, weight });
                }
            }
        }
        let tls = spec.tls.as_ref().map(|t| {
            if t.sni.trim().is_empty() {
                self.problem(path.key("tls").key("sni"), "sni must not be empty");
            }
            let tls_path = path.key("tls");
            let ca = t.ca.as_ref().map(std::path::PathBuf::from);
            if let Some(Err(message)) = ca.as_deref().map(crate::values::pem::certificates) {
                self.problem(tls_path.key("ca"), message);
            }
            let client_cert = match (&t.client_cert, &t.client_key) {
                (Some(cert), Some(key)) => {
                    let files = CertKeyFiles {
                        cert: cert.into(),
                        key: key.into(),
                    };
                    if let Err(message) = crate::values::pem::cert_and_key(&files.cert, &files.key)
                    {
                        self.problem(tls_path.key("client_cert"), message);
                    }
                    Some(files)
                }
                (None, None) => None,
                (Some(_), None) => {
                    self.problem(
                        tls_path.key("client_key"),
                        "client_cert needs its client_key",
                    );
                    None
                }
                (None, Some(_)) => {
                    self.problem(
                        tls_path.key("client_cert"),
                        "client_key needs its client_cert",
                    );
                    None
                }
            };
            UpstreamTls {
                sni: t.sni.clone(),
                verify: t.verify,
                ca,
                client_cert,
            }
        });
        let host_header =
            spec.host_header
                .as_ref()
                .and_then(|h| match http::HeaderValue::from_str(h) {
                    Ok(v) if !h.is_empty() => Some(v),
                    _ => {
                        self.problem(
                            path.key("host_header"),
                            format!("invalid Host header value {h:?}"),
                        );
                        None
                    }
                });
        let protocol = self.upstream_protocol(spec, path);
        let health_check = spec.health_check.as_ref().map(|h| {
            let at = path.key("health_check");
            if h.kind == file::HealthCheckKind::Grpc && !protocol.multiplexed() {
                self.problem(
                    at.key("type"),
                    "a grpc health check speaks HTTP/2: set the upstream's protocol to h2, h2c or auto",
                );
            }
            self.health_check(h, host_header.as_ref(), &at)
        });
        let passive = PassiveHealth {
            max_fails: spec.max_fails.unwrap_or(defaults::MAX_FAILS),
            fail_timeout: spec.fail_timeout.map_or(defaults::FAIL_TIMEOUT, |d| d.0),
            fail_on_5xx: spec.fail_on_5xx.unwrap_or(false),
        };
        if passive.fail_timeout.is_zero() {
            self.problem(
                path.key("fail_timeout"),
                "fail_timeout must be greater than zero",
            );
        }
        let max_streams = spec.max_streams.unwrap_or(defaults::MAX_STREAMS);
        if max_streams == 0 {
            self.problem(path.key("max_streams"), "max_streams must be at least 1");
        }
        UpstreamConfig {
            protocol,
            max_streams: max_streams.max(1),
            name: name.to_owned(),
            backends,
            names,
            tls,
            host_header,
            health_check,
            passive,
            retries: spec.retries.unwrap_or(defaults::RETRIES),
            retry_on_5xx: spec.retry_on_5xx.unwrap_or(false),
        }
    }

    /// `protocol`, checked against `tls`: HTTP/2 over TLS needs `tls`
    /// (ALPN is how both sides agree), and `h2c` is cleartext only.
    fn upstream_protocol(&mut self, spec: &UpstreamSpec, path: &FieldPath) -> UpstreamProtocol {
        use file::UpstreamProtocolSpec as Spec;
        let protocol = match spec.protocol.unwrap_or(Spec::Http1) {
            Spec::Http1 => UpstreamProtocol::Http1,
            Spec::H2 => UpstreamProtocol::H2,
            Spec::H2c => UpstreamProtocol::H2c,
            Spec::Auto => UpstreamProtocol::Auto,
        };
        let at = path.key("protocol");
        match (protocol, spec.tls.is_some()) {
            (UpstreamProtocol::H2 | UpstreamProtocol::Auto, false) => self.problem(
                at,
                format!(
                    "protocol {} negotiates HTTP/2 through TLS (ALPN) and needs tls: {{ sni: ... }}; \
                     for cleartext HTTP/2 write protocol: h2c",
                    protocol.as_str()
                ),
            ),
            (UpstreamProtocol::H2c, true) => self.problem(
                at,
                "protocol h2c is cleartext HTTP/2; over TLS write protocol: h2 (or auto)",
            ),
            _ => {}
        }
        protocol
    }

    fn health_check(
        &mut self,
        spec: &file::HealthCheckSpec,
        host_header: Option<&http::HeaderValue>,
        path: &FieldPath,
    ) -> HealthCheckConfig {
        let probe = match spec.kind {
            file::HealthCheckKind::Http => {
                let check_path = spec.path.clone().unwrap_or_else(|| "/health".to_owned());
                if !check_path.starts_with('/') {
                    self.problem(
                        path.key("path"),
                        format!("path {check_path:?} must start with /"),
                    );
                }
                let expect_status = spec.expect_status.clone().unwrap_or_else(|| vec![200]);
                if expect_status.is_empty()
                    || expect_status.iter().any(|s| !(100..=599).contains(s))
                {
                    self.problem(
                        path.key("expect_status"),
                        "expect_status must list HTTP statuses (100-599)",
                    );
                }
                let host = spec
                    .host
                    .clone()
                    .or_else(|| host_header.and_then(|h| h.to_str().ok()).map(str::to_owned))
                    .unwrap_or_else(|| "localhost".to_owned());
                Probe::Http {
                    path: check_path,
                    host,
                    expect_status,
                }
            }
            file::HealthCheckKind::Tcp => {
                for (field, set) in [
                    ("path", spec.path.is_some()),
                    ("expect_status", spec.expect_status.is_some()),
                    ("host", spec.host.is_some()),
                ] {
                    if set {
                        self.problem(
                            path.key(field),
                            format!("{field} applies to http checks, not tcp"),
                        );
                    }
                }
                Probe::Tcp
            }
            file::HealthCheckKind::Grpc => {
                for (field, set) in [
                    ("path", spec.path.is_some()),
                    ("expect_status", spec.expect_status.is_some()),
                ] {
                    if set {
                        self.problem(
                            path.key(field),
                            format!(
                                "{field} applies to http checks; a grpc check calls \
                                 grpc.health.v1.Health/Check and expects SERVING"
                            ),
                        );
                    }
                }
                Probe::Grpc {
                    service: spec.service.clone().unwrap_or_default(),
                    host: spec
                        .host
                        .clone()
                        .or_else(|| host_header.and_then(|h| h.to_str().ok()).map(str::to_owned))
                        .unwrap_or_else(|| "localhost".to_owned()),
                }
            }
        };
        if spec.service.is_some() && spec.kind != file::HealthCheckKind::Grpc {
            self.problem(path.key("service"), "service applies to grpc checks only");
        }
        let check = HealthCheckConfig {
            probe,
            interval: spec.interval.map_or(defaults::HEALTH_INTERVAL, |d| d.0),
            timeout: spec.timeout.map_or(defaults::HEALTH_TIMEOUT, |d| d.0),
            healthy_threshold: spec
                .healthy_threshold
                .unwrap_or(defaults::HEALTHY_THRESHOLD),
            unhealthy_threshold: spec
                .unhealthy_threshold
                .unwrap_or(defaults::UNHEALTHY_THRESHOLD),
        };
        for (field, zero) in [
            ("interval", check.interval.is_zero()),
            ("timeout", check.timeout.is_zero()),
            ("healthy_threshold", check.healthy_threshold == 0),
            ("unhealthy_threshold", check.unhealthy_threshold == 0),
        ] {
            if zero {
                self.problem(
                    path.key(field),
                    format!("{field} must be greater than zero"),
                );
            }
        }
        check
    }

    /// Reads a backend `address`: an IP address with a port is used as
    /// it is; a host name with a port is resolved through DNS while the
    /// process runs (see `discovery`).
    fn backend_address(&mut self, raw: &str, path: &FieldPath) -> Option<BackendSource> {
        if let Ok(addr) = raw.parse::<SocketAddr>() {
            return Some(BackendSource::Static(addr));
        }
        let parsed = raw
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
        let Some((host, port)) = parsed.filter(|(host, port)| !host.is_empty() && *port != 0)
        else {
            self.problem(
                path.clone(),
                format!("invalid backend address {raw:?} (write host:port)"),
            );
            return None;
        };
        if let Some(why) = dns_name_problem(host) {
            self.problem(
                path.clone(),
                format!("invalid backend address {raw:?}: {why}"),
            );
            return None;
        }
        Some(BackendSource::Name(DnsQuery::Host {
            name: host.to_owned(),
            port,
        }))
    }
}

/// Where a backend's addresses come from.
enum BackendSource {
    Static(SocketAddr),
    Name(DnsQuery),
}

/// Why `name` is not a DNS name a backend can have (RFC 1035 lengths;
/// letters, digits, `-` and `_` in labels, an optional final dot), or
/// `None` when it is one.
pub(super) fn dns_name_problem(name: &str) -> Option<String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() || bare.len() > 253 {
        return Some("a name has 1 to 253 characters".to_owned());
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Some(format!("label {label:?} must have 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Some(format!(
                "label {label:?} may hold only letters, digits, '-' and '_'"
            ));
        }
    }
    if bare
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Some("not an IP address, and a name's last label is not all digits".to_owned());
    }
    None
}
