//! Validation of routes: name, upstream reference, match conditions,
//! timeouts, and the per-route cache, rate-limit and compression settings;
//! plus the warning for routes an earlier route makes unreachable.

use super::file::RouteSpec;
use super::locate::FieldPath;
use super::model::*;
use super::{name_rule, valid_name, Checker};
use crate::host::HostPattern;
use crate::methods::MethodSet;
use std::collections::HashMap;

impl Checker<'_> {
    pub(super) fn route(
        &mut self,
        spec: &RouteSpec,
        path: &FieldPath,
        upstreams: &HashMap<&str, usize>,
        limits: &RequestLimits,
    ) -> Option<RouteConfig> {
        let before = self.problems.len();
        let encoded_slash = spec.encoded_slash;
        if encoded_slash == Some(crate::hygiene::EncodedSlash::Decode) {
            self.problem(
                path.key("encoded_slash"),
                "a route may say keep or reject; decode is global (hygiene.encoded_slash), as it changes which route a path reaches",
            );
        }
        let max_body_size = match spec.max_body_size {
            Some(size) if size.0 == 0 => {
                self.problem(path.key("max_body_size"), "must be greater than zero");
                limits.max_body_size
            }
            Some(size) => size.0,
            None => limits.max_body_size,
        };
        if !valid_name(&spec.name) {
            self.problem(path.key("name"), name_rule("route", &spec.name));
        }
        let upstream = match upstreams.get(spec.upstream.as_str()) {
            Some(i) => *i,
            None => {
                let mut known: Vec<&str> = upstreams.keys().copied().collect();
                known.sort_unstable();
                self.problem(
                    path.key("upstream"),
                    format!(
                        "unknown upstream {:?} (defined: {})",
                        spec.upstream,
                        known.join(", ")
                    ),
                );
                0
            }
        };
        let m = path.key("match");
        let host = spec
            .matcher
            .host
            .as_deref()
            .and_then(|h| match HostPattern::parse(h) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.problem(m.key("host"), e);
                    None
                }
            });
        let path_prefix = spec
            .matcher
            .path_prefix
            .clone()
            .unwrap_or_else(|| "/".to_owned());
        if !path_prefix.starts_with('/') {
            self.problem(
                m.key("path_prefix"),
                format!("path_prefix {path_prefix:?} must start with /"),
            );
        } else if let Some(c) = path_prefix
            .chars()
            .find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#'))
        {
            // A request path holds only visible ASCII (anything else is
            // percent-encoded) and ends before `?` or `#`: this prefix
            // could never match.
            self.problem(
                m.key("path_prefix"),
                format!(
                    "path_prefix {path_prefix:?} has {c:?}, which a request path never holds: percent-encode it, or end the prefix before the query"
                ),
            );
        } else {
            // Requests are matched after normalisation: a prefix in another
            // spelling would never match anything.
            match crate::hygiene::normalise_path(&path_prefix) {
                Ok(normal) if normal == path_prefix => {}
                Ok(normal) => self.problem(
                    m.key("path_prefix"),
                    format!("path_prefix {path_prefix:?} is not in normal form (requests are matched as {normal:?}): write {normal:?}"),
                ),
                Err(problem) => self.problem(
                    m.key("path_prefix"),
                    format!("path_prefix {path_prefix:?}: {}", problem.message()),
                ),
            }
        }
        let methods = match &spec.matcher.methods {
            None => MethodSet::ANY,
            Some(names) => MethodSet::from_names(names).unwrap_or_else(|e| {
                self.problem(m.key("methods"), e);
                MethodSet::ANY
            }),
        };
        let t = path.key("timeouts");
        let total = spec.timeouts.total.map_or(defaults::TOTAL_TIMEOUT, |d| d.0);
        let connect = spec
            .timeouts
            .connect
            .map_or(defaults::CONNECT_TIMEOUT.min(total), |d| d.0);
        let read = spec.timeouts.read.map_or(total, |d| d.0);
        for (field, value) in [("total", total), ("connect", connect), ("read", read)] {
            if value.is_zero() {
                self.problem(t.key(field), "timeout must be greater than zero");
            }
        }
        for (field, value) in [("connect", connect), ("read", read)] {
            if value > total {
                self.warn(
                    &t.key(field),
                    format!(
                        "{field} timeout ({:?}) is longer than the total timeout ({:?}); the total applies",
                        value, total
                    ),
                );
            }
        }
        let cache = spec
            .cache
            .as_ref()
            .filter(|c| c.enabled.unwrap_or(true))
            .map(|c| self.route_cache(c, &path.key("cache")));
        let rate_limit = self.route_rate_limit(spec.rate_limit.as_ref(), &path.key("rate_limit"));
        let compression = RouteCompression {
            enabled: spec
                .compression
                .as_ref()
                .and_then(|c| c.enabled)
                .unwrap_or(true),
            min_size: spec
                .compression
                .as_ref()
                .and_then(|c| c.min_size)
                .map(|s| s.0),
        };
        (self.problems.len() == before).then(|| RouteConfig {
            name: spec.name.clone(),
            host,
            path_prefix,
            case_insensitive: spec.matcher.case_insensitive,
            max_body_size,
            methods,
            upstream,
            timeouts: RouteTimeouts {
                connect,
                read,
                total,
            },
            cache,
            rate_limit,
            compression,
            encoded_slash,
        })
    }

    /// A route is unreachable when an earlier route has the same host and
    /// prefix and already takes all of its methods.
    pub(super) fn shadowed_routes(&mut self, routes: &[RouteConfig], paths: &[FieldPath]) {
        for (i, later) in routes.iter().enumerate() {
            let shadow = routes[..i].iter().position(|earlier| {
                earlier.host == later.host
                    && earlier.path_prefix == later.path_prefix
                    && earlier.methods.covers(later.methods)
            });
            if let Some(j) = shadow {
                self.warn(
                    &paths[i],
                    format!(
                        "route {:?} is unreachable: route {:?} earlier in the file matches the same host, path prefix and methods",
                        later.name, routes[j].name
                    ),
                );
            }
        }
    }
}
