//! Headless Chromium for the browser tests (Debian's `chromium`,
//! installed by `scripts/test`): a page is loaded, its scripts run for a
//! bounded virtual time, and what it printed is returned. A missing or
//! failing Chromium fails the test and says so.

use std::process::Command;

/// Where Debian installs it; `CHROMIUM` overrides.
pub fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// Runs Chromium headless on `url` with `extra` arguments; its stdout.
pub fn run_chromium(url: &str, extra: &[&str]) -> String {
    let profile = super::scratch_dir("chromium");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Lets the page's fetch and render finish before the dump.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start Chromium at {} ({e}); scripts/test installs Debian's chromium package",
                chromium()
            )
        });
    assert!(
        out.status.success(),
        "Chromium failed on {url} ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
