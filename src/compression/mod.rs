//! Response compression: policy on top of Pingora's compression module,
//! which does the work for gzip and zstd (`Vary: Accept-Encoding`; weak
//! ETags; chunked framing). Brotli is ours ([`brotli`]): Pingora 0.9's
//! brotli encoder never finishes its stream. Decoding a gzip or brotli
//! body for a client that cannot take it is ours too ([`inflate`]):
//! Pingora's decoders inflate each chunk whole, whatever its ratio.
//!
//! What is ours: the levels from the config, and the decision per response
//! — nothing smaller than `min_size`, only compressible media types, never
//! on routes that turn it off. Because the module runs after the cache,
//! a response is stored once and encoded for each client as it asks —
//! except fresh cache hits sent as gzip or zstd: the cache keeps one
//! encoded copy per coding with the entry ([`stored_coding`], [`encode`],
//! with Pingora's own encoders),
//! because encoding the same bytes on every hit was most of a compressed
//! hit's cost (zlib sets up ~256 KiB of state per response).

mod brotli;
pub mod inflate;

pub use self::brotli::BrotliStream;

use crate::config::model::{CompressionConfig, RouteCompression};
use crate::metrics::Metrics;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
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
        // Brotli is encoded by `on_response` + `BrotliStream`, never by the
        // module (whose stream would be unfinished); with `br` first in
        // the list and level 0 there, the module leaves the body alone.
        c.adjust_algorithm_level(Algorithm::Brotli, 0);
        c.adjust_algorithm_level(Algorithm::Zstd, config.zstd_level);
        // Decoding is `inflate`'s, in bounded memory.
        c.adjust_decompression(false);
    }
}

/// Before the module sees the response header: keep small bodies,
/// incompressible types and opted-out routes as they are (decompression
/// for clients that need it stays on); when the client prefers brotli and
/// the policy allows, mark the header and return the stream that encodes
/// the body (`response_body_filter` feeds it).
pub fn on_response(
    session: &mut Session,
    resp: &mut ResponseHeader,
    config: Option<&CompressionConfig>,
    route: Option<RouteCompression>,
) -> pingora::Result<Option<BodyCoding>> {
    let Some(config) = config else {
        return Ok(None);
    };
    if forbids_transform(resp) {
        bypass_module(session);
        return Ok(None);
    }
    if let Some(coding) = undecodable_for_client(session.req_header(), resp) {
        bypass_module(session);
        mark_decoded_headers(resp, session.req_header().version < http::Version::HTTP_2)?;
        return Ok(Some(BodyCoding::Inflate(inflate::InflateStream::new(
            coding,
        ))));
    }
    // Nothing to negotiate: the client takes no coding (its normalised
    // `Accept-Encoding` is gone) and the body has none, so the module will
    // neither encode nor decode. Most API clients send none.
    if !session
        .req_header()
        .headers
        .contains_key(http::header::ACCEPT_ENCODING)
        && !resp.headers.contains_key(http::header::CONTENT_ENCODING)
    {
        return Ok(None);
    }
    if !policy_allows(resp, config, route) {
        if let Some(c) = ctx(session) {
            encode_nothing(c);
        }
        return Ok(None);
    }
    let Some(quality) = config.brotli_quality else {
        return Ok(None);
    };
    let req = session.req_header();
    let has_body = !(req.method == http::Method::HEAD
        || resp.status.is_informational()
        || matches!(resp.status.as_u16(), 204 | 304));
    if !has_body
        || resp.headers.contains_key(http::header::CONTENT_ENCODING)
        || first_preference(req) != Some("br")
    {
        return Ok(None);
    }
    let chunked = req.version < http::Version::HTTP_2;
    mark_encoded_headers(resp, "br")?;
    resp.remove_header(&http::header::CONTENT_LENGTH);
    if chunked {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    bypass_module(session);
    Ok(Some(BodyCoding::Brotli(BrotliStream::new(quality))))
}

/// What tollgate does to a response body itself.
pub enum BodyCoding {
    /// Encodes it as brotli.
    Brotli(BrotliStream),
    /// Decodes it for a client that cannot take its coding.
    Inflate(inflate::InflateStream),
}

impl BodyCoding {
    /// Codes one chunk of a body Pingora streams (`end`: the last one).
    pub fn chunk(&mut self, input: &[u8], end: bool) -> pingora::Result<Bytes> {
        let coded = match self {
            BodyCoding::Brotli(stream) => stream.encode(input, end).map_err(|e| e.to_string()),
            BodyCoding::Inflate(stream) => stream.feed_chunk(input, end).map_err(|e| e.to_string()),
        };
        coded.map_err(|e| {
            pingora::Error::explain(
                pingora::ErrorType::InternalError,
                format!("coding the response body: {e}"),
            )
        })
    }
}

/// The coding to decode, when the response has a body in a coding we
/// decode (gzip, brotli) that the client's `Accept-Encoding` (as
/// normalised by `on_request`) does not list. Other codings pass as they
/// are, as Pingora passes them.
fn undecodable_for_client(req: &RequestHeader, resp: &ResponseHeader) -> Option<inflate::Coding> {
    let has_body = !(req.method == http::Method::HEAD
        || resp.status.is_informational()
        || matches!(resp.status.as_u16(), 204 | 304));
    let mut codings = resp.headers.get_all(http::header::CONTENT_ENCODING).iter();
    let (Some(value), None) = (codings.next(), codings.next()) else {
        return None;
    };
    let coding = inflate::Coding::of(value.as_bytes())?;
    let accepted = req
        .headers
        .get(http::header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == coding.token()));
    (has_body && !accepted).then_some(coding)
}

/// The header of a response tollgate decodes: no `Content-Encoding`, no
/// length (chunked over HTTP/1), a weak `ETag`, `Vary: Accept-Encoding`.
fn mark_decoded_headers(resp: &mut ResponseHeader, chunked: bool) -> pingora::Result<()> {
    mark_encoded_headers(resp, "identity")?;
    resp.remove_header(&http::header::CONTENT_ENCODING);
    resp.remove_header(&http::header::CONTENT_LENGTH);
    if chunked {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// `Cache-Control: no-transform` (RFC 9110 §7.7, RFC 9111 §5.2.2.6): a
/// proxy must not change the content, so it is neither encoded nor
/// decoded, whatever the client accepts. The parse runs only when the
/// words appear at all.
fn forbids_transform(resp: &ResponseHeader) -> bool {
    let mentioned = resp
        .headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .any(|v| {
            v.as_bytes()
                .windows(b"no-transform".len())
                .any(|w| w.eq_ignore_ascii_case(b"no-transform"))
        });
    mentioned
        && pingora::cache::cache_control::CacheControl::from_resp_headers(resp)
            .is_some_and(|cc| cc.has_key("no-transform"))
}

/// The first coding of the (normalised) `Accept-Encoding`.
fn first_preference(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::ACCEPT_ENCODING)?
        .to_str()
        .ok()?
        .split(',')
        .next()
        .map(str::trim)
}

/// Leaves the module with no encoding to apply.
fn encode_nothing(c: &mut ResponseCompression) {
    for algorithm in ALGORITHMS {
        c.adjust_algorithm_level(algorithm, 0);
    }
}

/// The policy: the route has compression on, the body is not known to be
/// smaller than `min_size`, and the media type is compressible.
fn policy_allows(
    resp: &ResponseHeader,
    config: &CompressionConfig,
    route: Option<RouteCompression>,
) -> bool {
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
    route.enabled && !too_small && compressible
}

/// For a fresh cache hit: the coding (gzip, zstd, brotli) and level to send
/// `resp` in from a stored encoded copy, when that coding is the client's
/// first preference (the normalised `Accept-Encoding`) and the policy would
/// compress the response. `None`: the module decides, as for any response
/// (identity, already-encoded bodies, HEAD).
pub fn stored_coding(
    req: &RequestHeader,
    resp: &ResponseHeader,
    config: Option<&CompressionConfig>,
    route: Option<RouteCompression>,
) -> Option<(Algorithm, u32)> {
    let config = config?;
    if req.method == http::Method::HEAD || forbids_transform(resp) {
        return None;
    }
    // The client's wish first: hits without one stop here, cheaply.
    let (coding, level) = match first_preference(req)? {
        "gzip" => (Algorithm::Gzip, config.gzip_level),
        "zstd" => (Algorithm::Zstd, config.zstd_level),
        "br" => (Algorithm::Brotli, config.brotli_quality?),
        _ => return None,
    };
    let wanted = level > 0
        && !resp.headers.contains_key(http::header::CONTENT_ENCODING)
        && policy_allows(resp, config, route);
    wanted.then_some((coding, level))
}

/// Encodes a whole body in one piece with the encoder a streamed response
/// gets (Pingora's for gzip and zstd, ours for brotli), so the copy is
/// what would have been sent.
pub fn encode(coding: Algorithm, level: u32, body: &[u8]) -> pingora::Result<bytes::Bytes> {
    if coding == Algorithm::Brotli {
        return brotli::encode_whole(level, body).map_err(|e| {
            pingora::Error::explain(pingora::ErrorType::InternalError, format!("brotli: {e}"))
        });
    }
    let mut encoder = coding.compressor(level).ok_or_else(|| {
        pingora::Error::explain(
            pingora::ErrorType::InternalError,
            format!("no {} encoder at level {level}", coding.as_str()),
        )
    })?;
    encoder.encode(body, true)
}

/// Turns the header of a stored response into the header of its encoded
/// copy: `Content-Encoding`, the new `Content-Length`, `Vary:
/// Accept-Encoding`, no `Accept-Ranges`, and a weak ETag (RFC 9110
/// §8.8.1), as Pingora's module does — but with a length, since the whole
/// body is known.
pub fn mark_encoded(
    resp: &mut ResponseHeader,
    coding: Algorithm,
    len: usize,
) -> pingora::Result<()> {
    mark_encoded_headers(resp, coding.as_str())?;
    resp.insert_header(http::header::CONTENT_LENGTH, len)
}

/// What every encoded representation's header says, whatever its framing.
fn mark_encoded_headers(resp: &mut ResponseHeader, coding: &'static str) -> pingora::Result<()> {
    resp.insert_header(http::header::CONTENT_ENCODING, coding)?;
    resp.remove_header(&http::header::ACCEPT_RANGES);
    let vary = resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|f| f.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if !vary {
        resp.append_header(http::header::VARY, "Accept-Encoding")?;
    }
    if let Some(etag) = resp.headers.get(http::header::ETAG).cloned() {
        if etag.as_bytes().starts_with(b"\"") {
            let weak = [b"W/".as_slice(), etag.as_bytes()].concat();
            resp.insert_header(http::header::ETAG, weak)?;
        } else if !etag.as_bytes().starts_with(b"W/") {
            resp.remove_header(&http::header::ETAG);
        }
    }
    Ok(())
}

/// Keeps the module away from a response tollgate encoded itself.
pub fn bypass_module(session: &mut Session) {
    if let Some(c) = ctx(session) {
        encode_nothing(c);
        c.adjust_decompression(false);
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
    use super::{encode, mark_encoded, preferred_encodings};
    use pingora::http::ResponseHeader;
    use pingora::protocols::http::compression::Algorithm;

    #[test]
    fn an_encoded_copy_gets_the_headers_the_module_would_give_it() {
        for (etag, want) in [
            (Some("\"v1\""), Some("W/\"v1\"")),
            (Some("W/\"v1\""), Some("W/\"v1\"")),
            (Some("v1"), None),
            (None, None),
        ] {
            let mut resp = ResponseHeader::build(200, None).expect("resp");
            resp.insert_header("Content-Length", "2000").expect("len");
            resp.insert_header("Accept-Ranges", "bytes")
                .expect("ranges");
            resp.insert_header("Vary", "Origin").expect("vary");
            if let Some(etag) = etag {
                resp.insert_header("ETag", etag).expect("etag");
            }
            mark_encoded(&mut resp, Algorithm::Zstd, 321).expect("mark");
            let h = |n: &str| resp.headers.get(n).and_then(|v| v.to_str().ok());
            assert_eq!(h("etag"), want, "{etag:?}");
            assert_eq!(h("content-encoding"), Some("zstd"));
            assert_eq!(h("content-length"), Some("321"));
            assert_eq!(h("accept-ranges"), None);
            let vary: Vec<_> = resp.headers.get_all("vary").iter().collect();
            assert_eq!(vary, ["Origin", "Accept-Encoding"]);
        }
    }

    #[test]
    fn encoded_copies_decode_to_the_body() {
        let body = b"{\"items\":[1,2,3]}".repeat(100);
        let gz = encode(Algorithm::Gzip, 6, &body).expect("gzip");
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out)
            .expect("gunzip");
        assert_eq!(out, body);
        let zs = encode(Algorithm::Zstd, 3, &body).expect("zstd");
        assert_eq!(zstd::decode_all(&zs[..]).expect("unzstd"), body);
        assert!(gz.len() < body.len() / 4 && zs.len() < body.len() / 4);
    }

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
