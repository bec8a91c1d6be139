//! A name a verified client certificate carries, as a tenant lists it:
//! `uri:spiffe://prod.example.org/ns/payments/sa/api` (a URI SAN, such
//! as a SPIFFE ID), `dns:batch.internal.example.com` (a DNS SAN),
//! `email:ops@example.com` (an email SAN) or `cn:payments-batch` (the
//! subject's common name). The config and the runtime compare the same
//! normal form: DNS names and the host part of emails in lowercase (both
//! are case-insensitive), URIs and common names exactly as written.

use std::fmt;

/// One certificate name, in its normal form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertName {
    /// A `uniformResourceIdentifier` SAN.
    Uri(String),
    /// A `dNSName` SAN, lowercase.
    Dns(String),
    /// An `rfc822Name` SAN, domain part lowercase.
    Email(String),
    /// The subject's `commonName`.
    CommonName(String),
}

impl CertName {
    /// Reads a tenant's `kind:value` entry; `Err` says what is wrong.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let Some((kind, value)) = entry.split_once(':') else {
            return Err(format!(
                "{entry:?}: write kind:value, kind one of uri, dns, email, cn"
            ));
        };
        if value.is_empty() || value.trim() != value {
            return Err(format!(
                "{entry:?}: the name after {kind}: is empty or padded"
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(format!("{entry:?}: the name holds a control character"));
        }
        match kind {
            "uri" if value.contains(':') => Ok(Self::Uri(value.to_owned())),
            "uri" => Err(format!("{entry:?}: a URI name has a scheme (spiffe://…)")),
            "dns" => Ok(Self::dns(value)),
            "email" if value.contains('@') => Ok(Self::email(value)),
            "email" => Err(format!("{entry:?}: an email name has an @")),
            "cn" => Ok(Self::CommonName(value.to_owned())),
            other => Err(format!(
                "{entry:?}: unknown kind {other:?} (uri, dns, email or cn)"
            )),
        }
    }

    /// A DNS SAN in normal form.
    pub fn dns(name: &str) -> Self {
        Self::Dns(name.to_ascii_lowercase())
    }

    /// An email SAN in normal form (the local part is the owner's to
    /// compare; the domain is not case-sensitive).
    pub fn email(address: &str) -> Self {
        match address.rsplit_once('@') {
            Some((local, domain)) => {
                Self::Email(format!("{local}@{}", domain.to_ascii_lowercase()))
            }
            None => Self::Email(address.to_owned()),
        }
    }
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uri(v) => write!(f, "uri:{v}"),
            Self::Dns(v) => write!(f, "dns:{v}"),
            Self::Email(v) => write!(f, "email:{v}"),
            Self::CommonName(v) => write!(f, "cn:{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_into_their_normal_form() {
        assert_eq!(
            CertName::parse("uri:spiffe://Prod.example.org/ns/a").expect("parses"),
            CertName::Uri("spiffe://Prod.example.org/ns/a".into())
        );
        assert_eq!(
            CertName::parse("dns:Batch.Example.COM").expect("parses"),
            CertName::Dns("batch.example.com".into())
        );
        assert_eq!(
            CertName::parse("email:Ops@Example.com").expect("parses"),
            CertName::Email("Ops@example.com".into())
        );
        assert_eq!(
            CertName::parse("cn:payments batch").expect("parses"),
            CertName::CommonName("payments batch".into())
        );
        let round = CertName::parse("dns:a.example").expect("parses");
        assert_eq!(
            CertName::parse(&round.to_string()).expect("round trip"),
            round
        );
    }

    #[test]
    fn malformed_entries_are_refused_with_the_reason() {
        for (entry, says) in [
            ("spiffe://x", "unknown kind"),
            ("payments", "kind:value"),
            ("dns:", "empty"),
            ("cn: padded", "padded"),
            ("uri:no-scheme", "scheme"),
            ("email:nobody", "@"),
            ("cn:a\u{7}b", "control"),
            ("ip:10.0.0.1", "unknown kind"),
        ] {
            let err = CertName::parse(entry).expect_err("refused");
            assert!(err.contains(says), "{entry}: {err}");
        }
    }
}
