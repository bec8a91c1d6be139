//! Test harness: starts the real `tollgate` binary on free ports in front of
//! small scripted upstreams, and speaks HTTP/1.1 to it over real sockets.
//!
//! Nothing here sleeps for luck: every wait is a poll on a condition with a
//! deadline ([`wait_until`]).

#![allow(dead_code, unused_imports)] // each test binary uses a different part of the harness

pub mod browser;
pub mod client;
pub mod dns;
pub mod grpc;
pub mod otlp;
pub mod pki;
pub mod redis;
pub mod upstream;

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use client::{get, request, send_raw, KeptAlive, Response};
pub use upstream::{reply, Action, Reply, TestUpstream};

/// The admin token every test proxy runs with.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// How long any condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds or `DEADLINE` passes; panics with `what`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10)); // poll interval
    }
}

/// The smallest useful config body: one upstream `api` with one backend
/// and one route `api` for every request.
pub fn one_route(backend: std::net::SocketAddr) -> String {
    format!("upstreams:\n  api: {{ backends: [\"{backend}\"] }}\nroutes:\n  - {{ name: api, upstream: api }}\n")
}

/// A config body with one upstream `api` and one route `r` for the paths
/// under `prefix`: reload tests swap the prefix and ask which one serves.
pub fn prefix_route(backend: std::net::SocketAddr, prefix: &str) -> String {
    format!(
        "upstreams:\n  api: {{ backends: [\"{backend}\"] }}\n\
         routes:\n  - {{ name: r, upstream: api, match: {{ path_prefix: {prefix} }} }}\n"
    )
}

/// The status of a GET of `path` through `proxy`.
pub fn status_of(proxy: &TollgateProcess, path: &str) -> u16 {
    get(proxy.addr, path).expect("request").status
}

/// A fresh scratch directory under the system temp dir. Emptied first: a
/// directory of the same name may be left by an earlier run whose process
/// had the same PID.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tollgate-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A listener entry for [`TollgateProcess::start_with_listener`]: TLS with
/// a throwaway self-signed certificate for `localhost` (HTTP/2 offered).
pub fn tls_listener(tag: &str) -> impl Fn(u16) -> String {
    let dir = scratch_dir(tag);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    move |port| {
        format!("{{ address: \"127.0.0.1:{port}\", tls: {{ cert: \"{cert}\", key: \"{key}\" }} }}")
    }
}

/// A port for a process the test starts (proxy, admin, redis-server).
///
/// Taken below the kernel's ephemeral range (32768+ on Linux), where the
/// test upstreams' `bind(0)` and outgoing connections land, and never handed
/// out twice in one test binary: otherwise another test's socket could take
/// the port between this check and the process's own bind, and a test would
/// talk to the wrong process.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize);
    let seed = std::process::id() as usize ^ clock;
    for i in 0..5000usize {
        let port = 20000 + ((seed.wrapping_mul(7919) + i * 104_729) % 12000) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in 20000-31999");
}

/// Path of the built binary.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// A running `tollgate run` process, killed on drop.
pub struct TollgateProcess {
    child: Child,
    /// Client-facing address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// The config file it runs with.
    pub config: PathBuf,
}

impl TollgateProcess {
    /// Starts tollgate with `body` (upstreams, routes, …) below a generated
    /// header that sets the listeners and fast shutdown, and waits until
    /// `/ready` answers 200.
    pub fn start(body: &str) -> Self {
        Self::start_with_listener(|port| format!("\"127.0.0.1:{port}\""), body)
    }

    /// Like [`Self::start`], with the proxy listener written by `listener`
    /// (given the chosen port), e.g. to add TLS.
    pub fn start_with_listener(listener: impl Fn(u16) -> String, body: &str) -> Self {
        Self::launch(listener, "", body)
    }

    /// Like [`Self::start`], with more `server:` settings (YAML lines,
    /// indented two spaces) below the generated ones.
    pub fn start_with_server(server: &str, body: &str) -> Self {
        Self::launch(|port| format!("\"127.0.0.1:{port}\""), server, body)
    }

    /// Like [`Self::start`], with more `admin:` settings (YAML flow
    /// entries, e.g. `require_token_for_reads: true`).
    pub fn start_with_admin(admin: &str, body: &str) -> Self {
        Self::launch_with(|port| format!("\"127.0.0.1:{port}\""), admin, "", body)
    }

    fn launch(listener: impl Fn(u16) -> String, server: &str, body: &str) -> Self {
        Self::launch_with(listener, "", server, body)
    }

    fn launch_with(
        listener: impl Fn(u16) -> String,
        admin: &str,
        server: &str,
        body: &str,
    ) -> Self {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = scratch_dir("proxy");
            let (port, admin_port) = (free_port(), free_port());
            let config = dir.join("tollgate.yaml");
            let text = format!(
                "listen: [{listener}]\n\
                 admin: {{ listen: \"127.0.0.1:{admin_port}\", token_env: TOLLGATE_TEST_ADMIN_TOKEN, hosts: [test.local]{admin} }}\n\
                 server:\n  threads: 2\n  grace_period: 1s\n  graceful_shutdown_timeout: 1s\n  \
                 pid_file: {d}/tollgate.pid\n  upgrade_sock: {d}/upgrade.sock\n\
                 {server}{body}",
                d = dir.display(),
                listener = listener(port),
                admin = if admin.is_empty() { String::new() } else { format!(", {admin}") },
            );
            fs::write(&config, text).expect("write config");
            let log = dir.join("tollgate.log");
            let child = spawn_run(&config, &log, &[]);
            let mut proc = TollgateProcess {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
                log,
                config,
            };
            if proc.wait_ready() {
                return proc;
            }
            last_log = proc.log_text();
            if !(last_log.contains("cannot listen") || last_log.contains("could not be bound")) {
                break; // not a port collision: do not hide the failure
            }
        }
        panic!("tollgate did not become ready; its log:\n{last_log}");
    }

    /// Starts a second process with `--upgrade` on the same config: it
    /// waits on `server.upgrade_sock` for this one's listening sockets,
    /// which this one hands over on SIGQUIT. Not waited on: the caller
    /// sends SIGQUIT and watches [`Self::upgrade_socket`] and the log.
    pub fn spawn_upgrade(&self) -> TollgateProcess {
        let log = self.log.with_file_name("tollgate-upgraded.log");
        TollgateProcess {
            child: spawn_run(&self.config, &log, &["--upgrade"]),
            addr: self.addr,
            admin: self.admin,
            log,
            config: self.config.clone(),
        }
    }

    /// The upgrade socket path of the test config.
    pub fn upgrade_socket(&self) -> PathBuf {
        self.config.with_file_name("upgrade.sock")
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Polls `/ready` until 200; false if the process exited first.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if get(self.admin, "/ready").is_ok_and(|r| r.status == 200) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
    }

    /// Everything the process has logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let r = get(self.admin, "/metrics").expect("GET /metrics");
        assert_eq!(r.status, 200);
        r.text()
    }

    /// The value of one exact series line in `/metrics`, if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The sum of every series of `name` whose labels contain `label`
    /// (e.g. `kind="closed"`).
    pub fn metric_sum(&self, name: &str, label: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until a series has `value`: metrics are recorded in the
    /// logging phase, which may finish after the client has its response.
    pub fn wait_metric(&self, series: &str, value: f64) {
        wait_until(&format!("{series} == {value}"), || {
            self.metric(series) == Some(value)
        });
    }

    /// `POST path` on the admin listener with `token` and a JSON `body`,
    /// as an operator's `curl --json` sends it.
    pub fn admin_post(&self, path: &str, token: &str, body: &str) -> Response {
        let auth = format!("Bearer {token}");
        request(
            self.admin,
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .expect("admin POST")
    }

    /// The `/health` document.
    pub fn health(&self) -> serde_json::Value {
        let r = get(self.admin, "/health").expect("GET /health");
        serde_json::from_slice(&r.body).expect("health is JSON")
    }

    /// The PID, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Replaces the config file (for reload tests); `body` as in [`Self::start`].
    pub fn rewrite_config(&self, body: &str) {
        let text = fs::read_to_string(&self.config).expect("read config");
        let header_end = text.find("upstreams:").expect("config has upstreams");
        fs::write(&self.config, format!("{}{body}", &text[..header_end])).expect("write config");
    }

    /// Waits for the process to exit; its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "tollgate did not exit");
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
    }
}

impl Drop for TollgateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `tollgate run -c config [extra]` logging to `log`.
fn spawn_run(config: &std::path::Path, log: &std::path::Path, extra: &[&str]) -> Child {
    let out = fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    Command::new(binary())
        .args(["run", "-c"])
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "info")
        .env("TOLLGATE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn tollgate")
}

/// Runs `tollgate <args>` to completion: (exit success, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary())
        .args(args)
        .output()
        .expect("run tollgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Serves every connection accepted on a fresh loopback port with
/// `handle`, each in its own task on a runtime of its own thread (so sync
/// and async tests alike can use it); the port's address.
pub fn serve_connections<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                if let Ok((socket, _)) = listener.accept().await {
                    tokio::spawn(handle(socket));
                }
            }
        });
    });
    addr
}

/// What a backend read of a request head came to: a WebSocket handshake
/// it answered with `101` (the socket is then the tunnel), or another
/// request (its head, unanswered).
pub enum Handshake {
    /// `101 Switching Protocols` was sent.
    Upgraded,
    /// Not a WebSocket handshake: the request head, for the backend to
    /// answer as it likes.
    Plain(String),
}

/// Reads a request head off `socket` (byte by byte up to its blank line,
/// at most 16 KiB: nothing of a WebSocket frame can follow it before the
/// answer) and, for a WebSocket handshake, answers `101` (RFC 6455 §4.2.2).
/// `None` when the peer went away or the head is too large.
pub async fn accept_websocket(socket: &mut tokio::net::TcpStream) -> Option<Handshake> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match socket.read_u8().await {
            Ok(b) if head.len() < 16 * 1024 => head.push(b),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let upgrade = head.to_ascii_lowercase().contains("upgrade: websocket");
    let key = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, key)| key.trim().to_owned());
    let Some(key) = key.filter(|_| upgrade) else {
        return Some(Handshake::Plain(head));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    socket.write_all(answer.as_bytes()).await.ok()?;
    Some(Handshake::Upgraded)
}

/// The request a WebSocket client sends to open a tunnel to `path`.
pub fn websocket_handshake(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A backend that accepts WebSocket handshakes and then either stays
/// silent or sends a one-byte binary frame every 100 ms (`speaks`); it
/// counts the upgrades it accepted and the bytes it received through
/// them.
pub struct TunnelBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Handshakes answered with 101.
    pub upgrades: std::sync::Arc<AtomicUsize>,
    /// Bytes received after the handshakes.
    pub received: std::sync::Arc<AtomicUsize>,
}

impl TunnelBackend {
    /// Starts one on a fresh loopback port.
    pub fn start(speaks: bool) -> Self {
        let upgrades = std::sync::Arc::new(AtomicUsize::new(0));
        let received = std::sync::Arc::new(AtomicUsize::new(0));
        let (up, rx) = (upgrades.clone(), received.clone());
        let addr = serve_connections(move |mut socket| {
            let (up, rx) = (up.clone(), rx.clone());
            async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                if !matches!(
                    accept_websocket(&mut socket).await,
                    Some(Handshake::Upgraded)
                ) {
                    return;
                }
                up.fetch_add(1, Ordering::SeqCst);
                let mut sink = [0u8; 4096];
                let mut beat = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tokio::select! {
                        read = socket.read(&mut sink) => match read {
                            Ok(n) if n > 0 => { rx.fetch_add(n, Ordering::SeqCst); }
                            _ => return,
                        },
                        _ = beat.tick(), if speaks => {
                            if socket.write_all(&[0x82, 0x01, b'x']).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Self {
            addr,
            upgrades,
            received,
        }
    }
}
