//! Before a TLS handshake. Pingora runs the handshake before the proxy
//! sees a connection (`listening.rs`, with a fixed 60 s timeout), so a TCP
//! connection that never starts TLS is neither counted by
//! `limits.max_connections` nor bound by the head deadline. This runs in
//! Pingora's pre-TLS hook (`PreTlsProcess`): the connection takes a slot
//! of the same connection limits, and its ClientHello — the first TLS
//! record, whole — must arrive within `limits.header_timeout` of the
//! accept, or the connection is closed. The slot is given back once the
//! ClientHello is in; the gate counts the connection again when the
//! handshake is done.

use super::{OpenConnections, Refusal};
use crate::metrics::Metrics;
use crate::state::AppState;
use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, Peek};
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;

/// TLS record content type of a handshake message (RFC 8446 §5.1).
const HANDSHAKE: u8 = 22;
/// The largest TLS record: 2^14 bytes of plaintext plus expansion.
const MAX_RECORD: usize = (1 << 14) + 2048;

/// The pre-TLS hook of the proxy's TLS listeners.
pub struct ClientHelloDeadline {
    pub(super) state: Arc<AppState>,
    pub(super) open: Arc<OpenConnections>,
}

#[async_trait]
impl PreTlsProcess for ClientHelloDeadline {
    async fn process(&self, stream: &mut L4Stream) -> Result<()> {
        let limits = self.state.gateway().config.limits;
        let metrics: &Metrics = &self.state.metrics;
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let _slot = self
            .open
            .admit(ip, limits.max_connections, limits.max_connections_per_ip)
            .map_err(|reason: Refusal| {
                metrics
                    .connections_refused
                    .with_label_values(&[reason.label()])
                    .inc();
                Error::explain(
                    ErrorType::AcceptError,
                    format!("over {} before the TLS handshake", reason.label()),
                )
            })?;
        match tokio::time::timeout(limits.header_timeout, client_hello(stream)).await {
            Ok(read) => read,
            Err(_) => {
                metrics.header_timeouts.inc();
                Err(Error::explain(
                    ErrorType::ReadTimedout,
                    format!(
                        "no TLS ClientHello within {:?} of the accept",
                        limits.header_timeout
                    ),
                ))
            }
        }
    }
}

/// Waits until the first TLS record is buffered whole, and leaves it in
/// the stream for the handshake.
async fn client_hello(stream: &mut L4Stream) -> Result<()> {
    let mut header = [0u8; 5];
    stream
        .try_peek(&mut header)
        .await
        .map_err(|e| Error::because(ErrorType::ReadError, "reading the TLS record header", e))?;
    let length = usize::from(header[3]) << 8 | usize::from(header[4]);
    if header[0] != HANDSHAKE || length == 0 || length > MAX_RECORD {
        return Err(Error::explain(
            ErrorType::InvalidHTTPHeader,
            "the connection did not start with a TLS handshake record",
        ));
    }
    let mut record = vec![0u8; 5 + length];
    stream
        .try_peek(&mut record)
        .await
        .map_err(|e| Error::because(ErrorType::ReadError, "reading the TLS ClientHello", e))?;
    Ok(())
}

/// The handshake of a TLS listener, from the live config generation:
/// once the ClientHello is read, the connection switches to the context
/// of its listener's current certificate, key and client CAs (so a
/// reload serves a renewed certificate and a new CA bundle or CRL at the
/// next handshake), and once it is done, a verified client certificate's
/// names are kept on the connection (`SslDigest::extension`) for identity
/// and forwarding. Pingora's `TlsAccept` is the hook; the switch is
/// `SSL_set_SSL_CTX`, as nginx does per server name.
pub struct ListenerHandshake {
    /// The listener's address: its key in every generation.
    pub addr: std::net::SocketAddr,
    /// The live generations.
    pub state: Arc<AppState>,
}

#[async_trait]
impl pingora::listeners::TlsAccept for ListenerHandshake {
    async fn certificate_callback(&self, ssl: &mut pingora::protocols::tls::TlsRef) {
        let gateway = self.state.gateway();
        let Some(listener) = gateway.listener_context(self.addr) else {
            // Never: every TLS listener of the running process has a
            // context in every generation (reload refuses removing one's
            // TLS). Without a certificate the handshake fails.
            log::error!(
                "TLS listener {}: no certificate in the live config",
                self.addr
            );
            return;
        };
        if let Err(e) = ssl.set_ssl_context(&listener.context) {
            log::error!(
                "TLS listener {}: switching to the live certificate: {e}",
                self.addr
            );
            return;
        }
        if !listener.mutual {
            ssl.set_verify(listener.verify);
            return;
        }
        // OpenSSL decides; the callback only counts its first refusal.
        let counted = std::sync::atomic::AtomicBool::new(false);
        let refusals = self.state.metrics.client_certificates.clone();
        let label = self.addr.to_string();
        ssl.set_verify_callback(listener.verify, move |ok, store| {
            if !ok && !counted.swap(true, std::sync::atomic::Ordering::Relaxed) {
                let result = refusal_reason(store.error().as_raw());
                refusals.with_label_values(&[&label, result]).inc();
            }
            ok
        });
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &pingora::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let cert = crate::certificates::client::ClientCertificate::of_handshake(ssl);
        let mutual = self
            .state
            .gateway()
            .listener_context(self.addr)
            .is_some_and(|l| l.mutual);
        if mutual {
            let result = if cert.is_some() { "verified" } else { "absent" };
            self.state
                .metrics
                .client_certificates
                .with_label_values(&[&self.addr.to_string(), result])
                .inc();
        }
        Some(Arc::new(cert?))
    }
}

/// The `tollgate_client_certificates_total` result of an OpenSSL
/// verification error (`X509_V_ERR_*`).
fn refusal_reason(code: i32) -> &'static str {
    match code {
        23 => "revoked",                           // CERT_REVOKED
        9 | 10 => "expired",                       // CERT_NOT_YET_VALID, CERT_HAS_EXPIRED
        2 | 18 | 19 | 20 | 21 | 27 => "untrusted", // no issuer, self-signed, untrusted
        3 | 11 | 12 | 33 => "crl_unavailable",     // no CRL, CRL not yet valid or expired
        _ => "invalid",
    }
}
