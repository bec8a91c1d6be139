//! Configuration: the YAML file (`file`), the validated model (`model`),
//! and the checks between them.
//!
//! Loading is two steps. serde reads the file into [`file::FileConfig`],
//! refusing unknown fields and bad values with their line. Then
//! [`validate`] checks what serde cannot (cross-references, duplicates,
//! resolvable addresses) and builds [`model::Config`], the only form the
//! proxy reads. Every problem is reported as `file:line:col: field: message`.

mod check_ratelimit;
pub mod error;
pub mod file;
pub mod locate;
pub mod model;
pub mod units;

pub use check_ratelimit::parse_key_hash;
pub use error::{ConfigError, Problem};
pub use model::Config;

use crate::router::{HostPattern, MethodSet};
use file::{FileConfig, ListenerSpec, RouteSpec, UpstreamSpec};
use locate::{locate, FieldPath, Position, Segment};
use model::*;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&source, &file)
}

/// Parses and validates config text; `file` is only used in messages.
pub fn parse(source: &str, file: &str) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        file: file.to_owned(),
        problems,
    };
    let raw: FileConfig =
        serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(source))
            .map_err(|e| invalid(vec![serde_problem(source, e)]))?;
    let mut checker = Checker {
        source,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let config = checker.config(raw, file);
    if checker.problems.is_empty() {
        Ok(config)
    } else {
        let mut problems = checker.problems;
        problems.sort_by_key(|p| p.position.map(|pos| (pos.line, pos.column)));
        Err(invalid(problems))
    }
}

fn serde_problem(source: &str, e: serde_path_to_error::Error<serde_yaml::Error>) -> Problem {
    let path = FieldPath(
        e.path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                serde_path_to_error::Segment::Enum { variant } => {
                    Some(Segment::Key(variant.clone()))
                }
                _ => None,
            })
            .collect(),
    );
    let inner = e.into_inner();
    let serde_position = inner.location().map(|l| Position {
        line: l.line(),
        column: l.column(),
    });
    // For a well-formed document our locator is exact (serde_yaml sometimes
    // reports the enclosing mapping); for a syntax error only the parser
    // knows where it stopped.
    let position = if locate::well_formed(source) {
        locate(source, &path).or(serde_position)
    } else {
        serde_position
    };
    // serde_yaml writes "path: message at line L column C"; we print the
    // position and path ourselves, first.
    let mut message = inner.to_string();
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    if let Some((prefix, rest)) = message.split_once(": ") {
        let is_path = !prefix.is_empty()
            && prefix.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'[' | b']')
            });
        if is_path {
            message = rest.to_owned();
        }
    }
    Problem {
        path,
        position,
        message,
    }
}

/// Collects every problem instead of stopping at the first one.
struct Checker<'a> {
    source: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Checker<'_> {
    fn problem(&mut self, path: FieldPath, message: impl Into<String>) {
        let position = locate(self.source, &path);
        self.problems.push(Problem {
            path,
            position,
            message: message.into(),
        });
    }

    fn warn(&mut self, path: &FieldPath, message: impl Into<String>) {
        let at = match locate(self.source, path) {
            Some(pos) => format!("line {}: ", pos.line),
            None => String::new(),
        };
        self.warnings
            .push(format!("{at}{path}: {}", message.into()));
    }

    fn config(&mut self, raw: FileConfig, file: &str) -> Config {
        let root = FieldPath::root();
        let listeners = self.listeners(&raw.listen, &root.key("listen"));
        let admin_path = root.key("admin").key("listen");
        let admin_listen = self.socket_addr(&raw.admin.listen, &admin_path);
        if let Some(admin) = admin_listen {
            if listeners.iter().any(|l| l.addr == admin) {
                self.problem(
                    admin_path,
                    format!("{admin} is also a proxy listener; the admin port must be separate"),
                );
            }
        }
        let admin_token = raw
            .admin
            .token_env
            .as_deref()
            .and_then(|var| match std::env::var(var) {
                Ok(token) if !token.trim().is_empty() => Some(token.trim().to_owned()),
                _ => {
                    self.problem(
                        root.key("admin").key("token_env"),
                        format!("environment variable {var} is not set or empty"),
                    );
                    None
                }
            });
        let server = self.server(&raw.server, &root.key("server"));
        let cache = self.cache_limits(raw.cache.as_ref(), &root.key("cache"));
        let rate_limit = self.rate_limit(&raw);
        let compression = raw
            .compression
            .as_ref()
            .map(|c| self.compression(c, &root.key("compression")));
        let logging = self.logging(&raw.logging, &root.key("logging"));

        let mut upstreams = Vec::with_capacity(raw.upstreams.len());
        for (name, spec) in &raw.upstreams {
            upstreams.push(self.upstream(name, spec, &root.key("upstreams").key(name)));
        }
        let upstream_index: HashMap<&str, usize> = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        let routes_path = root.key("routes");
        if raw.routes.is_empty() {
            self.problem(routes_path.clone(), "at least one route is needed");
        }
        let mut routes: Vec<RouteConfig> = Vec::with_capacity(raw.routes.len());
        let mut route_paths = Vec::with_capacity(raw.routes.len());
        let mut first_use: HashMap<&str, usize> = HashMap::new();
        for (i, spec) in raw.routes.iter().enumerate() {
            let path = routes_path.index(i);
            if let Some(first) = first_use.get(spec.name.as_str()) {
                self.problem(
                    path.key("name"),
                    format!(
                        "duplicate route name {:?} (first used by routes[{first}])",
                        spec.name
                    ),
                );
            } else {
                first_use.insert(&spec.name, i);
            }
            if let Some(route) = self.route(spec, &path, &upstream_index) {
                routes.push(route);
                route_paths.push(path);
            }
        }
        self.shadowed_routes(&routes, &route_paths);

        Config {
            source: file.to_owned(),
            listeners,
            admin_listen: admin_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090))),
            admin_token,
            server,
            logging,
            cache,
            compression,
            rate_limit,
            upstreams,
            routes,
            warnings: std::mem::take(&mut self.warnings),
        }
    }

    fn socket_addr(&mut self, raw: &str, path: &FieldPath) -> Option<SocketAddr> {
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

    fn listeners(&mut self, specs: &[ListenerSpec], path: &FieldPath) -> Vec<Listener> {
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
            let tls = spec.tls.as_ref().map(|t| ListenerTls {
                cert: t.cert.clone().into(),
                key: t.key.clone().into(),
            });
            if let Some(tls) = &tls {
                for (field, file) in [("cert", &tls.cert), ("key", &tls.key)] {
                    if let Err(e) = std::fs::metadata(file) {
                        self.problem(
                            item.key("tls").key(field),
                            format!("cannot read {}: {e}", file.display()),
                        );
                    }
                }
            }
            out.push(Listener { addr, tls });
        }
        out
    }

    fn server(&mut self, spec: &file::ServerSpec, path: &FieldPath) -> ServerSettings {
        let threads = match spec.threads {
            Some(0) => {
                self.problem(path.key("threads"), "threads must be at least 1");
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        ServerSettings {
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
        }
    }

    fn logging(&mut self, spec: &file::LoggingSpec, path: &FieldPath) -> LoggingSettings {
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
        }
    }

    fn upstream(&mut self, name: &str, spec: &UpstreamSpec, path: &FieldPath) -> UpstreamConfig {
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
        for (i, b) in spec.backends.iter().enumerate() {
            let item = backends_path.index(i);
            if b.weight == 0 {
                self.problem(item.key("weight"), "weight must be at least 1");
            }
            let Some(addr) = self.resolve(&b.address, &item) else {
                continue;
            };
            if backends.iter().any(|existing| existing.addr == addr) {
                self.problem(
                    item,
                    format!("backend {} ({addr}) is listed twice", b.address),
                );
                continue;
            }
            backends.push(BackendConfig {
                addr,
                weight: b.weight.max(1),
            });
        }
        let tls = spec.tls.as_ref().map(|t| {
            if t.sni.trim().is_empty() {
                self.problem(path.key("tls").key("sni"), "sni must not be empty");
            }
            UpstreamTls {
                sni: t.sni.clone(),
                verify: t.verify,
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
        let health_check = spec
            .health_check
            .as_ref()
            .map(|h| self.health_check(h, host_header.as_ref(), &path.key("health_check")));
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
        UpstreamConfig {
            name: name.to_owned(),
            backends,
            tls,
            host_header,
            health_check,
            passive,
            retries: spec.retries.unwrap_or(defaults::RETRIES),
        }
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
        };
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

    /// Resolves `host:port` once, at load time, preferring IPv4.
    fn resolve(&mut self, raw: &str, path: &FieldPath) -> Option<SocketAddr> {
        if let Ok(addr) = raw.parse::<SocketAddr>() {
            return Some(addr);
        }
        let has_port = raw
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !has_port {
            self.problem(
                path.clone(),
                format!("invalid backend address {raw:?} (write host:port)"),
            );
            return None;
        }
        match raw.to_socket_addrs() {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                let pick = addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or(addrs.first())
                    .copied();
                if pick.is_none() {
                    self.problem(
                        path.clone(),
                        format!("backend {raw:?} resolved to no address"),
                    );
                }
                pick
            }
            Err(e) => {
                self.problem(path.clone(), format!("cannot resolve backend {raw:?}: {e}"));
                None
            }
        }
    }

    fn route(
        &mut self,
        spec: &RouteSpec,
        path: &FieldPath,
        upstreams: &HashMap<&str, usize>,
    ) -> Option<RouteConfig> {
        let before = self.problems.len();
        if !valid_name(&spec.name) {
            self.problem(path.key("name"), name_rule("route", &spec.name));
        }
        let upstream = match upstreams.get(spec.upstream.as_str()) {
            Some(i) => *i,
            None => {
                let mut known: Vec<&str> = upstreams.keys().copied().collect();
                known.sort_unstable();
                self.problem(
                    path.key("upstream"),
                    format!(
                        "unknown upstream {:?} (defined: {})",
                        spec.upstream,
                        known.join(", ")
                    ),
                );
                0
            }
        };
        let m = path.key("match");
        let host = spec
            .matcher
            .host
            .as_deref()
            .and_then(|h| match HostPattern::parse(h) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.problem(m.key("host"), e);
                    None
                }
            });
        let path_prefix = spec
            .matcher
            .path_prefix
            .clone()
            .unwrap_or_else(|| "/".to_owned());
        if !path_prefix.starts_with('/') {
            self.problem(
                m.key("path_prefix"),
                format!("path_prefix {path_prefix:?} must start with /"),
            );
        }
        let methods = match &spec.matcher.methods {
            None => MethodSet::ANY,
            Some(names) => MethodSet::from_names(names).unwrap_or_else(|e| {
                self.problem(m.key("methods"), e);
                MethodSet::ANY
            }),
        };
        let t = path.key("timeouts");
        let total = spec.timeouts.total.map_or(defaults::TOTAL_TIMEOUT, |d| d.0);
        let connect = spec
            .timeouts
            .connect
            .map_or(defaults::CONNECT_TIMEOUT.min(total), |d| d.0);
        let read = spec.timeouts.read.map_or(total, |d| d.0);
        for (field, value) in [("total", total), ("connect", connect), ("read", read)] {
            if value.is_zero() {
                self.problem(t.key(field), "timeout must be greater than zero");
            }
        }
        for (field, value) in [("connect", connect), ("read", read)] {
            if value > total {
                self.warn(
                    &t.key(field),
                    format!(
                        "{field} timeout ({:?}) is longer than the total timeout ({:?}); the total applies",
                        value, total
                    ),
                );
            }
        }
        let cache = spec
            .cache
            .as_ref()
            .filter(|c| c.enabled.unwrap_or(true))
            .map(|c| self.route_cache(c, &path.key("cache")));
        let rate_limit = self.route_rate_limit(spec.rate_limit.as_ref(), &path.key("rate_limit"));
        let compression = RouteCompression {
            enabled: spec
                .compression
                .as_ref()
                .and_then(|c| c.enabled)
                .unwrap_or(true),
            min_size: spec
                .compression
                .as_ref()
                .and_then(|c| c.min_size)
                .map(|s| s.0),
        };
        (self.problems.len() == before).then(|| RouteConfig {
            name: spec.name.clone(),
            host,
            path_prefix,
            methods,
            upstream,
            timeouts: RouteTimeouts {
                connect,
                read,
                total,
            },
            cache,
            rate_limit,
            compression,
        })
    }

    fn compression(&mut self, spec: &file::CompressionSpec, path: &FieldPath) -> CompressionConfig {
        let mut level = |field: &str, value: Option<u32>, default: u32, max: u32| {
            let v = value.unwrap_or(default);
            if !(1..=max).contains(&v) {
                self.problem(
                    path.key(field),
                    format!("{field} must be between 1 and {max}"),
                );
            }
            v
        };
        let gzip_level = level("gzip_level", spec.gzip_level, 6, 9);
        let brotli_quality = spec
            .brotli_quality
            .map(|q| level("brotli_quality", Some(q), 4, 11));
        let zstd_level = level("zstd_level", spec.zstd_level, 3, 19);
        CompressionConfig {
            min_size: spec
                .min_size
                .map_or(defaults::COMPRESSION_MIN_SIZE, |s| s.0),
            gzip_level,
            brotli_quality,
            zstd_level,
            content_types: spec
                .content_types
                .clone()
                .unwrap_or_else(|| {
                    defaults::COMPRESSIBLE_TYPES
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect()
                })
                .into_iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
        }
    }

    fn cache_limits(&mut self, spec: Option<&file::CacheSpec>, path: &FieldPath) -> CacheLimits {
        let limits = CacheLimits {
            max_size: spec
                .and_then(|c| c.max_size)
                .map_or(defaults::CACHE_MAX_SIZE, |s| s.0),
            max_object_size: spec
                .and_then(|c| c.max_object_size)
                .map_or(defaults::CACHE_MAX_OBJECT, |s| s.0),
            lock_timeout: spec
                .and_then(|c| c.lock_timeout)
                .map_or(defaults::CACHE_LOCK_TIMEOUT, |d| d.0),
        };
        if limits.max_object_size > limits.max_size {
            self.problem(
                path.key("max_object_size"),
                "max_object_size is larger than max_size",
            );
        }
        if limits.lock_timeout.is_zero() {
            self.problem(
                path.key("lock_timeout"),
                "lock_timeout must be greater than zero",
            );
        }
        limits
    }

    fn route_cache(&mut self, spec: &file::RouteCacheSpec, path: &FieldPath) -> RouteCache {
        let statuses = spec
            .statuses
            .clone()
            .unwrap_or_else(|| defaults::CACHEABLE_STATUSES.to_vec());
        if statuses.is_empty()
            || statuses
                .iter()
                .any(|s| !(200..=599).contains(s) || *s == 206)
        {
            self.problem(
                path.key("statuses"),
                "statuses must list final HTTP statuses (200-599, not 206)",
            );
        }
        let mut key_headers = Vec::new();
        for (i, name) in spec.key.headers.iter().enumerate() {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => key_headers.push(h),
                Err(_) => self.problem(
                    path.key("key").key("headers").index(i),
                    format!("invalid header name {name:?}"),
                ),
            }
        }
        if let (Some(d), Some(m)) = (spec.default_ttl, spec.max_ttl) {
            if d.0 > m.0 {
                self.warn(
                    &path.key("default_ttl"),
                    "default_ttl is longer than max_ttl; max_ttl applies",
                );
            }
        }
        RouteCache {
            default_ttl: spec.default_ttl.map(|d| d.0),
            max_ttl: spec.max_ttl.map(|d| d.0),
            stale_while_revalidate: spec
                .stale_while_revalidate
                .map_or(std::time::Duration::ZERO, |d| d.0),
            stale_if_error: spec
                .stale_if_error
                .map_or(std::time::Duration::ZERO, |d| d.0),
            statuses,
            exclude_query: spec.key.exclude_query.clone(),
            ignore_query: spec.key.ignore_query,
            sort_query: spec.key.sort_query.unwrap_or(true),
            key_headers,
        }
    }

    /// A route is unreachable when an earlier route has the same host and
    /// prefix and already takes all of its methods.
    fn shadowed_routes(&mut self, routes: &[RouteConfig], paths: &[FieldPath]) {
        for (i, later) in routes.iter().enumerate() {
            let shadow = routes[..i].iter().position(|earlier| {
                earlier.host == later.host
                    && earlier.path_prefix == later.path_prefix
                    && earlier.methods.covers(later.methods)
            });
            if let Some(j) = shadow {
                self.warn(
                    &paths[i],
                    format!(
                        "route {:?} is unreachable: route {:?} earlier in the file matches the same host, path prefix and methods",
                        later.name, routes[j].name
                    ),
                );
            }
        }
    }
}

/// Names become metric labels and log fields: keep them plain.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn name_rule(what: &str, name: &str) -> String {
    format!("invalid {what} name {name:?} (1-64 characters: letters, digits, '_', '-', '.')")
}

#[cfg(test)]
mod tests;
