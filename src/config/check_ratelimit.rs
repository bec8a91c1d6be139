//! Validation of the rate-limit parts of the file: tiers, tenants, the
//! anonymous policy, key sources, trusted proxies, Redis, route settings.

use super::file::{FileConfig, RouteRateLimitSpec};
use super::locate::FieldPath;
use super::model::*;
use super::Checker;
use crate::values::cert_name::CertName;
use std::collections::HashMap;

impl Checker<'_> {
    pub(super) fn rate_limit(
        &mut self,
        raw: &FileConfig,
        redis: Option<&RedisConfig>,
    ) -> Option<RateLimitConfig> {
        let root = FieldPath::root();
        if raw.tiers.is_empty() {
            if !raw.tenants.is_empty() || raw.anonymous.is_some() || raw.auth.jwt.is_some() {
                self.problem(
                    root.key("tiers"),
                    "tenants, anonymous and auth.jwt need tiers to refer to",
                );
            }
            return None;
        }
        let mut tiers = Vec::with_capacity(raw.tiers.len());
        for (name, spec) in &raw.tiers {
            let path = root.key("tiers").key(name);
            let mut windows: Vec<(u64, u64)> = [
                (spec.per_second, 1),
                (spec.per_minute, 60),
                (spec.per_hour, 3600),
                (spec.per_day, 86400),
            ]
            .into_iter()
            .filter_map(|(q, secs)| q.map(|q| (q, secs)))
            .collect();
            if windows.is_empty() {
                self.problem(
                    path.clone(),
                    "a tier needs at least one of per_second, per_minute, per_hour, per_day",
                );
            }
            if windows.iter().any(|(q, _)| *q == 0) {
                self.problem(
                    path.clone(),
                    "budgets must be at least 1 (leave a window out to not limit it)",
                );
            }
            windows.sort_by_key(|(_, secs)| *secs);
            if spec.burst == Some(0) {
                self.problem(path.key("burst"), "burst must be at least 1");
            }
            tiers.push(TierConfig {
                name: name.clone(),
                windows,
                burst: spec.burst,
                tenant_metrics: spec.tenant_metrics.unwrap_or(false),
            });
        }
        let tier_index: HashMap<&str, usize> = tiers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let known = || {
            let mut names: Vec<&str> = raw.tiers.keys().map(String::as_str).collect();
            names.sort_unstable();
            names.join(", ")
        };

        let mut tenants = Vec::with_capacity(raw.tenants.len());
        let mut seen_keys: HashMap<[u8; 32], String> = HashMap::new();
        let mut seen_cert_names: HashMap<CertName, String> = HashMap::new();
        for (name, spec) in &raw.tenants {
            let path = root.key("tenants").key(name);
            let tier = match tier_index.get(spec.tier.as_str()) {
                Some(t) => *t,
                None => {
                    self.problem(
                        path.key("tier"),
                        format!("unknown tier {:?} (defined: {})", spec.tier, known()),
                    );
                    0
                }
            };
            if spec.api_keys.is_empty() && spec.certificates.is_empty() && raw.auth.jwt.is_none() {
                self.problem(
                    path.key("api_keys"),
                    "a tenant needs at least one API key (or certificates, or auth.jwt, whose tokens name it)",
                );
            }
            let mut certificates = Vec::with_capacity(spec.certificates.len());
            for (i, entry) in spec.certificates.iter().enumerate() {
                let at = path.key("certificates").index(i);
                match CertName::parse(entry) {
                    Ok(cert_name) => {
                        if let Some(other) = seen_cert_names.insert(cert_name.clone(), name.clone())
                        {
                            self.problem(
                                at,
                                format!("{cert_name} is also listed for tenant {other:?}"),
                            );
                        }
                        certificates.push(cert_name);
                    }
                    Err(message) => self.problem(at, message),
                }
            }
            let mut key_hashes = Vec::new();
            for (i, key) in spec.api_keys.iter().enumerate() {
                match parse_key_hash(key) {
                    Some(hash) => {
                        if let Some(other) = seen_keys.insert(hash, name.clone()) {
                            self.problem(
                                path.key("api_keys").index(i),
                                format!("this key is also listed for tenant {other:?}"),
                            );
                        }
                        key_hashes.push(hash);
                    }
                    None => self.problem(
                        path.key("api_keys").index(i),
                        "write keys hashed, as sha256:<64 hex digits> (`tollgate hash-key KEY` prints one)",
                    ),
                }
            }
            let configured_issuers: Vec<&str> = raw
                .auth
                .jwt
                .iter()
                .flat_map(|j| &j.issuers)
                .map(|i| i.issuer.as_str())
                .collect();
            let claimable_by = match &spec.issuers {
                None if key_hashes.is_empty() && certificates.is_empty() => ClaimableBy::AnyIssuer,
                None => ClaimableBy::Issuers(Vec::new()),
                Some(issuers) => {
                    for (i, iss) in issuers.iter().enumerate() {
                        if !configured_issuers.contains(&iss.as_str()) {
                            self.problem(
                                path.key("issuers").index(i),
                                format!(
                                    "{iss:?} is not an issuer of auth.jwt.issuers (configured: {})",
                                    configured_issuers.join(", ")
                                ),
                            );
                        }
                    }
                    ClaimableBy::Issuers(issuers.clone())
                }
            };
            let addresses = self.addresses(spec.addresses.as_ref(), &path.key("addresses"));
            tenants.push(TenantConfig {
                name: name.clone(),
                tier,
                key_hashes,
                claimable_by,
                addresses,
                certificates,
            });
        }

        let anon_path = root.key("anonymous");
        let anonymous = match &raw.anonymous {
            None => {
                self.problem(
                    anon_path,
                    "say how requests without an API key are treated: anonymous: { tier: NAME } or { reject: true }",
                );
                Anonymous::Reject
            }
            Some(a) => match (&a.tier, a.reject) {
                (Some(t), false) => match tier_index.get(t.as_str()) {
                    Some(i) => Anonymous::Tier(*i),
                    None => {
                        self.problem(
                            anon_path.key("tier"),
                            format!("unknown tier {t:?} (defined: {})", known()),
                        );
                        Anonymous::Reject
                    }
                },
                (None, true) => Anonymous::Reject,
                _ => {
                    self.problem(anon_path, "set exactly one of tier or reject: true");
                    Anonymous::Reject
                }
            },
        };

        let rl_path = root.key("rate_limit");
        let headers = raw
            .rate_limit
            .api_key_headers
            .clone()
            .unwrap_or_else(|| vec!["authorization".into(), "x-api-key".into()]);
        let mut key_sets = Vec::new();
        for (i, h) in headers.iter().enumerate() {
            if h.eq_ignore_ascii_case("authorization") {
                key_sets.push(ApiKeyField::Bearer);
            } else {
                match http::HeaderName::from_bytes(h.as_bytes()) {
                    Ok(name) => match identity_field_problem(&name, raw) {
                        Some(problem) => {
                            self.problem(rl_path.key("api_key_headers").index(i), problem)
                        }
                        None => key_sets.push(ApiKeyField::Header(name)),
                    },
                    Err(_) => self.problem(
                        rl_path.key("api_key_headers").index(i),
                        format!("invalid header name {h:?}"),
                    ),
                }
            }
        }
        if key_sets.is_empty() {
            self.problem(rl_path.key("api_key_headers"), "list at least one header");
        }
        if raw.auth.jwt.is_some() && !key_sets.contains(&ApiKeyField::Bearer) {
            self.problem(
                rl_path.key("api_key_headers"),
                "auth.jwt reads tokens from Authorization: Bearer: list authorization here",
            );
        }
        let tenant_header = raw
            .rate_limit
            .tenant_header
            .as_deref()
            .unwrap_or("x-tenant");
        let tenant_header =
            http::HeaderName::from_bytes(tenant_header.as_bytes()).unwrap_or_else(|_| {
                self.problem(
                    rl_path.key("tenant_header"),
                    format!("{tenant_header:?} is not a valid header name"),
                );
                http::HeaderName::from_static("x-tenant")
            });
        if let Some(problem) = identity_field_problem(&tenant_header, raw) {
            self.problem(rl_path.key("tenant_header"), problem);
        }
        let ipv6_prefix = match raw.rate_limit.ipv6_prefix {
            Some(p) if p == 0 || p > 128 => {
                self.problem(rl_path.key("ipv6_prefix"), "must be 1 to 128");
                64
            }
            Some(p) => p,
            None => 64,
        };
        let max_local_buckets = match raw.rate_limit.max_local_buckets {
            Some(n) if n < 1024 => {
                self.problem(rl_path.key("max_local_buckets"), "must be at least 1024");
                1024
            }
            Some(n) => n,
            None => 1_000_000,
        };
        let trusted_proxies = self.networks(
            &raw.rate_limit.trusted_proxies,
            &rl_path.key("trusted_proxies"),
        );
        if !trusted_proxies.is_empty() {
            self.warn(
                &rl_path.key("trusted_proxies"),
                "rate_limit.trusted_proxies is now server.trusted_proxies (it also decides whose forwarding headers are believed); both lists are used",
            );
        }

        let jwt = self.jwt(raw, &tier_index, &tenant_header);
        Some(RateLimitConfig {
            jwt,
            tiers,
            tenants,
            anonymous,
            key_sets,
            trusted_proxies,
            count_cached_responses: raw.rate_limit.count_cached_responses.unwrap_or(true),
            ipv6_prefix,
            max_local_buckets,
            forward_api_key: raw.rate_limit.forward_api_key.unwrap_or(false),
            tenant_header,
            redis: redis.cloned(),
        })
    }

    /// The top-level `redis` connection, shared by the rate limiter and
    /// the cache's Redis tier; refused when neither uses it.
    pub(super) fn redis(&mut self, raw: &FileConfig) -> Option<RedisConfig> {
        let root = FieldPath::root();
        let used = !raw.tiers.is_empty()
            || raw
                .cache
                .as_ref()
                .and_then(|c| c.redis.as_ref())
                .is_some_and(|r| r.enabled != Some(false));
        if raw.redis.is_some() && !used {
            self.problem(
                root.key("redis"),
                "redis is used by rate limiting (tiers) and cache.redis: neither is configured",
            );
            return None;
        }
        raw.redis.as_ref().map(|r| {
            let path = root.key("redis");
            let url = match (&r.url, &r.url_env, &r.cluster) {
                (Some(u), None, None) => u.expose().to_owned(),
                (None, Some(var), None) => super::io::env_secret(var).unwrap_or_else(|message| {
                    self.problem(path.key("url_env"), message);
                    String::new()
                }),
                (None, None, Some(_)) => String::new(),
                _ => {
                    self.problem(path.clone(), "set exactly one of url, url_env or cluster");
                    String::new()
                }
            };
            let cluster: Vec<String> = r
                .cluster
                .iter()
                .flatten()
                .map(|node| {
                    if node.contains("://") {
                        node.clone()
                    } else {
                        format!("redis://{node}")
                    }
                })
                .collect();
            if r.cluster.as_ref().is_some_and(Vec::is_empty) {
                self.problem(path.key("cluster"), "list at least one node");
            }
            for (i, node) in cluster.iter().enumerate() {
                if !(node.starts_with("redis://") || node.starts_with("rediss://")) {
                    self.problem(
                        path.key("cluster").index(i),
                        "a node is host:port or a redis:// or rediss:// URL",
                    );
                }
            }
            if !(url.is_empty() || url.starts_with("redis://") || url.starts_with("rediss://")) {
                self.problem(
                    path.key("url"),
                    "the URL must start with redis:// or rediss://",
                );
            }
            let breaker = r.circuit_breaker.as_ref();
            let breaker_failures = breaker.and_then(|b| b.failures).unwrap_or(3);
            if breaker_failures == 0 {
                self.problem(
                    path.key("circuit_breaker").key("failures"),
                    "must be at least 1",
                );
            }
            let breaker_open_for = breaker
                .and_then(|b| b.open_for)
                .map_or(std::time::Duration::from_secs(2), |d| d.0);
            if breaker_open_for.is_zero() {
                self.problem(
                    path.key("circuit_breaker").key("open_for"),
                    "must be longer than zero",
                );
            }
            RedisConfig {
                url: Secret::new(url),
                cluster,
                breaker_failures,
                breaker_open_for,
                timeout: r
                    .timeout
                    .map_or(std::time::Duration::from_millis(50), |d| d.0),
                key_prefix: r
                    .key_prefix
                    .clone()
                    .unwrap_or_else(|| "tollgate:rl:".to_owned()),
            }
        })
    }

    pub(super) fn route_rate_limit(
        &mut self,
        spec: Option<&RouteRateLimitSpec>,
        path: &FieldPath,
    ) -> RouteRateLimit {
        let Some(spec) = spec else {
            return RouteRateLimit {
                exempt: false,
                cost: 1,
                windows: Vec::new(),
            };
        };
        let cost = spec.cost.unwrap_or(1);
        if cost == 0 {
            self.problem(
                path.key("cost"),
                "cost must be at least 1 (use exempt: true for free requests)",
            );
        }
        let windows: Vec<(u64, u64)> = [
            (spec.per_second, 1),
            (spec.per_minute, 60),
            (spec.per_hour, 3600),
        ]
        .into_iter()
        .filter_map(|(q, secs)| q.map(|q| (q, secs)))
        .collect();
        if windows.iter().any(|(q, _)| *q == 0) {
            self.problem(path.clone(), "route budgets must be at least 1");
        }
        if spec.exempt && (spec.cost.is_some() || !windows.is_empty()) {
            self.problem(path.key("exempt"), "an exempt route has no cost or budget");
        }
        RouteRateLimit {
            exempt: spec.exempt,
            cost: cost.max(1),
            windows,
        }
    }
}

/// Parses `sha256:<64 hex digits>`.
pub fn parse_key_hash(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.strip_prefix("sha256:")?, &mut out).ok()?;
    Some(out)
}

/// Fields that carry the request's framing, routing or hop-by-hop meaning,
/// or that tollgate itself sets: never an API key or the tenant field
/// (removing or setting one would change how the request is delivered).
/// These, and the framing fields (`check_route::FRAMING_FIELDS`).
const RESERVED_FIELDS: [&str; 8] = [
    "proxy-authorization",
    "content-type",
    "content-encoding",
    "cookie",
    "x-request-id",
    "via",
    "forwarded",
    "cache-control",
];

/// Why `name` cannot be an API-key field or the tenant field, if it cannot.
pub(super) fn identity_field_problem(name: &http::HeaderName, raw: &FileConfig) -> Option<String> {
    if RESERVED_FIELDS.contains(&name.as_str())
        || super::check_route::FRAMING_FIELDS.contains(&name.as_str())
        || crate::values::fields::FORWARDING_FIELDS.contains(&name.as_str())
    {
        return Some(format!(
            "{:?} carries the request's framing, routing or forwarding: it cannot be an identity field",
            name.as_str()
        ));
    }
    let underscores = raw.hygiene.underscore_headers.unwrap_or_default();
    if crate::values::hygiene::has_underscore(name)
        && underscores != crate::values::hygiene::UnderscoreHeaders::Allow
    {
        return Some(format!(
            "{:?} has an underscore, and hygiene.underscore_headers drops or refuses such fields: use '-' or set underscore_headers: allow",
            name.as_str()
        ));
    }
    None
}
