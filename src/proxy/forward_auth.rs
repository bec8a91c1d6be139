//! The `forward_auth` step: a route's auth service decides before
//! identity, budgets and the cache (`auth::forward` asks it and keeps its
//! decisions). An admitting answer may name the tenant, whose tier then
//! applies, and may give fields for the upstream; a refusal goes back to
//! the client as the service wrote it; a failure is a 503, or, where the
//! route fails open, lets the request go on as if no service were asked.

use super::client::client_ip;
use super::{respond, traced, Proxy};
use crate::auth::forward::{Asking, Outcome, Verdict};
use crate::ctx::RequestCtx;
use crate::errors::ErrorResponse;
use crate::ratelimit::identity::Identity;
use crate::values::host::Host;
use pingora::proxy::Session;
use pingora::Result;

impl Proxy {
    /// Asks the route's auth service, if it has one; true when the
    /// request was answered (refused, or the service failed).
    pub(super) async fn ask_auth_service(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let Some(route) = ctx.route() else {
            return Ok(false);
        };
        let Some(auth) = route.forward_auth.clone() else {
            return Ok(false);
        };
        let name = route.name.clone();
        let trusted = &ctx.gateway.config.server.trusted_proxies;
        let client = crate::ratelimit::identity::client_ip(
            session.req_header(),
            client_ip(session),
            trusted,
        );
        let (span, trace) = traced::forward_auth_context(ctx);
        let asking = Asking {
            host: ctx.host.as_ref().map(Host::as_str),
            tls: ctx.tls,
            client,
            request_id: ctx.request_id.as_ref(),
            trace,
        };
        let began = traced::clock(ctx);
        let (outcome, took) = auth.ask(session.req_header(), &asking).await;
        let metrics = &self.state.metrics;
        if let Some(took) = took {
            metrics
                .forward_auth_duration
                .with_label_values(&[&*name])
                .observe(took.as_secs_f64());
        }
        let count = |ctx: &mut RequestCtx, decision: &'static str, cached: bool| {
            let source = if cached { "cache" } else { "service" };
            metrics
                .forward_auth_decisions
                .with_label_values(&[&*name, decision, source])
                .inc();
            traced::forward_auth(ctx, began, span, decision, cached);
        };
        match outcome {
            Outcome::Decided { verdict, cached } => match &*verdict {
                Verdict::Admit { tenant, fields } => {
                    if let Some(tenant) = tenant {
                        let limiter = ctx.gateway.rate_limiter.as_ref();
                        match limiter.and_then(|l| l.tenant_named(tenant)) {
                            Some(i) => ctx.identity = Some(Identity::AuthService(i)),
                            None => {
                                count(ctx, "unknown_tenant", cached);
                                log::warn!(
                                    "route {name}: the auth service admitted a request for tenant {tenant:?}, which is not under tenants"
                                );
                                let refusal = ErrorResponse::unknown_tenant();
                                return respond::error(session, ctx, &refusal).await.map(|()| true);
                            }
                        }
                    }
                    count(ctx, "admitted", cached);
                    // Admitted for someone: stored for everyone only when
                    // the response says so, as with `Authorization`.
                    ctx.credentialed = true;
                    ctx.auth_admitted = true;
                    ctx.auth_fields.clone_from(fields);
                    Ok(false)
                }
                Verdict::Refuse(refusal) => {
                    count(ctx, "refused", cached);
                    respond::auth_refusal(session, ctx, refusal)
                        .await
                        .map(|()| true)
                }
            },
            Outcome::Failed(why) if auth.config().fail_open => {
                count(ctx, "failed_open", false);
                log::warn!("route {name}: auth service failed ({why}); failing open");
                ctx.credentialed = true;
                ctx.auth_admitted = true;
                Ok(false)
            }
            Outcome::Failed(why) => {
                count(ctx, "failed", false);
                log::warn!("route {name}: auth service failed: {why}");
                respond::error(session, ctx, &ErrorResponse::auth_unavailable())
                    .await
                    .map(|()| true)
            }
        }
    }
}
