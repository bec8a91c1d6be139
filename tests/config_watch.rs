//! Config that reloads itself (`server.watch_config`): a changed file is
//! reloaded with the same validation as SIGHUP, a broken one is refused
//! and reported (log, metric, `/health`) while the running config stays,
//! and a Kubernetes ConfigMap update — a `..data` symlink swapped to a new
//! directory, the file's own name untouched — is seen.

mod common;
use common::*;
use std::fs;
use std::path::Path;

const WATCH: &str = "  watch_config: true\n  watch_interval: 100ms\n";

#[test]
fn a_changed_file_is_reloaded_and_a_broken_one_is_refused_reported_and_not_served() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start_with_server(WATCH, &prefix_route(up.addr, "/old/"));
    assert_eq!(status_of(&proxy, "/old/x"), 200);
    assert_eq!(proxy.health()["components"]["config"]["watch"], true);

    proxy.rewrite_config(&prefix_route(up.addr, "/new/"));
    proxy.wait_metric(r#"tollgate_config_reloads_total{result="ok"}"#, 1.0);
    assert_eq!(status_of(&proxy, "/new/x"), 200);
    assert_eq!(status_of(&proxy, "/old/x"), 404);

    // Broken on disk: refused, reported, the running config keeps serving.
    proxy.rewrite_config(
        "upstreams:\n  api: { backends: [] }\nroutes:\n  - { name: r, upstream: nope }\n",
    );
    proxy.wait_metric(r#"tollgate_config_reloads_total{result="error"}"#, 1.0);
    assert_eq!(status_of(&proxy, "/new/x"), 200, "the old config serves");
    let config = &proxy.health()["components"]["config"];
    assert_eq!(config["status"], "refused", "{config}");
    assert_eq!(config["last_reload"]["result"], "error", "{config}");
    let message = config["last_reload"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("unknown upstream \"nope\""), "{message}");
    assert!(proxy.log_text().contains("config reload refused"));

    // Mended: served again, and /health says so.
    proxy.rewrite_config(&prefix_route(up.addr, "/mended/"));
    proxy.wait_metric(r#"tollgate_config_reloads_total{result="ok"}"#, 2.0);
    assert_eq!(status_of(&proxy, "/mended/x"), 200);
    assert_eq!(proxy.health()["components"]["config"]["status"], "ok");
    assert_eq!(
        proxy.metric(r#"tollgate_config_reloads_total{result="error"}"#),
        Some(1.0),
        "a refused file is not tried again while it stays the same"
    );
}

/// `dir/NAME` becomes a ConfigMap-style volume holding `text`: `NAME` →
/// `..data/NAME`, `..data` → `version`. Each step is one rename, as the
/// kubelet makes it.
fn publish(dir: &Path, name: &str, version: &str, text: &str) {
    fs::create_dir_all(dir.join(version)).expect("version dir");
    fs::write(dir.join(version).join(name), text).expect("write version");
    let staged = dir.join("..data_tmp");
    let _ = fs::remove_file(&staged);
    std::os::unix::fs::symlink(version, &staged).expect("stage ..data");
    fs::rename(&staged, dir.join("..data")).expect("swap ..data");
    let link = dir.join(format!("{name}.link"));
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(Path::new("..data").join(name), &link).expect("link");
    fs::rename(&link, dir.join(name)).expect("name -> ..data/name");
}

#[test]
fn a_configmap_symlink_swap_is_seen_and_reloaded() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start_with_server(WATCH, &prefix_route(up.addr, "/v1/"));
    let dir = proxy.config.parent().expect("config dir").to_path_buf();
    let name = "tollgate.yaml";
    let header = {
        let text = fs::read_to_string(&proxy.config).expect("read config");
        let end = text.find("upstreams:").expect("upstreams");
        text[..end].to_owned()
    };
    // First the file becomes a ConfigMap volume with the same content,
    // then the update: a new directory, `..data` swapped to it. Each is
    // reloaded, and only the newest prefix serves.
    for (n, version) in ["v1", "v2"].into_iter().enumerate() {
        let body = prefix_route(up.addr, &format!("/{version}/"));
        publish(
            &dir,
            name,
            &format!("..2026_12_07_{version}"),
            &format!("{header}{body}"),
        );
        let reloads = (n + 1) as f64;
        proxy.wait_metric(r#"tollgate_config_reloads_total{result="ok"}"#, reloads);
        assert_eq!(status_of(&proxy, &format!("/{version}/x")), 200);
    }
    assert_eq!(status_of(&proxy, "/v1/x"), 404);
    assert!(
        fs::symlink_metadata(dir.join(name))
            .expect("config name")
            .file_type()
            .is_symlink(),
        "the watched name is the symlink the kubelet keeps"
    );
}

#[test]
fn a_changed_key_set_file_the_config_names_is_read_again_at_once() {
    let up = TestUpstream::fixed("ok");
    let dir = scratch_dir("watch-keys");
    let keys = dir.join("jwks.json");
    fs::copy("tests/fixtures/jwks_a.json", &keys).expect("key set");
    let body = format!(
        "tiers:\n  free: {{ per_minute: 100 }}\nanonymous: {{ tier: free }}\n\
         auth:\n  jwt:\n    issuers:\n      - issuer: \"https://auth.test/\"\n        \
         jwks: {{ file: \"{}\" }}\n        algorithms: [ES256]\n    \
         tenant_claim: org_id\n    default_tier: free\n{}",
        keys.display(),
        prefix_route(up.addr, "/api/")
    );
    let proxy = TollgateProcess::start_with_server(WATCH, &body);
    assert_eq!(status_of(&proxy, "/api/x"), 200);
    // A rotation: the issuer publishes a second key. The key set is read
    // again at once (its `refresh` is 10 minutes); the config is not
    // reloaded for it.
    let staged = dir.join("jwks.json.new");
    fs::copy("tests/fixtures/jwks_ab.json", &staged).expect("new key set");
    fs::rename(&staged, &keys).expect("rotate");
    wait_until("the rotated key set is read", || {
        proxy.health()["components"]["jwks"][0]["keys"]
            == serde_json::json!(["2026-12-a", "2026-12-b"])
    });
    // A broken file keeps the last good keys and is reported.
    fs::write(&staged, "{ not a key set").expect("broken key set");
    fs::rename(&staged, &keys).expect("replace");
    wait_until("the broken key set is reported", || {
        proxy.health()["components"]["jwks"][0]["last_error"].is_string()
    });
    let jwks = &proxy.health()["components"]["jwks"][0];
    assert_eq!(
        jwks["keys"],
        serde_json::json!(["2026-12-a", "2026-12-b"]),
        "{jwks}"
    );
    assert_eq!(
        proxy.metric(r#"tollgate_config_reloads_total{result="ok"}"#),
        Some(0.0),
        "a key set's change re-reads the keys, not the config"
    );
}
