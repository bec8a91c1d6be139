//! The Kubernetes manifests under `deploy/` hold together: every overlay
//! renders (`kubectl kustomize`) and validates offline against the schemas
//! of a current Kubernetes release (`kubernetes-validate`, strict), its
//! ConfigMap's config passes `tollgate check`, the probes ask that config's
//! admin port and paths, the drain fits the termination grace period, the
//! autoscaler and the disruption budget are the ones the README promises,
//! and the PrometheusRule carries exactly the rules promtool tests in
//! `conf/prometheus/alerts.yml`.
//!
//! The test command installs both tools (`scripts/test`); this test fails,
//! rather than skips, without them.

use serde_yaml::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes release whose schemas the manifests must satisfy.
const KUBERNETES: &str = "1.31.0";

fn validator() -> PathBuf {
    let tool = std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/tools/venv/bin/kubernetes-validate"));
    assert!(
        tool.exists(),
        "{} is missing: scripts/test installs it (pip install kubernetes-validate)",
        tool.display()
    );
    tool
}

/// Every directory `kubectl kustomize` renders: the base and each overlay.
fn kustomizations() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("deploy/base")];
    let mut overlays: Vec<PathBuf> = std::fs::read_dir("deploy/overlays")
        .expect("deploy/overlays")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("kustomization.yaml").exists())
        .collect();
    overlays.sort();
    dirs.extend(overlays);
    dirs
}

fn render(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl (scripts/test installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .map(|doc| serde_yaml::from_str::<Value>(doc).expect("rendered YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(name))
        })
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn seconds(text: &str) -> u64 {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    assert!(
        text.ends_with('s') && !digits.is_empty(),
        "a duration in seconds: {text}"
    );
    digits.parse().expect("seconds")
}

#[test]
fn every_overlay_renders_validates_and_deploys_a_config_check_accepts() {
    let validate = validator();
    let dir = std::env::temp_dir().join(format!("tollgate-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for kustomization in kustomizations() {
        let rendered = render(&kustomization);
        let file = dir.join("rendered.yaml");
        std::fs::write(&file, &rendered).expect("write rendered");
        let checked = Command::new(&validate)
            .args(["--strict", "-k", KUBERNETES])
            .arg(&file)
            .output()
            .expect("run kubernetes-validate");
        let report = String::from_utf8_lossy(&checked.stdout).into_owned()
            + &String::from_utf8_lossy(&checked.stderr);
        assert!(
            checked.status.success() && !report.contains("ERROR"),
            "{}: {report}",
            kustomization.display()
        );
        let docs = documents(&rendered);
        // The CRDs kubernetes-validate has no schema for get a look of
        // their own: the rules are the promtool-tested file's.
        let rule = of_kind(&docs, "PrometheusRule", "tollgate");
        let alerts: Value = serde_yaml::from_str(
            &std::fs::read_to_string("conf/prometheus/alerts.yml").expect("alerts.yml"),
        )
        .expect("alerts YAML");
        assert_eq!(
            rule["spec"]["groups"],
            alerts["groups"],
            "{}: run deploy/render-rules",
            kustomization.display()
        );
        let monitor = of_kind(&docs, "ServiceMonitor", "tollgate");
        assert_eq!(monitor["spec"]["endpoints"][0]["port"], "admin");
        assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");

        // The config the ConfigMap mounts is one `tollgate check` accepts.
        let map = of_kind(&docs, "ConfigMap", "tollgate-config");
        let config_text = map["data"]["tollgate.yaml"]
            .as_str()
            .expect("tollgate.yaml");
        let config_file = dir.join("tollgate.yaml");
        std::fs::write(&config_file, config_text).expect("write config");
        // With the environment the pod gets: the admin token from the Secret.
        let secret = of_kind(&docs, "Secret", "tollgate-secrets");
        let token = secret["data"]["admin-token"]
            .as_str()
            .and_then(|b| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .expect("the Secret's admin-token");
        let check = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("check")
            .arg(&config_file)
            .env("TOLLGATE_ADMIN_TOKEN", token)
            .output()
            .expect("tollgate check");
        assert!(
            check.status.success(),
            "{}: {}",
            kustomization.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let config: Value = serde_yaml::from_str(config_text).expect("config YAML");

        // Probes: the config's admin port, /ready and /health.
        let deployment = of_kind(&docs, "Deployment", "tollgate");
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let admin_port: u64 = config["admin"]["listen"]
            .as_str()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("admin.listen port");
        let admin = container["ports"]
            .as_sequence()
            .and_then(|ports| ports.iter().find(|p| p["name"] == "admin"))
            .expect("admin port");
        assert_eq!(admin["containerPort"].as_u64(), Some(admin_port));
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");
        // The drain fits: preStop wait + grace_period + shutdown timeout.
        let pre_stop: u64 = container["lifecycle"]["preStop"]["exec"]["command"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("preStop sleep seconds");
        let drain = pre_stop
            + seconds(
                config["server"]["grace_period"]
                    .as_str()
                    .expect("grace_period"),
            )
            + seconds(
                config["server"]["graceful_shutdown_timeout"]
                    .as_str()
                    .expect("timeout"),
            );
        let grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace");
        assert!(
            drain <= grace,
            "drain {drain}s > terminationGracePeriodSeconds {grace}s"
        );
        // Non-root, read-only, nothing to escalate.
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"],
            false
        );
        assert_eq!(
            config["server"]["watch_config"], true,
            "ConfigMap updates reload"
        );

        // The autoscaler and the disruption budget.
        let hpa = of_kind(&docs, "HorizontalPodAutoscaler", "tollgate");
        assert_eq!(hpa["spec"]["minReplicas"].as_u64(), Some(3));
        assert_eq!(hpa["spec"]["maxReplicas"].as_u64(), Some(20));
        let target = |resource: &str| {
            hpa["spec"]["metrics"]
                .as_sequence()
                .and_then(|m| m.iter().find(|m| m["resource"]["name"] == resource))
                .and_then(|m| m["resource"]["target"]["averageUtilization"].as_u64())
        };
        assert_eq!((target("cpu"), target("memory")), (Some(70), Some(80)));
        let pdb = of_kind(&docs, "PodDisruptionBudget", "tollgate");
        assert!(pdb["spec"]["minAvailable"].as_u64().is_some_and(|n| n >= 1));
        // The admin port is open to the monitoring namespace only.
        let policy = of_kind(&docs, "NetworkPolicy", "tollgate");
        let admin_rule = policy["spec"]["ingress"]
            .as_sequence()
            .and_then(|rules| {
                rules
                    .iter()
                    .find(|r| r["ports"][0]["port"].as_u64() == Some(admin_port))
            })
            .expect("an ingress rule for the admin port");
        assert_eq!(
            admin_rule["from"][0]["namespaceSelector"]["matchLabels"]
                ["kubernetes.io/metadata.name"],
            "monitoring"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_manifest_the_schemas_refuse_fails_validation() {
    let validate = validator();
    let file = std::env::temp_dir().join(format!("tollgate-k8s-bad-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: x }\n\
         spec: { replicas: three, selector: { matchLabels: { a: b } }, template: { metadata: { labels: { a: b } }, spec: { containers: [] } } }\n",
    )
    .expect("write");
    let checked = Command::new(&validate)
        .args(["--strict", "-k", KUBERNETES])
        .arg(&file)
        .output()
        .expect("run kubernetes-validate");
    let _ = std::fs::remove_file(&file);
    assert!(
        !checked.status.success(),
        "replicas: three must fail: {}",
        String::from_utf8_lossy(&checked.stdout)
    );
}
