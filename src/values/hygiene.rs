//! Request hygiene before routing: the request target's path is
//! normalised once (RFC 3986 §6.2.2) so the router, the cache key and the
//! upstream all read the same path, and targets a backend could read as
//! another route's path are refused.
//!
//! Rules, in order:
//! - the path must start with `/`;
//! - `%00` (an encoded NUL) and malformed escapes (`%`, `%4`, `%zz`) are
//!   refused;
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!   decoded, other escapes keep their encoding with upper-case hex
//!   (`%2f` → `%2F`): every spelling of one path becomes one string;
//! - runs of `/` become one `/` (as nginx's `merge_slashes`);
//! - dot segments are refused, also when their dots or the slash around
//!   them are encoded (`/a/%2e%2e/b`, `/public/..%2fadmin`, `..%5c`), and
//!   also when a `;` parameter follows the dots (`/public/..;/admin`, which
//!   Tomcat and Spring resolve to `/admin`).

use std::borrow::Cow;

/// Why a request target was refused (each a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    /// Not starting with `/`.
    NotAbsolute,
    /// `%00`, or a `%` not followed by two hex digits.
    BadEscape,
    /// A `.` or `..` segment, however spelled.
    DotSegment,
    /// `%2F`, `%5C` or `\` where `encoded_slash: reject` applies.
    EncodedSlash,
    /// A `;` path parameter where `path_parameters: reject` applies.
    Parameter,
}

/// What `%2F`, `%5C` and `\` in a path mean (`hygiene.encoded_slash`).
/// Frameworks that decode them before routing (many do) read
/// `/public%2F..%2Fadmin` or `/admin%2Fusers` as another path than the
/// proxy routed, so the proxy must either refuse them or route on the
/// decoded form.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSlash {
    /// 400 (the default, as Apache's `AllowEncodedSlashes Off`).
    #[default]
    Reject,
    /// Decoded to `/` before routing; the upstream gets the decoded path.
    Decode,
    /// Routed and forwarded encoded: only for upstreams that do not decode.
    Keep,
}

/// What a `;` parameter in a path segment means (`hygiene.path_parameters`):
/// Tomcat and Spring drop `;…` before mapping `/admin;x=1/` to `/admin/`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PathParameters {
    /// Part of the path, routed and forwarded as sent (the default).
    #[default]
    Keep,
    /// 400.
    Reject,
    /// Removed from every segment before routing and forwarding, so the
    /// route is the one a Tomcat or Spring upstream resolves.
    Strip,
}

/// What a request field whose name has `_` gets (`hygiene.underscore_headers`):
/// CGI, WSGI and Rack map `X_Tenant` and `X-Tenant` to the same variable,
/// so a client's `X_Tenant` could stand in for the field tollgate sets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnderscoreHeaders {
    /// Removed before anything reads the request (nginx's default).
    #[default]
    Drop,
    /// 400.
    Reject,
    /// Kept.
    Allow,
}

impl PathProblem {
    /// The client-facing message.
    pub fn message(self) -> &'static str {
        match self {
            PathProblem::NotAbsolute => "Request path must start with /",
            PathProblem::BadEscape => "The request path has an encoded NUL or a malformed escape",
            PathProblem::DotSegment => "Dot segments in the request path are not allowed",
            PathProblem::EncodedSlash => {
                "Encoded slashes (%2F, %5C) and backslashes in the request path are not allowed"
            }
            PathProblem::Parameter => "Path parameters (;) in the request path are not allowed",
        }
    }
}

/// The normalised path: borrowed when the path was already normal (the
/// common case costs one scan, no allocation).
pub fn normalise_path(path: &str) -> Result<Cow<'_, str>, PathProblem> {
    if !path.starts_with('/') {
        return Err(PathProblem::NotAbsolute);
    }
    let bytes = path.as_bytes();
    if is_plain(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|&c| hex_value(c)),
                bytes.get(i + 2).and_then(|&c| hex_value(c)),
            ) else {
                return Err(PathProblem::BadEscape);
            };
            let decoded = hi << 4 | lo;
            if decoded == 0 {
                return Err(PathProblem::BadEscape);
            }
            if is_unreserved(decoded) {
                out.push(char::from(decoded));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(hi)]));
                out.push(char::from(HEX[usize::from(lo)]));
            }
            i += 3;
            continue;
        }
        if b == b'/' && out.ends_with('/') {
            i += 1;
            continue;
        }
        // Multi-byte UTF-8 is copied as is: the `http` crate only lets
        // visible ASCII through in a path, but this must not rely on it.
        let len = utf8_len(b);
        out.push_str(path.get(i..i + len).unwrap_or(""));
        i += len.max(1);
    }
    if has_dot_segment(&out) {
        return Err(PathProblem::DotSegment);
    }
    if out == path {
        return Ok(Cow::Borrowed(path)); // already normal: nothing to rewrite
    }
    Ok(Cow::Owned(out))
}

/// Whether a normalised path has a separator in disguise: `%2F`, `%5C`
/// or a backslash.
pub fn has_encoded_separator(path: &str) -> bool {
    path.contains("%2F") || path.contains("%5C") || path.contains('\\')
}

/// Applies the global path rules to a normalised path, before routing:
/// `encoded_slash: decode` turns `%2F`, `%5C` and `\\` into `/` (and the
/// result is normalised again: merged slashes, dot segments refused);
/// `path_parameters` strips or refuses `;…` in segments. `Borrowed` when
/// nothing changed. (`encoded_slash: reject` is checked after routing,
/// where a route may say `keep`.)
pub fn apply_path_rules(
    path: &str,
    encoded_slash: EncodedSlash,
    parameters: PathParameters,
) -> Result<Cow<'_, str>, PathProblem> {
    let mut current = Cow::Borrowed(path);
    if encoded_slash == EncodedSlash::Decode && has_encoded_separator(&current) {
        let decoded = current
            .replace("%2F", "/")
            .replace("%5C", "/")
            .replace('\\', "/");
        current = Cow::Owned(normalise_path(&decoded)?.into_owned());
    }
    if current.contains(';') {
        match parameters {
            PathParameters::Keep => {}
            PathParameters::Reject => return Err(PathProblem::Parameter),
            PathParameters::Strip => {
                let stripped: Vec<&str> = current
                    .split('/')
                    .map(|segment| segment.split(';').next().unwrap_or(segment))
                    .collect();
                let joined = stripped.join("/");
                current = Cow::Owned(normalise_path(&joined)?.into_owned());
            }
        }
    }
    Ok(current)
}

/// Whether a request is a WebSocket handshake that reaches the upstream as
/// one: HTTP/1.1, `Upgrade: websocket`, and `upgrade` named in
/// `Connection` (RFC 6455 §4.1, RFC 9110 §7.8). Pingora forwards no other
/// upgrade (pingora-proxy `proxy_common.rs`, `H1UpgradePolicy::
/// WebSocketOnly`): any other `Upgrade` goes upstream as a plain request,
/// so it is cached and compressed like one.
pub fn is_websocket_handshake(req: &pingora::http::RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req
            .headers
            .get(http::header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && req
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
}

/// Whether a field name has an underscore (see [`UnderscoreHeaders`]).
pub fn has_underscore(name: &http::HeaderName) -> bool {
    name.as_str().contains('_')
}

/// No `%`, `\\`, `//` or `/.`: nothing to decode, merge or check. One
/// pass (four substring searches cost more than the rest of the check).
fn is_plain(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'%' || b == b'\\' || (prev == b'/' && (b == b'/' || b == b'.')) {
            return false;
        }
        prev = b;
    }
    true
}

/// Whether a normalised path has a segment a backend may resolve as `.`
/// or `..`: encoded slashes and backslashes count as separators, encoded
/// dots as dots, and anything after a `;` (a path parameter) is ignored.
fn has_dot_segment(path: &str) -> bool {
    if !path.contains('.') && !path.contains("%2E") {
        return false;
    }
    let unified = path
        .replace("%2F", "/")
        .replace("%5C", "/")
        .replace('\\', "/")
        .replace("%2E", ".")
        .replace("%3B", ";");
    unified.split('/').any(|segment| {
        let name = segment.split(';').next().unwrap_or(segment);
        name == "." || name == ".."
    })
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xF7 => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Whether a GET or HEAD request carries a body (a `Content-Length` above
/// zero, or any `Transfer-Encoding`). Refused: a body on a cacheable
/// request is not part of the cache key, so an origin that reads it would
/// have its answer served to everyone who sends the same URL.
pub fn safe_method_with_body(req: &pingora::http::RequestHeader) -> bool {
    if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
        return false;
    }
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return true;
    }
    req.headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .any(|v| {
            v.as_bytes()
                .iter()
                .any(|&b| b.is_ascii_digit() && b != b'0')
        })
}

/// The size of a request head as it came on the wire, near enough:
/// request line plus `name: value\r\n` per field.
pub fn head_size(req: &pingora::http::RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    req.headers.iter().fold(line, |n, (name, value)| {
        n + name.as_str().len() + value.len() + 4
    })
}

/// What to do about a request's `Content-Length` framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Nothing to change.
    Fine,
    /// Repeated identical values (`3, 3`, or two fields): send this one
    /// value upstream instead of the list.
    Collapse(u64),
    /// Both `Content-Length` and `Transfer-Encoding`, or differing
    /// lengths: the smuggling shape (RFC 9112 §6.3). Refused.
    Ambiguous,
}

/// Checks `Content-Length` against RFC 9112 §6.3. Pingora's parser already
/// refuses differing values; this collapses the identical repeats it lets
/// through (which it would forward as a list) and refuses `Content-Length`
/// next to `Transfer-Encoding`.
pub fn content_length_framing(req: &pingora::http::RequestHeader) -> Framing {
    let fields = req.headers.get_all(http::header::CONTENT_LENGTH);
    let mut values = fields.iter().peekable();
    if values.peek().is_none() {
        return Framing::Fine;
    }
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Framing::Ambiguous;
    }
    let mut seen: Option<u64> = None;
    let mut tokens = 0usize;
    for value in values {
        let Ok(text) = value.to_str() else {
            return Framing::Ambiguous;
        };
        for token in text.split(',') {
            tokens += 1;
            let Ok(n) = token.trim().parse::<u64>() else {
                return Framing::Ambiguous;
            };
            match seen {
                Some(prev) if prev != n => return Framing::Ambiguous,
                _ => seen = Some(n),
            }
        }
    }
    match seen {
        Some(n) if tokens > 1 => Framing::Collapse(n),
        Some(_) => Framing::Fine,
        None => Framing::Ambiguous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathProblem> {
        normalise_path(p).map(Cow::into_owned)
    }

    #[test]
    fn spellings_of_one_path_become_one() {
        assert_eq!(norm("/a/b").as_deref(), Ok("/a/b"));
        assert!(matches!(normalise_path("/a/b"), Ok(Cow::Borrowed(_))));
        assert_eq!(norm("/%61dmin/%7Eu").as_deref(), Ok("/admin/~u"));
        assert_eq!(norm("/a%2fb").as_deref(), Ok("/a%2Fb"));
        assert_eq!(norm("//a///b/").as_deref(), Ok("/a/b/"));
        assert_eq!(norm("/%2D%2e%5F").as_deref(), Ok("/-._"));
        assert_eq!(norm("/x.json").as_deref(), Ok("/x.json"));
        assert_eq!(norm("/.well-known/x").as_deref(), Ok("/.well-known/x"));
        assert_eq!(norm("/a..b/c").as_deref(), Ok("/a..b/c"));
        assert_eq!(norm("/a;v=1/b").as_deref(), Ok("/a;v=1/b"));
        assert_eq!(
            norm("/projects/group%2Fname").as_deref(),
            Ok("/projects/group%2Fname")
        );
    }

    #[test]
    fn the_path_rules_decode_strip_or_refuse() {
        use EncodedSlash::*;
        use PathParameters as P;
        let apply = |p: &str, e, q| apply_path_rules(p, e, q).map(Cow::into_owned);
        assert_eq!(apply("/a%2Fb", Decode, P::Keep).as_deref(), Ok("/a/b"));
        assert_eq!(apply("/a%5Cb\\c", Decode, P::Keep).as_deref(), Ok("/a/b/c"));
        assert_eq!(apply("/a%2F%2Fb", Decode, P::Keep).as_deref(), Ok("/a/b"));
        assert_eq!(
            apply("/public%2F..%2Fadmin", Decode, P::Keep),
            Err(PathProblem::DotSegment)
        );
        assert_eq!(apply("/a%2Fb", Keep, P::Keep).as_deref(), Ok("/a%2Fb"));
        assert_eq!(apply("/a%2Fb", Reject, P::Keep).as_deref(), Ok("/a%2Fb"));
        assert_eq!(
            apply("/admin;x=1/users;v=2", Keep, P::Strip).as_deref(),
            Ok("/admin/users")
        );
        assert_eq!(
            apply("/admin;x=1", Keep, P::Reject),
            Err(PathProblem::Parameter)
        );
        assert_eq!(apply("/a%3Bb", Keep, P::Reject).as_deref(), Ok("/a%3Bb"));
        assert!(has_encoded_separator("/a%2Fb"));
        assert!(has_encoded_separator("/a\\b"));
        assert!(!has_encoded_separator("/a/b%20c"));
    }

    #[test]
    fn dot_segments_however_spelled_are_refused() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "/a/%2E%2e/b",
            "/public/..%2fadmin",
            "/a/..%5Cb",
            "/a/..\\b",
            "/..",
            "/.",
            "/public/..;/admin",
            "/public/..;jsessionid=1/admin",
            "/public/.;/admin",
            "/public/%2e%2e;/admin",
            "/public/..%3b/admin",
            "/public//../admin",
            "/%2e%2e/admin",
        ] {
            assert_eq!(norm(bad), Err(PathProblem::DotSegment), "{bad}");
        }
    }

    #[test]
    fn nul_and_malformed_escapes_are_refused() {
        for bad in ["/a%00b", "/a%", "/a%4", "/a%zz", "/%0"] {
            assert_eq!(norm(bad), Err(PathProblem::BadEscape), "{bad}");
        }
        assert_eq!(norm("x"), Err(PathProblem::NotAbsolute));
        assert_eq!(norm("*"), Err(PathProblem::NotAbsolute));
    }

    #[test]
    fn repeated_lengths_collapse_and_ambiguous_framing_is_refused() {
        let req = |headers: &[(&str, &str)]| {
            let mut r = pingora::http::RequestHeader::build("POST", b"/", None).expect("req");
            for (n, v) in headers {
                r.append_header(n.to_string(), *v).expect("hdr");
            }
            content_length_framing(&r)
        };
        assert_eq!(req(&[]), Framing::Fine);
        assert_eq!(req(&[("content-length", "3")]), Framing::Fine);
        assert_eq!(req(&[("content-length", "3, 3")]), Framing::Collapse(3));
        assert_eq!(
            req(&[("content-length", "3"), ("content-length", "3")]),
            Framing::Collapse(3)
        );
        assert_eq!(req(&[("content-length", "3, 4")]), Framing::Ambiguous);
        assert_eq!(req(&[("content-length", "x")]), Framing::Ambiguous);
        assert_eq!(
            req(&[("content-length", "3"), ("transfer-encoding", "chunked")]),
            Framing::Ambiguous
        );
    }

    #[test]
    fn bodies_on_get_and_head_are_spotted() {
        let req = |method: &str, headers: &[(&str, &str)]| {
            let mut r = pingora::http::RequestHeader::build(method, b"/", None).expect("req");
            for (n, v) in headers {
                r.append_header(n.to_string(), *v).expect("hdr");
            }
            r
        };
        assert!(safe_method_with_body(&req(
            "GET",
            &[("content-length", "3")]
        )));
        assert!(safe_method_with_body(&req(
            "HEAD",
            &[("transfer-encoding", "chunked")]
        )));
        assert!(!safe_method_with_body(&req(
            "GET",
            &[("content-length", "0")]
        )));
        assert!(!safe_method_with_body(&req("GET", &[])));
        assert!(!safe_method_with_body(&req(
            "POST",
            &[("content-length", "3")]
        )));
    }
}
