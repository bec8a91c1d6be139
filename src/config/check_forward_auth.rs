//! Validation of a route's `forward_auth`: the auth service's pool, the
//! path asked, which fields go to it and which of its answer's fields go
//! on to the upstream, and the decision cache's bounds.

use super::check_route::{FieldFates, FRAMING_FIELDS};
use super::file::{ForwardAuthCacheKeySpec, ForwardAuthSpec};
use super::locate::FieldPath;
use super::model::ForwardAuthConfig;
use super::Checker;
use crate::values::fields::FORWARDING_FIELDS;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_MAX_ANSWER: u64 = 64 * 1024;
/// Largest refusal body tollgate holds for a client.
const MAX_ANSWER_LIMIT: u64 = 1024 * 1024;
const DEFAULT_CACHE_SIZE: usize = 10_000;

impl Checker<'_> {
    /// `routes[].forward_auth`, checked against the pools and the fields
    /// tollgate writes itself.
    pub(super) fn forward_auth(
        &mut self,
        spec: &ForwardAuthSpec,
        path: &FieldPath,
        upstreams: &HashMap<&str, usize>,
        fates: &FieldFates<'_>,
    ) -> Option<Arc<ForwardAuthConfig>> {
        let before = self.problems.len();
        let upstream = match upstreams.get(spec.upstream.as_str()) {
            Some(&i) => i,
            None => {
                self.problem(
                    path.key("upstream"),
                    format!("unknown upstream {:?}", spec.upstream),
                );
                0
            }
        };
        let asked = spec.path.clone().unwrap_or_else(|| "/".to_owned());
        let target_ok = asked.starts_with('/')
            && http::uri::PathAndQuery::try_from(asked.as_str()).is_ok()
            && !asked.contains('#');
        if !target_ok {
            self.problem(
                path.key("path"),
                format!("{asked:?} is not a path (and query) starting with /"),
            );
        }
        let defaults = ["authorization", "cookie"].map(str::to_owned);
        let request_fields = self.auth_fields(
            spec.request_fields.as_deref().unwrap_or(&defaults),
            &path.key("request_fields"),
            |name| {
                (FRAMING_FIELDS.contains(&name) || name.starts_with("x-forwarded-")).then_some(
                    "tollgate writes the framing and X-Forwarded- fields of the auth request",
                )
            },
        );
        let upstream_fields = self.auth_fields(
            &spec.upstream_fields,
            &path.key("upstream_fields"),
            |name| {
                (FRAMING_FIELDS.contains(&name)
                    || FORWARDING_FIELDS.contains(&name)
                    || fates.identity.iter().any(|f| f.as_str() == name))
                .then_some(
                    "it carries the request's framing, forwarding or identity: tollgate writes it",
                )
            },
        );
        let tenant_field = spec.tenant_field.as_ref().and_then(|name| {
            self.auth_fields(
                std::slice::from_ref(name),
                &path.key("tenant_field"),
                |_| None,
            )
            .pop()
        });
        let max_answer_size = spec.max_answer_size.map_or(DEFAULT_MAX_ANSWER, |s| s.0);
        if max_answer_size == 0 || max_answer_size > MAX_ANSWER_LIMIT {
            self.problem(
                path.key("max_answer_size"),
                format!("between 1 byte and {}KiB", MAX_ANSWER_LIMIT / 1024),
            );
        }
        let timeout = spec.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
        if timeout.is_zero() {
            self.problem(path.key("timeout"), "a zero timeout never admits anyone");
        }
        let cache_ttl = spec.cache_ttl.map_or(Duration::ZERO, |t| t.0);
        if !cache_ttl.is_zero() && request_fields.is_empty() {
            self.problem(
                path.key("cache_ttl"),
                "decisions are remembered per credential: list the fields that carry it in request_fields",
            );
        }
        let cache_size = spec.cache_size.unwrap_or(DEFAULT_CACHE_SIZE);
        if cache_size == 0 && !cache_ttl.is_zero() {
            self.problem(
                path.key("cache_size"),
                "cache_ttl remembers decisions: give them room, or drop cache_ttl",
            );
        }
        (self.problems.len() == before).then(|| {
            Arc::new(ForwardAuthConfig {
                upstream,
                path: asked,
                request_fields,
                upstream_fields,
                tenant_field,
                timeout,
                max_answer_size: max_answer_size as usize,
                cache_ttl,
                cache_per_request: spec.cache_key == ForwardAuthCacheKeySpec::Request,
                cache_size,
                fail_open: spec.fail_open,
            })
        })
    }

    /// Field names, lowercase and valid, each one refused where `reserved`
    /// says why.
    fn auth_fields(
        &mut self,
        names: &[String],
        path: &FieldPath,
        reserved: impl Fn(&str) -> Option<&'static str>,
    ) -> Vec<http::HeaderName> {
        let mut out = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let Ok(field) = http::HeaderName::from_bytes(name.as_bytes()) else {
                self.problem(
                    path.index(i),
                    format!("{name:?} is not a valid header name"),
                );
                continue;
            };
            if let Some(why) = reserved(field.as_str()) {
                self.problem(path.index(i), format!("{name:?}: {why}"));
                continue;
            }
            out.push(field);
        }
        out
    }
}
