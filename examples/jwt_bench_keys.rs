//! Keys and a token for `benches/load/jwt.sh`: an RSA-2048 key pair as an
//! identity provider holds it, its public half written as a JWKS file, and
//! one RS256 token for tenant `bench` valid for a day, printed on stdout.
//!
//!     cargo run --release --example jwt_bench_keys -- JWKS_PATH ISSUER AUDIENCE

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::rsa::Rsa;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [jwks, issuer, audience] = args.as_slice() else {
        return Err("usage: jwt_bench_keys JWKS_PATH ISSUER AUDIENCE".into());
    };
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let rsa = Rsa::generate(2048)?;
    let set = serde_json::json!({"keys": [{"kty": "RSA", "kid": "bench", "use": "sig",
        "alg": "RS256", "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())}]});
    std::fs::write(jwks, set.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({"iss": issuer, "aud": audience, "sub": "bench-user",
        "org_id": "bench", "iat": now, "exp": now + 86_400});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("bench".into());
    let key = EncodingKey::from_rsa_der(&rsa.private_key_to_der()?);
    println!("{}", jsonwebtoken::encode(&header, &claims, &key)?);
    Ok(())
}
