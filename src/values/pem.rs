//! PEM files of TLS material, read the one way `check` judges them and the
//! runtime loads them: certificate chains (leaf first), private keys,
//! CA bundles and certificate revocation lists. Each error names the file
//! and what it lacked, so a bad file is refused with its config line.

use openssl::pkey::{PKey, Private};
use openssl::x509::{X509Crl, X509};
use std::path::Path;

/// Largest PEM file read: a CA bundle or a CRL of a big PKI fits easily.
const MAX_PEM_BYTES: u64 = 16 << 20;

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let cannot = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| cannot(&e))?;
    // Asked before opening: opening a FIFO for reading blocks until a
    // writer comes along, and a device may never end.
    if !meta.is_file() {
        return Err(cannot(&"not a regular file (a FIFO, device or directory)"));
    }
    if meta.len() > MAX_PEM_BYTES {
        return Err(cannot(&format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    std::fs::read(path).map_err(|e| cannot(&e))
}

/// Every certificate in `path`, in file order; at least one.
pub fn certificates(path: &Path) -> Result<Vec<X509>, String> {
    let pem = read(path)?;
    let certs = X509::stack_from_pem(&pem)
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The private key in `path`.
pub fn private_key(path: &Path) -> Result<PKey<Private>, String> {
    let pem = read(path)?;
    PKey::private_key_from_pem(&pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", path.display()))
}

/// A chain and its key, checked to belong together.
pub fn cert_and_key(cert: &Path, key: &Path) -> Result<(Vec<X509>, PKey<Private>), String> {
    let chain = certificates(cert)?;
    let pkey = private_key(key)?;
    belong_together(&chain, &pkey, cert, key)?;
    Ok((chain, pkey))
}

/// Whether `pkey` (read from `key`) is the key of `chain`'s leaf (read
/// from `cert`).
pub fn belong_together(
    chain: &[X509],
    pkey: &PKey<Private>,
    cert: &Path,
    key: &Path,
) -> Result<(), String> {
    let Some(leaf) = chain.first() else {
        return Err(format!("{}: holds no PEM certificate", cert.display()));
    };
    let leaf_key = leaf
        .public_key()
        .map_err(|e| format!("{}: leaf certificate's key: {e}", cert.display()))?;
    if !leaf_key.public_eq(pkey) {
        return Err(format!(
            "{} is not the private key of {}'s first certificate",
            key.display(),
            cert.display()
        ));
    }
    Ok(())
}

/// Every CRL in `path`; at least one. (OpenSSL reads one PEM object at a
/// time: the file is split at its `BEGIN X509 CRL` lines.)
pub fn revocation_lists(path: &Path) -> Result<Vec<X509Crl>, String> {
    let pem = read(path)?;
    const BEGIN: &[u8] = b"-----BEGIN X509 CRL-----";
    let starts = pem
        .windows(BEGIN.len())
        .enumerate()
        .filter(|(_, w)| *w == BEGIN)
        .map(|(at, _)| at);
    let mut out = Vec::new();
    for at in starts {
        let crl = X509Crl::from_pem(&pem[at..])
            .map_err(|e| format!("{}: a CRL that does not parse: {e}", path.display()))?;
        out.push(crl);
    }
    if out.is_empty() {
        return Err(format!("{}: holds no PEM CRL", path.display()));
    }
    Ok(out)
}
