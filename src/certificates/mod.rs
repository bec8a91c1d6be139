//! TLS material tollgate loads from the config's PEM files, and what a
//! verified client certificate says about its holder.
//!
//! - [`listener`]: one listener's TLS context (certificate, key, and for
//!   mutual TLS the CA store with its CRLs), built anew by every config
//!   generation so a reload picks up renewed certificates and CAs;
//! - [`client`]: the names and fingerprint of a verified client
//!   certificate, read once per connection at the end of the handshake;
//! - [`upstream`]: the client certificate and CA bundle a pool uses
//!   towards its backends.

pub mod client;
pub mod listener;
pub mod upstream;
