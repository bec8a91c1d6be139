//! Validation of routes: name, upstream reference, match conditions,
//! timeouts, and the per-route cache, rate-limit and compression settings;
//! plus the warning for routes an earlier route makes unreachable.

use super::file::RouteSpec;
use super::locate::FieldPath;
use super::model::*;
use super::{name_rule, valid_name, Checker};
use crate::values::cors;
use crate::values::header_policy::HeaderPolicy;
use crate::values::host::HostPattern;
use crate::values::methods::MethodSet;
use crate::values::template::{Template, Values, HEADER_PLACEHOLDERS};
use std::collections::HashMap;

/// Request fields tollgate writes itself for the upstream (the tenant
/// field is checked where it is known, with the rate-limit settings).
const WRITTEN_FIELDS: [&str; 6] = [
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "via",
];

/// Fields a route's `headers` may not touch: framing, hop-by-hop, `Host`.
pub(super) const FRAMING_FIELDS: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "expect",
];

/// What tollgate does to request fields before they reach the upstream,
/// as far as the config decides it: what a route may read to choose
/// itself (`match.headers`) or a pool (`sticky.header`).
pub(super) struct FieldFates<'a> {
    /// Fields tollgate writes from the verified identity (the tenant
    /// field, a JWT's `forward_claims`); a client's copy is removed.
    pub identity: Vec<http::HeaderName>,
    /// `server.keep_override_headers`: override fields that are kept.
    pub keep_overrides: &'a [http::HeaderName],
    /// `hygiene.underscore_headers`.
    pub underscores: crate::values::hygiene::UnderscoreHeaders,
}

impl FieldFates<'_> {
    /// Why `name` never reaches the upstream as the client sent it, if it
    /// does not. `sticky.header` reads the request as forwarded, so only
    /// fields that never reach the upstream at all matter there.
    fn rewritten(&self, name: &http::HeaderName, as_forwarded: bool) -> Option<String> {
        let n = name.as_str();
        let framing = FRAMING_FIELDS.contains(&n) && n != "upgrade";
        if n == "host" && !as_forwarded {
            return Some(
                "route on the host with match.host: it is normalised once, as the cache keys it"
                    .to_owned(),
            );
        }
        if framing && n != "host" {
            return Some(format!(
                "{n:?} is framing or hop-by-hop: it does not reach the upstream as sent"
            ));
        }
        if crate::values::hygiene::has_underscore(name)
            && self.underscores != crate::values::hygiene::UnderscoreHeaders::Allow
        {
            return Some(format!("{n:?} has an underscore, and hygiene.underscore_headers drops or refuses such fields"));
        }
        if crate::values::fields::OVERRIDE_HEADERS.contains(&n)
            && !self.keep_overrides.contains(name)
        {
            return Some(format!(
                "{n:?} is an override field tollgate drops (server.keep_override_headers keeps it)"
            ));
        }
        if as_forwarded {
            return None;
        }
        if self.identity.contains(name) {
            return Some(format!("{n:?} is written by tollgate from the verified identity and a client's copy is removed: routing on the copy would let any client choose this route"));
        }
        if crate::values::fields::FORWARDING_FIELDS.contains(&n) || WRITTEN_FIELDS.contains(&n) {
            return Some(format!("{n:?} is a field tollgate writes itself (forwarding, request id): a client outside server.trusted_proxies could choose this route with its own copy"));
        }
        None
    }
}

impl Checker<'_> {
    pub(super) fn route(
        &mut self,
        spec: &RouteSpec,
        path: &FieldPath,
        upstreams: &HashMap<&str, usize>,
        limits: &RequestLimits,
        fates: &FieldFates<'_>,
    ) -> Option<RouteConfig> {
        let before = self.problems.len();
        let encoded_slash = spec.encoded_slash;
        if encoded_slash == Some(crate::values::hygiene::EncodedSlash::Decode) {
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
        let target = self.destination(spec, path, upstreams, fates);
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
            match crate::values::hygiene::normalise_path(&path_prefix) {
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
        let mut match_headers = Vec::new();
        for (name, value) in &spec.matcher.headers {
            let at = m.key("headers").key(name);
            match (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(value)) => {
                    if let Some(why) = fates.rewritten(&name, false) {
                        self.problem(at, why);
                    }
                    match_headers.push((name, value))
                }
                (Err(_), _) => self.problem(at, format!("{name:?} is not a valid header name")),
                (_, Err(_)) => self.problem(at, format!("{value:?} is not a valid header value")),
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
        let idle = spec.timeouts.idle.map_or(defaults::IDLE_TIMEOUT, |d| d.0);
        for (field, value) in [
            ("total", total),
            ("connect", connect),
            ("read", read),
            ("idle", idle),
        ] {
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
        let rewrite = match &spec.rewrite {
            None => None,
            Some(r) => {
                match crate::values::rewrite::Rewrite::new(
                    &path_prefix,
                    r.strip_prefix,
                    r.replace_prefix.as_deref(),
                ) {
                    Ok(rewrite) => rewrite,
                    Err(problem) => {
                        self.problem(path.key("rewrite"), problem);
                        None
                    }
                }
            }
        };
        let headers = path.key("headers");
        let request_headers =
            self.header_changes(&spec.headers.request, &headers.key("request"), true);
        let response_headers =
            self.header_changes(&spec.headers.response, &headers.key("response"), false);
        let addresses = self.addresses(spec.addresses.as_ref(), &path.key("addresses"));
        let cors = spec
            .cors
            .as_ref()
            .and_then(|c| self.cors(c, &path.key("cors")));
        let forward_auth = spec
            .forward_auth
            .as_ref()
            .and_then(|f| self.forward_auth(f, &path.key("forward_auth"), upstreams, fates));
        (self.problems.len() == before).then(|| RouteConfig {
            name: spec.name.clone(),
            host,
            path_prefix,
            case_insensitive: spec.matcher.case_insensitive,
            match_headers,
            max_body_size,
            methods,
            destination: target,
            timeouts: RouteTimeouts {
                connect,
                read,
                total,
                idle,
            },
            cache,
            rate_limit,
            compression,
            encoded_slash,
            rewrite,
            request_headers,
            response_headers,
            addresses,
            cors,
            forward_auth,
        })
    }

    /// A route's `cors` block, compiled; each bad entry a problem at its line.
    fn cors(
        &mut self,
        spec: &crate::config::file::CorsSpec,
        path: &FieldPath,
    ) -> Option<std::sync::Arc<cors::CorsPolicy>> {
        let before = self.problems.len();
        if spec.allow_origins.is_empty() {
            self.problem(
                path.key("allow_origins"),
                "list at least one origin (or \"*\")",
            );
        }
        let mut origins = Vec::new();
        for (i, entry) in spec.allow_origins.iter().enumerate() {
            match cors::parse_origin(entry) {
                Ok(origin) => origins.push(origin),
                Err(problem) => self.problem(path.key("allow_origins").index(i), problem.0),
            }
        }
        if spec.allow_credentials && origins.contains(&cors::OriginEntry::Any) {
            self.problem(
                path.key("allow_credentials"),
                "with \"*\" in allow_origins any site could read credentialed answers: list the origins",
            );
        }
        let method_names = spec
            .allow_methods
            .clone()
            .unwrap_or_else(|| vec!["GET".into(), "HEAD".into(), "POST".into()]);
        let mut methods = Vec::new();
        for (i, name) in method_names.iter().enumerate() {
            match http::Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
                Ok(m) if !methods.contains(&m) => methods.push(m),
                Ok(_) => {}
                Err(_) => self.problem(
                    path.key("allow_methods").index(i),
                    format!("{name:?} is not a method"),
                ),
            }
        }
        let names = |list: &[String], field: &str, this: &mut Self| -> Vec<http::HeaderName> {
            let mut out = Vec::new();
            for (i, name) in list.iter().enumerate() {
                match http::HeaderName::from_bytes(name.as_bytes()) {
                    Ok(n) => out.push(n),
                    Err(_) => this.problem(
                        path.key(field).index(i),
                        format!("{name:?} is not a field name"),
                    ),
                }
            }
            out
        };
        let request_headers = spec
            .allow_headers
            .as_ref()
            .map(|list| names(list, "allow_headers", self));
        let expose = names(&spec.expose_headers, "expose_headers", self);
        let join = |parts: Vec<&str>| http::HeaderValue::from_str(&parts.join(", ")).ok();
        let methods_field = join(methods.iter().map(http::Method::as_str).collect());
        let expose_field = (!expose.is_empty())
            .then(|| join(expose.iter().map(http::HeaderName::as_str).collect()))
            .flatten();
        if self.problems.len() != before {
            return None;
        }
        Some(std::sync::Arc::new(cors::CorsPolicy {
            origins: cors::Origins::of(origins),
            methods,
            methods_field: methods_field?,
            request_headers,
            expose_field,
            credentials: spec.allow_credentials,
            max_age: spec.max_age.map(|d| d.0.as_secs()),
        }))
    }

    /// `upstream`, `upstreams` (+ `sticky`) or `redirect`: exactly one.
    fn destination(
        &mut self,
        spec: &RouteSpec,
        path: &FieldPath,
        upstreams: &HashMap<&str, usize>,
        fates: &FieldFates<'_>,
    ) -> RouteDestination {
        let pool = |this: &mut Self, name: &str, at: FieldPath| match upstreams.get(name) {
            Some(i) => *i,
            None => {
                let mut known: Vec<&str> = upstreams.keys().copied().collect();
                known.sort_unstable();
                this.problem(
                    at,
                    format!("unknown upstream {name:?} (defined: {})", known.join(", ")),
                );
                0
            }
        };
        if spec.sticky.is_some() && spec.upstreams.is_none() {
            self.problem(
                path.key("sticky"),
                "sticky keeps a client on one pool of a split: it needs upstreams",
            );
        }
        match (&spec.upstream, &spec.upstreams, &spec.redirect) {
            (Some(name), None, None) => {
                RouteDestination::Pool(pool(self, name, path.key("upstream")))
            }
            (None, Some(members), None) => {
                let at = path.key("upstreams");
                if members.is_empty() {
                    self.problem(at.clone(), "list at least one upstream");
                }
                let mut split = Vec::with_capacity(members.len());
                for (i, m) in members.iter().enumerate() {
                    let index = pool(self, &m.name, at.index(i).key("name"));
                    if m.weight == 0 {
                        self.problem(
                            at.index(i).key("weight"),
                            "a weight must be at least 1 (leave the upstream out to send it nothing)",
                        );
                    }
                    if split.iter().any(|(j, _)| *j == index)
                        && upstreams.contains_key(m.name.as_str())
                    {
                        self.problem(
                            at.index(i).key("name"),
                            format!("{:?} is listed twice", m.name),
                        );
                    }
                    split.push((index, m.weight));
                }
                let sticky = spec.sticky.as_ref().and_then(|s| {
                    let at = path.key("sticky");
                    match (&s.cookie, &s.header) {
                        (Some(name), None) => {
                            let valid = !name.is_empty()
                                && name
                                    .bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                            if !valid {
                                self.problem(
                                    at.key("cookie"),
                                    format!(
                                        "{name:?}: a cookie name is letters, digits, '-', '_', '.'"
                                    ),
                                );
                            }
                            Some(Sticky::Cookie(name.clone()))
                        }
                        (None, Some(field)) => match http::HeaderName::from_bytes(field.as_bytes())
                        {
                            Ok(name) => {
                                if let Some(why) = fates.rewritten(&name, true) {
                                    self.problem(at.key("header"), why);
                                }
                                Some(Sticky::Header(name))
                            }
                            Err(_) => {
                                self.problem(
                                    at.key("header"),
                                    format!("{field:?} is not a valid header name"),
                                );
                                None
                            }
                        },
                        _ => {
                            self.problem(at, "set exactly one of cookie or header");
                            None
                        }
                    }
                });
                RouteDestination::Split {
                    members: split,
                    sticky,
                }
            }
            (None, None, Some(redirect)) => {
                let at = path.key("redirect");
                for (set, field) in [
                    (spec.rewrite.is_some(), "rewrite"),
                    (spec.cache.is_some(), "cache"),
                ] {
                    if set {
                        self.problem(
                            path.key(field),
                            format!("a redirect route has no upstream: {field} would never apply (redirect.max_age lets clients keep the redirect)"),
                        );
                    }
                }
                let status = redirect.status.unwrap_or(308);
                if ![301, 302, 303, 307, 308].contains(&status) {
                    self.problem(
                        at.key("status"),
                        format!("{status} is not a redirect status (301, 302, 303, 307, 308)"),
                    );
                }
                let to = match crate::values::template::Template::parse(
                    &redirect.to,
                    crate::values::template::REDIRECT_PLACEHOLDERS,
                ) {
                    Ok(t) => t,
                    Err(problem) => {
                        self.problem(at.key("to"), problem);
                        crate::values::template::Template::text("/")
                    }
                };
                let sample = crate::values::template::Values {
                    uri: Some("/a?b=c"),
                    path: Some("/a"),
                    host: Some("h"),
                    ..crate::values::template::Values::default()
                };
                if to
                    .render(&sample)
                    .is_none_or(|v| http::HeaderValue::from_str(&v).is_err())
                {
                    self.problem(
                        at.key("to"),
                        format!("{:?} is not a valid Location value", redirect.to),
                    );
                }
                RouteDestination::Redirect(RedirectConfig {
                    to,
                    status,
                    max_age: redirect.max_age.map(|d| d.0),
                })
            }
            _ => {
                self.problem(
                    path.clone(),
                    "set exactly one of upstream, upstreams (a weighted split) or redirect",
                );
                RouteDestination::Pool(0)
            }
        }
    }

    /// One direction of `routes[].headers`: names a route may change (not
    /// framing, hop-by-hop or `Host`; on requests not the forwarding
    /// fields tollgate writes itself) and values whose placeholders exist.
    fn header_changes(
        &mut self,
        spec: &super::file::HeaderChangesSpec,
        at: &FieldPath,
        request: bool,
    ) -> HeaderPolicy {
        let mut policy = HeaderPolicy::default();
        let name_of = |this: &mut Self, name: &str, at: FieldPath| {
            let parsed = http::HeaderName::from_bytes(name.as_bytes());
            let Ok(parsed) = parsed else {
                this.problem(at, format!("{name:?} is not a valid header name"));
                return None;
            };
            if FRAMING_FIELDS.contains(&parsed.as_str()) {
                this.problem(
                    at,
                    format!("{name:?} is framing, hop-by-hop or Host: it has its own settings, not headers"),
                );
                return None;
            }
            if request && WRITTEN_FIELDS.contains(&parsed.as_str()) {
                this.problem(
                    at,
                    format!("{name:?} is a forwarding field tollgate writes itself (server.trusted_proxies decides whose stand)"),
                );
                return None;
            }
            Some(parsed)
        };
        for (kind, entries) in [("set", &spec.set), ("add", &spec.add)] {
            for (name, value) in entries {
                let field = at.key(kind).key(name);
                let Some(header) = name_of(self, name, field.clone()) else {
                    continue;
                };
                let template = match Template::parse(value, HEADER_PLACEHOLDERS) {
                    Ok(t) => t,
                    Err(problem) => {
                        self.problem(field, problem);
                        continue;
                    }
                };
                let sample = Values {
                    client_ip: Some(std::net::IpAddr::from([192, 0, 2, 1])),
                    request_id: Some("0"),
                    tenant: Some("t"),
                    route: Some("r"),
                    host: Some("h"),
                    ..Values::default()
                };
                let valid = template
                    .render(&sample)
                    .is_some_and(|v| http::HeaderValue::from_str(&v).is_ok());
                if !valid {
                    self.problem(field, format!("{value:?} is not a valid header value"));
                    continue;
                }
                let list = if kind == "set" {
                    &mut policy.set
                } else {
                    &mut policy.add
                };
                list.push((header, template));
            }
        }
        for (i, name) in spec.remove.iter().enumerate() {
            if let Some(header) = name_of(self, name, at.key("remove").index(i)) {
                policy.remove.push(header);
            }
        }
        policy
    }

    /// A route is unreachable when a route ranked before it (header
    /// conditions first, then file order) has the same host and prefix,
    /// takes all of its methods, and asks for no field it does not ask for.
    /// Routes are grouped by host and prefix first, so 100,000 routes are
    /// checked in linear time.
    pub(super) fn shadowed_routes(&mut self, routes: &[RouteConfig], paths: &[FieldPath]) {
        let mut groups: HashMap<(Option<&HostPattern>, &str, bool), Vec<usize>> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            groups
                .entry((r.host.as_ref(), r.path_prefix.as_str(), r.case_insensitive))
                .or_default()
                .push(i);
        }
        let rank = |i: usize| (routes[i].match_headers.is_empty(), i);
        // A route's conditions as a set, in one order (a route can only be
        // shadowed by one whose conditions are a subset of its own).
        let conditions = |i: usize| {
            let mut set: Vec<(&str, &[u8])> = routes[i]
                .match_headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes()))
                .collect();
            set.sort_unstable();
            set.dedup();
            set
        };
        let mut shadowed = Vec::new();
        for members in groups.values().filter(|m| m.len() > 1) {
            // Members by their condition set, so each route looks only at
            // the routes whose conditions are subsets of its own (2^k
            // lookups for k conditions) instead of at every member: 32,000
            // routes differing by a header value took seconds.
            let mut by_set: HashMap<Vec<(&str, &[u8])>, Vec<usize>> = HashMap::new();
            for &j in members {
                by_set.entry(conditions(j)).or_default().push(j);
            }
            let shadows = |i: usize, j: usize| {
                rank(j) < rank(i) && routes[j].methods.covers(routes[i].methods)
            };
            for &i in members {
                let own = conditions(i);
                let shadow = if own.len() > 12 {
                    members
                        .iter()
                        .copied()
                        .find(|&j| shadows(i, j) && conditions(j).iter().all(|c| own.contains(c)))
                } else {
                    (0u32..1 << own.len())
                        .filter_map(|mask| {
                            let subset: Vec<(&str, &[u8])> = own
                                .iter()
                                .enumerate()
                                .filter(|(bit, _)| mask & (1 << bit) != 0)
                                .map(|(_, c)| *c)
                                .collect();
                            by_set
                                .get(&subset)?
                                .iter()
                                .copied()
                                .find(|&j| shadows(i, j))
                        })
                        .min()
                };
                if let Some(j) = shadow {
                    shadowed.push((i, j));
                }
            }
        }
        shadowed.sort_unstable();
        for (i, j) in shadowed {
            let why = if routes[j].match_headers.is_empty() {
                "earlier in the file matches the same host, path prefix and methods"
            } else {
                "matches the same host, path prefix and methods with fewer header conditions, and header conditions are tried first"
            };
            self.warn(
                &paths[i],
                format!(
                    "route {:?} is unreachable: route {:?} {why}",
                    routes[i].name, routes[j].name
                ),
            );
        }
    }
}
