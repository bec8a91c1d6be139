//! A certificate authority made in the test with OpenSSL: server and
//! client certificates with the names mutual TLS reads (SPIFFE URIs, DNS
//! names, emails, common names), and revocation lists. Files go to a
//! scratch directory; paths are returned as strings for the YAML.

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, CrlNumber, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509CrlBuilder, X509NameBuilder, X509RevokedBuilder, X509};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

static SERIAL: AtomicU32 = AtomicU32::new(1000);

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("pkey")
}

/// What a leaf certificate says.
#[derive(Default, Clone)]
pub struct Leaf<'a> {
    /// Subject common name.
    pub cn: &'a str,
    /// DNS SANs.
    pub dns: &'a [&'a str],
    /// URI SANs (SPIFFE IDs).
    pub uris: &'a [&'a str],
    /// Email SANs.
    pub emails: &'a [&'a str],
    /// IP SANs.
    pub ips: &'a [&'a str],
}

impl<'a> Leaf<'a> {
    /// A leaf known by its common name only.
    pub fn cn(cn: &'a str) -> Self {
        Self {
            cn,
            ..Self::default()
        }
    }

    /// A leaf with URI SANs (SPIFFE IDs).
    pub fn uris(cn: &'a str, uris: &'a [&'a str]) -> Self {
        Self {
            cn,
            uris,
            ..Self::default()
        }
    }

    /// A leaf with DNS SANs.
    pub fn dns(cn: &'a str, dns: &'a [&'a str]) -> Self {
        Self {
            cn,
            dns,
            ..Self::default()
        }
    }
}

/// A certificate and key written to files.
pub struct Issued {
    /// PEM certificate.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Its serial number.
    pub serial: u32,
}

/// A self-signed CA, its files in `dir`.
pub struct Ca {
    dir: PathBuf,
    name: String,
    cert: X509,
    key: PKey<Private>,
    /// PEM file of the CA certificate.
    pub cert_file: String,
}

impl Ca {
    /// A new CA named `name` writing into `dir`.
    pub fn new(dir: &std::path::Path, name: &str) -> Self {
        let key = key();
        let mut subject = X509NameBuilder::new().expect("name");
        subject
            .append_entry_by_nid(Nid::COMMONNAME, name)
            .expect("cn");
        let subject = subject.build();
        let mut b = X509Builder::new().expect("builder");
        b.set_version(2).expect("v3");
        let serial = BigNum::from_u32(SERIAL.fetch_add(1, Ordering::Relaxed)).expect("bn");
        b.set_serial_number(&Asn1Integer::from_bn(&serial).expect("serial"))
            .expect("serial");
        b.set_subject_name(&subject).expect("subject");
        b.set_issuer_name(&subject).expect("issuer");
        b.set_pubkey(&key).expect("pubkey");
        b.set_not_before(&Asn1Time::days_from_now(0).expect("now"))
            .expect("nb");
        b.set_not_after(&Asn1Time::days_from_now(2).expect("later"))
            .expect("na");
        b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("bc");
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .expect("ku"),
        )
        .expect("ku");
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(None, None))
            .expect("ski");
        b.append_extension(ski).expect("ski");
        b.sign(&key, MessageDigest::sha256()).expect("sign");
        let cert = b.build();
        let cert_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_file, cert.to_pem().expect("pem")).expect("write CA");
        Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
            cert,
            key,
            cert_file: cert_file.display().to_string(),
        }
    }

    /// Issues a leaf certificate; `file` names its files.
    pub fn issue(&self, file: &str, leaf: &Leaf<'_>) -> Issued {
        let key = key();
        let mut subject = X509NameBuilder::new().expect("name");
        subject
            .append_entry_by_nid(Nid::ORGANIZATIONNAME, "tollgate tests")
            .expect("o");
        subject
            .append_entry_by_nid(Nid::COMMONNAME, leaf.cn)
            .expect("cn");
        let subject = subject.build();
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let mut b = X509Builder::new().expect("builder");
        b.set_version(2).expect("v3");
        b.set_serial_number(
            &Asn1Integer::from_bn(&BigNum::from_u32(serial).expect("bn")).expect("serial"),
        )
        .expect("serial");
        b.set_subject_name(&subject).expect("subject");
        b.set_issuer_name(self.cert.subject_name()).expect("issuer");
        b.set_pubkey(&key).expect("pubkey");
        b.set_not_before(&Asn1Time::days_from_now(0).expect("now"))
            .expect("nb");
        b.set_not_after(&Asn1Time::days_from_now(1).expect("later"))
            .expect("na");
        let mut san = SubjectAlternativeName::new();
        let mut any = false;
        for d in leaf.dns {
            san.dns(d);
            any = true;
        }
        for u in leaf.uris {
            san.uri(u);
            any = true;
        }
        for e in leaf.emails {
            san.email(e);
            any = true;
        }
        for ip in leaf.ips {
            san.ip(ip);
            any = true;
        }
        if any {
            let ext = san
                .build(&b.x509v3_context(Some(&self.cert), None))
                .expect("san");
            b.append_extension(ext).expect("san");
        }
        b.sign(&self.key, MessageDigest::sha256()).expect("sign");
        let cert = b.build();
        let cert_file = self.dir.join(format!("{}-{file}.pem", self.name));
        let key_file = self.dir.join(format!("{}-{file}.key", self.name));
        std::fs::write(&cert_file, cert.to_pem().expect("pem")).expect("write cert");
        std::fs::write(&key_file, key.private_key_to_pem_pkcs8().expect("key pem"))
            .expect("write key");
        Issued {
            cert: cert_file.display().to_string(),
            key: key_file.display().to_string(),
            serial,
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self, file: &str, cn: &str) -> Issued {
        self.issue(
            file,
            &Leaf {
                cn,
                dns: &["localhost"],
                ips: &["127.0.0.1"],
                ..Leaf::default()
            },
        )
    }

    /// A CRL revoking `serials`, written to `file`; returns its path.
    pub fn crl(&self, file: &str, serials: &[u32]) -> String {
        let mut b = X509CrlBuilder::new().expect("crl builder");
        b.set_issuer_name(self.cert.subject_name()).expect("issuer");
        b.set_last_update(&Asn1Time::days_from_now(0).expect("now"))
            .expect("last");
        b.set_next_update(&Asn1Time::days_from_now(1).expect("later"))
            .expect("next");
        for &serial in serials {
            let mut r = X509RevokedBuilder::new().expect("revoked");
            r.set_serial_number(
                &Asn1Integer::from_bn(&BigNum::from_u32(serial).expect("bn")).expect("serial"),
            )
            .expect("serial");
            r.set_revocation_date(&Asn1Time::days_from_now(0).expect("now"))
                .expect("date");
            b.add_revoked(r.build()).expect("add");
        }
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(
                &X509Builder::new()
                    .expect("ctx")
                    .x509v3_context(Some(&self.cert), None),
            )
            .expect("aki");
        b.append_extension(aki).expect("aki");
        let number = BigNum::from_u32(SERIAL.fetch_add(1, Ordering::Relaxed)).expect("bn");
        b.append_extension(CrlNumber::new(number).expect("n").build().expect("n"))
            .expect("crl number");
        b.sign(&self.key, MessageDigest::sha256())
            .expect("sign crl");
        let crl = b.build().expect("crl");
        let path = self.dir.join(format!("{}-{file}.crl.pem", self.name));
        std::fs::write(&path, crl.to_pem().expect("crl pem")).expect("write crl");
        path.display().to_string()
    }
}
