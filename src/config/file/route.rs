//! The YAML's routes: what a route matches, where it sends requests (a
//! pool, a weighted split, a redirect), its timeouts and the changes it
//! makes to requests and responses. Its cache, rate-limit, compression and
//! access blocks live beside the sections they belong to.

use super::*;

/// One route.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique name; used as the metrics label.
    pub name: String,
    /// What requests this route takes. Defaults to every request.
    #[serde(default, rename = "match")]
    pub matcher: MatchSpec,
    /// Name of the upstream pool to send to (or `upstreams`, or `redirect`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// A weighted split between pools: `[{ name: v1, weight: 90 }, …]`.
    #[serde(default)]
    pub upstreams: Option<Vec<WeightedUpstreamSpec>>,
    /// Keep a client on the pool of a split it got first.
    #[serde(default)]
    pub sticky: Option<StickySpec>,
    /// Answer with a redirect instead of proxying.
    #[serde(default)]
    pub redirect: Option<RedirectSpec>,
    /// Connect, read and total timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsSpec,
    /// Response caching for this route; off when absent.
    #[serde(default)]
    pub cache: Option<RouteCacheSpec>,
    /// Rate-limit exemption, cost or extra limit for this route.
    #[serde(default)]
    pub rate_limit: Option<RouteRateLimitSpec>,
    /// Compression overrides for this route.
    #[serde(default)]
    pub compression: Option<RouteCompressionSpec>,
    /// Largest request body on this route. Default `limits.max_body_size`.
    #[serde(default)]
    pub max_body_size: Option<crate::config::units::ByteSize>,
    /// `hygiene.encoded_slash` for this route: `keep` or `reject`.
    #[serde(default)]
    pub encoded_slash: Option<crate::values::hygiene::EncodedSlash>,
    /// What path the upstream receives.
    #[serde(default)]
    pub rewrite: Option<RewriteSpec>,
    /// Fields set, added or removed on the request and the response.
    #[serde(default)]
    pub headers: RouteHeadersSpec,
    /// Which client addresses may use the route (403 otherwise).
    #[serde(default)]
    pub addresses: Option<AddressesSpec>,
    /// Cross-origin reads from browsers: preflights answered here.
    #[serde(default)]
    pub cors: Option<CorsSpec>,
    /// Ask an auth service before proxying (nginx `auth_request`,
    /// Traefik ForwardAuth, Envoy `ext_authz`).
    #[serde(default)]
    pub forward_auth: Option<ForwardAuthSpec>,
}

/// One member of a weighted split.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedUpstreamSpec {
    /// The pool.
    pub name: String,
    /// Its share: weight / sum of weights.
    pub weight: u32,
}

/// `routes[].sticky`: `{ cookie: NAME }` or `{ header: NAME }`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StickySpec {
    /// A cookie tollgate sets to the pool it chose, and reads back.
    #[serde(default)]
    pub cookie: Option<String>,
    /// A request field (a user or session id) whose value picks the pool.
    #[serde(default)]
    pub header: Option<String>,
}

/// `routes[].redirect`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    /// Target, with `{uri}`, `{path}`, `{host}`.
    pub to: String,
    /// 301, 302, 303, 307 or 308. Default 308.
    #[serde(default)]
    pub status: Option<u16>,
    /// Let clients and shared caches keep the redirect this long
    /// (`Cache-Control: public, max-age=…`). Default: `no-store`.
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
}

/// `routes[].rewrite`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    /// Drop the route's prefix (but its final `/`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Put this in place of the route's prefix.
    #[serde(default)]
    pub replace_prefix: Option<String>,
}

/// `routes[].headers`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteHeadersSpec {
    /// Changes to what the upstream receives.
    #[serde(default)]
    pub request: HeaderChangesSpec,
    /// Changes to what the client receives.
    #[serde(default)]
    pub response: HeaderChangesSpec,
}

/// `set` / `add` / `remove` for one direction.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderChangesSpec {
    /// Fields whose every line is replaced by this value.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Fields that get one more line.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Fields removed, every line.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The request side of a route.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Exact host (`api.example.com`) or wildcard (`*.example.com`). Any host when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, starting with `/`. Default `/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Allowed methods. Any method when absent.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Match `path_prefix` without regard to ASCII case (for upstreams that
    /// treat `/API/` and `/api/` alike). Default false.
    #[serde(default)]
    pub case_insensitive: bool,
    /// Request fields that must each have this exact value (all of them).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Per-route timeouts.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// TCP (+TLS) connect to a backend. Default 5s.
    #[serde(default)]
    pub connect: Option<HumanDuration>,
    /// Longest wait for the next bytes from the backend. Default: the total.
    #[serde(default)]
    pub read: Option<HumanDuration>,
    /// Whole request, from arrival to the last upstream byte. Default 30s.
    #[serde(default)]
    pub total: Option<HumanDuration>,
    /// A WebSocket (or other upgraded) tunnel closes after this long
    /// without a byte from the backend. Default 5m.
    #[serde(default)]
    pub idle: Option<HumanDuration>,
}
