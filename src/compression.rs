//! Response compression: policy on top of Pingora's compression module,
//! which does the work (gzip, brotli, zstd; `Accept-Encoding` with
//! q-values; `Vary: Accept-Encoding`; weak ETags; chunked framing;
//! decompressing for clients that cannot take the upstream's encoding).
//!
//! What is ours: the levels from the config, and the decision per response
//! — nothing smaller than `min_size`, only compressible media types, never
//! on routes that turn it off. Because the module runs after the cache,
//! a response is stored once and encoded for each client as it asks.

use crate::config::model::{CompressionConfig, RouteCompression};
use crate::metrics::Metrics;
use pingora::http::ResponseHeader;
use pingora::modules::http::compression::{ResponseCompression, ResponseCompressionBuilder};
use pingora::modules::http::{HttpModules, ModuleBuilder};
use pingora::protocols::http::compression::Algorithm;
use pingora::proxy::Session;

const ALGORITHMS: [Algorithm; 3] = [Algorithm::Gzip, Algorithm::Brotli, Algorithm::Zstd];

/// The module, registered once; it does nothing until a request enables it.
pub fn module() -> ModuleBuilder {
    ResponseCompressionBuilder::enable(0)
}

/// Registers the module.
pub fn register(modules: &mut HttpModules) {
    modules.add_module(module());
}

fn ctx(session: &mut Session) -> Option<&mut ResponseCompression> {
    session
        .downstream_modules_ctx
        .get_mut::<ResponseCompression>()
}

/// Orders the client's `Accept-Encoding` by q-value (RFC 9110 §12.5.3)
/// and keeps only encodings we may produce. Pingora's module takes the
/// first listed encoding as the preference and does not read q-values, so
/// it is given this normalised list. `*` stands for gzip when gzip is not
/// listed; `q=0` and `identity` mean "not this one".
pub fn preferred_encodings(accept: &str, brotli: bool) -> String {
    let mut offers: Vec<(&str, f32, usize)> = Vec::new();
    let mut wildcard: Option<f32> = None;
    for (i, item) in accept.split(',').enumerate() {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|v| v.trim().parse::<f32>().ok())
            })
            .next()
            .unwrap_or(1.0);
        let name = match token.to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => "gzip",
            "zstd" => "zstd",
            "br" if brotli => "br",
            "*" => {
                wildcard = Some(q);
                continue;
            }
            _ => continue,
        };
        if q > 0.0 && !offers.iter().any(|(n, _, _)| *n == name) {
            offers.push((name, q, i));
        }
    }
    if let Some(q) = wildcard.filter(|q| *q > 0.0) {
        if !offers.iter().any(|(n, _, _)| *n == "gzip") {
            offers.push(("gzip", q, usize::MAX));
        }
    }
    offers.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    offers
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Before the module reads `Accept-Encoding`: turn it on with the
/// configured levels, let it decompress for clients that need it, and give
/// it the client's preferences in order.
pub fn on_request(session: &mut Session, config: Option<&CompressionConfig>) {
    let Some(config) = config else {
        return;
    };
    let accept = session
        .req_header()
        .headers
        .get(http::header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| preferred_encodings(v, config.brotli_quality.is_some()));
    if let Some(accept) = accept {
        let req = session.req_header_mut();
        if accept.is_empty() {
            req.remove_header(&http::header::ACCEPT_ENCODING);
        } else if req
            .insert_header(http::header::ACCEPT_ENCODING, accept)
            .is_err()
        {
            log::debug!("could not normalise Accept-Encoding");
        }
    }
    if let Some(c) = ctx(session) {
        c.adjust_algorithm_level(Algorithm::Gzip, config.gzip_level);
        c.adjust_algorithm_level(Algorithm::Brotli, config.brotli_quality.unwrap_or(0));
        c.adjust_algorithm_level(Algorithm::Zstd, config.zstd_level);
        c.adjust_decompression(true);
    }
}

/// Before the module sees the response header: keep small bodies,
/// incompressible types and opted-out routes as they are (decompression
/// for clients that need it stays on).
pub fn on_response(
    session: &mut Session,
    resp: &ResponseHeader,
    config: Option<&CompressionConfig>,
    route: Option<RouteCompression>,
) {
    let Some(config) = config else {
        return;
    };
    let route = route.unwrap_or(RouteCompression {
        enabled: true,
        min_size: None,
    });
    let min_size = route.min_size.unwrap_or(config.min_size);
    let too_small = resp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len < min_size);
    let compressible = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| config.compressible(ct));
    if !route.enabled || too_small || !compressible {
        if let Some(c) = ctx(session) {
            for algorithm in ALGORITHMS {
                c.adjust_algorithm_level(algorithm, 0);
            }
        }
    }
}

/// Counts body bytes before and after the module for
/// `tollgate_compression_bytes_total{encoding,direction}`.
pub fn count(metrics: &Metrics, session: &Session, bytes_in: u64) {
    let Some(resp) = session.response_written() else {
        return;
    };
    let Some(encoding) = resp
        .headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| match v {
            "gzip" => "gzip",
            "br" => "br",
            "zstd" => "zstd",
            _ => "other",
        })
    else {
        return;
    };
    let out = session.as_downstream().body_bytes_sent() as u64;
    metrics
        .compression_bytes
        .with_label_values(&[encoding, "in"])
        .inc_by(bytes_in);
    metrics
        .compression_bytes
        .with_label_values(&[encoding, "out"])
        .inc_by(out);
}

#[cfg(test)]
mod tests {
    use super::preferred_encodings;

    #[test]
    fn q_values_order_and_zero_excludes() {
        assert_eq!(
            preferred_encodings("br;q=0.5, gzip;q=0.9", true),
            "gzip, br"
        );
        assert_eq!(
            preferred_encodings("gzip, deflate, br, zstd", true),
            "gzip, br, zstd"
        );
        assert_eq!(preferred_encodings("gzip;q=0, zstd", true), "zstd");
        assert_eq!(preferred_encodings("identity", true), "");
        assert_eq!(preferred_encodings("*;q=0.3, zstd", true), "zstd, gzip");
    }

    #[test]
    fn brotli_is_dropped_when_off() {
        assert_eq!(preferred_encodings("br, gzip;q=0.5", false), "gzip");
    }
}
