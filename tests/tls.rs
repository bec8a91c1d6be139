//! A TLS listener serves HTTPS, offers HTTP/2, and tells the upstream the
//! client used https.

mod common;
use common::*;
use std::process::Command;

/// A tollgate with a TLS listener (throwaway certificate) in front of `origin`.
fn tls_proxy(origin: &TestUpstream, tag: &str) -> TollgateProcess {
    TollgateProcess::start_with_listener(tls_listener(tag), &one_route(origin.addr))
}

#[test]
fn tls_listener_serves_http2_and_forwards_https_proto() {
    let upstream = TestUpstream::fixed("over tls");
    let proxy = tls_proxy(&upstream, "tls");
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "-",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .arg(format!("https://{}/x", proxy.addr))
        .output()
        .expect("run curl (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "over tls\n2 200",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        upstream.recorded()[0].header("x-forwarded-proto"),
        Some("https")
    );
}

#[test]
fn missing_certificate_is_a_config_error() {
    let (ok, _, err) = run_cli(&["check", "tests/fixtures/tls_missing_cert.yaml"]);
    assert!(!ok);
    assert!(
        err.contains("listen[0].tls.cert: cannot read /nonexistent/cert.pem"),
        "{err}"
    );
}

#[test]
fn upstreams_can_be_reached_over_tls_with_sni() {
    // The TLS upstream is a second tollgate with a TLS listener in front of
    // a plain test upstream.
    let origin = TestUpstream::fixed("through two proxies");
    let tls_front = tls_proxy(&origin, "tls-upstream");
    let edge = TollgateProcess::start(&format!(
        "upstreams:\n  secure:\n    backends: [\"{}\"]\n    tls: {{ sni: localhost, verify: false }}\n\
         routes:\n  - {{ name: api, upstream: secure }}\n",
        tls_front.addr
    ));
    let r = get(edge.addr, "/x").expect("request");
    assert_eq!((r.status, r.text().as_str()), (200, "through two proxies"));
    // The inner proxy saw a TLS client: it told the origin so.
    assert_eq!(
        origin.recorded()[0].header("x-forwarded-proto"),
        Some("https")
    );
    assert_eq!(
        origin.recorded()[0].header("via"),
        Some("1.1 tollgate, 1.1 tollgate")
    );
}

#[test]
fn an_unverifiable_upstream_certificate_is_a_502() {
    let origin = TestUpstream::fixed("never");
    let tls_front = tls_proxy(&origin, "tls-verify");
    let edge = TollgateProcess::start(&format!(
        "upstreams:\n  secure:\n    backends: [\"{}\"]\n    tls: {{ sni: localhost }}\n\
         routes:\n  - {{ name: api, upstream: secure }}\n",
        tls_front.addr
    ));
    let r = get(edge.addr, "/x").expect("request");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "bad_gateway");
    assert_eq!(origin.count(), 0);
}
