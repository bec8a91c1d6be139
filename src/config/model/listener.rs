//! The validated listeners: addresses, TLS files and client-certificate
//! policy, and the list of certificate files a config names.

use super::Config;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A client-facing listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Address to bind.
    pub addr: SocketAddr,
    /// TLS certificate and key, for HTTPS (and HTTP/2 through ALPN).
    pub tls: Option<ListenerTls>,
    /// Cleartext HTTP/2 with prior knowledge accepted beside HTTP/1.1.
    pub h2c: bool,
}

/// PEM files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Mutual TLS: which client certificates are accepted; `None`: none asked for.
    pub client: Option<ClientCertificates>,
}

/// `tls.client_certificates` of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificates {
    /// PEM bundle of the accepted CAs.
    pub ca: PathBuf,
    /// PEM file of CRLs checked for every client certificate.
    pub crl: Option<PathBuf>,
    /// A client without a certificate is refused at the handshake.
    pub required: bool,
}

impl Config {
    /// Every certificate, key, CA bundle and CRL file the config names
    /// (listeners and upstream pools): what a watch on the config must
    /// also look at, since a reload is what re-reads them.
    pub fn certificate_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for tls in self.listeners.iter().filter_map(|l| l.tls.as_ref()) {
            files.extend([tls.cert.clone(), tls.key.clone()]);
            if let Some(client) = &tls.client {
                files.push(client.ca.clone());
                files.extend(client.crl.clone());
            }
        }
        for tls in self.upstreams.iter().filter_map(|u| u.tls.as_ref()) {
            files.extend(tls.ca.clone());
            if let Some(pair) = &tls.client_cert {
                files.extend([pair.cert.clone(), pair.key.clone()]);
            }
        }
        files.sort();
        files.dedup();
        files
    }
}
