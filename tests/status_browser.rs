//! The status page in a real browser: headless Chromium (Debian's
//! `chromium`, installed by `scripts/test`) loads the admin page after a
//! little traffic, runs its JavaScript, and the rendered DOM must show the
//! route names, the backend's health and a non-zero request rate. A
//! screenshot goes to `target/status.png`.
//!
//! When Chromium is missing or cannot start, the test fails and says so:
//! it never passes without having rendered the page.

mod common;
use common::browser::run_chromium;
use common::*;
use std::path::PathBuf;

/// The values of `attr="…"` in rendered HTML.
fn attribute_values(dom: &str, attr: &str) -> Vec<String> {
    let needle = format!("{attr}=\"");
    dom.match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = &dom[at + needle.len()..];
            rest.find('"').map(|end| rest[..end].to_owned())
        })
        .collect()
}

#[test]
fn the_status_page_renders_live_numbers_in_chromium() {
    let up = TestUpstream::fixed("{\"ok\": true}");
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  catalogue: {{ backends: [\"{}\"] }}\nroutes:\n  \
         - {{ name: products, upstream: catalogue, match: {{ path_prefix: /products/ }}, cache: {{ default_ttl: 60s }} }}\n  \
         - {{ name: orders, upstream: catalogue, match: {{ path_prefix: /orders/ }} }}\n",
        up.addr
    ));
    // Traffic, until the sampler has seen it (a rate needs two samples).
    wait_until("the products route shows a request rate", || {
        for _ in 0..20 {
            get(proxy.addr, "/products/1").expect("get");
        }
        get(proxy.admin, "/status.json")
            .expect("status.json")
            .json()["routes"][0]["requests_per_second"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
    });
    let url = format!("http://{}/", proxy.admin);
    let dump = run_chromium(&url, &["--dump-dom"]);
    // The rendered document, without the script's own source.
    let dom = dump.split("<script").next().unwrap_or_default();
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page's script did not render status.json:\n{dom}"
    );
    let routes = attribute_values(dom, "data-route");
    assert_eq!(routes, ["products", "orders"], "route names in the DOM");
    let health = attribute_values(dom, "data-health");
    assert_eq!(health, ["healthy"], "the backend's health in the DOM");
    let rates: Vec<f64> = attribute_values(dom, "data-rps")
        .iter()
        .filter_map(|r| r.parse().ok())
        .collect();
    assert!(
        rates.first().is_some_and(|r| *r > 0.0),
        "a non-zero request rate for products: {rates:?}"
    );
    assert!(dom.contains(&up.addr.to_string()), "the backend's address");

    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/status.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &url,
        &[
            "--window-size=1280,900",
            "--hide-scrollbars",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "a screenshot of the page at {}",
        shot.display()
    );
}
