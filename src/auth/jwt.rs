//! Bearer JWTs (RFC 7519) as identities: the signature checked with the
//! key the token's `kid` names in its issuer's set, the algorithm taken
//! from the issuer's list (never from the token alone), `iss`, `aud`,
//! `exp`, `nbf` and `iat` checked with the leeway, then the tenant read
//! from its claim and its tier decided. Signatures and registered claims
//! are jsonwebtoken's; what is ours is choosing the key and the reasons.

use super::keyring::{KeyRing, PublishedKeySet};
use super::verdict::{Failure, TokenTenant};
use super::verified::{Refused, RefusedTokens, Verified, VerifiedTokens};
use crate::config::model::{normal_typ, ClaimableBy, JwtConfig, TenantConfig};
use crate::values::key_set::{is_hmac, Lookup};
use base64::Engine as _;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// One trusted issuer, compiled.
struct Issuer {
    iss: String,
    /// Validation per accepted algorithm (jsonwebtoken wants the list).
    validations: Vec<(Algorithm, Validation)>,
    keys: Option<Arc<PublishedKeySet>>,
    secret: Option<DecodingKey>,
    /// Whether its tokens may name tenants the config does not list.
    unlisted_tenants: bool,
    /// Accepted `typ` values, normalised (empty: not checked).
    types: Vec<String>,
}

/// A configured tenant as tokens see it.
struct KnownTenant {
    tier: usize,
    /// Indexes of the issuers that may name it; `None`: any.
    issuers: Option<Vec<usize>>,
}

/// The compiled `auth.jwt` of one config generation.
pub struct JwtVerifier {
    issuers: Vec<Issuer>,
    tenant_claim: String,
    tier_claim: Option<String>,
    default_tier: usize,
    leeway: u64,
    forward_claims: Vec<(String, HeaderName)>,
    /// Configured tenants: tier and who may name them, by name.
    tenant_tiers: HashMap<Box<str>, KnownTenant>,
    /// Tiers by name.
    tier_names: HashMap<Box<str>, usize>,
    verified: VerifiedTokens,
    /// Tokens refused, so a replayed forgery costs a lookup.
    refused: RefusedTokens,
    ring: Arc<KeyRing>,
}

/// How long a refused token is remembered (seconds).
const REFUSED_FOR: u64 = 60;

/// At most this many refused tokens are remembered (fewer when
/// `cache_size` is smaller).
const MAX_REFUSED: usize = 10_000;

/// What a bearer value is.
pub enum Bearer {
    /// Not a JWT: an API key.
    ApiKey,
    /// A JWT that verified.
    Token(Arc<TokenTenant>),
    /// A JWT that did not.
    Refused(Failure),
}

impl JwtVerifier {
    /// Compiles `config`; key sources come from (and stay in) `ring`.
    pub fn new(
        config: &JwtConfig,
        ring: &Arc<KeyRing>,
        tenants: &[TenantConfig],
        tiers: &[Box<str>],
    ) -> Self {
        let issuers = config
            .issuers
            .iter()
            .map(|i| Issuer {
                iss: i.issuer.clone(),
                validations: i
                    .algorithms
                    .iter()
                    .map(|&alg| {
                        let mut v = Validation::new(alg);
                        v.leeway = config.leeway.as_secs();
                        v.validate_nbf = true;
                        v.set_issuer(&[&i.issuer]);
                        let mut required = vec!["exp", "iss"];
                        if i.audiences.is_empty() {
                            v.validate_aud = false;
                        } else {
                            v.set_audience(&i.audiences);
                            required.push("aud");
                        }
                        v.set_required_spec_claims(&required);
                        (alg, v)
                    })
                    .collect(),
                keys: i.jwks.as_ref().map(|j| ring.source(j)),
                secret: i
                    .secret
                    .as_ref()
                    .and_then(|s| DecodingKey::from_secret(s.expose().as_bytes()).ok()),
                unlisted_tenants: i.unlisted_tenants,
                types: i.types.clone(),
            })
            .collect();
        let issuer_index = |iss: &String| config.issuers.iter().position(|i| &i.issuer == iss);
        let tenant_tiers = tenants
            .iter()
            .map(|t| {
                let issuers = match &t.claimable_by {
                    ClaimableBy::AnyIssuer => None,
                    ClaimableBy::Issuers(list) => {
                        Some(list.iter().filter_map(issuer_index).collect())
                    }
                };
                let known = KnownTenant {
                    tier: t.tier,
                    issuers,
                };
                (t.name.as_str().into(), known)
            })
            .collect();
        Self {
            issuers,
            tenant_claim: config.tenant_claim.clone(),
            tier_claim: config.tier_claim.clone(),
            default_tier: config.default_tier,
            leeway: config.leeway.as_secs(),
            forward_claims: config.forward_claims.clone(),
            tenant_tiers,
            tier_names: tiers
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect(),
            verified: VerifiedTokens::new(config.cache_size),
            refused: RefusedTokens::new(config.cache_size.min(MAX_REFUSED)),
            ring: ring.clone(),
        }
    }

    /// Before a bearer value that has a JWT's shape is read: waits (each
    /// source at most its fetch `timeout`) for the key sets that were
    /// never fetched yet, so a valid token is not refused because the
    /// process is seconds old. One atomic load per source afterwards.
    /// True when it waited for a fetch.
    pub async fn await_first_keys(&self, bearer: &str) -> bool {
        if !has_jwt_shape(bearer) {
            return false;
        }
        let mut waited = false;
        for source in self.key_sets() {
            waited |= source.first_fetch(source.config.timeout).await;
        }
        waited
    }

    /// The key sources this generation reads, for [`KeyRing::schedule`].
    pub fn key_sets(&self) -> impl Iterator<Item = &Arc<PublishedKeySet>> {
        self.issuers.iter().filter_map(|i| i.keys.as_ref())
    }

    /// Reads a bearer value whose SHA-256 is `digest`: an API key unless
    /// it has a JWT's shape and header; else the token's tenant or why not.
    pub fn read(&self, value: &str, digest: &[u8; 32]) -> Bearer {
        if !has_jwt_shape(value) {
            return Bearer::ApiKey;
        }
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(known) = self.verified.get(digest, now) {
            if self.still_current(&known) {
                return Bearer::Token(known.tenant);
            }
            self.verified.remove(digest);
        }
        if let Some(refused) = self.refused.get(digest, now) {
            if self.still_refused(&refused) {
                return Bearer::Refused(refused.failure);
            }
            self.refused.remove(digest);
        }
        let mut parts = value.split('.');
        let (Some(header), Some(payload)) = (parts.next(), parts.next()) else {
            return Bearer::ApiKey;
        };
        let Some(header) = json_part(header) else {
            return Bearer::ApiKey;
        };
        if !header.contains_key("alg") {
            return Bearer::ApiKey;
        }
        let mut decided = None;
        match self.verify(value, &header, payload, now, &mut decided) {
            Ok(verified) => {
                let tenant = verified.tenant.clone();
                self.verified.insert(*digest, verified);
                Bearer::Token(tenant)
            }
            Err(failure) => {
                // Time or a key refresh can turn these into successes.
                if !matches!(failure, Failure::NotYetValid | Failure::UnknownKid) {
                    let (issuer, fingerprint) = decided.unwrap_or((usize::MAX, [0; 32]));
                    let refused = Refused {
                        failure,
                        until: now.saturating_add(REFUSED_FOR),
                        issuer,
                        fingerprint,
                    };
                    self.refused.insert(*digest, refused);
                }
                Bearer::Refused(failure)
            }
        }
    }

    /// Whether a remembered refusal still holds: always, unless a key set
    /// decided it and has changed since.
    fn still_refused(&self, refused: &Refused) -> bool {
        match self
            .issuers
            .get(refused.issuer)
            .and_then(|i| i.keys.as_ref())
        {
            Some(keys) if refused.fingerprint != [0; 32] => {
                keys.keys().fingerprint == refused.fingerprint
            }
            _ => true,
        }
    }

    /// Whether a remembered token's key set is still the one that verified it.
    fn still_current(&self, known: &Verified) -> bool {
        match self.issuers.get(known.issuer) {
            Some(issuer) => match &issuer.keys {
                Some(keys) if known.fingerprint != [0; 32] => {
                    keys.keys().fingerprint == known.fingerprint
                }
                _ => true,
            },
            None => false,
        }
    }

    fn verify(
        &self,
        token: &str,
        header: &Map<String, Value>,
        payload: &str,
        now: u64,
        decided: &mut Option<(usize, [u8; 32])>,
    ) -> Result<Verified, Failure> {
        if header.contains_key("crit") {
            return Err(Failure::Malformed);
        }
        let alg = match header.get("alg").and_then(Value::as_str) {
            Some(name) => name.parse::<Algorithm>().map_err(|_| Failure::Algorithm)?,
            None => return Err(Failure::Algorithm),
        };
        let claims = json_part(payload).ok_or(Failure::Malformed)?;
        let (index, issuer) = claims
            .get("iss")
            .and_then(Value::as_str)
            .and_then(|iss| self.issuers.iter().enumerate().find(|(_, i)| i.iss == iss))
            .ok_or(Failure::Issuer)?;
        // RFC 8725 §3.11: a token of another kind (an ID token, a logout
        // token) signed by the same issuer is not an access token here.
        if !issuer.types.is_empty() {
            let typ = header.get("typ").and_then(Value::as_str).map(normal_typ);
            if !typ.is_some_and(|t| issuer.types.contains(&t)) {
                return Err(Failure::Claims("The token's type (typ) is not accepted"));
            }
        }
        let validation = issuer
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(Failure::Algorithm)?;
        let kid = header.get("kid").and_then(Value::as_str);
        let keys;
        let (key, fingerprint) = if is_hmac(alg) {
            (issuer.secret.as_ref().ok_or(Failure::Algorithm)?, [0; 32])
        } else {
            let source = issuer.keys.as_ref().ok_or(Failure::Algorithm)?;
            keys = source.keys();
            match keys.find(kid, alg) {
                Lookup::Found(key) => (key, keys.fingerprint),
                Lookup::WrongAlgorithm => return Err(Failure::Algorithm),
                Lookup::UnknownKid => {
                    source.want_refresh(&self.ring);
                    return Err(Failure::UnknownKid);
                }
            }
        };
        *decided = Some((index, fingerprint));
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map_err(|e| failure_of(e.kind()))?;
        let claims = data.claims;
        if claims
            .get("iat")
            .and_then(Value::as_u64)
            .is_some_and(|iat| iat > now + self.leeway)
        {
            return Err(Failure::NotYetValid);
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(Failure::Expired)?;
        let tenant = self.tenant(&claims, index)?;
        Ok(Verified {
            tenant: Arc::new(tenant),
            expires_at: exp.saturating_add(self.leeway),
            issuer: index,
            fingerprint,
        })
    }

    /// The tenant and tier a verified token's claims name, if its issuer
    /// (index `issuer`) may name that tenant.
    fn tenant(&self, claims: &Map<String, Value>, issuer: usize) -> Result<TokenTenant, Failure> {
        let name = claims
            .get(&self.tenant_claim)
            .and_then(claim_text)
            .filter(|n| is_tenant_name(n))
            .ok_or(Failure::Claims("The token has no usable tenant claim"))?;
        let known = self.tenant_tiers.get(name.as_str());
        let allowed = match known {
            Some(known) => known
                .issuers
                .as_ref()
                .is_none_or(|list| list.contains(&issuer)),
            None => self.issuers.get(issuer).is_some_and(|i| i.unlisted_tenants),
        };
        if !allowed {
            return Err(Failure::Tenant);
        }
        let tier = known
            .map(|k| k.tier)
            .or_else(|| {
                let claim = claims.get(self.tier_claim.as_deref()?)?.as_str()?;
                self.tier_names.get(claim).copied()
            })
            .unwrap_or(self.default_tier);
        let forward = self
            .forward_claims
            .iter()
            .filter_map(|(claim, header)| {
                let text = claims.get(claim).and_then(claim_text)?;
                Some((header.clone(), HeaderValue::from_str(&text).ok()?))
            })
            .collect();
        Ok(TokenTenant {
            bucket_key: format!("t:{name}").into(),
            name: name.into(),
            tier,
            forward,
        })
    }

    /// How many verified tokens are remembered.
    pub fn remembered(&self) -> usize {
        self.verified.len()
    }
}

/// Whether a claim may name a tenant: 1 to 256 printable ASCII characters
/// without space, `"`, `\\`, `{`, `}` or `|` — the name becomes part of
/// budget keys (`t:<name>|r:<route>`, Redis hash tags `{…}`) and a header.
fn is_tenant_name(name: &str) -> bool {
    (1..=256).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'{' | b'}' | b'|'))
}

/// Three dot-separated parts, the first two non-empty, all base64url.
fn has_jwt_shape(value: &str) -> bool {
    let mut dots = 0;
    let mut part_len = 0;
    for b in value.bytes() {
        match b {
            b'.' => {
                if part_len == 0 && dots < 2 {
                    return false;
                }
                dots += 1;
                part_len = 0;
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => part_len += 1,
            _ => return false,
        }
    }
    dots == 2
}

/// A base64url part decoded as a JSON object.
fn json_part(part: &str) -> Option<Map<String, Value>> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A claim as header text: a string as is (printable ASCII only), a
/// number or boolean as written; anything else is not a value to forward.
fn claim_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    text.bytes()
        .all(|b| (0x20..0x7f).contains(&b))
        .then_some(text)
}

fn failure_of(kind: &ErrorKind) -> Failure {
    match kind {
        ErrorKind::ExpiredSignature => Failure::Expired,
        ErrorKind::ImmatureSignature => Failure::NotYetValid,
        ErrorKind::InvalidAudience => Failure::Audience,
        ErrorKind::InvalidIssuer => Failure::Issuer,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => Failure::Algorithm,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "aud" => Failure::Audience,
            "iss" => Failure::Issuer,
            "exp" => Failure::Claims("The token has no exp claim"),
            _ => Failure::Claims("The token lacks a required claim"),
        },
        ErrorKind::InvalidClaimFormat(_) => {
            Failure::Claims("A registered claim has the wrong type")
        }
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => Failure::Malformed,
        _ => Failure::Signature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

    fn hmac_verifier() -> JwtVerifier {
        let config = JwtConfig {
            issuers: vec![crate::config::model::IssuerConfig {
                issuer: "https://auth.test/".into(),
                audiences: Vec::new(),
                jwks: None,
                algorithms: vec![Algorithm::HS256],
                secret: Some(crate::config::model::Secret::new(SECRET)),
                unlisted_tenants: true,
                types: Vec::new(),
            }],
            tenant_claim: "org".into(),
            tier_claim: None,
            default_tier: 0,
            leeway: std::time::Duration::ZERO,
            forward_claims: Vec::new(),
            cache_size: 100,
        };
        JwtVerifier::new(
            &config,
            &Arc::new(KeyRing::default()),
            &[],
            &["free".into()],
        )
    }

    fn token(claims: Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("key"),
        )
        .expect("token")
    }

    fn digest(token: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    /// A refused token is remembered (a replayed forgery costs a lookup);
    /// one that time can make valid (`nbf` ahead) is not.
    #[test]
    fn refusals_that_cannot_change_are_remembered() {
        let verifier = hmac_verifier();
        let now = jsonwebtoken::get_current_timestamp();
        let claims =
            serde_json::json!({"iss": "https://auth.test/", "org": "acme", "exp": now + 600});
        let forged = token(claims.clone(), "another-secret-of-at-least-32-bytes!!");
        for _ in 0..3 {
            assert!(matches!(
                verifier.read(&forged, &digest(&forged)),
                Bearer::Refused(Failure::Signature)
            ));
        }
        assert!(verifier.refused.get(&digest(&forged), now).is_some());
        let mut early = claims.clone();
        early["nbf"] = (now + 3600).into();
        let early = token(early, SECRET);
        assert!(matches!(
            verifier.read(&early, &digest(&early)),
            Bearer::Refused(Failure::NotYetValid)
        ));
        assert!(verifier.refused.get(&digest(&early), now).is_none());
        let good = token(claims, SECRET);
        assert!(matches!(
            verifier.read(&good, &digest(&good)),
            Bearer::Token(_)
        ));
        assert_eq!(verifier.refused.len(), 1);
    }

    #[test]
    fn only_three_base64url_parts_look_like_a_jwt() {
        assert!(has_jwt_shape("eyJh.eyJz.c2ln"));
        assert!(has_jwt_shape("eyJh.eyJz."), "alg none: read, then refused");
        assert!(!has_jwt_shape("eyJh..c2ln"));
        assert!(!has_jwt_shape(".eyJz.c2ln"));
        assert!(!has_jwt_shape("eyJh.eyJz.c2ln.more"));
        assert!(!has_jwt_shape("sk_live_abc123"));
        assert!(!has_jwt_shape("eyJh.eyJz.c2l+"));
    }

    #[test]
    fn tenant_names_cannot_reach_into_budget_keys() {
        assert!(is_tenant_name("org_123"));
        assert!(is_tenant_name("acme.example:eu-1"));
        assert!(
            !is_tenant_name("acme|r:reports"),
            "another tenant's route bucket"
        );
        assert!(!is_tenant_name("{acme}"), "a Redis hash tag");
        assert!(!is_tenant_name("two words"));
        assert!(!is_tenant_name(""));
        assert!(!is_tenant_name(&"a".repeat(257)));
    }

    #[test]
    fn claims_become_header_text_only_when_plain() {
        assert_eq!(claim_text(&Value::from("acme")), Some("acme".into()));
        assert_eq!(claim_text(&Value::from(42)), Some("42".into()));
        assert_eq!(claim_text(&Value::from("a\r\nX-Evil: 1")), None);
        assert_eq!(claim_text(&Value::from("café")), None);
        assert_eq!(claim_text(&serde_json::json!(["a"])), None);
    }
}
