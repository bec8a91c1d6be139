//! What a verified client certificate says: its names (the SANs and the
//! subject's common name, which tenants list) and the description the
//! upstream receives in `auth.client_certificate_header`. Read once per
//! connection, when the handshake completes, and only from a certificate
//! the listener's CAs verified.

use crate::values::cert_name::CertName;
use http::HeaderValue;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::ssl::SslRef;
use openssl::x509::{X509Ref, X509VerifyResult};
use std::fmt::Write;

/// Most names read from one certificate: a certificate with thousands of
/// SANs (its CA trusts it, still) costs no more than this.
const MAX_NAMES: usize = 64;

/// A client certificate the listener verified.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// URI SANs, then DNS SANs, then email SANs, then the subject's
    /// common name: the order in which a tenant is looked up.
    pub names: Vec<CertName>,
    /// The subject, RFC 4514 (`CN=svc,O=Example`).
    pub subject: String,
    /// SHA-256 of the certificate (DER), lowercase hex.
    pub sha256: String,
    /// Envoy's `x-forwarded-client-cert` element form:
    /// `Hash=…;Subject="…";URI=…;DNS=…;Email=…`.
    pub forward: HeaderValue,
}

impl ClientCertificate {
    /// The verified peer certificate of a finished handshake, if any.
    pub fn of_handshake(ssl: &SslRef) -> Option<Self> {
        if ssl.verify_result() != X509VerifyResult::OK {
            return None;
        }
        let cert = ssl.peer_certificate()?;
        Some(Self::read(&cert))
    }

    /// Reads `cert`'s names and fingerprint.
    pub fn read(cert: &X509Ref) -> Self {
        let mut uris = Vec::new();
        let mut dns = Vec::new();
        let mut emails = Vec::new();
        if let Some(sans) = cert.subject_alt_names() {
            for san in sans.iter().take(MAX_NAMES) {
                if let Some(u) = san.uri() {
                    uris.push(CertName::Uri(u.to_owned()));
                } else if let Some(d) = san.dnsname() {
                    dns.push(CertName::dns(d));
                } else if let Some(e) = san.email() {
                    emails.push(CertName::email(e));
                }
            }
        }
        let common_name = cert
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .and_then(|e| e.data().to_string().ok())
            .map(CertName::CommonName);
        let names: Vec<CertName> = uris
            .into_iter()
            .chain(dns)
            .chain(emails)
            .chain(common_name)
            .collect();
        let subject = subject_of(cert);
        let sha256 = cert
            .digest(MessageDigest::sha256())
            .map(|d| hex::encode(&*d))
            .unwrap_or_default();
        let forward = forward_value(&sha256, &subject, &names);
        Self {
            names,
            subject,
            sha256,
            forward,
        }
    }
}

/// The subject as RFC 4514 writes it: last RDN first, `,` between,
/// special characters escaped.
fn subject_of(cert: &X509Ref) -> String {
    let mut parts: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|entry| {
            let key = entry
                .object()
                .nid()
                .short_name()
                .map(str::to_owned)
                .unwrap_or_else(|_| entry.object().to_string());
            let value = entry.data().to_string().unwrap_or_default();
            format!("{key}={}", rfc4514_escape(&value))
        })
        .collect();
    parts.reverse();
    parts.join(",")
}

fn rfc4514_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i + 1 == value.len() && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `Hash=…;Subject="…";URI=…;DNS=…;Email=…`, every value made of
/// visible ASCII: `"` and `\` escaped inside quotes, any other byte
/// outside printable ASCII written `\xHH`.
fn forward_value(sha256: &str, subject: &str, names: &[CertName]) -> HeaderValue {
    let mut out = format!("Hash={sha256};Subject=");
    quoted(&mut out, subject);
    for name in names {
        let (key, value) = match name {
            CertName::Uri(v) => ("URI", v),
            CertName::Dns(v) => ("DNS", v),
            CertName::Email(v) => ("Email", v),
            CertName::CommonName(_) => continue, // in Subject
        };
        out.push(';');
        out.push_str(key);
        out.push('=');
        if value
            .bytes()
            .any(|b| matches!(b, b',' | b';' | b'=' | b'"'))
        {
            quoted(&mut out, value);
        } else {
            visible(&mut out, value);
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("Hash=invalid"))
}

fn quoted(out: &mut String, value: &str) {
    out.push('"');
    for b in value.bytes() {
        if b == b'"' || b == b'\\' {
            out.push('\\');
        }
        push_visible(out, b);
    }
    out.push('"');
}

fn visible(out: &mut String, value: &str) {
    for b in value.bytes() {
        push_visible(out, b);
    }
}

fn push_visible(out: &mut String, b: u8) {
    if (0x20..0x7f).contains(&b) {
        out.push(b as char);
    } else {
        let _ = write!(out, "\\x{b:02x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_values_are_escaped_as_rfc_4514_says() {
        assert_eq!(rfc4514_escape("a,b"), "a\\,b");
        assert_eq!(rfc4514_escape(" lead"), "\\ lead");
        assert_eq!(rfc4514_escape("trail "), "trail\\ ");
        assert_eq!(rfc4514_escape("#x"), "\\#x");
        assert_eq!(rfc4514_escape("plain"), "plain");
    }

    #[test]
    fn the_forwarded_description_is_one_visible_ascii_field() {
        let names = vec![
            CertName::Uri("spiffe://prod/ns/a".into()),
            CertName::Dns("svc.example".into()),
            CertName::Email("a;b@example.com".into()),
            CertName::CommonName("svc".into()),
        ];
        let v = forward_value("ab12", "CN=sv\"c\u{e9},O=Ex", &names);
        assert_eq!(
            v.to_str().expect("visible ASCII"),
            "Hash=ab12;Subject=\"CN=sv\\\"c\\xc3\\xa9,O=Ex\";URI=spiffe://prod/ns/a;DNS=svc.example;Email=\"a;b@example.com\""
        );
    }
}
