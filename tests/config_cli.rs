//! `tollgate check` and config errors as an operator sees them.

mod common;
use common::*;
use std::fs;
use std::path::Path;

#[test]
fn shipped_configs_pass_check() {
    for file in ["conf/tollgate.yaml", "conf/demo.yaml"] {
        let (ok, out, err) = run_cli(&["check", file]);
        assert!(ok, "{file}: {err}");
        assert!(out.starts_with(&format!("{file}: OK")), "{out}");
        assert!(out.contains("route     "), "{out}");
        assert!(!out.contains("warning"), "{out}");
    }
}

/// Every `tests/fixtures/invalid/NAME.yaml` is refused with exactly the
/// lines in `NAME.err` (file:line:col: field: message).
#[test]
fn invalid_fixtures_fail_with_their_paired_errors() {
    let dir = Path::new("tests/fixtures/invalid");
    let mut checked = 0;
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("fixtures")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for yaml in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let expected = fs::read_to_string(yaml.with_extension("err"))
            .unwrap_or_else(|_| panic!("{} has no paired .err file", yaml.display()));
        let (ok, out, err) = run_cli(&["check", &yaml.to_string_lossy()]);
        assert!(!ok, "{} was accepted: {out}", yaml.display());
        assert_eq!(err, expected, "{}", yaml.display());
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} fixtures found");
}

#[test]
fn a_typo_in_a_field_name_fails_with_its_line_number() {
    let (ok, _, err) = run_cli(&["check", "tests/fixtures/invalid/typo_in_field.yaml"]);
    assert!(!ok);
    assert!(
        err.starts_with(
            "tests/fixtures/invalid/typo_in_field.yaml:7:5: routes[0].upstrem: unknown field"
        ),
        "{err}"
    );
}

#[test]
fn shadowed_route_is_reported_as_a_warning_by_check() {
    let dir = scratch_dir("shadow");
    let file = dir.join("shadow.yaml");
    fs::write(
        &file,
        "upstreams:\n  api: { backends: [\"127.0.0.1:9000\"] }\nroutes:\n  \
         - { name: all, upstream: api, match: { path_prefix: /a/ } }\n  \
         - { name: gets, upstream: api, match: { path_prefix: /a/, methods: [GET] } }\n",
    )
    .expect("write");
    let (ok, out, _) = run_cli(&["check", &file.to_string_lossy()]);
    assert!(ok);
    assert!(
        out.contains("warning:")
            && out.contains("line 5: routes[1]: route \"gets\" is unreachable"),
        "{out}"
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let (ok, _, err) = run_cli(&["check", "no/such/file.yaml"]);
    assert!(!ok);
    assert!(
        err.starts_with("cannot read config file no/such/file.yaml: "),
        "{err}"
    );
}

#[test]
fn run_refuses_a_bad_config_without_starting() {
    let (ok, out, err) = run_cli(&["run", "-c", "tests/fixtures/invalid/unknown_upstream.yaml"]);
    assert!(!ok);
    assert!(out.is_empty());
    assert!(err.contains("unknown upstream \"apii\""), "{err}");
}

#[test]
fn run_reports_a_taken_port_and_exits() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = scratch_dir("taken");
    let file = dir.join("taken.yaml");
    fs::write(
        &file,
        format!(
            "listen: [\"127.0.0.1:{port}\"]\nadmin: {{ listen: \"127.0.0.1:{}\" }}\n\
             upstreams:\n  api: {{ backends: [\"127.0.0.1:9000\"] }}\nroutes:\n  - {{ name: a, upstream: api }}\n",
            free_port()
        ),
    )
    .expect("write");
    let (ok, _, err) = run_cli(&["run", "-c", &file.to_string_lossy()]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (proxy listener)"
        )),
        "{err}"
    );
}

#[test]
fn tls_files_and_the_config_itself_must_be_regular_files() {
    let dir = scratch_dir("special-files");
    let fifo = dir.join("key.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    for (cert, key) in [
        ("/dev/zero", "/dev/zero"),
        ("/dev/null", fifo.to_str().expect("utf-8")),
    ] {
        let file = dir.join("tls.yaml");
        fs::write(
            &file,
            format!(
                "listen:\n  - {{ address: \"127.0.0.1:8443\", tls: {{ cert: \"{cert}\", key: \"{key}\" }} }}\n\
                 upstreams:\n  api: {{ backends: [\"127.0.0.1:9000\"] }}\nroutes:\n  - {{ name: r, upstream: api }}\n"
            ),
        )
        .expect("write");
        let (ok, _, err) = run_cli(&["check", &file.to_string_lossy()]);
        assert!(!ok, "{cert} / {key} accepted");
        assert!(
            err.contains("tls.cert") && err.contains("not a regular file"),
            "{err}"
        );
        assert!(err.contains("tls.key"), "{err}");
    }
    // Reading a FIFO as the config would block for ever: refused at once.
    let (ok, _, err) = run_cli(&["check", &fifo.to_string_lossy()]);
    assert!(!ok);
    assert!(err.contains("not a regular file"), "{err}");
}
