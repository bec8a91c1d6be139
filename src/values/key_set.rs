//! A JSON Web Key Set (RFC 7517) as verification uses it: the signing keys
//! an issuer publishes, by key id, each with the algorithm it is for.

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Whether `alg` is an HMAC algorithm (a shared secret, not a key set).
pub fn is_hmac(alg: Algorithm) -> bool {
    alg.family() == AlgorithmFamily::Hmac
}

/// One usable public key.
struct KeyEntry {
    /// Its `kid`, if it has one.
    kid: Option<String>,
    /// The key, ready for jsonwebtoken.
    key: DecodingKey,
    /// Its `alg`, if the set pins one: then only that algorithm may use it.
    alg: Option<Algorithm>,
}

/// The keys of one issuer, as last read.
pub struct KeySet {
    entries: Vec<KeyEntry>,
    by_kid: HashMap<String, usize>,
    /// SHA-256 over the usable keys: equal sets have equal fingerprints,
    /// so a refresh that changed nothing keeps verified tokens valid.
    pub fingerprint: [u8; 32],
}

/// What a token's `kid` and `alg` find in a set.
pub enum Lookup<'a> {
    /// The key to verify with.
    Found(&'a DecodingKey),
    /// The set has no key by that id (or, for a token without `kid`, no
    /// single key of that algorithm's type).
    UnknownKid,
    /// The key exists but is not for this algorithm (its `alg`, or its
    /// type: an RSA key never verifies an HMAC or EC signature).
    WrongAlgorithm,
}

impl KeySet {
    /// A set with no keys (before the first fetch).
    pub fn empty() -> Self {
        Self {
            entries: Vec::new(),
            by_kid: HashMap::new(),
            fingerprint: [0; 32],
        }
    }

    /// Parses a JWKS document. Keys that are not for signatures (`use:
    /// enc`), or of a type or algorithm this build does not verify, are
    /// skipped; a document that is not a key set, or has no usable key, is
    /// an error (the last good set is kept then).
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(body)
            .map_err(|e| format!("not a JSON Web Key Set ({{\"keys\": [...]}}): {e}"))?;
        let mut set = Self::empty();
        let mut digest = Sha256::new();
        for raw in document.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(a) => match a.to_string().parse::<Algorithm>() {
                    Ok(alg) => Some(alg),
                    Err(_) => continue, // an encryption algorithm
                },
            };
            // A symmetric key in a published set is no secret: never an
            // HMAC key (HMAC secrets come from `secret_env` only).
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            if key.family() == AlgorithmFamily::Hmac {
                continue;
            }
            if alg.is_some_and(|a| a.family() != key.family()) {
                continue;
            }
            let kid = jwk.common.key_id.clone();
            if let Some(kid) = &kid {
                if set.by_kid.contains_key(kid) {
                    return Err(format!("two keys have kid {kid:?}"));
                }
                set.by_kid.insert(kid.clone(), set.entries.len());
            }
            digest.update(raw.to_string().as_bytes());
            digest.update([0]);
            set.entries.push(KeyEntry { kid, key, alg });
        }
        if set.entries.is_empty() {
            return Err("no signing key this proxy can use (RSA, EC P-256/P-384, Ed25519)".into());
        }
        set.fingerprint = digest.finalize().into();
        Ok(set)
    }

    /// How many usable keys the set has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set has no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key ids, for the health report.
    pub fn kids(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter_map(|e| e.kid.as_deref())
            .collect()
    }

    /// The key a token with `kid` signed with `alg` is verified with. A
    /// token without `kid` is accepted only when exactly one key of the
    /// algorithm's type is in the set (never tried against several).
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        let fits = |e: &KeyEntry| e.alg.map_or(e.key.family() == alg.family(), |a| a == alg);
        let entry = match kid {
            Some(kid) => match self.by_kid.get(kid) {
                Some(&i) => &self.entries[i],
                None => return Lookup::UnknownKid,
            },
            None => {
                let mut fitting = self.entries.iter().filter(|e| fits(e));
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => only,
                    _ => return Lookup::UnknownKid,
                }
            }
        };
        if fits(entry) {
            Lookup::Found(&entry.key)
        } else {
            Lookup::WrongAlgorithm
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    fn rsa(kid: &str, alg: Option<&str>) -> serde_json::Value {
        let mut key = serde_json::json!({"kty": "RSA", "kid": kid, "n": RSA_N, "e": "AQAB"});
        if let Some(alg) = alg {
            key["alg"] = alg.into();
        }
        key
    }

    fn set(keys: Vec<serde_json::Value>) -> Result<KeySet, String> {
        KeySet::parse(serde_json::json!({ "keys": keys }).to_string().as_bytes())
    }

    #[test]
    fn a_key_is_found_by_kid_only_for_its_algorithm_and_type() {
        let keys = set(vec![rsa("a", Some("RS256")), rsa("b", None)]).expect("set");
        assert!(matches!(
            keys.find(Some("a"), Algorithm::RS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            keys.find(Some("a"), Algorithm::PS256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            keys.find(Some("b"), Algorithm::PS256),
            Lookup::Found(_)
        ));
        // An RSA key's bytes are never an HMAC secret, nor an EC key.
        assert!(matches!(
            keys.find(Some("b"), Algorithm::HS256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            keys.find(Some("b"), Algorithm::ES256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            keys.find(Some("c"), Algorithm::RS256),
            Lookup::UnknownKid
        ));
        // Without kid: two RSA keys fit, so neither is guessed.
        assert!(matches!(
            keys.find(None, Algorithm::RS256),
            Lookup::UnknownKid
        ));
    }

    #[test]
    fn encryption_keys_and_unknown_types_are_skipped_and_an_empty_set_refused() {
        let keys = set(vec![
            rsa("sig", None),
            serde_json::json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB"}),
            serde_json::json!({"kty": "oct", "kid": "sym", "k": "c2VjcmV0"}),
            serde_json::json!({"kty": "XYZ", "kid": "odd"}),
        ])
        .expect("set");
        assert_eq!(keys.kids(), vec!["sig"]);
        assert!(set(vec![serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})]).is_err());
        assert!(KeySet::parse(b"<html>").is_err());
        assert!(set(vec![rsa("a", None), rsa("a", None)]).is_err());
    }

    #[test]
    fn equal_sets_have_equal_fingerprints() {
        let one = set(vec![rsa("a", None)]).expect("set");
        let same = set(vec![rsa("a", None)]).expect("set");
        let other = set(vec![rsa("b", None)]).expect("set");
        assert_eq!(one.fingerprint, same.fingerprint);
        assert_ne!(one.fingerprint, other.fingerprint);
    }
}
