//! Everything config validation asks of the world outside the file: the
//! file itself, environment variables (secrets), DNS, and the TLS files a
//! listener names. Kept in one place so the checks stay pure functions of
//! the text plus these answers.

use super::error::ConfigError;
use std::path::Path;

/// Largest config file read: far above any real deployment, small enough
/// that a wrong path (a log, a disk image) is refused rather than parsed.
pub const MAX_CONFIG_SIZE: u64 = 64 * 1024 * 1024;

/// Reads the config file: a regular file of at most [`MAX_CONFIG_SIZE`]
/// bytes (a FIFO or `/dev/zero` would never end).
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let error = |source| ConfigError::Read {
        file: path.display().to_string(),
        source,
    };
    let file = regular_file(path).map_err(error)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(error)?;
    if text.len() as u64 > MAX_CONFIG_SIZE {
        return Err(error(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_CONFIG_SIZE / (1024 * 1024)
        ))));
    }
    Ok(text)
}

/// Opens `path` for reading if it is a regular file.
fn regular_file(path: &Path) -> std::io::Result<std::fs::File> {
    // Asked before opening: opening a FIFO for reading blocks until some
    // writer comes along.
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::other(
            "not a regular file (a FIFO, device or directory)",
        ));
    }
    std::fs::File::open(path)
}

/// A secret from an environment variable, trimmed; the message to report
/// when it is missing or empty.
pub fn env_secret(var: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
        _ => Err(format!("environment variable {var} is not set or empty")),
    }
}
