//! One compiled config generation: the router, the routes and the upstream
//! pools, built once from a validated [`Config`] and then only read.
//!
//! Requests take an `Arc` of the current generation when they start and keep
//! it to the end, so a later reload never changes a request mid-flight.

use crate::auth::keyring::{KeyRing, PublishedKeySet};
use crate::certificates::listener::ListenerContext;
use crate::config::model::{RedirectConfig, RouteCache, RouteDestination, RouteTimeouts};
use crate::config::Config;
use crate::metrics::{Metrics, RouteMetrics};
use crate::ratelimit::{RateLimiter, RouteBudget};
use crate::router::{RouteId, RouteMatch, Router};
use crate::split::{Choice, Split};
use crate::upstream::{UpstreamMemory, UpstreamPool};
use std::sync::Arc;
use std::time::SystemTime;

/// A route as the request path uses it.
pub struct Route {
    /// The route's name (metrics label).
    pub name: Box<str>,
    /// Where it sends requests (or the redirect it answers with).
    pub destination: Destination,
    /// Connect, read and total timeouts.
    pub timeouts: RouteTimeouts,
    /// Pre-resolved metric children.
    pub metrics: RouteMetrics,
    /// Response caching, when enabled.
    pub cache: Option<RouteCache>,
    /// Rate-limit cost and route budget; `None` when exempt.
    pub rate_budget: Option<RouteBudget>,
    /// Compression overrides.
    pub compression: crate::config::model::RouteCompression,
    /// Largest request body (413 beyond).
    pub max_body_size: u64,
    /// `encoded_slash` when the route overrides the global one.
    pub encoded_slash: Option<crate::values::hygiene::EncodedSlash>,
    /// The upstream's path, when it differs from the client's.
    pub rewrite: Option<crate::values::rewrite::Rewrite>,
    /// Field changes to the request.
    pub request_headers: crate::values::header_policy::HeaderPolicy,
    /// Field changes to every response.
    pub response_headers: crate::values::header_policy::HeaderPolicy,
    /// Client addresses that may use the route (`None`: any).
    pub addresses: Option<Arc<crate::values::address_policy::AddressPolicy>>,
    /// Cross-origin reads from browsers (`None`: no CORS handling).
    pub cors: Option<Arc<crate::values::cors::CorsPolicy>>,
    /// The auth service asked before proxying (`None`: none).
    pub forward_auth: Option<Arc<crate::auth::forward::ForwardAuth>>,
}

/// Where a route's requests go, compiled.
pub enum Destination {
    /// One pool.
    Pool(Arc<UpstreamPool>),
    /// Pools by weight.
    Split(Split),
    /// A redirect, no upstream.
    Redirect(RedirectConfig),
}

impl Route {
    /// The cache key's scope for a request on this route sent to
    /// `upstream`: a response is only served to requests of the same
    /// route, upstream and scheme.
    pub fn key_scope<'a>(&'a self, tls: bool, upstream: &'a str) -> crate::cache::key::Scope<'a> {
        crate::cache::key::Scope {
            scheme: if tls { "https" } else { "http" },
            route: &self.name,
            upstream,
        }
    }

    /// Whether the route splits its traffic over pools: its pool is chosen
    /// per request, on the request as forwarded.
    pub fn splits(&self) -> bool {
        matches!(self.destination, Destination::Split(_))
    }

    /// The pool this request goes to (and a sticky cookie to set), or
    /// `None` for a redirect route.
    pub fn choose(&self, req: &pingora::http::RequestHeader, tls: bool) -> Option<Choice> {
        match &self.destination {
            Destination::Pool(pool) => Some(Choice {
                pool: pool.clone(),
                set_cookie: None,
            }),
            Destination::Split(split) => Some(split.choose(req, tls)),
            Destination::Redirect(_) => None,
        }
    }
}

/// A compiled config generation.
pub struct Gateway {
    /// The validated config this was built from.
    pub config: Arc<Config>,
    /// Host + path + method → route.
    pub router: Router,
    /// Routes, indexed by [`RouteId`].
    pub routes: Box<[Route]>,
    /// Upstream pools, in config order.
    pub pools: Box<[Arc<UpstreamPool>]>,
    /// Tenants and tiers; `None` when rate limiting is not configured.
    pub rate_limiter: Option<RateLimiter>,
    /// TLS listeners' contexts (certificate, key, client CAs), by address:
    /// each handshake takes its listener's from the live generation.
    pub listener_tls: Box<[(std::net::SocketAddr, Arc<ListenerContext>)]>,
    /// When this generation was built.
    pub loaded_at: SystemTime,
}

impl Gateway {
    /// Whether a GET or HEAD of `uri` (the cache key's form,
    /// `host/path?query`) could reach a route that caches, by host and
    /// path (header conditions ignored: a "yes" too many only costs the
    /// work of sharing an invalidation). An unsafe request to a URI no
    /// caching route serves has nothing in any cache to invalidate.
    pub fn may_cache_uri(&self, uri: &str) -> bool {
        let (host, path) = uri.split_at(uri.find('/').unwrap_or(uri.len()));
        let path = path.split('?').next().unwrap_or(path);
        let host = crate::values::host::Host::parse_str(host);
        let caches = |id: RouteId| self.routes.get(id.0).is_some_and(|r| r.cache.is_some());
        [http::Method::GET, http::Method::HEAD]
            .iter()
            .any(|m| self.router.any_candidate(host.as_ref(), path, m, caches))
    }

    /// The TLS context of the listener bound to `addr`.
    pub fn listener_context(&self, addr: std::net::SocketAddr) -> Option<&Arc<ListenerContext>> {
        self.listener_tls
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, c)| c)
    }

    /// Compiles a validated config; pools reuse backend and health state
    /// that `memory` keeps from earlier generations.
    pub fn build(
        config: Config,
        metrics: &Metrics,
        memory: &UpstreamMemory,
        keys: &Arc<KeyRing>,
    ) -> Result<Self, String> {
        let pools = config
            .upstreams
            .iter()
            .map(|u| UpstreamPool::new(u, metrics, memory).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let matches: Vec<RouteMatch> = config
            .routes
            .iter()
            .map(|r| RouteMatch {
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone(),
                case_insensitive: r.case_insensitive,
                methods: r.methods,
                headers: r.match_headers.clone(),
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| -> Result<Route, String> {
                Ok(Route {
                    name: r.name.clone().into_boxed_str(),
                    destination: match &r.destination {
                        RouteDestination::Pool(i) => Destination::Pool(pools[*i].clone()),
                        RouteDestination::Split { members, sticky } => {
                            let members = members
                                .iter()
                                .map(|(i, w)| (pools[*i].clone(), *w))
                                .collect();
                            match Split::new(members, sticky.clone()) {
                                Some(split) => Destination::Split(split),
                                None => {
                                    return Err(format!(
                                        "route {}: a split without upstreams",
                                        r.name
                                    ))
                                }
                            }
                        }
                        RouteDestination::Redirect(redirect) => {
                            Destination::Redirect(redirect.clone())
                        }
                    },
                    timeouts: r.timeouts,
                    metrics: metrics.route(&r.name),
                    cache: r.cache.clone(),
                    rate_budget: RouteBudget::new(&r.rate_limit),
                    compression: r.compression,
                    max_body_size: r.max_body_size,
                    encoded_slash: r.encoded_slash,
                    rewrite: r.rewrite.clone(),
                    request_headers: r.request_headers.clone(),
                    response_headers: r.response_headers.clone(),
                    addresses: r.addresses.clone(),
                    cors: r.cors.clone(),
                    forward_auth: r.forward_auth.as_ref().map(|f| {
                        Arc::new(crate::auth::forward::ForwardAuth::new(
                            f.clone(),
                            pools[f.upstream].clone(),
                        ))
                    }),
                })
            })
            .collect::<Result<Box<[Route]>, String>>()?;
        let listener_tls = config
            .listeners
            .iter()
            .filter_map(|l| Some((l.addr, l.tls.as_ref()?)))
            .map(|(addr, tls)| {
                crate::certificates::listener::build(tls)
                    .map(|context| (addr, Arc::new(context)))
                    .map_err(|e| format!("listener {addr}: {e}"))
            })
            .collect::<Result<Box<[_]>, String>>()?;
        Ok(Self {
            listener_tls,
            rate_limiter: config
                .rate_limit
                .as_ref()
                .map(|rl| RateLimiter::new(rl, keys)),
            router: Router::new(&matches),
            routes,
            pools: pools.into_boxed_slice(),
            config: Arc::new(config),
            loaded_at: SystemTime::now(),
        })
    }

    /// The JWT key sources this generation reads (none without `auth.jwt`).
    pub fn key_sets(&self) -> Vec<Arc<PublishedKeySet>> {
        self.rate_limiter
            .as_ref()
            .and_then(|l| l.jwt.as_ref())
            .map(|jwt| jwt.key_sets().cloned().collect())
            .unwrap_or_default()
    }

    /// The route with this id.
    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id.0]
    }
}
