//! Values with placeholders from the config (`X-Client-Ip: "{client_ip}"`,
//! `to: "https://new.example.com{uri}"`), parsed once at load time into
//! literal parts and placeholders, filled per request without parsing.

use std::fmt::Write as _;
use std::net::IpAddr;

/// A placeholder a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// The client's address (as rate limiting and forwarding see it).
    ClientIp,
    /// The request id.
    RequestId,
    /// The identified tenant.
    Tenant,
    /// The route's name.
    Route,
    /// The normalised host.
    Host,
    /// The normalised path and the query (`/a/b?x=1`).
    Uri,
    /// The normalised path.
    Path,
}

impl Placeholder {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "client_ip" => Placeholder::ClientIp,
            "request_id" => Placeholder::RequestId,
            "tenant" => Placeholder::Tenant,
            "route" => Placeholder::Route,
            "host" => Placeholder::Host,
            "uri" => Placeholder::Uri,
            "path" => Placeholder::Path,
            _ => return None,
        })
    }

    /// Its name in braces.
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::ClientIp => "{client_ip}",
            Placeholder::RequestId => "{request_id}",
            Placeholder::Tenant => "{tenant}",
            Placeholder::Route => "{route}",
            Placeholder::Host => "{host}",
            Placeholder::Uri => "{uri}",
            Placeholder::Path => "{path}",
        }
    }
}

/// The placeholders request and response header values may use.
pub const HEADER_PLACEHOLDERS: &[Placeholder] = &[
    Placeholder::ClientIp,
    Placeholder::RequestId,
    Placeholder::Tenant,
    Placeholder::Route,
    Placeholder::Host,
];

/// The placeholders a redirect target may use.
pub const REDIRECT_PLACEHOLDERS: &[Placeholder] =
    &[Placeholder::Uri, Placeholder::Path, Placeholder::Host];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Value(Placeholder),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a request fills placeholders with; `None` where it has no value
/// (an anonymous request's tenant, a request without a host).
#[derive(Debug, Default)]
pub struct Values<'a> {
    /// `{client_ip}`.
    pub client_ip: Option<IpAddr>,
    /// `{request_id}`.
    pub request_id: Option<&'a str>,
    /// `{tenant}`.
    pub tenant: Option<&'a str>,
    /// `{route}`.
    pub route: Option<&'a str>,
    /// `{host}`.
    pub host: Option<&'a str>,
    /// `{uri}`.
    pub uri: Option<&'a str>,
    /// `{path}`.
    pub path: Option<&'a str>,
}

impl Template {
    /// Parses `text`; any `{…}` must name one of `allowed`, and a brace
    /// never stands alone.
    pub fn parse(text: &str, allowed: &[Placeholder]) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(format!("{text:?} has a '}}' without '{{'"));
            }
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("{text:?} has a '{{' without '}}'"));
            };
            let name = &rest[open + 1..open + close];
            let known: Vec<&str> = allowed.iter().map(|p| p.name()).collect();
            match Placeholder::parse(name).filter(|p| allowed.contains(p)) {
                Some(p) => parts.push(Part::Value(p)),
                None => {
                    return Err(format!(
                        "{{{name}}} is not a placeholder here (known: {})",
                        known.join(", ")
                    ))
                }
            }
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// A template of plain text.
    pub fn text(text: &str) -> Self {
        Self {
            parts: vec![Part::Literal(text.to_owned())],
        }
    }

    /// The text with placeholders filled; `None` when one has no value.
    pub fn render(&self, values: &Values<'_>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Value(Placeholder::ClientIp) => {
                    let _ = write!(out, "{}", values.client_ip?);
                }
                Part::Value(p) => out.push_str(match p {
                    Placeholder::RequestId => values.request_id?,
                    Placeholder::Tenant => values.tenant?,
                    Placeholder::Route => values.route?,
                    Placeholder::Host => values.host?,
                    Placeholder::Uri => values.uri?,
                    Placeholder::Path => values.path?,
                    Placeholder::ClientIp => "",
                }),
            }
        }
        Some(out)
    }

    /// The literal text, when the template has no placeholder.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(text)] => Some(text),
            _ => None,
        }
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(text) => f.write_str(text)?,
                Part::Value(p) => f.write_str(p.name())?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_unknown_ones_refused() {
        let t = Template::parse("{route}/{client_ip}:{tenant}", HEADER_PLACEHOLDERS).expect("t");
        let values = Values {
            client_ip: Some("192.0.2.7".parse().expect("ip")),
            route: Some("api"),
            tenant: Some("acme"),
            ..Values::default()
        };
        assert_eq!(t.render(&values).as_deref(), Some("api/192.0.2.7:acme"));
        assert_eq!(t.render(&Values::default()), None, "no tenant: no value");
        assert!(Template::parse("{uri}", HEADER_PLACEHOLDERS).is_err());
        assert!(Template::parse("{nope}", HEADER_PLACEHOLDERS).is_err());
        assert!(Template::parse("a{route", HEADER_PLACEHOLDERS).is_err());
        assert!(Template::parse("a}b", HEADER_PLACEHOLDERS).is_err());
        let r = Template::parse("https://new.example.com{uri}", REDIRECT_PLACEHOLDERS).expect("t");
        let v = Values {
            uri: Some("/a?x=1"),
            ..Values::default()
        };
        assert_eq!(
            r.render(&v).as_deref(),
            Some("https://new.example.com/a?x=1")
        );
        assert_eq!(
            Template::parse("max-age=1", HEADER_PLACEHOLDERS)
                .expect("t")
                .literal(),
            Some("max-age=1")
        );
    }
}
