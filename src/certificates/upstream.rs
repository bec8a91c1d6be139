//! The TLS material a pool uses towards its backends: the client
//! certificate it presents (mutual TLS) and the CAs it trusts instead of
//! the system's. Loaded when the pool is built, so a reload picks up a
//! renewed certificate.

use crate::config::model::UpstreamTls;
use crate::values::pem;
use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::CertKey;
use std::sync::Arc;

/// A pool's loaded TLS files.
#[derive(Clone, Default)]
pub struct PeerTls {
    /// Presented to backends that ask for a certificate.
    pub client: Option<Arc<CertKey>>,
    /// Trusted for the backends' certificates.
    pub ca: Option<Arc<CaType>>,
}

impl PeerTls {
    /// Reads the files `tls` names.
    pub fn load(tls: Option<&UpstreamTls>) -> Result<Self, String> {
        let Some(tls) = tls else {
            return Ok(Self::default());
        };
        let client = match &tls.client_cert {
            Some(files) => {
                let (chain, key) = pem::cert_and_key(&files.cert, &files.key)?;
                Some(Arc::new(CertKey::new(chain, key)))
            }
            None => None,
        };
        let ca = match &tls.ca {
            Some(path) => Some(Arc::new(pem::certificates(path)?.into_boxed_slice())),
            None => None,
        };
        Ok(Self { client, ca })
    }

    /// Makes `peer` present the certificate and trust the CAs.
    pub fn apply(&self, peer: &mut HttpPeer) {
        peer.client_cert_key.clone_from(&self.client);
        peer.options.ca.clone_from(&self.ca);
    }
}
