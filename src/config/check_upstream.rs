//! Validation of upstream pools: backends (resolved once, here), TLS, the
//! Host override, active health checks and passive health.

use super::file::{self, UpstreamSpec};
use super::io;
use super::locate::FieldPath;
use super::model::*;
use super::{name_rule, valid_name, Checker};
use std::net::SocketAddr;

impl Checker<'_> {
    pub(super) fn upstream(
        &mut self,
        name: &str,
        spec: &UpstreamSpec,
        path: &FieldPath,
    ) -> UpstreamConfig {
        if !valid_name(name) {
            self.problem(path.clone(), name_rule("upstream", name));
        }
        let backends_path = path.key("backends");
        if spec.backends.is_empty() {
            self.problem(
                backends_path.clone(),
                format!("upstream {name:?} has no backends"),
            );
        }
        let mut backends: Vec<BackendConfig> = Vec::with_capacity(spec.backends.len());
        for (i, b) in spec.backends.iter().enumerate() {
            let item = backends_path.index(i);
            if b.weight == 0 {
                self.problem(item.key("weight"), "weight must be at least 1");
            }
            let Some(addr) = self.resolve(&b.address, &item) else {
                continue;
            };
            if backends.iter().any(|existing| existing.addr == addr) {
                self.problem(
                    item,
                    format!("backend {} ({addr}) is listed twice", b.address),
                );
                continue;
            }
            backends.push(BackendConfig {
                addr,
                weight: b.weight.max(1),
            });
        }
        let tls = spec.tls.as_ref().map(|t| {
            if t.sni.trim().is_empty() {
                self.problem(path.key("tls").key("sni"), "sni must not be empty");
            }
            UpstreamTls {
                sni: t.sni.clone(),
                verify: t.verify,
            }
        });
        let host_header =
            spec.host_header
                .as_ref()
                .and_then(|h| match http::HeaderValue::from_str(h) {
                    Ok(v) if !h.is_empty() => Some(v),
                    _ => {
                        self.problem(
                            path.key("host_header"),
                            format!("invalid Host header value {h:?}"),
                        );
                        None
                    }
                });
        let health_check = spec
            .health_check
            .as_ref()
            .map(|h| self.health_check(h, host_header.as_ref(), &path.key("health_check")));
        let passive = PassiveHealth {
            max_fails: spec.max_fails.unwrap_or(defaults::MAX_FAILS),
            fail_timeout: spec.fail_timeout.map_or(defaults::FAIL_TIMEOUT, |d| d.0),
            fail_on_5xx: spec.fail_on_5xx.unwrap_or(false),
        };
        if passive.fail_timeout.is_zero() {
            self.problem(
                path.key("fail_timeout"),
                "fail_timeout must be greater than zero",
            );
        }
        UpstreamConfig {
            name: name.to_owned(),
            backends,
            tls,
            host_header,
            health_check,
            passive,
            retries: spec.retries.unwrap_or(defaults::RETRIES),
            retry_on_5xx: spec.retry_on_5xx.unwrap_or(false),
        }
    }

    fn health_check(
        &mut self,
        spec: &file::HealthCheckSpec,
        host_header: Option<&http::HeaderValue>,
        path: &FieldPath,
    ) -> HealthCheckConfig {
        let probe = match spec.kind {
            file::HealthCheckKind::Http => {
                let check_path = spec.path.clone().unwrap_or_else(|| "/health".to_owned());
                if !check_path.starts_with('/') {
                    self.problem(
                        path.key("path"),
                        format!("path {check_path:?} must start with /"),
                    );
                }
                let expect_status = spec.expect_status.clone().unwrap_or_else(|| vec![200]);
                if expect_status.is_empty()
                    || expect_status.iter().any(|s| !(100..=599).contains(s))
                {
                    self.problem(
                        path.key("expect_status"),
                        "expect_status must list HTTP statuses (100-599)",
                    );
                }
                let host = spec
                    .host
                    .clone()
                    .or_else(|| host_header.and_then(|h| h.to_str().ok()).map(str::to_owned))
                    .unwrap_or_else(|| "localhost".to_owned());
                Probe::Http {
                    path: check_path,
                    host,
                    expect_status,
                }
            }
            file::HealthCheckKind::Tcp => {
                for (field, set) in [
                    ("path", spec.path.is_some()),
                    ("expect_status", spec.expect_status.is_some()),
                    ("host", spec.host.is_some()),
                ] {
                    if set {
                        self.problem(
                            path.key(field),
                            format!("{field} applies to http checks, not tcp"),
                        );
                    }
                }
                Probe::Tcp
            }
        };
        let check = HealthCheckConfig {
            probe,
            interval: spec.interval.map_or(defaults::HEALTH_INTERVAL, |d| d.0),
            timeout: spec.timeout.map_or(defaults::HEALTH_TIMEOUT, |d| d.0),
            healthy_threshold: spec
                .healthy_threshold
                .unwrap_or(defaults::HEALTHY_THRESHOLD),
            unhealthy_threshold: spec
                .unhealthy_threshold
                .unwrap_or(defaults::UNHEALTHY_THRESHOLD),
        };
        for (field, zero) in [
            ("interval", check.interval.is_zero()),
            ("timeout", check.timeout.is_zero()),
            ("healthy_threshold", check.healthy_threshold == 0),
            ("unhealthy_threshold", check.unhealthy_threshold == 0),
        ] {
            if zero {
                self.problem(
                    path.key(field),
                    format!("{field} must be greater than zero"),
                );
            }
        }
        check
    }

    /// Resolves a backend address once, at load time (see [`io::resolve`]).
    fn resolve(&mut self, raw: &str, path: &FieldPath) -> Option<SocketAddr> {
        match io::resolve(raw) {
            Ok(addr) => Some(addr),
            Err(message) => {
                self.problem(path.clone(), message);
                None
            }
        }
    }
}
