//! Validation of `auth.jwt`: issuers, their key sets and algorithms, the
//! claims that name the tenant and its tier, and the claims forwarded.

use super::file::{FileConfig, IssuerSpec, JwksSpec, JwtSpec};
use super::locate::FieldPath;
use super::model::*;
use super::Checker;
use crate::values::key_set::is_hmac;
use jsonwebtoken::Algorithm;
use std::collections::HashMap;
use std::time::Duration;

/// Accepted when an issuer names no algorithms: every asymmetric one (the
/// key's own type then decides which of them a token can use).
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Checker<'_> {
    /// `auth.jwt`, against the tiers already checked (`tier_index`).
    pub(super) fn jwt(
        &mut self,
        raw: &FileConfig,
        tier_index: &HashMap<&str, usize>,
        tenant_header: &http::HeaderName,
    ) -> Option<JwtConfig> {
        let spec = raw.auth.jwt.as_ref()?;
        let path = FieldPath::root().key("auth").key("jwt");
        if spec.issuers.is_empty() {
            self.problem(path.key("issuers"), "list at least one issuer");
        }
        let mut issuers = Vec::with_capacity(spec.issuers.len());
        for (i, issuer) in spec.issuers.iter().enumerate() {
            let at = path.key("issuers").index(i);
            if spec.issuers[..i].iter().any(|o| o.issuer == issuer.issuer) {
                self.problem(
                    at.key("issuer"),
                    format!("issuer {:?} is listed twice", issuer.issuer),
                );
            }
            issuers.push(self.issuer(issuer, &at));
        }
        for (claim, at) in [
            (Some(&spec.tenant_claim), path.key("tenant_claim")),
            (spec.tier_claim.as_ref(), path.key("tier_claim")),
        ] {
            if claim.is_some_and(|c| c.is_empty()) {
                self.problem(at, "name a claim");
            }
        }
        let default_tier = match tier_index.get(spec.default_tier.as_str()) {
            Some(&t) => t,
            None => {
                let mut names: Vec<&str> = tier_index.keys().copied().collect();
                names.sort_unstable();
                self.problem(
                    path.key("default_tier"),
                    format!(
                        "unknown tier {:?} (defined: {})",
                        spec.default_tier,
                        names.join(", ")
                    ),
                );
                0
            }
        };
        let leeway = spec.leeway.map_or(Duration::from_secs(30), |l| l.0);
        if leeway > Duration::from_secs(300) {
            self.problem(
                path.key("leeway"),
                "at most 5m: a clock that far off is a fault to fix, not to accept",
            );
        }
        let forward_claims = self.forward_claims(spec, raw, &path, tenant_header);
        Some(JwtConfig {
            issuers,
            tenant_claim: spec.tenant_claim.clone(),
            tier_claim: spec.tier_claim.clone(),
            default_tier,
            leeway,
            forward_claims,
            cache_size: spec.cache_size.unwrap_or(100_000),
        })
    }

    fn issuer(&mut self, spec: &IssuerSpec, at: &FieldPath) -> IssuerConfig {
        if spec.issuer.is_empty() {
            self.problem(at.key("issuer"), "the issuer's `iss` value is needed");
        }
        if spec.audiences.is_empty() {
            self.warn(
                &at.key("issuer"),
                "no audiences: a token this issuer minted for any other service is accepted here (RFC 8725 §3.9); list this API's aud values",
            );
        }
        let mut algorithms = Vec::new();
        match &spec.algorithms {
            None => algorithms.extend(ASYMMETRIC),
            Some(names) => {
                if names.is_empty() {
                    self.problem(at.key("algorithms"), "list at least one algorithm");
                }
                for (i, name) in names.iter().enumerate() {
                    match name.parse::<Algorithm>() {
                        Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                        Ok(_) => {}
                        Err(_) if name.eq_ignore_ascii_case("none") => self.problem(
                            at.key("algorithms").index(i),
                            "\"none\" accepts unsigned tokens: anyone could be any tenant",
                        ),
                        Err(_) => self.problem(
                            at.key("algorithms").index(i),
                            format!("unknown algorithm {name:?} (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512)"),
                        ),
                    }
                }
            }
        }
        let hmac = algorithms.iter().any(|a| is_hmac(*a));
        let secret = match (&spec.secret_env, hmac) {
            (Some(var), true) => match super::io::env_secret(var) {
                Ok(secret) if secret.len() >= 32 => Some(Secret::new(secret)),
                Ok(_) => {
                    self.problem(
                        at.key("secret_env"),
                        format!("the secret in {var} is shorter than 32 bytes: too short for HMAC"),
                    );
                    None
                }
                Err(message) => {
                    self.problem(at.key("secret_env"), message);
                    None
                }
            },
            (Some(_), false) => {
                self.problem(
                    at.key("secret_env"),
                    "a secret is only used by HS256/HS384/HS512: add one to algorithms",
                );
                None
            }
            (None, true) => {
                self.problem(
                    at.key("algorithms"),
                    "HS256/HS384/HS512 need the shared secret in secret_env (never a public key as a secret)",
                );
                None
            }
            (None, false) => None,
        };
        let asymmetric = algorithms.iter().any(|a| !is_hmac(*a));
        let jwks = match (&spec.jwks, asymmetric) {
            (Some(jwks), true) => self.jwks(jwks, &at.key("jwks")),
            (Some(_), false) if !algorithms.is_empty() => {
                self.problem(
                    at.key("jwks"),
                    "the algorithms listed are all HMAC: a key set would never be used",
                );
                None
            }
            (None, true) => {
                self.problem(
                    at.clone(),
                    "set jwks: { url: … } or { file: … } for the issuer's public keys",
                );
                None
            }
            _ => None,
        };
        IssuerConfig {
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            jwks,
            algorithms,
            secret,
            unlisted_tenants: spec.unlisted_tenants,
            types: spec.types.iter().map(|t| normal_typ(t)).collect(),
        }
    }

    fn jwks(&mut self, spec: &JwksSpec, at: &FieldPath) -> Option<JwksConfig> {
        let source = match (&spec.url, &spec.file) {
            (Some(url), None) => match url_problem(url) {
                None => JwksSource::Url(url.clone()),
                Some(problem) => {
                    self.problem(at.key("url"), problem);
                    return None;
                }
            },
            (None, Some(file)) => {
                let read = std::fs::read(file)
                    .map_err(|e| format!("cannot read {file}: {e}"))
                    .and_then(|body| {
                        crate::values::key_set::KeySet::parse(&body)
                            .map_err(|e| format!("{file}: {e}"))
                    });
                if let Err(problem) = read {
                    self.problem(at.key("file"), problem);
                    return None;
                }
                JwksSource::File(file.into())
            }
            _ => {
                self.problem(at.clone(), "set exactly one of url or file");
                return None;
            }
        };
        let refresh = spec.refresh.map_or(Duration::from_secs(600), |d| d.0);
        if refresh < Duration::from_secs(1) {
            self.problem(at.key("refresh"), "at least 1s");
        }
        let timeout = spec.timeout.map_or(Duration::from_secs(5), |d| d.0);
        if timeout.is_zero() {
            self.problem(at.key("timeout"), "must be more than 0");
        }
        let unknown_kid_cooldown = spec
            .unknown_kid_cooldown
            .map_or(Duration::from_secs(10), |d| d.0);
        // Each token with an unknown `kid` asks for a fetch: without a
        // floor, a stream of forged kids makes back-to-back fetches.
        if unknown_kid_cooldown < Duration::from_secs(1) {
            self.problem(
                at.key("unknown_kid_cooldown"),
                "at least 1s: every token with an unknown kid asks for a fetch",
            );
        }
        Some(JwksConfig {
            source,
            refresh,
            unknown_kid_cooldown,
            timeout,
        })
    }

    fn forward_claims(
        &mut self,
        spec: &JwtSpec,
        raw: &FileConfig,
        path: &FieldPath,
        tenant_header: &http::HeaderName,
    ) -> Vec<(String, http::HeaderName)> {
        let mut claims = Vec::new();
        for (claim, header) in &spec.forward_claims {
            let at = path.key("forward_claims").key(claim);
            let Ok(name) = http::HeaderName::from_bytes(header.as_bytes()) else {
                self.problem(at, format!("{header:?} is not a valid header name"));
                continue;
            };
            if let Some(problem) = super::check_ratelimit::identity_field_problem(&name, raw) {
                self.problem(at, problem);
            } else if name == *tenant_header || name == http::header::AUTHORIZATION {
                self.problem(
                    at,
                    format!("{header:?} already carries the tenant or the credential"),
                );
            } else if claims.iter().any(|(_, n)| *n == name) {
                self.problem(at, format!("{header:?} is given to two claims"));
            } else {
                claims.push((claim.clone(), name));
            }
        }
        claims
    }
}

/// Why a key-set URL cannot be used, if it cannot.
fn url_problem(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let Some(rest) = rest else {
        return Some(format!("{url:?}: only http:// and https:// URLs"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Some(format!("{url:?}: name a host (and no credentials)"));
    }
    None
}
