//! The request's `Connection` header, read once, before anything else
//! reads the request (RFC 9110 §7.6.1).
//!
//! The fields a client nominates in `Connection` belong to its hop: a
//! proxy removes them from the message it *received*, before it adds
//! fields of its own. Pingora's upstream sanitiser removes them too, but
//! later, from the request tollgate has already rewritten (forwarding
//! fields, tenant, the route's `headers.request`) and keyed: a client
//! could delete what tollgate wrote, or have an answer made without a
//! field stored under that field's variant. So they are removed here,
//! first, and the `Connection` header is left with only the connection
//! options Pingora still acts on (`close`, `keep-alive`, `upgrade`); its
//! sanitiser then finds nothing of tollgate's to remove.

use pingora::http::RequestHeader;

/// Why a request's `Connection` header is refused (a 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionProblem {
    /// More options than [`MAX_OPTIONS`]: a bound on the work a header costs.
    TooMany,
    /// An option that is not an HTTP token (RFC 9110 §5.6.2), such as
    /// `"X-Forwarded-For"` or `:authority`: it could name a field under a
    /// spelling a later check does not recognise.
    NotAToken,
    /// An option naming `Host` or a framing field: removing it would
    /// change where the request goes or where its body ends.
    Protected,
}

impl ConnectionProblem {
    /// The message of the 400.
    pub fn message(self) -> &'static str {
        match self {
            Self::TooMany => "The Connection header names too many options",
            Self::NotAToken => "The Connection header names an option that is not a token",
            Self::Protected => {
                "The Connection header may not name Host, Content-Length or Transfer-Encoding"
            }
        }
    }
}

/// How many options one request's `Connection` fields may name in all.
/// Real clients send one or two (`keep-alive`, `Upgrade`).
pub const MAX_OPTIONS: usize = 16;

/// Options that are about the connection itself and stay in `Connection`
/// for Pingora: keep-alive decisions and the WebSocket handshake. The
/// `Upgrade` field they may name is left too (Pingora forwards it only
/// for a WebSocket handshake); `Keep-Alive` is removed (it is this hop's).
const KEPT: [&str; 3] = ["close", "keep-alive", "upgrade"];

/// Fields no `Connection` option may remove.
const PROTECTED: [&str; 3] = ["host", "content-length", "transfer-encoding"];

/// Removes every field `req`'s `Connection` header nominates and leaves
/// in it only the options in [`KEPT`], or refuses the request. A request
/// without `Connection` costs one lookup.
pub fn strip_nominated(req: &mut RequestHeader) -> Result<(), ConnectionProblem> {
    if !req.headers.contains_key(http::header::CONNECTION) {
        return Ok(());
    }
    let mut removed: Vec<http::HeaderName> = Vec::new();
    let mut kept: Vec<&'static str> = Vec::new();
    let mut only_options = true;
    let mut count = 0;
    for value in req.headers.get_all(http::header::CONNECTION) {
        for option in value.as_bytes().split(|b| *b == b',') {
            let option = option.trim_ascii();
            if option.is_empty() {
                continue;
            }
            count += 1;
            if count > MAX_OPTIONS {
                return Err(ConnectionProblem::TooMany);
            }
            if !option.iter().all(|b| is_tchar(*b)) {
                return Err(ConnectionProblem::NotAToken);
            }
            // Lower-cases: the checks below cannot be passed by spelling.
            let name =
                http::HeaderName::from_bytes(option).map_err(|_| ConnectionProblem::NotAToken)?;
            if PROTECTED.contains(&name.as_str()) {
                return Err(ConnectionProblem::Protected);
            }
            match KEPT.iter().find(|k| **k == name.as_str()) {
                Some(option) => {
                    if !kept.contains(option) {
                        kept.push(option);
                    }
                    if name == "keep-alive" {
                        removed.push(name);
                    }
                }
                None => {
                    only_options = false;
                    if !removed.contains(&name) {
                        removed.push(name);
                    }
                }
            }
        }
    }
    for name in &removed {
        req.remove_header(name);
    }
    if only_options {
        return Ok(());
    }
    req.remove_header(&http::header::CONNECTION);
    if !kept.is_empty() {
        // Known tokens joined by ", ": always a valid field value.
        let _ = req.insert_header(http::header::CONNECTION, kept.join(", "));
    }
    Ok(())
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(fields: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        for (name, value) in fields {
            req.append_header(name.to_string(), *value).expect("field");
        }
        req
    }

    fn names(req: &RequestHeader) -> Vec<String> {
        let mut names: Vec<String> = req.headers.keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn nominated_fields_go_and_connection_keeps_only_its_options() {
        let mut req = request(&[
            ("host", "api.test"),
            ("connection", "keep-alive, X-Tenant"),
            ("connection", "Origin"),
            ("x-tenant", "acme"),
            ("origin", "https://app.example"),
            ("keep-alive", "timeout=5"),
            ("accept", "*/*"),
        ]);
        assert_eq!(strip_nominated(&mut req), Ok(()));
        assert_eq!(names(&req), ["accept", "connection", "host"]);
        assert_eq!(req.headers["connection"], "keep-alive");
    }

    #[test]
    fn a_connection_of_options_only_is_left_alone() {
        let mut req = request(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(strip_nominated(&mut req), Ok(()));
        assert_eq!(req.headers["connection"], "keep-alive, Upgrade");
        assert_eq!(req.headers["upgrade"], "websocket");
        let mut close = request(&[("connection", "close")]);
        assert_eq!(strip_nominated(&mut close), Ok(()));
        assert_eq!(close.headers["connection"], "close");
    }

    #[test]
    fn nothing_kept_means_no_connection_header() {
        let mut req = request(&[("connection", "X-Forwarded-For, via"), ("via", "1.1 a")]);
        assert_eq!(strip_nominated(&mut req), Ok(()));
        assert!(req.headers.is_empty(), "{:?}", names(&req));
    }

    #[test]
    fn spellings_that_could_hide_a_name_are_refused() {
        for value in [
            "\"X-Tenant\"",
            ":authority",
            "x tenant",
            "X-Tenant;q=1",
            "a/b",
        ] {
            let mut req = request(&[("connection", value)]);
            assert_eq!(
                strip_nominated(&mut req),
                Err(ConnectionProblem::NotAToken),
                "{value}"
            );
        }
    }

    #[test]
    fn host_and_framing_cannot_be_nominated_in_any_case() {
        for value in ["Host", "CONTENT-LENGTH", "keep-alive, transfer-encoding"] {
            let mut req = request(&[("connection", value)]);
            assert_eq!(
                strip_nominated(&mut req),
                Err(ConnectionProblem::Protected),
                "{value}"
            );
        }
    }

    /// Fields a request may carry that tollgate writes, reads or keys on,
    /// and the connection options.
    const FIELDS: [&str; 14] = [
        "x-tenant",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "via",
        "x-request-id",
        "origin",
        "authorization",
        "accept-encoding",
        "x-user-id",
        "keep-alive",
        "upgrade",
        "cookie",
    ];

    proptest::proptest! {
        /// Whatever a client nominates, in any case and spacing: no
        /// nominated field is left (but `Upgrade`, which Pingora forwards
        /// only for a WebSocket handshake), every other field is, and
        /// `Connection` names nothing but connection options.
        #[test]
        fn nominated_fields_never_survive_and_others_always_do(
            present in proptest::collection::vec(0..FIELDS.len(), 0..8),
            nominated in proptest::collection::vec((0..FIELDS.len(), proptest::bool::ANY), 1..8),
            extra_options in proptest::collection::vec(0..3usize, 0..3),
            separator in proptest::sample::select(vec![",", ", ", " ,\t", ",,"]),
        ) {
            let mut fields: Vec<(&str, &str)> = present.iter().map(|i| (FIELDS[*i], "v")).collect();
            let mut options: Vec<String> = nominated
                .iter()
                .map(|(i, upper)| match upper {
                    true => FIELDS[*i].to_ascii_uppercase(),
                    false => FIELDS[*i].to_owned(),
                })
                .collect();
            options.extend(extra_options.iter().map(|k| KEPT[*k].to_owned()));
            let connection = options.join(separator);
            fields.push(("connection", connection.as_str()));
            let mut req = request(&fields);
            proptest::prop_assert_eq!(strip_nominated(&mut req), Ok(()));
            for (i, _) in &nominated {
                let name = FIELDS[*i];
                proptest::prop_assert!(
                    name == "upgrade" || !req.headers.contains_key(name),
                    "{} survived Connection: {}", name, connection
                );
            }
            for i in &present {
                let name = FIELDS[*i];
                let by_option = extra_options.iter().any(|k| KEPT[*k] == name);
                if !nominated.iter().any(|(n, _)| n == i) && !by_option {
                    proptest::prop_assert!(req.headers.contains_key(name), "{} lost", name);
                }
            }
            for value in req.headers.get_all("connection") {
                for option in value.to_str().unwrap_or("?").split(',') {
                    let option = option.trim().to_ascii_lowercase();
                    proptest::prop_assert!(
                        option.is_empty() || KEPT.contains(&option.as_str()),
                        "{} kept",
                        option
                    );
                }
            }
        }
    }

    #[test]
    fn the_number_of_options_is_bounded() {
        let many = vec!["x-a"; MAX_OPTIONS + 1].join(",");
        let mut req = request(&[("connection", many.as_str())]);
        assert_eq!(strip_nominated(&mut req), Err(ConnectionProblem::TooMany));
        let enough = vec!["x-a"; MAX_OPTIONS].join(", ,");
        let mut req = request(&[("connection", enough.as_str())]);
        assert_eq!(strip_nominated(&mut req), Ok(()));
    }
}
