//! A small authoritative DNS server for tests, on a loopback UDP port,
//! whose records the test changes while tollgate runs. Messages are
//! parsed and written with `hickory-proto` (through tollgate's resolver
//! dependency), not by hand.

use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From its records (NXDOMAIN for unknown names).
    Answer,
    /// SERVFAIL to everything.
    ServFail,
}

#[derive(Default)]
struct Zone {
    a: HashMap<String, Vec<Ipv4Addr>>,
    srv: HashMap<String, Vec<(u16, u16, u16, String)>>,
}

struct Shared {
    zone: Mutex<Zone>,
    ttl: AtomicUsize,
    servfail: AtomicBool,
    stopped: AtomicBool,
    queries: AtomicUsize,
}

/// A running test DNS server.
pub struct DnsServer {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Starts a server with no records; answers carry a TTL of 1 s.
    pub fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            zone: Mutex::new(Zone::default()),
            ttl: AtomicUsize::new(1),
            servfail: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            queries: AtomicUsize::new(0),
        });
        let serving = shared.clone();
        std::thread::spawn(move || serve(socket, serving));
        Self { addr, shared }
    }

    /// Sets the A records of `name` (an empty list removes the name).
    pub fn set_a(&self, name: &str, ips: &[&str]) {
        let ips = ips
            .iter()
            .map(|ip| ip.parse().expect("ipv4"))
            .collect::<Vec<_>>();
        let mut zone = self.shared.zone.lock().expect("zone");
        if ips.is_empty() {
            zone.a.remove(&key(name));
        } else {
            zone.a.insert(key(name), ips);
        }
    }

    /// Sets the SRV records of `name`: `(priority, weight, port, target)`.
    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)]) {
        let records = records
            .iter()
            .map(|(p, w, port, t)| (*p, *w, *port, t.to_string()))
            .collect();
        self.shared
            .zone
            .lock()
            .expect("zone")
            .srv
            .insert(key(name), records);
    }

    /// How it answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.shared
            .servfail
            .store(mode == Mode::ServFail, Ordering::SeqCst);
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }

    /// Closes the socket: queries then meet a closed port.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
    }

    /// `dns:` settings that send tollgate's questions here.
    pub fn config(&self) -> String {
        format!(
            "dns: {{ servers: [\"{}\"], min_ttl: 200ms, max_ttl: 2s, timeout: 300ms }}\n",
            self.addr
        )
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = [0u8; 4096];
    while !shared.stopped.load(Ordering::SeqCst) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue; // read timeout: look at `stopped` again
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        shared.queries.fetch_add(1, Ordering::SeqCst);
        if let Some(reply) = answer(&query, &shared).and_then(|m| m.to_vec().ok()) {
            let _ = socket.send_to(&reply, from);
        }
    }
}

fn answer(query: &Message, shared: &Shared) -> Option<Message> {
    let question = query.queries.first()?.clone();
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(question.clone());
    if shared.servfail.load(Ordering::SeqCst) {
        reply.metadata.response_code = ResponseCode::ServFail;
        return Some(reply);
    }
    let ttl = shared.ttl.load(Ordering::SeqCst) as u32;
    let name = question.name().clone();
    let zone = shared.zone.lock().ok()?;
    let wanted = key(&name.to_ascii());
    let known = zone.a.contains_key(&wanted) || zone.srv.contains_key(&wanted);
    match question.query_type() {
        RecordType::A => {
            for ip in zone.a.get(&wanted).into_iter().flatten() {
                reply.add_answer(Record::from_rdata(name.clone(), ttl, RData::A(A(*ip))));
            }
        }
        RecordType::SRV => {
            for (priority, weight, port, target) in zone.srv.get(&wanted).into_iter().flatten() {
                let target = Name::from_str(&format!("{}.", key(target))).ok()?;
                let srv = SRV::new(*priority, *weight, *port, target);
                reply.add_answer(Record::from_rdata(name.clone(), ttl, RData::SRV(srv)));
            }
        }
        _ => {} // NOERROR with no answer (e.g. AAAA of a v4-only name)
    }
    if !known {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    Some(reply)
}
