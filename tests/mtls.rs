//! Mutual TLS (issue 42): listeners that require or request client
//! certificates against a CA made here with OpenSSL, certificates as
//! tenants (SPIFFE URI, DNS and email SANs, the common name) with their
//! tier, revocation by CRL, the verified certificate forwarded in a field
//! no client can forge, reloads that pick up renewed files, and pools that
//! present a client certificate to backends that require one. Clients are
//! `curl` (scripts/test installs it), verifying tollgate's certificate
//! against the same CA.

mod common;
use common::pki::{Ca, Issued, Leaf};
use common::*;
use std::process::Command;

/// The SPIFFE ID tenant payments lists.
const PAY: &[&str] = &["spiffe://test.local/ns/pay/sa/api"];

/// What `curl` got: the status (0: no HTTP answer, e.g. a refused
/// handshake), the response's fields and its body.
struct Answer {
    status: u16,
    head: String,
    body: String,
    stderr: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// GET `path` over TLS from a client presenting `cert` (or none), with
/// extra request fields.
fn call(proxy: &TollgateProcess, ca: &Ca, cert: Option<&Issued>, fields: &[&str]) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-D", "/dev/stderr", "-o", "-", "--max-time", "10"])
        .args(["--cacert", &ca.cert_file]);
    if let Some(c) = cert {
        cmd.args(["--cert", &c.cert, "--key", &c.key]);
    }
    for f in fields {
        cmd.args(["-H", f]);
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{}/items", proxy.addr.port()))
        .output()
        .expect("run curl (scripts/test installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = stderr
        .lines()
        .find_map(|l| l.strip_prefix("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: stderr.clone(),
        body: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

/// The `listen` entry of a TLS listener with `client` (YAML of
/// `client_certificates`, or empty for none).
fn listener(server: &Issued, client: String) -> impl Fn(u16) -> String {
    let (cert, key) = (server.cert.clone(), server.key.clone());
    move |port| {
        let client = match client.as_str() {
            "" => String::new(),
            c => format!(", client_certificates: {c}"),
        };
        format!("{{ address: \"127.0.0.1:{port}\", tls: {{ cert: \"{cert}\", key: \"{key}\"{client} }} }}")
    }
}

/// Two tiers, tenants known by certificate names, one route to `api`.
fn tenants_config(api: &TestUpstream, anonymous: &str) -> String {
    format!(
        "auth: {{ client_certificate_header: X-Client-Cert }}
tiers:
  gold: {{ per_minute: 1000 }}
  bronze: {{ per_minute: 10 }}
  free: {{ per_minute: 5 }}
tenants:
  payments:
    tier: gold
    certificates: [\"uri:spiffe://test.local/ns/pay/sa/api\"]
  batch:
    tier: bronze
    certificates: [\"dns:Batch.Internal.test\", \"email:ops@example.test\"]
  legacy:
    tier: bronze
    certificates: [\"cn:legacy-client\"]
    api_keys: [\"{legacy_key}\"]
anonymous: {anonymous}
upstreams:
  api: {{ backends: [\"{addr}\"] }}
routes:
  - {{ name: items, upstream: api }}
",
        legacy_key = hash_key("legacy-key"),
        addr = api.addr
    )
}

fn hash_key(key: &str) -> String {
    let (ok, out, err) = run_cli(&["hash-key", key]);
    assert!(ok, "{err}");
    out.trim().to_owned()
}

/// The quota of the tier that decided, from `RateLimit-Policy`.
fn quota(a: &Answer) -> String {
    a.header("ratelimit-policy")
        .and_then(|p| p.split(';').find_map(|x| x.strip_prefix("q=")))
        .unwrap_or_else(|| panic!("no RateLimit-Policy: {}", a.head))
        .to_owned()
}

#[test]
fn a_verified_certificate_names_its_tenant_and_tier_and_is_forwarded() {
    let dir = scratch_dir("mtls-tenants");
    let ca = Ca::new(&dir, "pki");
    let server = ca.server("server", "tollgate");
    let spiffe = ca.issue("spiffe", &Leaf::uris("pay-api", PAY));
    let batch = ca.issue("batch", &Leaf::dns("batch", &["batch.internal.test"]));
    let ops = ca.issue(
        "ops",
        &Leaf {
            cn: "ops",
            emails: &["ops@EXAMPLE.test"],
            ..Leaf::default()
        },
    );
    let legacy = ca.issue("legacy", &Leaf::cn("legacy-client"));
    let stranger = ca.issue("stranger", &Leaf::cn("nobody"));
    let api = TestUpstream::fixed("items");
    let proxy = TollgateProcess::start_with_listener(
        listener(&server, format!("{{ ca: \"{}\" }}", ca.cert_file)),
        &tenants_config(&api, "{ tier: free }"),
    );

    // A SPIFFE ID names payments (gold), with forged identity fields sent.
    let a = call(
        &proxy,
        &ca,
        Some(&spiffe),
        &[
            "X-Tenant: batch",
            "X-Client-Cert: Hash=forged;URI=spiffe://evil",
        ],
    );
    assert_eq!((a.status, a.body.as_str()), (200, "items"), "{}", a.stderr);
    assert_eq!(quota(&a), "1000");
    let seen = api.recorded().pop().expect("forwarded");
    assert_eq!(seen.header("x-tenant"), Some("payments"));
    let described = seen.header("x-client-cert").expect("certificate forwarded");
    assert!(
        described.starts_with("Hash=")
            && described.contains(";Subject=\"CN=pay-api,O=tollgate tests\"")
            && described.ends_with(";URI=spiffe://test.local/ns/pay/sa/api"),
        "{described}"
    );
    assert!(!described.contains("evil"), "{described}");

    // A DNS SAN (listed in another case) and an email SAN name batch (bronze).
    for cert in [&batch, &ops] {
        let a = call(&proxy, &ca, Some(cert), &[]);
        assert_eq!(a.status, 200, "{}", a.stderr);
        assert_eq!(quota(&a), "10");
        assert_eq!(
            api.recorded().pop().expect("forwarded").header("x-tenant"),
            Some("batch")
        );
    }
    // The subject's common name; the certificate wins over another
    // tenant's... and over the tenant's own API key alike.
    let a = call(&proxy, &ca, Some(&legacy), &["X-Api-Key: legacy-key"]);
    assert_eq!((a.status, quota(&a).as_str()), (200, "10"), "{}", a.stderr);
    assert_eq!(
        api.recorded().pop().expect("forwarded").header("x-tenant"),
        Some("legacy")
    );

    // A verified certificate that names no tenant is an anonymous caller
    // (here: the free tier), and still forwarded as verified.
    let a = call(&proxy, &ca, Some(&stranger), &[]);
    assert_eq!((a.status, quota(&a).as_str()), (200, "5"), "{}", a.stderr);
    let seen = api.recorded().pop().expect("forwarded");
    assert_eq!(seen.header("x-tenant"), None);
    assert!(seen
        .header("x-client-cert")
        .is_some_and(|d| d.contains("CN=nobody")));
    assert_eq!(proxy.metric_sum("tollgate_auth_failures_total", ""), 0.0);
}

#[test]
fn revoked_foreign_and_missing_certificates_get_no_handshake_where_required() {
    let dir = scratch_dir("mtls-require");
    let ca = Ca::new(&dir, "pki");
    let other = Ca::new(&dir, "other");
    let server = ca.server("server", "tollgate");
    let good = ca.issue("good", &Leaf::uris("good", PAY));
    let revoked = ca.issue("revoked", &Leaf::uris("revoked", PAY));
    let foreign = other.issue("foreign", &Leaf::uris("foreign", PAY));
    let crl = ca.crl("crl", &[revoked.serial]);
    let api = TestUpstream::fixed("items");
    let proxy = TollgateProcess::start_with_listener(
        listener(
            &server,
            format!(
                "{{ ca: \"{}\", crl: \"{crl}\", mode: require }}",
                ca.cert_file
            ),
        ),
        &tenants_config(&api, "{ tier: free }"),
    );
    let a = call(&proxy, &ca, Some(&good), &[]);
    assert_eq!(
        (a.status, quota(&a).as_str()),
        (200, "1000"),
        "{}",
        a.stderr
    );
    for (what, cert) in [
        ("revoked", Some(&revoked)),
        ("another CA's", Some(&foreign)),
        ("no", None),
    ] {
        let a = call(&proxy, &ca, cert, &[]);
        assert_eq!(a.status, 0, "{what} certificate was answered: {}", a.head);
    }
    // Only the good client's request reached the upstream.
    assert_eq!(api.count(), 1);
    let listener = format!("127.0.0.1:{}", proxy.addr.port());
    for (result, n) in [("verified", 1.0), ("revoked", 1.0), ("untrusted", 1.0)] {
        let series = format!(
            "tollgate_client_certificates_total{{listener=\"{listener}\",result=\"{result}\"}}"
        );
        assert_eq!(proxy.metric(&series), Some(n), "{series}");
    }
}

#[test]
fn a_listener_that_requests_certificates_admits_clients_without_one() {
    let dir = scratch_dir("mtls-request");
    let ca = Ca::new(&dir, "pki");
    let other = Ca::new(&dir, "other");
    let server = ca.server("server", "tollgate");
    let good = ca.issue("good", &Leaf::dns("b", &["batch.internal.test"]));
    let foreign = other.issue("foreign", &Leaf::dns("b", &["batch.internal.test"]));
    let api = TestUpstream::fixed("items");
    let proxy = TollgateProcess::start_with_listener(
        listener(
            &server,
            format!("{{ ca: \"{}\", mode: request }}", ca.cert_file),
        ),
        &tenants_config(&api, "{ reject: true }"),
    );
    // No certificate: an API key identifies the caller, none is a 401.
    let a = call(&proxy, &ca, None, &["X-Api-Key: legacy-key"]);
    assert_eq!((a.status, quota(&a).as_str()), (200, "10"), "{}", a.stderr);
    assert_eq!(
        api.recorded()
            .pop()
            .expect("forwarded")
            .header("x-client-cert"),
        None
    );
    let a = call(&proxy, &ca, None, &["X-Client-Cert: Hash=forged"]);
    assert_eq!(a.status, 401, "{}", a.head);
    // A certificate, when sent, is verified and identifies.
    let a = call(&proxy, &ca, Some(&good), &[]);
    assert_eq!(a.status, 200, "{}", a.stderr);
    assert_eq!(
        api.recorded().pop().expect("forwarded").header("x-tenant"),
        Some("batch")
    );
    // An unverifiable one is still refused at the handshake.
    assert_eq!(call(&proxy, &ca, Some(&foreign), &[]).status, 0);
    let listener = format!("127.0.0.1:{}", proxy.addr.port());
    let absent =
        format!("tollgate_client_certificates_total{{listener=\"{listener}\",result=\"absent\"}}");
    assert_eq!(
        proxy.metric(&absent),
        Some(2.0),
        "two calls came without one"
    );
}

/// The subject CN of the certificate tollgate serves.
fn served_subject(proxy: &TollgateProcess) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(proxy.addr.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("subject=").map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn a_reload_serves_a_renewed_certificate_and_applies_a_new_crl_and_ca() {
    let dir = scratch_dir("mtls-reload");
    let ca = Ca::new(&dir, "pki");
    let next = Ca::new(&dir, "next");
    let server = ca.server("server", "tollgate-one");
    let client = ca.issue("client", &Leaf::uris("c", PAY));
    let next_client = next.issue("client", &Leaf::uris("n", PAY));
    // The files the config names, rewritten in place as a certificate
    // manager would; the CRL starts empty.
    let bundle = dir.join("clients-ca.pem").display().to_string();
    std::fs::copy(&ca.cert_file, &bundle).expect("bundle");
    let crl = dir.join("clients.crl.pem").display().to_string();
    std::fs::copy(ca.crl("empty", &[]), &crl).expect("crl");
    let api = TestUpstream::fixed("items");
    let proxy = TollgateProcess::start_with_listener(
        listener(&server, format!("{{ ca: \"{bundle}\", crl: \"{crl}\" }}")),
        &tenants_config(&api, "{ tier: free }"),
    );
    assert!(served_subject(&proxy).contains("tollgate-one"));
    assert_eq!(call(&proxy, &ca, Some(&client), &[]).status, 200);
    assert_eq!(call(&proxy, &ca, Some(&next_client), &[]).status, 0);

    // Renewed server certificate, client revoked, and the next CA trusted.
    let renewed = ca.server("renewed", "tollgate-two");
    std::fs::copy(&renewed.cert, &server.cert).expect("cert");
    std::fs::copy(&renewed.key, &server.key).expect("key");
    std::fs::copy(ca.crl("revoking", &[client.serial]), &crl).expect("crl");
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&ca.cert_file).expect("read"),
        std::fs::read_to_string(&next.cert_file).expect("read")
    );
    std::fs::write(&bundle, both).expect("bundle");
    // The next CA's clients are checked against a CRL of their own.
    let next_crl = std::fs::read_to_string(next.crl("empty", &[])).expect("read");
    let mut crls = std::fs::read_to_string(&crl).expect("read");
    crls.push_str(&next_crl);
    std::fs::write(&crl, crls).expect("crls");
    let r = proxy.admin_post("/config/reload", ADMIN_TOKEN, "");
    assert_eq!(r.status, 200, "{}", r.text());

    assert!(served_subject(&proxy).contains("tollgate-two"));
    assert_eq!(call(&proxy, &ca, Some(&client), &[]).status, 0, "revoked");
    let a = call(&proxy, &ca, Some(&next_client), &[]);
    assert_eq!(
        (a.status, quota(&a).as_str()),
        (200, "1000"),
        "{}",
        a.stderr
    );

    // A bad file refuses the reload and changes nothing.
    std::fs::write(&bundle, "not a certificate").expect("bundle");
    let r = proxy.admin_post("/config/reload", ADMIN_TOKEN, "");
    assert_ne!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("client_certificates.ca"), "{}", r.text());
    assert_eq!(call(&proxy, &ca, Some(&next_client), &[]).status, 200);
}

/// A backend that requires client certificates of `ca`: a tollgate in
/// front of `origin` that forwards the verified one in `X-Client-Cert`.
fn mtls_backend(ca: &Ca, server: &Issued, origin: &TestUpstream) -> TollgateProcess {
    TollgateProcess::start_with_listener(
        listener(server, format!("{{ ca: \"{}\" }}", ca.cert_file)),
        &format!(
            "auth: {{ client_certificate_header: X-Client-Cert }}\n{}",
            one_route(origin.addr)
        ),
    )
}

#[test]
fn a_pool_presents_its_client_certificate_to_a_backend_that_requires_one() {
    let dir = scratch_dir("mtls-upstream");
    let ca = Ca::new(&dir, "pki");
    let server = ca.server("backend", "backend");
    let edge_cert = ca.issue(
        "edge",
        &Leaf::uris("edge", &["spiffe://test.local/ns/edge/sa/tollgate"]),
    );
    let origin = TestUpstream::fixed("behind mtls");
    // The backend: a tollgate that requires client certificates and
    // forwards the verified one.
    let backend = mtls_backend(&ca, &server, &origin);
    let pool = |client: &str| {
        format!(
            "upstreams:\n  secure:\n    backends: [\"{}\"]\n    tls: {{ sni: localhost, ca: \"{}\"{client} }}\n\
             routes:\n  - {{ name: api, upstream: secure }}\n",
            backend.addr, ca.cert_file
        )
    };
    let with_cert = TollgateProcess::start(&pool(&format!(
        ", client_cert: \"{}\", client_key: \"{}\"",
        edge_cert.cert, edge_cert.key
    )));
    let r = get(with_cert.addr, "/x").expect("request");
    assert_eq!((r.status, r.text().as_str()), (200, "behind mtls"));
    let seen = origin.recorded().pop().expect("reached the origin");
    assert!(
        seen.header("x-client-cert")
            .is_some_and(|d| d.ends_with("URI=spiffe://test.local/ns/edge/sa/tollgate")),
        "{:?}",
        seen.header("x-client-cert")
    );
    // Without one, the backend refuses the handshake: a 502.
    let without = TollgateProcess::start(&pool(""));
    let r = get(without.addr, "/x").expect("request");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(origin.count(), 1);
}

/// The `X-Client-Cert` the origin saw last on a request for `path`.
fn last_identity(origin: &TestUpstream, path: &str) -> Option<String> {
    origin
        .recorded()
        .iter()
        .rev()
        .find(|r| r.path == path)
        .and_then(|r| r.header("x-client-cert").map(str::to_owned))
}

#[test]
fn renewed_certificate_files_are_watched_and_health_checks_present_the_new_one() {
    let dir = scratch_dir("mtls-watch");
    let ca = Ca::new(&dir, "pki");
    let server = ca.server("backend", "backend");
    let origin = TestUpstream::fixed("behind mtls");
    let backend = mtls_backend(&ca, &server, &origin);
    let first = ca.issue(
        "edge-one",
        &Leaf::uris("edge", &["spiffe://test.local/edge/one"]),
    );
    let second = ca.issue(
        "edge-two",
        &Leaf::uris("edge", &["spiffe://test.local/edge/two"]),
    );
    // The files the config names, rewritten in place by a certificate
    // manager: no signal, no reload call.
    let cert = dir.join("edge.pem");
    let key = dir.join("edge.key");
    std::fs::copy(&first.cert, &cert).expect("cert");
    std::fs::copy(&first.key, &key).expect("key");
    let front = TollgateProcess::start_with_server(
        "  watch_config: true\n  watch_interval: 100ms\n",
        &format!(
            "upstreams:\n  secure:\n    backends: [\"{}\"]\n    \
             tls: {{ sni: localhost, ca: \"{}\", client_cert: \"{}\", client_key: \"{}\" }}\n    \
             health_check: {{ path: /hc, interval: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }}\n\
             routes:\n  - {{ name: api, upstream: secure }}\n",
            backend.addr,
            ca.cert_file,
            cert.display(),
            key.display()
        ),
    );
    let presents = |path: &str, id: &str| {
        last_identity(&origin, path)
            .is_some_and(|v| v.ends_with(&format!("URI=spiffe://test.local/edge/{id}")))
    };
    wait_until("a health check presents the first certificate", || {
        presents("/hc", "one")
    });
    let r = get(front.addr, "/x").expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(presents("/x", "one"), "{:?}", last_identity(&origin, "/x"));

    std::fs::copy(&second.cert, &cert).expect("renewed cert");
    std::fs::copy(&second.key, &key).expect("renewed key");
    wait_until("requests present the renewed certificate", || {
        get(front.addr, "/x").is_ok_and(|r| r.status == 200) && presents("/x", "two")
    });
    // The pool's health state carried on; its checks use the renewed
    // certificate too (the old one may expire or be revoked next).
    wait_until("health checks present the renewed certificate", || {
        presents("/hc", "two")
    });
}

#[test]
fn turning_client_certificates_off_needs_a_restart() {
    let dir = scratch_dir("mtls-toggle");
    let ca = Ca::new(&dir, "pki");
    let server = ca.server("server", "tollgate");
    let api = TestUpstream::fixed("items");
    let proxy = TollgateProcess::start_with_listener(
        listener(&server, format!("{{ ca: \"{}\" }}", ca.cert_file)),
        &one_route(api.addr),
    );
    let config = proxy.config.clone();
    let text = std::fs::read_to_string(&config).expect("read");
    let start = text.find(", client_certificates:").expect("listener");
    let end = start + text[start..].find('}').expect("end of the block") + 1;
    std::fs::write(&config, format!("{}{}", &text[..start], &text[end..])).expect("write");
    let r = proxy.admin_post("/config/reload", ADMIN_TOKEN, "");
    assert_ne!(r.status, 200);
    assert!(r.text().contains("needs a restart"), "{}", r.text());
    assert_eq!(call(&proxy, &ca, None, &[]).status, 0, "still required");
}

#[test]
fn check_refuses_bad_mutual_tls_settings_with_their_line() {
    let dir = scratch_dir("mtls-check");
    let ca = Ca::new(&dir, "pki");
    let server = ca.server("server", "tollgate");
    let other = ca.server("other", "other");
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nnope\n").expect("write");
    let file = dir.join("t.yaml");
    let (cert, key, ca_file, junk) = (
        &server.cert,
        &server.key,
        &ca.cert_file,
        junk.display().to_string(),
    );
    let cases = [
        (
            format!("listen: [{{ address: \"127.0.0.1:1\", tls: {{ cert: \"{cert}\", key: \"{key}\", client_certificates: {{ ca: \"{junk}\" }} }} }}]\n"),
            "listen[0].tls.client_certificates.ca: ",
        ),
        (
            format!("listen: [{{ address: \"127.0.0.1:1\", tls: {{ cert: \"{cert}\", key: \"{key}\", client_certificates: {{ ca: \"{ca_file}\", crl: \"{ca_file}\" }} }} }}]\n"),
            "holds no PEM CRL",
        ),
        (
            format!("listen: [{{ address: \"127.0.0.1:1\", tls: {{ cert: \"{cert}\", key: \"{}\" }} }}]\n", other.key),
            "is not the private key of",
        ),
        (
            "listen: [\"127.0.0.1:1\"]\nauth: { client_certificate_header: X-Client-Cert }\n".to_owned(),
            "no listener asks for client certificates",
        ),
        (
            "listen: [\"127.0.0.1:1\"]\ntiers: { t: { per_minute: 1 } }\nanonymous: { reject: true }\ntenants:\n  a: { tier: t, certificates: [\"spiffe://x\"] }\n".to_owned(),
            "t.yaml:5:32: tenants.a.certificates[0]: \"spiffe://x\": unknown kind",
        ),
        (
            "listen: [\"127.0.0.1:1\"]\ntiers: { t: { per_minute: 1 } }\nanonymous: { reject: true }\ntenants:\n  a: { tier: t, certificates: [\"dns:x.test\"] }\n  b: { tier: t, certificates: [\"dns:X.test\"] }\n".to_owned(),
            "dns:x.test is also listed for tenant \"a\"",
        ),
        (
            format!("listen: [\"127.0.0.1:1\"]\nupstreams:\n  s:\n    backends: [\"127.0.0.1:2\"]\n    tls: {{ sni: x, client_cert: \"{cert}\" }}\nroutes: [{{ name: r, upstream: s }}]\n"),
            "upstreams.s.tls.client_key: client_cert needs its client_key",
        ),
    ];
    for (yaml, says) in cases {
        let body = if yaml.contains("upstreams:") {
            yaml
        } else {
            format!("{yaml}upstreams: {{ a: {{ backends: [\"127.0.0.1:2\"] }} }}\nroutes: [{{ name: r, upstream: a }}]\n")
        };
        std::fs::write(&file, &body).expect("write");
        let (ok, _, err) = run_cli(&["check", &file.display().to_string()]);
        assert!(!ok, "accepted:\n{body}");
        assert!(
            err.contains(says),
            "wanted {says:?} in:\n{err}\nfor:\n{body}"
        );
    }
}
