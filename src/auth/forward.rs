//! Forward auth (nginx `auth_request`, Traefik ForwardAuth, Envoy
//! `ext_authz` over HTTP): before a route proxies, tollgate asks an auth
//! service — a GET to one of its pool's backends, with the request's
//! method, URI, host, scheme, client and the chosen credential fields —
//! and follows its answer: a 2xx admits (naming the tenant and adding
//! fields for the upstream, if it says so), a 3xx or 4xx is returned to
//! the client as the auth service wrote it (body bounded), and a failure
//! (unreachable, too slow, a 5xx, an oversized answer) is a 503 unless
//! the route fails open. Decisions can be remembered for a while, per
//! credential (or per credential and request), by SHA-256 of what they
//! were asked for.

use super::verified::{Expiring, TokenMemory};
use crate::config::model::ForwardAuthConfig;
use crate::upstream::UpstreamPool;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the auth service decided.
#[derive(Debug)]
pub enum Verdict {
    /// 2xx: proxy the request.
    Admit {
        /// The tenant its `tenant_field` named, if any.
        tenant: Option<Box<str>>,
        /// `upstream_fields` present in the answer, for the upstream.
        fields: Vec<(HeaderName, HeaderValue)>,
    },
    /// 3xx or 4xx: this answer goes back to the client.
    Refuse(Refusal),
}

/// An auth service's refusal, as the client receives it.
#[derive(Debug)]
pub struct Refusal {
    /// Its status.
    pub status: u16,
    /// Its end-to-end fields (framing and hop-by-hop fields dropped).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Its body (at most `max_answer_size`).
    pub body: Bytes,
}

/// How a request's question was answered.
pub enum Outcome {
    /// A decision, fresh from the service (`cached` false) or remembered.
    Decided {
        /// The decision.
        verdict: Arc<Verdict>,
        /// Whether it came from the decision cache.
        cached: bool,
    },
    /// The service failed; why.
    Failed(String),
}

/// What the question says about the request besides its fields.
pub struct Asking<'a> {
    /// `X-Forwarded-Host`.
    pub host: Option<&'a str>,
    /// `X-Forwarded-Proto`: https over TLS.
    pub tls: bool,
    /// `X-Forwarded-For`: the client address tollgate trusts.
    pub client: Option<std::net::IpAddr>,
    /// `X-Request-Id`.
    pub request_id: Option<&'a HeaderValue>,
    /// The request's trace context, when tracing is on.
    pub trace: Option<TraceFields>,
}

/// `traceparent` (and the caller's `tracestate`) the auth service is
/// asked with, so its own spans join the request's trace.
pub struct TraceFields {
    /// Names the span the service's work hangs under.
    pub traceparent: HeaderValue,
    /// The caller's vendor state, when its context was continued.
    pub tracestate: Option<HeaderValue>,
}

#[derive(Clone)]
struct Remembered {
    until: u64,
    verdict: Arc<Verdict>,
}

impl Expiring for Remembered {
    fn expires_at(&self) -> u64 {
        self.until
    }
}

/// A route's auth service, compiled for one config generation.
pub struct ForwardAuth {
    config: Arc<ForwardAuthConfig>,
    pool: Arc<UpstreamPool>,
    decisions: TokenMemory<Remembered>,
    connector: Connector,
}

/// Fields of the auth service's answer never handed to a client: framing,
/// hop-by-hop, and what tollgate writes on its own answers.
const NOT_RETURNED: [&str; 12] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "date",
    "server",
    "via",
    "x-request-id",
];

impl ForwardAuth {
    /// The route's auth service, asking backends of `pool`.
    pub fn new(config: Arc<ForwardAuthConfig>, pool: Arc<UpstreamPool>) -> Self {
        let remembered = if config.cache_ttl.is_zero() {
            0
        } else {
            config.cache_size
        };
        Self {
            decisions: TokenMemory::new(remembered),
            config,
            pool,
            connector: Connector::new(None),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &ForwardAuthConfig {
        &self.config
    }

    /// Asks about `req` (or finds the remembered decision); the time the
    /// service took, when it was asked.
    pub async fn ask(
        &self,
        req: &RequestHeader,
        asking: &Asking<'_>,
    ) -> (Outcome, Option<Duration>) {
        let key = (!self.config.cache_ttl.is_zero()).then(|| self.cache_key(req));
        let now = unix_now();
        if let Some(remembered) = key.as_ref().and_then(|k| self.decisions.get(k, now)) {
            let outcome = Outcome::Decided {
                verdict: remembered.verdict,
                cached: true,
            };
            return (outcome, None);
        }
        let began = Instant::now();
        let asked = tokio::time::timeout(self.config.timeout, self.question(req, asking)).await;
        let took = Some(began.elapsed());
        let answer = match asked {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return (Outcome::Failed(e), took),
            Err(_) => {
                let why = format!("no answer within {:?}", self.config.timeout);
                return (Outcome::Failed(why), took);
            }
        };
        let verdict = match self.verdict(answer) {
            Ok(v) => Arc::new(v),
            Err(e) => return (Outcome::Failed(e), took),
        };
        if let Some(key) = key {
            let remembered = Remembered {
                until: now + self.config.cache_ttl.as_secs().max(1),
                verdict: verdict.clone(),
            };
            self.decisions.insert(key, remembered);
        }
        let outcome = Outcome::Decided {
            verdict,
            cached: false,
        };
        (outcome, took)
    }

    /// SHA-256 of what the decision depends on: the route's credential
    /// fields (each name with its values, in config order, absent ones
    /// marked), and for a per-request cache the method, host and URI.
    fn cache_key(&self, req: &RequestHeader) -> [u8; 32] {
        let mut hash = Sha256::new();
        for name in &self.config.request_fields {
            hash.update(name.as_str().as_bytes());
            for value in req.headers.get_all(name) {
                hash.update([0u8]);
                hash.update(value.as_bytes());
            }
            hash.update([0xffu8]);
        }
        if self.config.cache_per_request {
            hash.update(req.method.as_str().as_bytes());
            hash.update([0u8]);
            let host = req.headers.get(http::header::HOST);
            hash.update(host.map_or(&b""[..], HeaderValue::as_bytes));
            hash.update([0u8]);
            hash.update(req.uri.to_string().as_bytes());
        }
        hash.finalize().into()
    }

    /// One GET to a backend of the pool (least connections, healthy ones).
    async fn question(
        &self,
        req: &RequestHeader,
        asking: &Asking<'_>,
    ) -> Result<crate::http_client::Answer, String> {
        let slot = self
            .pool
            .select(None)
            .ok_or_else(|| format!("upstream {}: no backend may take traffic", self.pool.name()))?;
        let _lease = slot.lease();
        let peer = self.pool.peer(&slot);
        let head = self
            .head(req, asking)
            .map_err(|e| format!("auth request: {e}"))?;
        crate::http_client::exchange(
            &self.connector,
            &peer,
            head,
            None,
            self.config.max_answer_size,
        )
        .await
    }

    fn head(&self, req: &RequestHeader, asking: &Asking<'_>) -> pingora::Result<RequestHeader> {
        let mut head = RequestHeader::build("GET", self.config.path.as_bytes(), None)?;
        let authority = self
            .pool
            .host_header()
            .cloned()
            .or_else(|| asking.host.and_then(|h| HeaderValue::from_str(h).ok()))
            .unwrap_or_else(|| HeaderValue::from_static("localhost"));
        head.insert_header(http::header::HOST, authority)?;
        head.insert_header("X-Forwarded-Method", req.method.as_str())?;
        let uri = req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.path().to_owned(), |pq| pq.as_str().to_owned());
        head.insert_header("X-Forwarded-Uri", uri)?;
        if let Some(host) = asking.host {
            head.insert_header("X-Forwarded-Host", host)?;
        }
        head.insert_header(
            "X-Forwarded-Proto",
            if asking.tls { "https" } else { "http" },
        )?;
        if let Some(ip) = asking.client {
            head.insert_header("X-Forwarded-For", ip.to_string())?;
        }
        if let Some(id) = asking.request_id {
            head.insert_header(crate::headers::X_REQUEST_ID, id.clone())?;
        }
        for name in &self.config.request_fields {
            for value in req.headers.get_all(name) {
                head.append_header(name.clone(), value.clone())?;
            }
        }
        // Last: tollgate's trace context replaces a client's, as towards
        // the upstream.
        if let Some(trace) = &asking.trace {
            head.insert_header("traceparent", trace.traceparent.clone())?;
            match &trace.tracestate {
                Some(state) => head.insert_header("tracestate", state.clone())?,
                None => {
                    head.remove_header("tracestate");
                }
            }
        }
        Ok(head)
    }

    /// What an answer means; `Err` for a failure (5xx, 1xx).
    fn verdict(&self, answer: crate::http_client::Answer) -> Result<Verdict, String> {
        match answer.status {
            200..=299 => {
                let tenant = match &self.config.tenant_field {
                    None => None,
                    Some(field) => match answer.headers.get(field).map(HeaderValue::to_str) {
                        None => None,
                        Some(Ok(name)) if !name.trim().is_empty() => Some(name.trim().into()),
                        Some(_) => {
                            return Err(format!("answered an unreadable {field} field"));
                        }
                    },
                };
                let fields = self
                    .config
                    .upstream_fields
                    .iter()
                    .flat_map(|name| {
                        answer
                            .headers
                            .get_all(name)
                            .iter()
                            .map(move |v| (name.clone(), v.clone()))
                    })
                    .collect();
                Ok(Verdict::Admit { tenant, fields })
            }
            300..=499 => {
                let headers = answer
                    .headers
                    .iter()
                    .filter(|(name, _)| !NOT_RETURNED.contains(&name.as_str()))
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect();
                Ok(Verdict::Refuse(Refusal {
                    status: answer.status,
                    headers,
                    body: Bytes::from(answer.body),
                }))
            }
            status => Err(format!("answered {status}")),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
