//! Everything config validation asks of the world outside the file: the
//! file itself, environment variables (secrets), DNS, and the TLS files a
//! listener names. Kept in one place so the checks stay pure functions of
//! the text plus these answers.

use super::error::ConfigError;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

/// Reads the config file.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.display().to_string(),
        source,
    })
}

/// A secret from an environment variable, trimmed; the message to report
/// when it is missing or empty.
pub fn env_secret(var: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
        _ => Err(format!("environment variable {var} is not set or empty")),
    }
}

/// Resolves a backend `host:port` once, at load time, preferring IPv4.
pub fn resolve(raw: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let has_port = raw
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !has_port {
        return Err(format!("invalid backend address {raw:?} (write host:port)"));
    }
    let addrs: Vec<SocketAddr> = raw
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve backend {raw:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("backend {raw:?} resolved to no address"))
}

/// Checks that a file a listener needs (certificate, key) can be opened.
pub fn readable_file(path: &Path) -> Result<(), String> {
    std::fs::metadata(path)
        .map(drop)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}
