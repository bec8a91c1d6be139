//! Who the client is, as this request's answers and templates see it:
//! the connection's peer address, and the values a route's header and
//! redirect templates are filled with. Read by the steps that forward a
//! request and by the answers tollgate writes itself.

use crate::ctx::RequestCtx;
use crate::values::host::Host;
use crate::values::template::Values;
use pingora::proxy::Session;

/// The address of the connection's peer (a trusted proxy's, or the
/// client's own).
pub(super) fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Whether the connection's peer is one of `server.trusted_proxies`
/// (whose forwarding and trace fields are believed).
pub(super) fn peer_trusted(session: &Session, ctx: &RequestCtx) -> bool {
    let trusted = &ctx.gateway.config.server.trusted_proxies;
    client_ip(session).is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip)))
}

/// What a route's header and redirect templates are filled with for this
/// request: the same client address rate limiting and forwarding use, the
/// request id, the tenant, the route, the normalised host.
pub(super) fn template_values<'a>(session: &Session, ctx: &'a RequestCtx) -> Values<'a> {
    let trusted = &ctx.gateway.config.server.trusted_proxies;
    Values {
        client_ip: crate::ratelimit::identity::client_ip(
            session.req_header(),
            client_ip(session),
            trusted,
        ),
        request_id: ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
        tenant: ctx.gateway.rate_limiter.as_ref().and_then(|limiter| {
            ctx.identity
                .as_ref()
                .and_then(|who| who.tenant_name(limiter))
        }),
        route: ctx.route().map(|r| &*r.name),
        host: ctx.host.as_ref().map(Host::as_str),
        ..Values::default()
    }
}
