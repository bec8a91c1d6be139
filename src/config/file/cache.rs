//! The YAML's cache sections: process-wide limits and a route's policy.

use super::*;

/// Global cache limits.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Memory for cached bodies and headers. Default 256MiB.
    #[serde(default)]
    pub max_size: Option<crate::config::units::ByteSize>,
    /// Larger responses are streamed through uncached. Default 8MiB.
    #[serde(default)]
    pub max_object_size: Option<crate::config::units::ByteSize>,
    /// How long concurrent misses wait for the one request filling the cache. Default 5s.
    #[serde(default)]
    pub lock_timeout: Option<HumanDuration>,
    /// The Redis tier, on the top-level `redis` connection.
    #[serde(default)]
    pub redis: Option<CacheRedisSpec>,
    /// Response fields listing cache tags. Default `[Surrogate-Key, Cache-Tag]`.
    #[serde(default)]
    pub tag_headers: Option<Vec<String>>,
    /// Remove the tag fields before responses reach clients. Default true.
    #[serde(default)]
    pub strip_tag_headers: Option<bool>,
    /// A response field with which an upstream's answer to a successful
    /// unsafe request purges tags everywhere. Default `X-Invalidate-Tags`;
    /// `""` turns it off.
    #[serde(default)]
    pub invalidation_header: Option<String>,
}

/// `cache.redis`: a second cache tier shared by every instance.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheRedisSpec {
    /// Default true when the block is present.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Larger bodies stay in memory only. Default 1MiB.
    #[serde(default)]
    pub max_object_size: Option<crate::config::units::ByteSize>,
    /// Prefix of the tier's keys and purge channel. Default `tollgate:cache:`.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// A lookup slower than this is a miss. Default 20ms.
    #[serde(default)]
    pub lookup_timeout: Option<HumanDuration>,
    /// Bound on one write. Default 1s.
    #[serde(default)]
    pub write_timeout: Option<HumanDuration>,
    /// Bound on a purge of the tier, all batches. Default 60s.
    #[serde(default)]
    pub purge_timeout: Option<HumanDuration>,
    /// Bound on connecting the purge channel and on hearing its heartbeat.
    /// Default 2s.
    #[serde(default)]
    pub listen_timeout: Option<HumanDuration>,
    /// How long purge markers live. Default 60s.
    #[serde(default)]
    pub purge_marker_ttl: Option<HumanDuration>,
}

/// A route's cache settings.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSpec {
    /// Default true when the block is present.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Freshness when the upstream gives none (no max-age, s-maxage, Expires).
    #[serde(default)]
    pub default_ttl: Option<HumanDuration>,
    /// Upper bound on any freshness lifetime.
    #[serde(default)]
    pub max_ttl: Option<HumanDuration>,
    /// Serve stale for this long while one request revalidates, unless the response says otherwise.
    #[serde(default)]
    pub stale_while_revalidate: Option<HumanDuration>,
    /// Serve stale for this long when the upstream fails, unless the response says otherwise.
    #[serde(default)]
    pub stale_if_error: Option<HumanDuration>,
    /// Statuses that may be stored. Default: 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501.
    #[serde(default)]
    pub statuses: Option<Vec<u16>>,
    /// A tenth of the time since `Last-Modified` (at most a day) as the
    /// lifetime of a response without explicit freshness, when no
    /// `default_ttl` is set (RFC 9111 §4.2.2). Default true.
    #[serde(default)]
    pub heuristic_freshness: Option<bool>,
    /// Targeted cache-control fields (RFC 9213) read instead of
    /// `Cache-Control` when present, first listed first. Default
    /// `[Tollgate-Cache-Control, CDN-Cache-Control]`; `[]` turns them off.
    #[serde(default)]
    pub targeted_fields: Option<Vec<String>>,
    /// Remove the targeted fields from responses sent to clients. Default false.
    #[serde(default)]
    pub strip_targeted_fields: bool,
    /// Responses with `Set-Cookie`: `never` stored (default) or `strip`:
    /// stored without the field (the client that caused the fetch still gets it).
    #[serde(default)]
    pub set_cookie: Option<SetCookieSpec>,
    /// Add the cache key to `Cache-Status` (`key=`, RFC 9211 §2.7), for
    /// debugging: it shows route and upstream names. Default false.
    #[serde(default)]
    pub expose_key: bool,
    /// What besides method, host and path goes into the key.
    #[serde(default)]
    pub key: CacheKeySpec,
}

/// Cache key options.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheKeySpec {
    /// Query parameters to leave out of the key (e.g. tracking parameters).
    #[serde(default)]
    pub exclude_query: Vec<String>,
    /// Ignore the query string entirely.
    #[serde(default)]
    pub ignore_query: bool,
    /// Sort query parameters so `?a=1&b=2` and `?b=2&a=1` share an entry. Default true.
    #[serde(default)]
    pub sort_query: Option<bool>,
    /// Request headers whose values go into the key.
    #[serde(default)]
    pub headers: Vec<String>,
}

/// `cache.set_cookie`.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SetCookieSpec {
    /// Never store a response that sets a cookie.
    Never,
    /// Store it without its `Set-Cookie` fields.
    Strip,
}
