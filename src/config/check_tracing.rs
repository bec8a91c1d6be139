//! Validation of the `tracing` section: the collector's URL, the sampling
//! ratio, the export's bounds and fields.

use super::file::{AcceptParentSpec, TracingSpec};
use super::io;
use super::locate::FieldPath;
use super::model::{defaults, AcceptParent, TracingConfig};
use super::Checker;
use crate::values::url::Url;
use http::{HeaderName, HeaderValue};

/// The path OTLP/HTTP collectors serve traces on (OTLP specification,
/// "OTLP/HTTP Request"), used when the endpoint names no path.
const OTLP_TRACES_PATH: &str = "/v1/traces";

/// Fields the exporter writes itself.
const OWN_FIELDS: [&str; 4] = ["host", "content-length", "content-type", "user-agent"];

impl Checker<'_> {
    pub(super) fn tracing(
        &mut self,
        spec: &TracingSpec,
        path: &FieldPath,
    ) -> Option<TracingConfig> {
        let endpoint = match Url::parse(&spec.endpoint) {
            Ok(mut url) => {
                if url.path == "/" && !spec.endpoint.ends_with('/') {
                    url.path = OTLP_TRACES_PATH.to_owned();
                }
                Some(url)
            }
            Err(message) => {
                self.problem(path.key("endpoint"), message);
                None
            }
        };
        let sample_ratio = spec.sample_ratio.unwrap_or(defaults::TRACE_SAMPLE_RATIO);
        if !(0.0..=1.0).contains(&sample_ratio) {
            self.problem(
                path.key("sample_ratio"),
                format!("sample_ratio must be between 0.0 and 1.0 (got {sample_ratio})"),
            );
        }
        let service_name = spec
            .service_name
            .clone()
            .unwrap_or_else(|| "tollgate".to_owned());
        if service_name.is_empty() {
            self.problem(path.key("service_name"), "service_name may not be empty");
        }
        let mut headers = Vec::new();
        let literal = spec
            .headers
            .iter()
            .map(|(n, v)| (n, Ok(v.clone()), "headers"));
        let from_env = spec
            .headers_env
            .iter()
            .map(|(n, var)| (n, io::env_secret(var), "headers_env"));
        for (name, value, section) in literal.chain(from_env) {
            let at = path.key(section).key(name);
            let Ok(field) = HeaderName::from_bytes(name.as_bytes()) else {
                self.problem(at, format!("{name:?} is not a field name"));
                continue;
            };
            if OWN_FIELDS.contains(&field.as_str()) {
                self.problem(at, format!("{field} is written by the exporter"));
                continue;
            }
            if headers.iter().any(|(n, _)| *n == field) {
                self.problem(at, format!("{field} is given twice"));
                continue;
            }
            match value.and_then(|v| {
                HeaderValue::from_str(&v).map_err(|_| "the value is not a valid field value".into())
            }) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    headers.push((field, value));
                }
                Err(message) => self.problem(at, message),
            }
        }
        let mut positive = |value: Option<usize>, default: usize, field: &str| match value {
            Some(0) => {
                self.problem(path.key(field), format!("{field} must be at least 1"));
                default
            }
            Some(n) => n,
            None => default,
        };
        let queue_size = positive(spec.queue_size, defaults::TRACE_QUEUE, "queue_size");
        let batch_size = positive(spec.batch_size, defaults::TRACE_BATCH, "batch_size");
        let batch_interval = spec
            .batch_interval
            .map_or(defaults::TRACE_BATCH_INTERVAL, |d| d.0);
        let export_timeout = spec
            .export_timeout
            .map_or(defaults::TRACE_EXPORT_TIMEOUT, |d| d.0);
        for (field, value) in [
            ("batch_interval", batch_interval),
            ("export_timeout", export_timeout),
        ] {
            if value.is_zero() {
                self.problem(
                    path.key(field),
                    format!("{field} must be greater than zero"),
                );
            }
        }
        Some(TracingConfig {
            endpoint: endpoint?,
            sample_ratio,
            accept_parent: match spec.accept_parent {
                Some(AcceptParentSpec::All) => AcceptParent::All,
                Some(AcceptParentSpec::TrustedProxies) | None => AcceptParent::TrustedProxies,
                Some(AcceptParentSpec::None) => AcceptParent::None,
            },
            service_name,
            resource: spec
                .resource
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            headers,
            queue_size,
            batch_size,
            batch_interval,
            export_timeout,
        })
    }
}
