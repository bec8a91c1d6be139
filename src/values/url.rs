//! An `http://` or `https://` URL as tollgate's own requests use it (the
//! JWKS fetch, the OTLP export): read once where the config is checked,
//! so a bad one is refused with its line, and used as read.

/// An `http://` or `https://` URL split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `https://`.
    pub tls: bool,
    /// `host[:port]` as written: the `Host` field.
    pub authority: String,
    /// The host name (brackets removed from an IPv6 address): SNI and resolution.
    pub host: String,
    /// The port, the scheme's default when not written.
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Url {
    /// Reads `url`; an error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?} has no host (or has credentials in it)"));
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        let (host, port) = split_authority(authority, if tls { 443 } else { 80 })?;
        Ok(Self {
            tls,
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            path,
        })
    }
}

/// `host[:port]` or `[v6]:port` → host and port.
fn split_authority(authority: &str, default_port: u16) -> Result<(&str, u16), String> {
    let bad = || format!("bad host {authority:?}");
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, rest) = v6.split_once(']').ok_or_else(bad)?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if rest.is_empty() => default_port,
            None => return Err(bad()),
        };
        return Ok((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((host, port.parse().map_err(|_| bad())?)),
        None => Ok((authority, default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(
            split_authority("auth.example.com", 443),
            Ok(("auth.example.com", 443))
        );
        assert_eq!(
            split_authority("127.0.0.1:8080", 80),
            Ok(("127.0.0.1", 8080))
        );
        assert_eq!(split_authority("[::1]:9000", 80), Ok(("::1", 9000)));
        assert_eq!(split_authority("[::1]", 443), Ok(("::1", 443)));
        assert!(split_authority("host:port", 80).is_err());
        assert!(split_authority("[::1", 80).is_err());
    }

    #[test]
    fn urls_have_scheme_host_port_and_path() {
        let url = Url::parse("https://otel.example.com/v1/traces").expect("url");
        assert!(url.tls);
        assert_eq!((url.host.as_str(), url.port), ("otel.example.com", 443));
        assert_eq!(url.path, "/v1/traces");
        let url = Url::parse("http://[::1]:4318?x=1").expect("url");
        assert_eq!((url.host.as_str(), url.port), ("::1", 4318));
        assert_eq!(url.path, "/?x=1");
        assert_eq!(url.authority, "[::1]:4318");
        assert!(Url::parse("ftp://x/").is_err());
        assert!(Url::parse("http:///v1").is_err());
        assert!(Url::parse("http://user:pw@host/").is_err());
    }
}
