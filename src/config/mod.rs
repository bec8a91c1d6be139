//! Configuration: the YAML file (`file`), the validated model (`model`),
//! and the checks between them.
//!
//! Loading is two steps. serde reads the file into [`file::FileConfig`],
//! refusing unknown fields and bad values with their line. Then
//! [`validate`] checks what serde cannot (cross-references, duplicates,
//! resolvable addresses) and builds [`model::Config`], the only form the
//! proxy reads. Every problem is reported as `file:line:col: field: message`.

mod aliases;
mod check_auth;
mod check_cache;
mod check_forward_auth;
mod check_ratelimit;
mod check_route;
mod check_server;
mod check_tracing;
mod check_upstream;
pub mod error;
pub mod file;
mod io;
pub mod locate;
pub mod model;
pub mod schema;
mod secret;
mod shape;
pub mod units;

pub use check_ratelimit::parse_key_hash;
pub use error::{ConfigError, Problem};
pub use model::Config;

use file::FileConfig;
use locate::{locate, FieldPath, Position, Segment};
use model::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = io::read_file(path)?;
    parse(&source, &path.display().to_string())
}

/// Parses and validates config text; `file` is only used in messages.
pub fn parse(source: &str, file: &str) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        file: file.to_owned(),
        problems,
    };
    shape::check_shape(source)
        .and_then(|()| aliases::check_expansion(source))
        .map_err(|problem| invalid(vec![problem]))?;
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
pub(crate) struct Checker<'a> {
    source: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Checker<'_> {
    pub(crate) fn problem(&mut self, path: FieldPath, message: impl Into<String>) {
        let position = locate(self.source, &path);
        self.problems.push(Problem {
            path,
            position,
            message: message.into(),
        });
    }

    pub(crate) fn warn(&mut self, path: &FieldPath, message: impl Into<String>) {
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
        let admin_token =
            raw.admin
                .token_env
                .as_deref()
                .and_then(|var| match io::env_secret(var) {
                    Ok(token) => Some(Secret::new(token)),
                    Err(message) => {
                        self.problem(root.key("admin").key("token_env"), message);
                        None
                    }
                });
        let mut admin_hosts = Vec::with_capacity(raw.admin.hosts.len());
        for (i, name) in raw.admin.hosts.iter().enumerate() {
            match crate::values::host::Host::parse_str(name) {
                Some(host) => admin_hosts.push(host.as_str().to_owned()),
                None => self.problem(
                    root.key("admin").key("hosts").index(i),
                    format!("{name:?} is not a host name"),
                ),
            }
        }
        if raw.admin.require_token_for_reads && raw.admin.token_env.is_none() {
            self.problem(
                root.key("admin").key("require_token_for_reads"),
                "needs admin.token_env: there is no token to ask for",
            );
        }
        let mut server = self.server(&raw.server, &root.key("server"));
        let cache = self.cache_limits(raw.cache.as_ref(), &root.key("cache"));
        let redis = self.redis(&raw);
        let cache_redis = self.cache_redis(raw.cache.as_ref(), redis.as_ref(), &root.key("cache"));
        let cache_tags = self.cache_tags(raw.cache.as_ref(), &root.key("cache"));
        let mut rate_limit = self.rate_limit(&raw, redis.as_ref());
        // One list of trusted proxies, whichever section named them.
        if let Some(rl) = rate_limit.as_mut() {
            server
                .trusted_proxies
                .extend(rl.trusted_proxies.iter().copied());
            rl.trusted_proxies.clone_from(&server.trusted_proxies);
        }
        let compression = raw
            .compression
            .as_ref()
            .map(|c| self.compression(c, &root.key("compression")));
        let logging = self.logging(&raw.logging, &root.key("logging"));
        let limits = self.limits(&raw.limits, &root.key("limits"));

        let tracing = raw
            .tracing
            .as_ref()
            .and_then(|t| self.tracing(t, &root.key("tracing")));
        let mut dns = self.dns(&raw.dns, &root.key("dns"));
        dns.own_addresses = listeners.iter().map(|l| l.addr).collect();
        dns.own_addresses.extend(admin_listen);
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
        let client_certificate_header = raw.auth.client_certificate_header.as_ref().and_then(|h| {
            let at = root.key("auth").key("client_certificate_header");
            let Ok(name) = http::HeaderName::from_bytes(h.as_bytes()) else {
                self.problem(at, format!("{h:?} is not a valid header name"));
                return None;
            };
            // The certificate fields other proxies vouch with are the
            // natural names; every other forwarding field is refused.
            let certificate_field =
                matches!(name.as_str(), "x-forwarded-client-cert" | "x-client-cert");
            let problem = (!certificate_field)
                .then(|| check_ratelimit::identity_field_problem(&name, &raw))
                .flatten();
            if let Some(problem) = problem {
                self.problem(at, problem);
                return None;
            }
            if !listeners
                .iter()
                .any(|l| l.tls.as_ref().is_some_and(|t| t.client.is_some()))
            {
                self.problem(
                    at,
                    "no listener asks for client certificates (listen[].tls.client_certificates)",
                );
            }
            Some(name)
        });
        let fates = check_route::FieldFates {
            identity: rate_limit
                .as_ref()
                .map_or_else(
                    || vec![crate::values::fields::DEFAULT_TENANT_HEADER],
                    |rl| {
                        let claims = rl.jwt.iter().flat_map(|j| &j.forward_claims);
                        std::iter::once(rl.tenant_header.clone())
                            .chain(claims.map(|(_, header)| header.clone()))
                            .collect()
                    },
                )
                .into_iter()
                .chain(client_certificate_header.clone())
                .collect(),
            keep_overrides: &server.keep_override_headers,
            underscores: raw.hygiene.underscore_headers.unwrap_or_default(),
        };
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
            if let Some(route) = self.route(spec, &path, &upstream_index, &limits, &fates) {
                routes.push(route);
                route_paths.push(path);
            }
        }
        self.shadowed_routes(&routes, &route_paths);
        let tenant_header = rate_limit
            .as_ref()
            .map_or(crate::values::fields::DEFAULT_TENANT_HEADER, |rl| {
                rl.tenant_header.clone()
            });
        for (route, at) in routes.iter().zip(&route_paths) {
            let names_tenant = route
                .forward_auth
                .as_ref()
                .is_some_and(|f| f.tenant_field.is_some());
            if names_tenant && rate_limit.is_none() {
                self.problem(
                    at.key("forward_auth").key("tenant_field"),
                    "names a tenant, but no tenants are configured (tiers, tenants)",
                );
            }
            let policy = &route.request_headers;
            let touches = policy
                .set
                .iter()
                .chain(&policy.add)
                .any(|(n, _)| *n == tenant_header)
                || policy.remove.contains(&tenant_header);
            if touches {
                self.problem(
                    at.key("headers").key("request"),
                    format!("{tenant_header} carries the identified tenant: tollgate writes it (rate_limit.tenant_header)"),
                );
            }
        }

        Config {
            source: file.to_owned(),
            listeners,
            admin_listen: admin_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090))),
            admin_token,
            admin_reads_need_token: raw.admin.require_token_for_reads,
            admin_hosts,
            server,
            logging,
            cache,
            compression,
            rate_limit,
            client_certificate_header,
            redis,
            cache_redis,
            cache_tags,
            response_time_header: raw.response_headers.response_time,
            via_header: raw.response_headers.via,
            limits,
            hygiene: Hygiene {
                encoded_slash: raw.hygiene.encoded_slash.unwrap_or_default(),
                path_parameters: raw.hygiene.path_parameters.unwrap_or_default(),
                underscore_headers: raw.hygiene.underscore_headers.unwrap_or_default(),
            },
            dns,
            tracing,
            upstreams,
            routes,
            warnings: std::mem::take(&mut self.warnings),
        }
    }
}

/// Names become metric labels and log fields: keep them plain.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

pub(crate) fn name_rule(what: &str, name: &str) -> String {
    format!("invalid {what} name {name:?} (1-64 characters: letters, digits, '_', '-', '.')")
}

#[cfg(test)]
mod tests;
