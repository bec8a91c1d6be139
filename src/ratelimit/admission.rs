//! The rate-limit decision for one request, as the proxy asks for it: who
//! is asking (tenant by API key, or anonymous client IP), which tier that
//! is, whether the tier's budget and the route's own allow one more
//! request, and what the client is told either way (the `RateLimit`
//! headers, and a 401 or 429 when refused). Counted in the metrics here.

use super::identity::{Identity, Refusal};
use super::local::Check;
use super::{count, RateHeaders, RateLimiter, RateStore, RouteBudget};
use crate::config::model::ApiKeyField;
use crate::errors::ErrorResponse;
use crate::metrics::Metrics;
use pingora::http::RequestHeader;
use smallvec::SmallVec;
use std::net::IpAddr;

/// Where in the request path a budget is decided. Every request is decided
/// exactly once: before the cache lookup when cached responses count
/// against budgets (`count_cached_responses: true`, the default), or just
/// before the upstream request otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// In `request_filter`, before the cache is asked.
    BeforeCache,
    /// In `proxy_upstream_filter`, when the cache could not answer.
    BeforeUpstream,
}

impl RateLimiter {
    /// Whether budgets are decided at `stage` under this config.
    pub fn decides_at(&self, stage: Stage) -> bool {
        self.config.count_cached_responses == (stage == Stage::BeforeCache)
    }
}

/// The outcome of [`admit`].
#[derive(Debug, Default)]
pub struct Admission {
    /// The `RateLimit` headers for the response, once a budget was decided.
    pub headers: Option<RateHeaders>,
    /// The 429 to send instead of serving the request.
    pub refusal: Option<ErrorResponse>,
    /// Who decided: `local` buckets, `redis`, or `local_fallback` (Redis
    /// failed); `None` when no budget applied.
    pub decided_by: Option<&'static str>,
    /// The tier whose budget was decided.
    pub tier: Option<String>,
}

/// What a request is decided on, besides the request itself.
pub struct Budget<'a> {
    /// The route's name (route-level buckets are keyed by it).
    pub route: &'a str,
    /// The route's cost and windows.
    pub budget: &'a RouteBudget,
}

/// Who sent `req` (arriving from `peer`), decided once per request and
/// before the cache is asked, whatever stage the budget is counted at: a
/// missing or bad key is a 401 even for a response the cache holds.
pub fn identify(
    limiter: &RateLimiter,
    metrics: &Metrics,
    req: &RequestHeader,
    peer: Option<IpAddr>,
    cert: Option<&crate::certificates::client::ClientCertificate>,
) -> Result<Identity, ErrorResponse> {
    limiter.identify(req, peer, cert).map_err(|refusal| {
        metrics
            .auth_failures
            .with_label_values(&[refusal.reason()])
            .inc();
        let bearer = limiter.config.key_sets.contains(&ApiKeyField::Bearer);
        match refusal {
            Refusal::InvalidKey => ErrorResponse::invalid_api_key(),
            Refusal::KeyRequired => ErrorResponse::api_key_required(bearer),
            Refusal::InvalidToken(failure) => ErrorResponse::invalid_token(failure.description()),
        }
    })
}

/// Decides the tier's and the route's budgets of an identified requester
/// in `store`, and counts the decision.
pub async fn admit(
    limiter: &RateLimiter,
    store: &RateStore,
    metrics: &Metrics,
    route: Budget<'_>,
    who: Identity,
) -> Admission {
    let Some(tier) = limiter.tier_of(&who) else {
        return Admission::default();
    };
    let budget = route.budget;
    let key = limiter.bucket_key(&who);
    let route_key = (!budget.windows.is_empty()).then(|| format!("{key}|r:{}", route.route));
    let mut checks: SmallVec<[Check<'_>; 2]> = SmallVec::new();
    checks.push(Check {
        key: &key,
        windows: &limiter.tiers[tier].windows,
        cost: budget.cost,
    });
    if let Some(route_key) = &route_key {
        checks.push(Check {
            key: route_key,
            windows: &budget.windows,
            cost: budget.cost,
        });
    }
    let (verdicts, fallback) = store.decide(&checks, metrics).await;
    let decided_by = match (&store.redis, fallback) {
        (None, _) => "local",
        (Some(_), false) => "redis",
        (Some(_), true) => "local_fallback",
    };
    let decision = limiter.decision(tier, budget, &verdicts, fallback);
    count(metrics, limiter, &who, &decision);
    let refusal = (!decision.allowed).then(|| {
        ErrorResponse::rate_limited(
            limiter.limited_message(&decision),
            &limiter.tiers[tier].name,
            decision.retry_after,
        )
    });
    Admission {
        headers: Some(decision.headers),
        refusal,
        decided_by: Some(decided_by),
        tier: Some(limiter.tiers[tier].name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::RouteRateLimit;

    fn limiter(count_cached: bool) -> RateLimiter {
        let config = crate::config::parse(
            &format!(
                r#"
listen: ["127.0.0.1:1"]
upstreams: {{ api: {{ backends: ["127.0.0.1:2"] }} }}
tiers: {{ free: {{ per_minute: 2 }} }}
anonymous: {{ tier: free }}
rate_limit: {{ count_cached_responses: {count_cached} }}
routes: [{{ name: all, upstream: api }}]
"#
            ),
            "test.yaml",
        )
        .expect("config");
        RateLimiter::new(
            config.rate_limit.as_ref().expect("rate limit"),
            &Default::default(),
        )
    }

    #[test]
    fn every_request_is_decided_at_exactly_one_stage() {
        for count_cached in [true, false] {
            let l = limiter(count_cached);
            assert_ne!(
                l.decides_at(Stage::BeforeCache),
                l.decides_at(Stage::BeforeUpstream)
            );
            assert_eq!(l.decides_at(Stage::BeforeCache), count_cached);
        }
    }

    #[tokio::test]
    async fn the_third_anonymous_request_in_a_minute_is_refused_with_headers() {
        let l = limiter(true);
        let store = RateStore::new(None).expect("store");
        let metrics = Metrics::new().expect("metrics");
        let budget = RouteBudget::new(&RouteRateLimit {
            exempt: false,
            cost: 1,
            windows: Vec::new(),
        })
        .expect("not exempt");
        let req = RequestHeader::build("GET", b"/", None).expect("req");
        let peer = Some(IpAddr::from([192, 0, 2, 7]));
        let mut last = Admission::default();
        for _ in 0..3 {
            let route = Budget {
                route: "all",
                budget: &budget,
            };
            let who = identify(&l, &metrics, &req, peer, None).expect("anonymous allowed");
            last = admit(&l, &store, &metrics, route, who).await;
        }
        let refusal = last.refusal.expect("third request refused");
        assert_eq!(refusal.status, 429);
        let headers = last.headers.expect("rate headers");
        assert_eq!(headers.x_limit, 2);
        assert_eq!(headers.x_remaining, 0);
        assert!(headers.retry_after >= 1);
    }
}
