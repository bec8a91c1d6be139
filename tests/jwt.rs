//! Tenants from bearer JWTs (`auth.jwt`): tokens minted here with keys
//! generated here (RS256, ES256, EdDSA), key sets served by a local HTTP
//! server the tests change and stop, and every refused shape an attacker
//! would try, each with its 401 reason.

mod common;
use base64::Engine as _;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

const ISSUER: &str = "https://auth.test/";
const AUDIENCE: &str = "billing-api";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key as an identity provider holds it: the private half to
/// sign with, the public half as a JWK.
struct Key {
    kid: String,
    alg: Algorithm,
    signing: EncodingKey,
    jwk: Value,
    /// The public key in PEM (what an attacker would use as an HMAC secret).
    public_pem: Vec<u8>,
}

impl Key {
    fn rsa(kid: &str) -> Self {
        let rsa = Rsa::generate(2048).expect("rsa");
        let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
        Self {
            kid: kid.into(),
            alg: Algorithm::RS256,
            public_pem: rsa.public_key_to_pem().expect("pem"),
            signing: EncodingKey::from_rsa_der(&rsa.private_key_to_der().expect("der")),
            jwk,
        }
    }

    fn ec(kid: &str) -> Self {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("group");
        let ec = EcKey::generate(&group).expect("ec");
        let (mut x, mut y) = (BigNum::new().expect("x"), BigNum::new().expect("y"));
        let mut ctx = BigNumContext::new().expect("ctx");
        ec.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
            .expect("coordinates");
        let pad = |n: &BigNum| b64(&n.to_vec_padded(32).expect("pad"));
        let jwk = json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": pad(&x), "y": pad(&y)});
        let pkey = PKey::from_ec_key(ec).expect("pkey");
        Self {
            kid: kid.into(),
            alg: Algorithm::ES256,
            public_pem: pkey.public_key_to_pem().expect("pem"),
            signing: EncodingKey::from_ec_der(&pkey.private_key_to_pkcs8().expect("pkcs8")),
            jwk,
        }
    }

    fn ed(kid: &str) -> Self {
        let pkey = PKey::generate_ed25519().expect("ed25519");
        let jwk = json!({"kty": "OKP", "kid": kid, "crv": "Ed25519",
            "x": b64(&pkey.raw_public_key().expect("raw"))});
        Self {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            public_pem: pkey.public_key_to_pem().expect("pem"),
            signing: EncodingKey::from_ed_der(&pkey.private_key_to_pkcs8().expect("pkcs8")),
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_typed(claims, Some("JWT"))
    }

    /// Signs with the header's `typ` set to `typ` (none: left out).
    fn sign_typed(&self, claims: &Value, typ: Option<&str>) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.signing).expect("sign")
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Claims of a valid token for `org`.
fn claims(org: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "org_id": org,
        "iat": now(), "exp": now() + 600})
}

/// A key-set server whose document the test replaces.
struct KeyServer {
    upstream: TestUpstream,
    document: Arc<Mutex<String>>,
}

impl KeyServer {
    fn start(keys: &[&Key]) -> Self {
        let document = Arc::new(Mutex::new(String::new()));
        let served = document.clone();
        let upstream = TestUpstream::start(move |_| {
            Action::Reply(Reply {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: served.lock().expect("lock").clone().into_bytes(),
            })
        });
        let server = Self { upstream, document };
        server.publish(keys);
        server
    }

    fn publish(&self, keys: &[&Key]) {
        let set = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        *self.document.lock().expect("lock") = set.to_string();
    }
}

fn config(keys: &KeyServer, api: &TestUpstream) -> String {
    format!(
        "tiers:
  free: {{ per_minute: 100 }}
  pro: {{ per_minute: 200 }}
  tiny: {{ per_minute: 3 }}
tenants:
  acme: {{ tier: tiny }}
  keyco: {{ tier: pro, api_keys: [\"{}\"] }}
anonymous: {{ reject: true }}
auth:
  jwt:
    issuers:
      - issuer: \"{ISSUER}\"
        audiences: [{AUDIENCE}]
        jwks: {{ url: \"http://{}/jwks.json\", refresh: 1s, unknown_kid_cooldown: 1s, timeout: 1s }}
        algorithms: [RS256, ES256, EdDSA]
    tenant_claim: org_id
    tier_claim: plan
    default_tier: free
    leeway: 5s
    forward_claims: {{ sub: X-User-Id }}
upstreams:
  api: {{ backends: [\"{}\"] }}
routes:
  - {{ name: api, upstream: api }}
",
        tollgate::ratelimit::identity::hash_key("key-1"),
        keys.upstream.addr,
        api.addr
    )
}

fn call(proxy: &TollgateProcess, bearer: &str) -> Response {
    let auth = format!("Bearer {bearer}");
    request(
        proxy.addr,
        "GET",
        "/orders",
        &[("Authorization", &auth), ("X-User-Id", "forged")],
        b"",
    )
    .expect("request")
}

/// The quota of the tier that decided a response, from `RateLimit-Policy`.
fn quota(r: &Response) -> String {
    let policy = r.header("ratelimit-policy").expect("RateLimit-Policy");
    policy
        .split(';')
        .find_map(|p| p.strip_prefix("q="))
        .expect("q=")
        .to_owned()
}

#[test]
fn tokens_of_each_algorithm_name_their_tenant_and_tier() {
    let (rsa, ec, ed) = (Key::rsa("r1"), Key::ec("e1"), Key::ed("d1"));
    let keys = KeyServer::start(&[&rsa, &ec, &ed]);
    let api = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&config(&keys, &api));
    for key in [&rsa, &ec, &ed] {
        let r = call(&proxy, &key.sign(&claims("newco")));
        assert_eq!(r.status, 200, "{:?}: {}", key.alg, r.text());
        assert_eq!(quota(&r), "100", "default tier for an unknown org");
    }
    let mut pro = claims("newco");
    pro["plan"] = "pro".into();
    assert_eq!(quota(&call(&proxy, &rsa.sign(&pro))), "200", "tier claim");
    let mut numeric = claims("x");
    numeric["org_id"] = 4711.into();
    numeric["plan"] = "no-such-tier".into();
    assert_eq!(quota(&call(&proxy, &ed.sign(&numeric))), "100");
    let mut configured = claims("acme");
    configured["plan"] = "pro".into();
    assert_eq!(
        quota(&call(&proxy, &ec.sign(&configured))),
        "3",
        "the tier under tenants wins over the claim"
    );
    // What the upstream saw: the verified tenant and claim, never the
    // client's copies, and no token.
    let seen = api.recorded();
    let last = seen.last().expect("forwarded");
    assert_eq!(last.header("x-tenant"), Some("acme"));
    assert_eq!(last.header("x-user-id"), Some("user-1"));
    assert_eq!(last.header("authorization"), None);
    assert!(seen.iter().any(|r| r.header("x-tenant") == Some("4711")));
    // API keys still work beside tokens, and a client's claim header is
    // dropped for them too.
    let r = call(&proxy, "key-1");
    assert_eq!(r.status, 200);
    assert_eq!(quota(&r), "200");
    let last = api.recorded().pop().expect("forwarded");
    assert_eq!(last.header("x-tenant"), Some("keyco"));
    assert_eq!(last.header("x-user-id"), None);
}

#[test]
fn every_refused_token_shape_is_a_401_with_its_reason() {
    let rsa = Key::rsa("r1");
    let stranger = Key::rsa("r1"); // same kid, another key
    let keys = KeyServer::start(&[&rsa]);
    let api = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&config(&keys, &api));
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims("newco");
        change(&mut c);
        c
    };
    let valid = rsa.sign(&claims("newco"));
    let mut parts = valid.split('.');
    let (header, _, signature) = (
        parts.next().expect("header"),
        parts.next(),
        parts.next().expect("signature"),
    );
    let tampered = format!(
        "{header}.{}.{signature}",
        b64(claims("acme").to_string().as_bytes())
    );
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("newco").to_string().as_bytes())
    );
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("r1".into());
    let confused = jsonwebtoken::encode(
        &hs,
        &claims("newco"),
        &EncodingKey::from_secret(&rsa.public_pem).expect("secret"),
    )
    .expect("hs256");
    let mut other_kid = Header::new(Algorithm::RS256);
    other_kid.kid = Some("r9".into());
    let unknown = jsonwebtoken::encode(&other_kid, &claims("newco"), &rsa.signing).expect("sign");
    let critical = {
        let head = json!({"alg": "RS256", "kid": "r1", "crit": ["exp"]});
        let message = format!(
            "{}.{}",
            b64(head.to_string().as_bytes()),
            b64(claims("newco").to_string().as_bytes())
        );
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &rsa.signing, Algorithm::RS256)
            .expect("sign");
        format!("{message}.{sig}")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            rsa.sign(&with(&|c| c["exp"] = (now() - 60).into())),
            "The token has expired",
        ),
        (
            "not_yet_valid",
            rsa.sign(&with(&|c| c["nbf"] = (now() + 600).into())),
            "The token is not valid yet",
        ),
        (
            "not_yet_valid",
            rsa.sign(&with(&|c| c["iat"] = (now() + 600).into())),
            "The token is not valid yet",
        ),
        (
            "issuer",
            rsa.sign(&with(&|c| c["iss"] = "https://evil.test/".into())),
            "The token's issuer is not trusted",
        ),
        (
            "issuer",
            rsa.sign(&with(&|c| {
                c.as_object_mut().expect("object").remove("iss");
            })),
            "The token's issuer is not trusted",
        ),
        (
            "audience",
            rsa.sign(&with(&|c| c["aud"] = "other-api".into())),
            "The token is not for this audience",
        ),
        (
            "audience",
            rsa.sign(&with(&|c| {
                c.as_object_mut().expect("object").remove("aud");
            })),
            "The token is not for this audience",
        ),
        (
            "signature",
            stranger.sign(&claims("newco")),
            "The token's signature is invalid",
        ),
        ("signature", tampered, "The token's signature is invalid"),
        (
            "algorithm",
            unsigned,
            "The token's algorithm is not accepted",
        ),
        (
            "algorithm",
            confused,
            "The token's algorithm is not accepted",
        ),
        (
            "unknown_kid",
            unknown,
            "The token is signed with an unknown key",
        ),
        ("malformed", critical, "The token is malformed"),
        (
            "malformed",
            format!("{header}.bm90IGpzb24.{signature}"),
            "The token is malformed",
        ),
        (
            "claims",
            rsa.sign(&with(&|c| c["org_id"] = json!({"nested": 1}))),
            "The token has no usable tenant claim",
        ),
        (
            "claims",
            rsa.sign(&with(&|c| {
                c.as_object_mut().expect("object").remove("exp");
            })),
            "The token has no exp claim",
        ),
    ];
    for (reason, token, description) in &cases {
        let r = call(&proxy, token);
        assert_eq!(r.status, 401, "{reason}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_token", "{reason}");
        assert_eq!(r.json()["message"], *description, "{reason}");
        let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
        assert_eq!(
            challenge,
            format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
            "{reason}"
        );
        assert!(
            !proxy.log_text().contains(token.as_str()),
            "{reason}: token logged"
        );
    }
    for reason in [
        "expired",
        "not_yet_valid",
        "issuer",
        "audience",
        "signature",
        "algorithm",
        "unknown_kid",
        "malformed",
        "claims",
    ] {
        let expected = cases.iter().filter(|(r, _, _)| *r == reason).count() as f64;
        proxy.wait_metric(
            &format!("tollgate_auth_failures_total{{reason=\"{reason}\"}}"),
            expected,
        );
    }
    assert_eq!(api.count(), 0, "no refused token reached the upstream");
    // No credential at all: a challenge without an error code (RFC 6750 §3).
    let r = request(proxy.addr, "GET", "/orders", &[], b"").expect("request");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
}

#[test]
fn two_tokens_of_one_org_share_its_budget() {
    let rsa = Key::rsa("r1");
    let keys = KeyServer::start(&[&rsa]);
    let api = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&config(&keys, &api));
    let mut alice = claims("acme");
    alice["sub"] = "alice".into();
    let mut bob = claims("acme");
    bob["sub"] = "bob".into();
    let (alice, bob) = (rsa.sign(&alice), rsa.sign(&bob));
    assert_ne!(alice, bob);
    let statuses: Vec<u16> = [&alice, &bob, &alice, &bob]
        .iter()
        .map(|t| call(&proxy, t).status)
        .collect();
    assert_eq!(
        statuses,
        vec![200, 200, 200, 429],
        "tier tiny: 3 per minute for acme"
    );
    assert_eq!(call(&proxy, &rsa.sign(&claims("other"))).status, 200);
}

#[test]
fn rotated_keys_apply_without_a_reload_and_the_last_keys_outlive_the_key_server() {
    let (old, new) = (Key::rsa("2026-01"), Key::ec("2026-02"));
    let keys = KeyServer::start(&[&old]);
    let api = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&config(&keys, &api));
    assert_eq!(call(&proxy, &old.sign(&claims("newco"))).status, 200);
    let rotated = new.sign(&claims("newco"));
    keys.publish(&[&old, &new]);
    // The first token naming the new kid asks for a fetch; within the
    // cooldown the set has the key.
    wait_until("a token signed with the new key is accepted", || {
        call(&proxy, &rotated).status == 200
    });
    // The old key is retired: a token it signed, verified and remembered
    // before, is refused once the set no longer has it.
    let retired = old.sign(&claims("newco"));
    assert_eq!(call(&proxy, &retired).status, 200);
    keys.publish(&[&new]);
    wait_until("a token of the retired key is refused", || {
        call(&proxy, &retired).status == 401
    });
    // The key server goes away: the last good keys keep working, and the
    // failure shows in /health and the metrics.
    keys.upstream.stop();
    wait_until("a failed fetch is counted", || {
        proxy
            .metric(r#"tollgate_auth_jwks_fetches_total{result="error"}"#)
            .is_some_and(|n| n >= 1.0)
    });
    assert_eq!(call(&proxy, &rotated).status, 200);
    assert_eq!(call(&proxy, &new.sign(&claims("other"))).status, 200);
    let health = proxy.health();
    let jwks = &health["components"]["jwks"][0];
    assert_eq!(jwks["status"], "degraded", "{health}");
    assert!(jwks["last_error"].is_string(), "{health}");
    assert_eq!(jwks["keys"], json!(["2026-02"]));
    assert_eq!(health["status"], "degraded");
}

#[test]
fn a_shared_response_varies_on_the_verified_tenant() {
    let rsa = Key::rsa("r1");
    let keys = KeyServer::start(&[&rsa]);
    let api = TestUpstream::start(|req| {
        let tenant = req.header("x-tenant").unwrap_or("none").to_owned();
        Action::Reply(Reply {
            status: 200,
            headers: vec![
                ("Cache-Control".into(), "public, max-age=60".into()),
                ("Vary".into(), "X-Tenant".into()),
            ],
            body: format!("for {tenant}").into_bytes(),
        })
    });
    let body = config(&keys, &api).replace(
        "  - { name: api, upstream: api }",
        "  - { name: api, upstream: api, cache: { default_ttl: 60s } }",
    );
    let proxy = TollgateProcess::start(&body);
    let first = rsa.sign(&claims("newco"));
    assert_eq!(call(&proxy, &first).text(), "for newco");
    let mut again = claims("newco");
    again["sub"] = "user-2".into();
    let r = call(&proxy, &rsa.sign(&again));
    assert_eq!(r.text(), "for newco");
    assert_eq!(
        r.cache_status().as_deref(),
        Some("tollgate; hit"),
        "same org, same entry"
    );
    let other = call(&proxy, &rsa.sign(&claims("otherco")));
    assert_eq!(
        other.text(),
        "for otherco",
        "another org never gets newco's copy"
    );
}

#[test]
fn check_refuses_unsafe_jwt_settings_with_their_line() {
    let dir = scratch_dir("jwt-check");
    let cases = [
        ("algorithms: [none]", "\"none\" accepts unsigned tokens"),
        (
            "algorithms: [RS256, HS256]",
            "need the shared secret in secret_env",
        ),
        ("algorithms: [RS256, XY999]", "unknown algorithm \"XY999\""),
    ];
    for (i, (line, message)) in cases.iter().enumerate() {
        let file = dir.join(format!("case{i}.yaml"));
        std::fs::write(
            &file,
            format!(
                "tiers: {{ free: {{ per_minute: 1 }} }}
anonymous: {{ tier: free }}
auth:
  jwt:
    issuers:
      - issuer: https://auth.test/
        jwks: {{ url: \"https://auth.test/jwks.json\" }}
        {line}
    tenant_claim: org_id
    default_tier: gold
upstreams: {{ api: {{ backends: [\"127.0.0.1:9\"] }} }}
routes: [{{ name: all, upstream: api }}]
"
            ),
        )
        .expect("write");
        let (ok, _, err) = run_cli(&["check", &file.to_string_lossy()]);
        assert!(!ok, "{line}");
        let at = |line: &str, text: &str| {
            err.lines()
                .any(|l| l.contains(&format!(".yaml:{line}:")) && l.contains(text))
        };
        assert!(at("8", message), "{line}: {err}");
        assert!(at("10", "unknown tier \"gold\""), "{err}");
        assert_eq!(
            err.lines().filter(|l| l.contains(".yaml:")).count(),
            2,
            "{err}"
        );
    }
}

/// Cold start (issue 38): a valid token that arrives before the issuer's
/// key set was ever fetched — seconds after a start, or in the process a
/// graceful upgrade just handed the sockets to — waits for that first
/// fetch (at most the fetch's `timeout`) instead of being refused 401.
/// Here the key server holds its first answer past the 10 s `/ready`
/// waits for it, and lets it go once the request is in flight.
#[test]
fn a_valid_token_waits_for_the_first_key_set_instead_of_a_401() {
    let key = Key::rsa("cold");
    let document = json!({"keys": [key.jwk.clone()]}).to_string();
    let upstream = TestUpstream::start(move |_| {
        Action::ReplyWhenReleased(Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: document.clone().into_bytes(),
        })
    });
    let keys = KeyServer {
        upstream,
        document: Arc::new(Mutex::new(String::new())),
    };
    let api = TestUpstream::fixed("ok");
    // Traced: the wait shows as its own span under the request's.
    let receiver = common::otlp::OtlpReceiver::start();
    let proxy = TollgateProcess::start(&format!(
        "{}{}",
        receiver.config("sample_ratio: 1.0"),
        config(&keys, &api).replace("unknown_kid_cooldown: 1s, timeout: 1s", "timeout: 30s")
    ));
    let token = key.sign(&claims("coldco"));
    let (addr, bearer) = (proxy.addr, format!("Bearer {token}"));
    let caller = std::thread::spawn(move || {
        request(addr, "GET", "/orders", &[("Authorization", &bearer)], b"").expect("request")
    });
    proxy.wait_metric("tollgate_requests_in_flight", 1.0);
    keys.upstream.release();
    let answer = caller.join().expect("caller");
    assert_eq!(answer.status, 200, "{}", answer.text());
    wait_until("the request's spans arrive", || {
        receiver.spans().iter().any(|s| s.span.name == "identity")
    });
    let spans = receiver.spans();
    let server = spans
        .iter()
        .find(|s| s.span.kind == 2)
        .expect("server span");
    let child = |name: &str| {
        spans
            .iter()
            .find(|s| s.span.name == name && s.parent_id() == server.span_id())
            .unwrap_or_else(|| panic!("a {name:?} span under the server span: {spans:#?}"))
    };
    let waited = child("jwks fetch");
    let identity = child("identity");
    assert!(waited.span.end_time_unix_nano <= identity.span.start_time_unix_nano);
    assert_eq!(identity.attr("tollgate.identity").as_deref(), Some("token"));
    assert_eq!(identity.attr("tollgate.tenant").as_deref(), Some("coldco"));
    assert_eq!(server.attr("tollgate.tenant").as_deref(), Some("coldco"));
}

/// RFC 8725 §3.8 (issue 38): a tenant name means something only with its
/// issuer. A token cannot name a tenant configured with API keys (its
/// tier, budget and `X-Tenant` are the key holder's), nor a tenant that
/// lists other issuers; with `unlisted_tenants: false` an issuer names
/// only the tenants that list it. Each refusal is a 401 `tenant`.
#[test]
fn an_issuer_names_only_the_tenants_it_may() {
    let key = Key::rsa("r1");
    let keys = KeyServer::start(&[&key]);
    let api = TestUpstream::fixed("ok");
    let base = config(&keys, &api).replace(
        "  acme: { tier: tiny }\n",
        "  acme: { tier: tiny }\n  partner: { tier: pro, issuers: [\"https://auth.test/\"] }\n  elsewhere: { tier: pro, issuers: [\"https://other.test/\"] }\n",
    ).replace(
        "    issuers:\n      - issuer: \"https://auth.test/\"\n",
        &format!(
            "    issuers:\n      - issuer: \"https://other.test/\"\n        jwks: {{ url: \"http://{}/jwks.json\" }}\n      - issuer: \"https://auth.test/\"\n",
            keys.upstream.addr
        ),
    );
    assert!(
        base.contains("partner") && base.contains("other.test"),
        "{base}"
    );
    let proxy = TollgateProcess::start(&base);
    for (org, status) in [
        ("keyco", 401),     // an API-key tenant
        ("elsewhere", 401), // lists another issuer
        ("partner", 200),   // lists this one
        ("acme", 200),      // no keys, no list: any issuer
        ("newco", 200),     // not configured: unlisted_tenants defaults to true
    ] {
        let r = call(&proxy, &key.sign(&claims(org)));
        assert_eq!(r.status, status, "{org}: {}", r.text());
        if status == 401 {
            assert!(
                r.text().contains("may not name this tenant"),
                "{org}: {}",
                r.text()
            );
        }
    }
    assert_eq!(
        proxy.metric("tollgate_auth_failures_total{reason=\"tenant\"}"),
        Some(2.0)
    );
    let strict = TollgateProcess::start(&base.replace(
        "        algorithms: [RS256, ES256, EdDSA]\n",
        "        algorithms: [RS256, ES256, EdDSA]\n        unlisted_tenants: false\n",
    ));
    assert_eq!(call(&strict, &key.sign(&claims("newco"))).status, 401);
    assert_eq!(call(&strict, &key.sign(&claims("partner"))).status, 200);
}

/// RFC 8725 §3.11 (issue 38): with `types: [at+jwt]` an issuer's ID
/// token or logout token — signed by the same key, for another purpose —
/// is not an access token here; `application/at+jwt` and any case are the
/// same type (RFC 7515 §4.1.9).
#[test]
fn an_issuer_with_types_accepts_only_tokens_of_those_types() {
    let key = Key::rsa("t1");
    let keys = KeyServer::start(&[&key]);
    let api = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&config(&keys, &api).replace(
        "        algorithms: [RS256, ES256, EdDSA]\n",
        "        algorithms: [RS256, ES256, EdDSA]\n        types: [at+jwt]\n",
    ));
    let c = claims("typed");
    for (typ, status) in [
        (Some("at+jwt"), 200),
        (Some("application/AT+JWT"), 200),
        (Some("JWT"), 401),
        (Some("logout+jwt"), 401),
        (None, 401),
    ] {
        let r = call(&proxy, &key.sign_typed(&c, typ));
        assert_eq!(r.status, status, "{typ:?}: {}", r.text());
    }
}
