//! A `redis-server` of the test's own on a free port, stopped on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running redis-server.
pub struct RedisServer {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers PING.
    pub fn start() -> Self {
        let port = super::free_port();
        let mut me = Self {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        me.spawn();
        me
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.addr.port().to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/test installs it)");
        self.child = Some(child);
        super::wait_until("redis-server answers PING", || self.ping());
    }

    /// The `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Whether it answers PING.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// Kills it (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes it with SIGSTOP: connections stay open, nothing answers
    /// (a hung Redis, not a gone one).
    pub fn hang(&self) {
        self.signal("-STOP");
    }

    /// Resumes it with SIGCONT after `hang`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Runs `redis-cli` against it; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.addr.port().to_string()])
            .args(args)
            .output()
            .expect("run redis-cli (installed with redis-server)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-node Redis Cluster of the test's own (no replicas), made with
/// `redis-cli --cluster create`; stopped on drop.
pub struct RedisCluster {
    nodes: Vec<Child>,
    /// The nodes' ports.
    pub ports: Vec<u16>,
}

/// A port whose cluster-bus port (+10000) is free too.
fn cluster_port() -> u16 {
    use std::net::TcpListener;
    loop {
        let port = super::free_port() % 10_000 + 20_000;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

impl RedisCluster {
    /// Starts three nodes, joins them, waits until the cluster says ok.
    pub fn start() -> Self {
        let dir = super::scratch_dir("redis-cluster");
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let p = cluster_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                    .arg("--cluster-config-file")
                    .arg(dir.join(format!("nodes-{port}.conf")))
                    .arg("--dir")
                    .arg(&dir)
                    .args(["--save", "", "--appendonly", "no"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start redis-server (scripts/test installs it)")
            })
            .collect();
        let me = Self { nodes, ports };
        for port in &me.ports {
            let node = RedisServer {
                child: None,
                addr: SocketAddr::from(([127, 0, 0, 1], *port)),
            };
            super::wait_until("a cluster node answers PING", || node.ping());
        }
        let addrs: Vec<String> = me.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        super::wait_until("the cluster is ok on every node", || {
            me.ports.iter().all(|p| {
                Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            })
        });
        me
    }

    /// The `redis: { cluster: [...] }` node list.
    pub fn nodes_yaml(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        format!("[{}]", nodes.join(", "))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

/// A TCP relay in front of a Redis server that can hold back the replies
/// on connections that have asked `GET` or run the lookup script (the
/// tier's lookups, `tollgate::cache::l2::markers::LOOKUP_LUA`), while every
/// other connection — the purge channel's subscription among them — goes
/// on. It makes "a lookup in flight while something else happens"
/// deterministic.
pub struct ReplyGate {
    /// Where clients connect instead of the server.
    pub addr: SocketAddr,
    state: std::sync::Arc<GateState>,
}

#[derive(Default)]
struct GateState {
    hold: std::sync::Mutex<bool>,
    released: std::sync::Condvar,
    held: std::sync::atomic::AtomicUsize,
}

impl ReplyGate {
    /// Relays to `server`, holding replies on connections that asked
    /// `GET` or ran the lookup script.
    pub fn start(server: SocketAddr) -> Self {
        let lookup = redis::Script::new(tollgate::cache::l2::markers::LOOKUP_LUA)
            .get_hash()
            .as_bytes()
            .to_vec();
        Self::start_matching(server, vec![b"\r\nGET\r\n$".to_vec(), lookup])
    }

    /// Relays to `server`, holding replies on connections that sent any of
    /// `patterns` (bytes of a command, e.g. a script's SHA).
    pub fn start_matching(server: SocketAddr, patterns: Vec<Vec<u8>>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = std::sync::Arc::new(GateState::default());
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(upstream) = TcpStream::connect(server) else {
                    continue;
                };
                relay(client, upstream, shared.clone(), patterns.clone());
            }
        });
        Self { addr, state }
    }

    /// The `redis://` URL of the relay.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// From now on, replies to connections that sent a pattern wait.
    pub fn hold(&self) {
        *self.state.hold.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// Lets every held reply through, and later ones pass.
    pub fn release(&self) {
        *self.state.hold.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.state.released.notify_all();
    }

    /// Replies waiting now.
    pub fn held(&self) -> usize {
        self.state.held.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn relay(
    client: TcpStream,
    upstream: TcpStream,
    state: std::sync::Arc<GateState>,
    patterns: Vec<Vec<u8>>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let asked_get = std::sync::Arc::new(AtomicBool::new(false));
    let (mut client_in, mut upstream_out) = match (client.try_clone(), upstream.try_clone()) {
        (Ok(c), Ok(u)) => (c, u),
        _ => return,
    };
    let seen = asked_get.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = client_in.read(&mut buf) {
            if n == 0 {
                break;
            }
            // E.g. `*2\r\n$3\r\nGET\r\n$…`: a command name as a RESP
            // bulk string, or a script's SHA.
            if patterns
                .iter()
                .any(|p| buf[..n].windows(p.len()).any(|w| w.eq_ignore_ascii_case(p)))
            {
                seen.store(true, Ordering::SeqCst);
            }
            if upstream_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = upstream_out.shutdown(std::net::Shutdown::Both);
    });
    let (mut upstream_in, mut client_out) = (upstream, client);
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = upstream_in.read(&mut buf) {
            if n == 0 {
                break;
            }
            if asked_get.load(Ordering::SeqCst) {
                let mut hold = state.hold.lock().unwrap_or_else(|p| p.into_inner());
                if *hold {
                    state.held.fetch_add(1, Ordering::SeqCst);
                    while *hold {
                        hold = state.released.wait(hold).unwrap_or_else(|p| p.into_inner());
                    }
                    state.held.fetch_sub(1, Ordering::SeqCst);
                }
            }
            if client_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = client_out.shutdown(std::net::Shutdown::Both);
    });
}

/// A TCP relay in front of a Redis server that can be cut off like a
/// network partition: while cut, bytes in both directions wait (nothing
/// is lost or reset, as TCP across a partition), and flow again when it
/// heals. One per instance gives each its own link to partition.
pub struct Relay {
    /// Where clients connect instead of the server.
    pub addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    /// Relays to `server`.
    pub fn start(server: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cut = std::sync::Arc::new(AtomicBool::new(false));
        let shared = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(upstream) = TcpStream::connect(server) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone(), upstream.try_clone()),
                    (upstream.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    let cut = shared.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            while cut.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(5)); // pace of a partition's poll
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { addr, cut }
    }

    /// The `redis://` URL of the relay.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Cuts the link (bytes wait) or heals it.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
    }
}
