//! A TLS listener's context, compiled from its config: Pingora's
//! acceptor is built once at start-up, and its certificate callback
//! switches each handshake to the context of the live config generation
//! (`SSL_set_SSL_CTX`, as nginx does per server name) — so a reload
//! serves the renewed certificate and verifies clients against the new
//! CA bundle and CRLs without dropping a connection.

use crate::config::model::ListenerTls;
use crate::values::pem;
use openssl::ssl::{
    select_next_proto, AlpnError, SslAcceptor, SslContext, SslFiletype, SslMethod, SslVerifyMode,
};
use openssl::stack::Stack;
use openssl::x509::store::{X509Lookup, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::X509Name;

/// ALPN offer of tollgate's TLS listeners: HTTP/2 first, then HTTP/1.1.
const ALPN_H2_H1: &[u8] = b"\x02h2\x08http/1.1";

/// The live TLS settings of one listener.
pub struct ListenerContext {
    /// Certificate, key, ALPN, and the client-certificate CA store.
    pub context: SslContext,
    /// Whether (and how firmly) a client certificate is asked for.
    pub verify: SslVerifyMode,
    /// Whether this listener asks for client certificates at all.
    pub mutual: bool,
}

impl std::fmt::Debug for ListenerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerContext")
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

fn openssl(what: &'static str) -> impl Fn(openssl::error::ErrorStack) -> String {
    move |e| format!("{what}: {e}")
}

/// Builds the context of `tls` from its files (Mozilla's intermediate
/// profile, as Pingora's own listeners use).
pub fn build(tls: &ListenerTls) -> Result<ListenerContext, String> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
        .map_err(openssl("creating the TLS context"))?;
    let (chain, key) = pem::cert_and_key(&tls.cert, &tls.key)?;
    let in_cert = |what: &'static str| {
        let file = tls.cert.display().to_string();
        move |e: openssl::error::ErrorStack| format!("{file}: {what}: {e}")
    };
    builder
        .set_certificate(&chain[0])
        .map_err(in_cert("certificate"))?;
    for extra in &chain[1..] {
        builder
            .add_extra_chain_cert(extra.clone())
            .map_err(in_cert("chain certificate"))?;
    }
    builder
        .set_private_key(&key)
        .map_err(openssl("private key"))?;
    builder.set_alpn_select_callback(|_, offered| {
        select_next_proto(ALPN_H2_H1, offered).ok_or(AlpnError::NOACK)
    });
    let mut verify = SslVerifyMode::NONE;
    if let Some(client) = &tls.client {
        let cas = pem::certificates(&client.ca)?;
        let mut store = X509StoreBuilder::new().map_err(openssl("creating the CA store"))?;
        let mut names = Stack::<X509Name>::new().map_err(openssl("CA names"))?;
        for ca in cas {
            names
                .push(ca.subject_name().to_owned().map_err(openssl("CA name"))?)
                .map_err(openssl("CA names"))?;
            store.add_cert(ca).map_err(openssl("adding a CA"))?;
        }
        if let Some(crl) = &client.crl {
            pem::revocation_lists(crl)?;
            store
                .add_lookup(X509Lookup::file())
                .map_err(openssl("CRL lookup"))?
                .load_crl_file(crl, SslFiletype::PEM)
                .map_err(|e| format!("{}: {e}", crl.display()))?;
            // The leaf's issuer must have a CRL in the file: a missing
            // one fails the handshake rather than skipping the check.
            store
                .set_flags(X509VerifyFlags::CRL_CHECK)
                .map_err(openssl("CRL checking"))?;
        }
        builder
            .set_verify_cert_store(store.build())
            .map_err(openssl("the CA store"))?;
        builder.set_client_ca_list(names);
        builder
            .set_session_id_context(b"tollgate-mtls")
            .map_err(openssl("session id context"))?;
        verify = match client.required {
            true => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            false => SslVerifyMode::PEER,
        };
    }
    builder.set_verify(verify);
    Ok(ListenerContext {
        context: builder.build().into_context(),
        verify,
        mutual: tls.client.is_some(),
    })
}
