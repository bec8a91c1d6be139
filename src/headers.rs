//! Headers tollgate adds on the way in and out: `X-Request-Id`,
//! `X-Forwarded-For` / `-Proto`, `Via` (RFC 9110 §7.6.3) and
//! `X-Response-Time`; and the hop-by-hop fields removed from responses.

use http::header::{HeaderValue, HOST};
use pingora::http::{RequestHeader, ResponseHeader};
use rand::RngCore;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use crate::values::fields::{FORWARDING_FIELDS, OVERRIDE_HEADERS};

// Names are `&'static str` so Pingora keeps their conventional case on the
// wire (HTTP/1.1 header names are case-insensitive; people still read them).
/// `X-Request-Id`.
pub const X_REQUEST_ID: &str = "X-Request-Id";
/// `X-Response-Time`.
pub const X_RESPONSE_TIME: &str = "X-Response-Time";
/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: &str = "X-Forwarded-For";
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: &str = "X-Forwarded-Proto";
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: &str = "X-Forwarded-Host";
/// `Forwarded` (RFC 7239).
const FORWARDED: &str = "Forwarded";

/// `Via`.
const VIA: &str = "Via";
/// Our `Via` entry: protocol version and pseudonym (RFC 9110 §7.6.3).
const VIA_ENTRY: &str = "1.1 tollgate";

/// Longest client-supplied request id we keep.
const MAX_REQUEST_ID: usize = 128;

/// The request id to use: the client's, if it is short printable ASCII
/// (so it cannot break log lines), otherwise a fresh random 128-bit hex id.
pub fn request_id(client: Option<&HeaderValue>) -> HeaderValue {
    if let Some(v) = client {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    let mut text = [0u8; 32];
    // Cannot fail: 32 bytes of room for 16 bytes' hex.
    let _ = hex::encode_to_slice(raw, &mut text);
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A duration shown as milliseconds with three decimals (`12.005`), for
/// `X-Response-Time` and log lines. Integer arithmetic: float formatting
/// showed up in the profile.
pub struct Millis(pub Duration);

impl Millis {
    /// Appends the text to `out`, without `core::fmt` (once or twice per
    /// request: the formatting machinery showed in the profile).
    pub fn push(&self, out: &mut Vec<u8>) {
        let micros = self.0.as_micros();
        let mut digits = itoa::Buffer::new();
        out.extend_from_slice(digits.format(micros / 1000).as_bytes());
        let frac = (micros % 1000) as u16;
        out.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
    }
}

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = Vec::with_capacity(24);
        self.push(&mut text);
        f.write_str(&String::from_utf8_lossy(&text))
    }
}

/// Appends `entry` to a list-valued header, keeping every line that was
/// there (combined into one, RFC 9110 §5.3), so the caller can replace
/// them all with the result.
fn append_to_list(headers: &http::HeaderMap, name: &str, entry: &str) -> Option<HeaderValue> {
    let mut v = Vec::new();
    for line in headers.get_all(name) {
        let line = line.as_bytes().trim_ascii();
        if !line.is_empty() {
            v.extend_from_slice(line);
            v.extend_from_slice(b", ");
        }
    }
    v.extend_from_slice(entry.as_bytes());
    HeaderValue::from_bytes(&v).ok()
}

/// What the upstream is told about the original request.
pub struct Forwarding<'a> {
    /// The request id.
    pub request_id: &'a HeaderValue,
    /// The request's host as tollgate normalised, routed and keyed it
    /// (no port, lower case): what `Host`, `X-Forwarded-Host` and
    /// `Forwarded: host=` say upstream.
    pub host: Option<&'a str>,
    /// The peer's address (the client, or a proxy in front of us).
    pub peer_ip: Option<IpAddr>,
    /// Whether the peer is a trusted proxy, whose forwarding fields stand.
    pub peer_trusted: bool,
    /// Whether the client connected over TLS.
    pub tls: bool,
    /// Override/rewrite fields to keep (`server.keep_override_headers`).
    pub keep_overrides: &'a [http::HeaderName],
}

/// The names in `headers` that `doomed` picks, each once. Removing by
/// scanning what is there, rather than calling `remove_header` for every
/// name that might be, saves a name parse and a hash lookup per candidate
/// (16 of them on every request: the profile showed it).
fn present_names(
    headers: &http::HeaderMap,
    mut doomed: impl FnMut(&str) -> bool,
) -> Vec<http::HeaderName> {
    headers
        .keys()
        .filter(|name| doomed(name.as_str()))
        .cloned()
        .collect()
}

/// Sets the forwarding headers on the request sent upstream. From an
/// untrusted peer, what it claimed is replaced by what tollgate saw:
/// `X-Forwarded-For` = the peer, `X-Forwarded-Proto` = the scheme,
/// `X-Forwarded-Host` = the Host it sent, `Forwarded` = the same three. A
/// trusted proxy's values stand, and the peer is appended to the lists.
/// Override/rewrite fields are dropped either way, unless kept by config.
pub fn forward(req: &mut RequestHeader, f: &Forwarding<'_>) -> pingora::Result<()> {
    let doomed = present_names(&req.headers, |name| {
        (OVERRIDE_HEADERS.contains(&name) && !f.keep_overrides.iter().any(|k| k.as_str() == name))
            || (!f.peer_trusted && FORWARDING_FIELDS.contains(&name))
    });
    for name in &doomed {
        req.remove_header(name);
    }
    req.insert_header(X_REQUEST_ID, f.request_id.clone())?;
    let proto = if f.tls { "https" } else { "http" };
    let received_host = f.host.and_then(|h| HeaderValue::from_str(h).ok());
    // An HTTP/1 request's `Host` becomes the normalised one (nginx sends
    // `$host`); HTTP/2 has `:authority`, and `Host` is set for the
    // upstream in `upstream_request_filter`.
    if let Some(host) = &received_host {
        if req.headers.get(HOST).is_some_and(|sent| sent != host) {
            req.insert_header(HOST, host.clone())?;
        }
    }
    let element = forwarded_element(f.peer_ip, received_host.as_ref(), proto);
    let peer_text = f.peer_ip.map(|ip| {
        let mut text = String::with_capacity(40);
        push_ip(&mut text, ip);
        text
    });
    if f.peer_trusted {
        // A trusted proxy's lists grow; its other claims stand.
        if let Some(ip) = &peer_text {
            if let Some(v) = append_to_list(&req.headers, X_FORWARDED_FOR, ip) {
                req.insert_header(X_FORWARDED_FOR, v)?;
            }
        }
        if !req.headers.contains_key(X_FORWARDED_PROTO) {
            req.insert_header(X_FORWARDED_PROTO, proto)?;
        }
        if let Some(host) = &received_host {
            if !req.headers.contains_key(X_FORWARDED_HOST) {
                req.insert_header(X_FORWARDED_HOST, host.clone())?;
            }
        }
        if let Some(v) = append_to_list(&req.headers, FORWARDED, &element) {
            req.insert_header(FORWARDED, v)?;
        }
    } else {
        // Every forwarding field is gone: ours are the only values.
        if let Some(ip) = peer_text {
            req.append_header(X_FORWARDED_FOR, ip)?;
        }
        req.append_header(X_FORWARDED_PROTO, proto)?;
        if let Some(host) = &received_host {
            req.append_header(X_FORWARDED_HOST, host.clone())?;
        }
        req.append_header(FORWARDED, element)?;
    }
    if let Some(v) = append_to_list(&req.headers, VIA, VIA_ENTRY) {
        req.insert_header(VIA, v)?;
    }
    Ok(())
}

/// One `Forwarded` element (RFC 7239 §4): `for=…;host=…;proto=…`, IPv6
/// addresses and hosts with a port quoted as §6 requires.
fn forwarded_element(peer: Option<IpAddr>, host: Option<&HeaderValue>, proto: &str) -> String {
    let mut out = String::with_capacity(64);
    match peer {
        Some(ip @ IpAddr::V6(_)) => {
            out.push_str("for=\"[");
            push_ip(&mut out, ip);
            out.push_str("]\"");
        }
        Some(ip) => {
            out.push_str("for=");
            push_ip(&mut out, ip);
        }
        None => out.push_str("for=unknown"),
    }
    // The Host was validated (`host::Host::of_request`): no quotes or
    // backslashes can be in it.
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        out.push_str(";host=\"");
        out.push_str(host);
        out.push('"');
    }
    out.push_str(";proto=");
    out.push_str(proto);
    out
}

/// Appends an address as `Display` shows it; IPv4 without `core::fmt`
/// (twice per request, and it showed in the profile).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Which of tollgate's own fields a response gets.
#[derive(Debug, Clone, Copy)]
pub struct Decoration {
    /// `X-Response-Time`, the time so far.
    pub response_time: Option<Duration>,
    /// `Via: 1.1 tollgate` (proxied responses only).
    pub via: bool,
}

/// Adds `X-Request-Id`, and as configured `X-Response-Time` and `Via`, to
/// a response.
pub fn decorate(
    resp: &mut ResponseHeader,
    request_id: Option<&HeaderValue>,
    decoration: Decoration,
) -> pingora::Result<()> {
    if let Some(id) = request_id {
        resp.insert_header(X_REQUEST_ID, id.clone())?;
    }
    if let Some(elapsed) = decoration.response_time {
        let mut text = Vec::with_capacity(24);
        Millis(elapsed).push(&mut text);
        text.extend_from_slice(b"ms");
        resp.insert_header(X_RESPONSE_TIME, text)?;
    }
    if decoration.via {
        if let Some(v) = append_to_list(&resp.headers, VIA, VIA_ENTRY) {
            resp.insert_header(VIA, v)?;
        }
    }
    Ok(())
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) that never pass a proxy in a
/// response. `Transfer-Encoding` is framing, which Pingora rewrites itself.
const RESPONSE_HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// Fields a `Connection` header may not make us drop: removing framing
/// would change how the body is delimited.
const NEVER_NOMINATED: [&str; 2] = ["content-length", "transfer-encoding"];

/// Removes an upstream response's hop-by-hop fields, and every field its
/// `Connection` header names, before the response is stored or sent (RFC
/// 9110 §7.6.1). A `101 Switching Protocols` keeps them: the upgrade needs
/// `Connection` and `Upgrade` end to end.
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let mut doomed = present_names(&resp.headers, |name| RESPONSE_HOP_BY_HOP.contains(&name));
    if doomed.contains(&http::header::CONNECTION) {
        let nominated = resp
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| http::HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !NEVER_NOMINATED.contains(&name.as_str()));
        doomed.extend(nominated);
    }
    for name in &doomed {
        resp.remove_header(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_request_ids_are_kept_when_sane() {
        let v = HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&v)), v);
        let spaced = HeaderValue::from_static("has space");
        assert_ne!(request_id(Some(&spaced)), spaced);
        let generated = request_id(None);
        assert_eq!(generated.len(), 32);
        assert_ne!(generated, request_id(None));
    }

    fn forwarded(peer: [u8; 4], trusted: bool, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/x", None).expect("req");
        req.insert_header("host", "api.test").expect("host");
        for (n, v) in headers {
            req.append_header(n.to_string(), *v).expect("hdr");
        }
        let id = HeaderValue::from_static("rid");
        let keep = [http::HeaderName::from_static("x-http-method-override")];
        forward(
            &mut req,
            &Forwarding {
                request_id: &id,
                host: Some("api.test"),
                peer_ip: Some(peer.into()),
                peer_trusted: trusted,
                tls: true,
                keep_overrides: &keep,
            },
        )
        .expect("forward");
        req
    }

    const CLAIMS: [(&str, &str); 7] = [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "evil.test"),
        ("forwarded", "for=1.2.3.4;host=evil.test"),
        ("x-real-ip", "1.2.3.4"),
        ("via", "1.1 cdn"),
        ("x-original-url", "/admin"),
    ];

    #[test]
    fn an_untrusted_peers_forwarding_claims_are_replaced() {
        let req = forwarded([10, 0, 0, 1], false, &CLAIMS);
        assert_eq!(req.headers["x-forwarded-for"], "10.0.0.1");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert_eq!(req.headers["x-forwarded-host"], "api.test");
        assert_eq!(
            req.headers["forwarded"],
            "for=10.0.0.1;host=\"api.test\";proto=https"
        );
        assert!(!req.headers.contains_key("x-real-ip"));
        assert!(!req.headers.contains_key("x-original-url"));
        assert_eq!(req.headers["via"], "1.1 cdn, 1.1 tollgate");
        assert_eq!(req.headers["x-request-id"], "rid");
    }

    #[test]
    fn a_trusted_proxys_claims_stand_and_lists_grow() {
        let mut claims = CLAIMS.to_vec();
        claims.push(("x-http-method-override", "PUT"));
        let req = forwarded([10, 0, 0, 1], true, &claims);
        assert_eq!(req.headers["x-forwarded-for"], "203.0.113.9, 10.0.0.1");
        assert_eq!(req.headers["x-forwarded-proto"], "http");
        assert_eq!(req.headers["x-forwarded-host"], "evil.test");
        assert_eq!(
            req.headers["forwarded"],
            "for=1.2.3.4;host=evil.test, for=10.0.0.1;host=\"api.test\";proto=https"
        );
        assert!(
            !req.headers.contains_key("x-original-url"),
            "dropped even from a trusted proxy"
        );
        assert_eq!(
            req.headers["x-http-method-override"], "PUT",
            "kept by config"
        );
    }

    #[test]
    fn every_line_of_a_trusted_list_is_kept_when_appended_to() {
        let req = forwarded(
            [10, 0, 0, 1],
            true,
            &[
                ("x-forwarded-for", "198.51.100.1"),
                ("x-forwarded-for", "203.0.113.9"),
                ("via", "1.1 a"),
                ("via", "1.1 b"),
                ("forwarded", "for=198.51.100.1"),
                ("forwarded", "for=203.0.113.9"),
            ],
        );
        let one = |name: &str| {
            let lines: Vec<_> = req.headers.get_all(name).iter().collect();
            assert_eq!(lines.len(), 1, "{name}: {lines:?}");
            lines[0].to_str().expect("ascii").to_owned()
        };
        assert_eq!(
            one("x-forwarded-for"),
            "198.51.100.1, 203.0.113.9, 10.0.0.1"
        );
        assert_eq!(one("via"), "1.1 a, 1.1 b, 1.1 tollgate");
        assert_eq!(
            one("forwarded"),
            "for=198.51.100.1, for=203.0.113.9, for=10.0.0.1;host=\"api.test\";proto=https"
        );
    }

    #[test]
    fn addresses_are_written_as_display_shows_them() {
        for ip in ["0.0.0.0", "10.0.0.1", "203.0.113.255", "::1", "2001:db8::7"] {
            let ip: IpAddr = ip.parse().expect("ip");
            let mut text = String::new();
            push_ip(&mut text, ip);
            assert_eq!(text, ip.to_string());
        }
        let v6 = forwarded_element(Some("2001:db8::7".parse().expect("ip")), None, "http");
        assert_eq!(v6, "for=\"[2001:db8::7]\";proto=http");
    }

    #[test]
    fn response_time_is_milliseconds_with_three_decimals() {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        let all = Decoration {
            response_time: Some(Duration::from_micros(12_005)),
            via: true,
        };
        decorate(&mut resp, None, all).expect("decorate");
        assert_eq!(resp.headers["x-response-time"], "12.005ms");
        assert_eq!(resp.headers["via"], "1.1 tollgate");
        let mut bare = ResponseHeader::build(200, None).expect("resp");
        let none = Decoration {
            response_time: None,
            via: false,
        };
        decorate(&mut bare, None, none).expect("decorate");
        assert!(bare.headers.get("x-response-time").is_none() && bare.headers.get("via").is_none());
    }

    #[test]
    fn response_hop_by_hop_fields_and_nominated_ones_are_removed() {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        for (n, v) in [
            ("connection", "X-Internal, close"),
            ("connection", "content-length"),
            ("x-internal", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("upgrade", "h2c"),
            ("content-length", "2"),
            ("x-kept", "1"),
        ] {
            resp.append_header(n, v).expect("hdr");
        }
        strip_response_hop_by_hop(&mut resp);
        let mut left: Vec<&str> = resp.headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "x-kept"]);

        let mut upgrade = ResponseHeader::build(101, None).expect("resp");
        upgrade.insert_header("connection", "upgrade").expect("hdr");
        upgrade.insert_header("upgrade", "websocket").expect("hdr");
        strip_response_hop_by_hop(&mut upgrade);
        assert_eq!(upgrade.headers.len(), 2);
    }
}
