//! One reading of the request. Right after routing and identity, the
//! client's request is rewritten, once and in place, into the request the
//! upstream will receive: the forwarding fields tollgate vouches for, the
//! request id, `Via`, the tenant field, the API key kept at the edge, the
//! override family dropped. Everything after that — the cache key's
//! `key.headers`, a stored response's `Vary` (RFC 9111 §4.1 compares "the
//! request that caused the response to be stored"), the access log, and
//! Pingora's upstream request, which is a copy of this one — reads the
//! same fields. An upstream that answers `Vary: X-Tenant` therefore gets
//! one stored copy per tenant, and never a client's own `X-Tenant`.
//!
//! Pingora facts this relies on:
//! - the upstream request is a clone of `session.req_header()` taken after
//!   `request_filter` (pingora-proxy `proxy_h1.rs`), so a field set here
//!   reaches the upstream without a second pass;
//! - a background subrequest (stale-while-revalidate) is rebuilt from the
//!   bytes the HTTP/1 client sent (`HttpSession::to_h1_raw`, pingora-core
//!   `protocols/http/server.rs`), not from this rewritten header: it goes
//!   through the same rewrite again and ends with the same fields, because
//!   every input (the bytes, the peer, the config) is the same.
//!   `tests/seams.rs` pins both.

use crate::headers::{self, Forwarding};
use crate::ratelimit::identity::Identity;
use crate::ratelimit::RateLimiter;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use std::net::IpAddr;

/// What the rewrite needs to know besides the request.
pub struct Edge<'a> {
    /// The request id (the client's, if sane, or a fresh one).
    pub request_id: &'a http::HeaderValue,
    /// The normalised host (routed and keyed).
    pub host: Option<&'a str>,
    /// The connection's peer.
    pub peer_ip: Option<IpAddr>,
    /// Whether the peer is a trusted proxy (its forwarding fields stand).
    pub peer_trusted: bool,
    /// Whether the client connected over TLS.
    pub tls: bool,
    /// Override/rewrite fields to keep (`server.keep_override_headers`).
    pub keep_overrides: &'a [HeaderName],
    /// The rate limiter, which says what the upstream learns of the tenant.
    pub limiter: Option<&'a RateLimiter>,
    /// The requester identified, if any.
    pub who: Option<&'a Identity>,
    /// `auth.client_certificate_header` and, over mutual TLS, the
    /// verified certificate's description to put in it.
    pub certificate: Option<(&'a HeaderName, Option<HeaderValue>)>,
}

/// Rewrites `req` into the request the upstream receives. Called once per
/// request, after identity and before the cache key is built.
pub fn rewrite(req: &mut RequestHeader, edge: &Edge<'_>) -> pingora::Result<()> {
    headers::forward(
        req,
        &Forwarding {
            request_id: edge.request_id,
            host: edge.host,
            peer_ip: edge.peer_ip,
            peer_trusted: edge.peer_trusted,
            tls: edge.tls,
            keep_overrides: edge.keep_overrides,
        },
    )?;
    if let Some((field, value)) = &edge.certificate {
        // Only tollgate writes it: a client's copy never reaches the upstream.
        req.remove_header(*field);
        if let Some(value) = value {
            req.insert_header((*field).clone(), value.clone())?;
        }
    }
    match edge.limiter {
        Some(limiter) => limiter.forward_identity(req, edge.who),
        None => {
            req.remove_header(&crate::values::fields::DEFAULT_TENANT_HEADER);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_tenant_field_is_removed_without_rate_limiting() {
        let mut req = RequestHeader::build("GET", b"/x", None).expect("req");
        req.insert_header("host", "api.test").expect("host");
        req.insert_header("x-tenant", "acme").expect("tenant");
        req.insert_header("x-client-cert", "Hash=forged")
            .expect("forged");
        let id = http::HeaderValue::from_static("rid");
        let cert_field = HeaderName::from_static("x-client-cert");
        let edge = Edge {
            request_id: &id,
            host: Some("api.test"),
            peer_ip: Some(IpAddr::from([192, 0, 2, 1])),
            peer_trusted: false,
            tls: false,
            keep_overrides: &[],
            limiter: None,
            who: None,
            certificate: Some((&cert_field, None)),
        };
        rewrite(&mut req, &edge).expect("rewrite");
        assert!(req.headers.get("x-tenant").is_none());
        assert!(
            req.headers.get("x-client-cert").is_none(),
            "a client's copy is removed"
        );
        assert_eq!(req.headers["x-forwarded-for"], "192.0.2.1");
        assert_eq!(req.headers["x-request-id"], "rid");
    }
}
