//! Per-tenant rate-limit tiers. A request is identified (API key → tenant,
//! or anonymous client IP), then decided against its tier's windows (and
//! the route's own, if any) by GCRA — locally, or through Redis so that
//! every instance shares one budget. The answer carries the IETF
//! `RateLimit-Policy` / `RateLimit` headers and the common `X-RateLimit-*`.
//!
//! Tenant tiers are ours to write: Pingora's `pingora-limits` estimates
//! rates over fixed intervals for one process; budgets here must refill
//! continuously, cover hours and days, and be shared through Redis.

pub mod admission;
pub mod gcra;
pub mod identity;
pub mod local;
pub mod redis;
mod sweeper;

pub use sweeper::BucketSweeper;

use crate::auth::jwt::JwtVerifier;
use crate::auth::keyring::KeyRing;
use crate::config::model::{Anonymous, RateLimitConfig, RouteRateLimit};
use crate::metrics::Metrics;
use gcra::{Verdict, Window};
use http::HeaderValue;
use identity::Identity;
use local::{Check, LocalBuckets};
use pingora::http::ResponseHeader;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

/// A tier as decisions use it.
pub struct Tier {
    /// Name.
    pub name: Box<str>,
    /// Windows, shortest first.
    pub windows: Vec<Window>,
    /// Label its tenants by name in metrics.
    pub tenant_metrics: bool,
    /// Its `RateLimit-Policy` value.
    pub policy: HeaderValue,
    /// Its `tollgate_ratelimit_decisions_total` children (allowed,
    /// limited), looked up once: a decision then skips the label hashing.
    decisions: [OnceLock<IntCounter>; 2],
}

impl Tier {
    /// The decisions counter for this tier and outcome.
    fn decisions(&self, metrics: &Metrics, allowed: bool) -> &IntCounter {
        let (slot, outcome) = if allowed {
            (&self.decisions[0], "allowed")
        } else {
            (&self.decisions[1], "limited")
        };
        slot.get_or_init(|| {
            metrics
                .ratelimit_decisions
                .with_label_values(&[&*self.name, outcome])
        })
    }
}

/// The compiled rate-limit settings of one config generation.
pub struct RateLimiter {
    /// Tiers by index.
    pub tiers: Vec<Tier>,
    /// Tenant names and their tier, by index.
    pub tenants: Vec<(Box<str>, usize)>,
    /// Bucket key of each tenant (`t:<name>`), built once.
    tenant_keys: Vec<Box<str>>,
    /// SHA-256 of a key → tenant index.
    pub keys: HashMap<[u8; 32], usize>,
    /// A client certificate's name → tenant index.
    pub certificate_tenants: HashMap<crate::values::cert_name::CertName, usize>,
    /// A tenant's name → its index (names an auth service gives).
    tenant_names: HashMap<Box<str>, usize>,
    /// The client addresses of the tenants that have `addresses`, by
    /// name (a token naming a configured tenant is held to its list too).
    pub tenant_addresses: HashMap<Box<str>, Arc<crate::values::address_policy::AddressPolicy>>,
    /// Bearer JWTs, when `auth.jwt` is configured.
    pub jwt: Option<JwtVerifier>,
    /// The config it came from (key sources, proxies, anonymous policy),
    /// without its tenant list: that is compiled into `tenants` and `keys`
    /// and kept once more in the gateway's config, not a third time
    /// (~120 bytes per tenant; `benches/load/memory.sh`).
    pub config: RateLimitConfig,
}

/// What a route adds to a decision.
pub struct RouteBudget {
    /// Tokens per request.
    pub cost: u64,
    /// Route-level windows (may be empty).
    pub windows: Vec<Window>,
    /// Their part of `RateLimit-Policy`.
    pub policy: HeaderValue,
}

impl RouteBudget {
    /// Compiles a route's settings; `None` for an exempt route.
    pub fn new(route: &RouteRateLimit) -> Option<Self> {
        (!route.exempt).then(|| {
            let windows: Vec<Window> = route
                .windows
                .iter()
                .map(|&(q, s)| Window::new(q, s, q))
                .collect();
            RouteBudget {
                cost: route.cost,
                policy: policy_header(&windows, true),
                windows,
            }
        })
    }
}

/// One decision, with what the response headers need.
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Tier index.
    pub tier: usize,
    /// Seconds to wait when refused.
    pub retry_after: u64,
    /// `RateLimit-Policy`, `RateLimit`, `X-RateLimit-*` values.
    pub headers: RateHeaders,
    /// Whether Redis failed and local buckets decided.
    pub fallback: bool,
}

/// Header values for a decided request.
#[derive(Debug, Clone)]
pub struct RateHeaders {
    /// `RateLimit-Policy` (shared with the tier: cloning does not copy).
    pub policy: HeaderValue,
    /// `RateLimit` (the binding window).
    pub limit: String,
    /// `X-RateLimit-Limit`.
    pub x_limit: u64,
    /// `X-RateLimit-Remaining`.
    pub x_remaining: u64,
    /// `X-RateLimit-Reset` (seconds).
    pub x_reset: u64,
    /// `Retry-After` of a refused request (seconds).
    pub retry_after: u64,
}

/// Where budgets live: in-process buckets, and Redis when configured.
/// Created once per process, so a reload keeps every tenant's spent budget.
pub struct RateStore {
    /// The in-process buckets (the whole store without Redis; the fallback with it).
    pub local: LocalBuckets,
    /// Shared buckets.
    pub redis: Option<std::sync::Arc<redis::RedisBuckets>>,
}

impl RateStore {
    /// Local buckets, plus Redis when configured.
    pub fn new(config: Option<&RateLimitConfig>) -> Result<Self, String> {
        let redis = match config.and_then(|c| c.redis.as_ref()) {
            Some(r) => Some(redis::RedisBuckets::new(r)?),
            None => None,
        };
        let capacity = config.map_or(1_000_000, |c| c.max_local_buckets);
        Ok(Self {
            local: LocalBuckets::with_capacity(capacity),
            redis,
        })
    }

    /// Decides the checks together; `fallback` is true when Redis failed and
    /// local buckets decided instead.
    pub async fn decide(&self, checks: &[Check<'_>], metrics: &Metrics) -> (Vec<Verdict>, bool) {
        let Some(redis) = &self.redis else {
            return (self.local.decide(checks), false);
        };
        let outcome = redis.decide(checks).await;
        if outcome.opened_breaker {
            metrics.redis_breaker_opens.inc();
        }
        match outcome.result {
            Ok(verdicts) => (verdicts, false),
            Err(failure) => {
                let kind = match failure {
                    redis::RedisFailure::Timeout => Some("timeout"),
                    redis::RedisFailure::BreakerOpen => None,
                    _ => Some("error"),
                };
                if let Some(kind) = kind {
                    metrics.redis_errors.with_label_values(&[kind]).inc();
                }
                (self.local.decide(checks), true)
            }
        }
    }
}

/// Adds the rate-limit headers to a response.
pub fn apply_headers(resp: &mut ResponseHeader, h: &RateHeaders) -> pingora::Result<()> {
    resp.insert_header("RateLimit-Policy", h.policy.clone())?;
    resp.insert_header("RateLimit", h.limit.as_str())?;
    resp.insert_header("X-RateLimit-Limit", h.x_limit)?;
    resp.insert_header("X-RateLimit-Remaining", h.x_remaining)?;
    resp.insert_header("X-RateLimit-Reset", h.x_reset)?;
    Ok(())
}

/// Counts a decision in `tollgate_ratelimit_decisions_total` (and per tenant
/// when the tier asks for it).
pub fn count(metrics: &Metrics, limiter: &RateLimiter, who: &Identity, d: &Decision) {
    let tier = &limiter.tiers[d.tier];
    let outcome = if d.allowed { "allowed" } else { "limited" };
    tier.decisions(metrics, d.allowed).inc();
    if d.fallback {
        metrics
            .ratelimit_fallback
            .with_label_values(&[&*tier.name])
            .inc();
    }
    let tenant = who.tenant_name(limiter);
    if !d.allowed {
        match tenant {
            Some(name) => metrics.rejected_tenants.reject(name),
            None => metrics.rejected_tenants.reject(limiter.bucket_key(who)),
        }
    }
    if let (true, Some(name)) = (tier.tenant_metrics, tenant) {
        metrics
            .ratelimit_tenant_decisions
            .with_label_values(&[name, outcome])
            .inc();
    }
}

impl Default for RateHeaders {
    fn default() -> Self {
        Self {
            policy: HeaderValue::from_static(""),
            limit: String::new(),
            x_limit: 0,
            x_remaining: 0,
            x_reset: 0,
            retry_after: 0,
        }
    }
}

fn window_name(secs: u64, route: bool) -> &'static str {
    match (secs, route) {
        (1, false) => "second",
        (60, false) => "minute",
        (3600, false) => "hour",
        (86400, false) => "day",
        (1, true) => "route-second",
        (60, true) => "route-minute",
        (3600, true) => "route-hour",
        (86400, true) => "route-day",
        _ => "window",
    }
}

/// `"minute";q=60;w=60, "hour";q=1000;w=3600` for a list of windows,
/// built once per tier or route, not per request.
fn policy_header(windows: &[Window], route: bool) -> HeaderValue {
    let mut text = String::new();
    for w in windows {
        if !text.is_empty() {
            text.push_str(", ");
        }
        let _ = write!(
            text,
            "\"{}\";q={};w={}",
            window_name(w.window_secs, route),
            w.quota,
            w.window_secs
        );
    }
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn combined_policy(tier: &HeaderValue, route: &HeaderValue) -> HeaderValue {
    let mut bytes = Vec::with_capacity(tier.len() + 2 + route.len());
    bytes.extend_from_slice(tier.as_bytes());
    bytes.extend_from_slice(b", ");
    bytes.extend_from_slice(route.as_bytes());
    HeaderValue::from_bytes(&bytes).unwrap_or_else(|_| tier.clone())
}

impl RateLimiter {
    /// The configured tenant called `name`, by index.
    pub fn tenant_named(&self, name: &str) -> Option<usize> {
        self.tenant_names.get(name).copied()
    }
}

impl RateLimiter {
    /// Compiles the validated config; JWT key sources come from `keys`.
    pub fn new(config: &RateLimitConfig, ring: &Arc<KeyRing>) -> Self {
        let tiers: Vec<Tier> = config
            .tiers
            .iter()
            .map(|t| {
                let windows: Vec<Window> = t
                    .windows
                    .iter()
                    .enumerate()
                    .map(|(i, &(q, s))| {
                        let burst = if i == 0 { t.burst.unwrap_or(q) } else { q };
                        Window::new(q, s, burst)
                    })
                    .collect();
                Tier {
                    name: t.name.as_str().into(),
                    policy: policy_header(&windows, false),
                    windows,
                    tenant_metrics: t.tenant_metrics,
                    decisions: Default::default(),
                }
            })
            .collect();
        let mut keys = HashMap::new();
        let mut certificate_tenants = HashMap::new();
        for (i, t) in config.tenants.iter().enumerate() {
            for h in &t.key_hashes {
                keys.insert(*h, i);
            }
            for name in &t.certificates {
                certificate_tenants.insert(name.clone(), i);
            }
        }
        let tenants: Vec<(Box<str>, usize)> = config
            .tenants
            .iter()
            .map(|t| (t.name.as_str().into(), t.tier))
            .collect();
        let jwt = config.jwt.as_ref().map(|jwt| {
            let tier_names: Vec<Box<str>> = tiers.iter().map(|t: &Tier| t.name.clone()).collect();
            JwtVerifier::new(jwt, ring, &config.tenants, &tier_names)
        });
        let tenant_addresses = config
            .tenants
            .iter()
            .filter_map(|t| Some((t.name.as_str().into(), t.addresses.clone()?)))
            .collect();
        Self {
            jwt,
            tiers,
            tenants,
            tenant_addresses,
            tenant_keys: config
                .tenants
                .iter()
                .map(|t| format!("t:{}", t.name).into())
                .collect(),
            keys,
            certificate_tenants,
            tenant_names: config
                .tenants
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.as_str().into(), i))
                .collect(),
            config: RateLimitConfig {
                tiers: config.tiers.clone(),
                tenants: Vec::new(),
                anonymous: config.anonymous,
                key_sets: config.key_sets.clone(),
                trusted_proxies: config.trusted_proxies.clone(),
                count_cached_responses: config.count_cached_responses,
                ipv6_prefix: config.ipv6_prefix,
                forward_api_key: config.forward_api_key,
                tenant_header: config.tenant_header.clone(),
                max_local_buckets: config.max_local_buckets,
                redis: config.redis.clone(),
                jwt: config.jwt.clone(),
            },
        }
    }

    /// Whether an identified tenant's requests may come from `ip` (its
    /// `addresses`); `None` when no list applies.
    pub fn tenant_admits(&self, who: &Identity, ip: Option<std::net::IpAddr>) -> Option<bool> {
        if self.tenant_addresses.is_empty() {
            return None;
        }
        let policy = self.tenant_addresses.get(who.tenant_name(self)?)?;
        Some(ip.is_some_and(|ip| policy.admits(ip)))
    }

    /// The tier of an identified requester.
    pub fn tier_of(&self, who: &Identity) -> Option<usize> {
        match who {
            Identity::Tenant(i) | Identity::Certificate(i) | Identity::AuthService(i) => {
                self.tenants.get(*i).map(|(_, t)| *t)
            }
            Identity::Token(t) => Some(t.tier),
            Identity::Anonymous(_) => match self.config.anonymous {
                Anonymous::Tier(t) => Some(t),
                Anonymous::Reject => None,
            },
        }
    }

    /// The bucket key of a requester.
    pub fn bucket_key<'a>(&'a self, who: &'a Identity) -> std::borrow::Cow<'a, str> {
        match who {
            Identity::Tenant(i) | Identity::Certificate(i) | Identity::AuthService(i) => {
                std::borrow::Cow::Borrowed(&self.tenant_keys[*i])
            }
            Identity::Token(t) => std::borrow::Cow::Borrowed(&t.bucket_key),
            Identity::Anonymous(IpAddr::V4(ip)) => std::borrow::Cow::Owned(format!("ip:{ip}")),
            Identity::Anonymous(IpAddr::V6(net)) => {
                std::borrow::Cow::Owned(format!("ip:{net}/{}", self.config.ipv6_prefix))
            }
        }
    }

    /// Turns verdicts (tier first, then the route's) into a decision.
    pub fn decision(
        &self,
        tier: usize,
        route: &RouteBudget,
        verdicts: &[Verdict],
        fallback: bool,
    ) -> Decision {
        let tier_cfg = &self.tiers[tier];
        let allowed = verdicts.iter().all(|v| v.allowed);
        let retry_after = verdicts
            .iter()
            .map(|v| v.retry_after_secs)
            .max()
            .unwrap_or(0);
        let mut headers = RateHeaders {
            policy: if route.windows.is_empty() {
                tier_cfg.policy.clone()
            } else {
                combined_policy(&tier_cfg.policy, &route.policy)
            },
            ..RateHeaders::default()
        };
        let mut binding: Option<(f64, &'static str, u64, u64, u64)> = None;
        let groups = [(false, &tier_cfg.windows[..]), (true, &route.windows[..])];
        for ((is_route, windows), verdict) in groups.iter().zip(verdicts) {
            for (w, state) in windows.iter().zip(&verdict.windows) {
                let name = window_name(w.window_secs, *is_route);
                let remaining = state.remaining.min(w.quota);
                let share = remaining as f64 / w.quota as f64;
                // The binding window has the smallest share left; on a tie,
                // the one that takes longest to come back.
                let tighter = binding
                    .as_ref()
                    .is_none_or(|b| share < b.0 || (share == b.0 && state.reset_secs > b.4));
                if tighter {
                    binding = Some((share, name, w.quota, remaining, state.reset_secs));
                }
            }
        }
        if let Some((_, name, quota, remaining, reset)) = binding {
            let reset = if allowed {
                reset
            } else {
                reset.max(retry_after)
            };
            // `"minute";r=9;t=30`, without core::fmt (once per request).
            let mut digits = itoa::Buffer::new();
            let limit = &mut headers.limit;
            limit.reserve(40);
            limit.push('"');
            limit.push_str(name);
            limit.push_str("\";r=");
            limit.push_str(digits.format(remaining));
            limit.push_str(";t=");
            limit.push_str(digits.format(reset));
            headers.x_limit = quota;
            headers.x_remaining = remaining;
            headers.x_reset = reset;
        }
        headers.retry_after = retry_after;
        Decision {
            allowed,
            tier,
            retry_after,
            headers,
            fallback,
        }
    }

    /// The 429 message: the tier and its binding budget.
    pub fn limited_message(&self, decision: &Decision) -> String {
        let tier = &self.tiers[decision.tier];
        let budget = tier
            .windows
            .iter()
            .find(|w| w.quota == decision.headers.x_limit)
            .map(|w| {
                format!(
                    "{} requests per {}",
                    w.quota,
                    window_name(w.window_secs, false)
                )
            })
            .unwrap_or_else(|| format!("{} requests per route window", decision.headers.x_limit));
        format!("Rate limit exceeded for tier {}: {budget}", tier.name)
    }
}
