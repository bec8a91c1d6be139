//! The YAML's rate-limit sections: tiers, tenants, the anonymous policy,
//! key sources, Redis, and a route's own budget.

use super::*;

/// A tier's budgets; at least one window.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// Requests per second.
    #[serde(default)]
    pub per_second: Option<u64>,
    /// Requests per minute.
    #[serde(default)]
    pub per_minute: Option<u64>,
    /// Requests per hour.
    #[serde(default)]
    pub per_hour: Option<u64>,
    /// Requests per day.
    #[serde(default)]
    pub per_day: Option<u64>,
    /// Most requests at once in the shortest window (default: its whole quota).
    #[serde(default)]
    pub burst: Option<u64>,
    /// Label decisions of this tier's tenants by tenant name in metrics.
    #[serde(default)]
    pub tenant_metrics: Option<bool>,
}

/// A tenant.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Tier name.
    pub tier: String,
    /// `sha256:<hex>` of each key (`tollgate hash-key` prints one). May be
    /// empty for a tenant that only comes with JWTs (`auth.jwt`).
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// The `auth.jwt` issuers whose tokens may name this tenant. Default:
    /// none for a tenant with API keys or certificates (its name is
    /// theirs), every issuer for a tenant without (it exists for tokens).
    #[serde(default)]
    pub issuers: Option<Vec<String>>,
    /// Which client addresses the tenant's requests may come from (403
    /// otherwise).
    #[serde(default)]
    pub addresses: Option<AddressesSpec>,
    /// Names of verified client certificates that are this tenant:
    /// `uri:spiffe://…`, `dns:host`, `email:a@b`, `cn:common name`.
    #[serde(default)]
    pub certificates: Vec<String>,
}

/// Anonymous requests: `{ tier: free }` (keyed by client IP) or `{ reject: true }`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnonymousSpec {
    /// Tier applied per client IP.
    #[serde(default)]
    pub tier: Option<String>,
    /// Refuse requests without a key with 401.
    #[serde(default)]
    pub reject: bool,
}

/// Where keys come from.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// `authorization` (Bearer) and/or header names. Default both `authorization` and `x-api-key`.
    #[serde(default)]
    pub api_key_headers: Option<Vec<String>>,
    /// Proxies whose `X-Forwarded-For` is believed (IPs or CIDRs).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Whether responses served from the cache count against budgets. Default true.
    #[serde(default)]
    pub count_cached_responses: Option<bool>,
    /// Send the API key header upstream. Default false: the key is
    /// tollgate's credential; the upstream gets `tenant_header` instead.
    #[serde(default)]
    pub forward_api_key: Option<bool>,
    /// Header that carries the tenant's name upstream (a client's own copy
    /// is always removed). Default `X-Tenant`.
    #[serde(default)]
    pub tenant_header: Option<String>,
    /// Anonymous IPv6 clients share a budget per network of this prefix
    /// length (one customer usually holds a whole /64). Default 64.
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
    /// Most in-process buckets held; past it the least spent are evicted.
    /// Default 1000000 (about 100 MB).
    #[serde(default)]
    pub max_local_buckets: Option<usize>,
}

/// Redis for shared budgets.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    /// `redis://[:password@]host:port[/db]`; or use `url_env`.
    #[serde(default)]
    pub url: Option<crate::config::secret::Secret>,
    /// Environment variable holding the URL (keeps passwords out of the file).
    #[serde(default)]
    pub url_env: Option<String>,
    /// Seed nodes of a Redis Cluster (`host:port` or `redis://…` URLs),
    /// instead of `url`.
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    /// Longest wait for Redis per decision before falling back. Default 50ms.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Prefix of every key. Default `tollgate:rl:`.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// When to stop asking a failing Redis.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
}

/// `redis.circuit_breaker`: after `failures` consecutive timeouts or errors,
/// decide locally for `open_for`, then probe once.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Consecutive failures that open it. Default 3.
    #[serde(default)]
    pub failures: Option<u32>,
    /// Time it stays open before one probe. Default 2s.
    #[serde(default)]
    pub open_for: Option<HumanDuration>,
}

/// A route's rate-limit settings.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRateLimitSpec {
    /// Not rate limited (and no key required).
    #[serde(default)]
    pub exempt: bool,
    /// Tokens a request costs. Default 1.
    #[serde(default)]
    pub cost: Option<u64>,
    /// An extra, route-level budget per tenant (or per anonymous IP).
    #[serde(default)]
    pub per_second: Option<u64>,
    /// Route-level budget per minute.
    #[serde(default)]
    pub per_minute: Option<u64>,
    /// Route-level budget per hour.
    #[serde(default)]
    pub per_hour: Option<u64>,
}
