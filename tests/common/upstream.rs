//! Scripted test upstreams: tiny HTTP/1.1 servers on 127.0.0.1:0, each on
//! its own thread and runtime, that count and record requests and answer
//! as the test says: a fixed reply, a reply held until the test releases
//! it, or a connection closed without a reply.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The upstream's answer `status` with `headers` and a text `body`.
pub fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Action {
    Action::Reply(Reply {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.as_bytes().to_vec(),
    })
}

/// A reply: status, extra headers and body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// 200 with a text body.
    pub fn ok(body: &str) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Answer at once.
    Reply(Reply),
    /// Answer once the test calls [`TestUpstream::release`].
    ReplyWhenReleased(Reply),
    /// Close the connection without answering.
    Close,
}

type Handler = dyn Fn(&Recorded) -> Action + Send + Sync;

struct Shared {
    handler: Box<Handler>,
    count: AtomicUsize,
    held: AtomicUsize,
    recorded: Mutex<Vec<Recorded>>,
    gate: watch::Sender<bool>,
}

/// A running test upstream; stops with the test process, or when the test
/// calls [`TestUpstream::stop`] (and comes back with [`TestUpstream::restart`]).
pub struct TestUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Bumped on stop: open connections close.
    generation: watch::Sender<u64>,
}

impl TestUpstream {
    /// Starts an upstream that answers every request with `handler`.
    pub fn start(handler: impl Fn(&Recorded) -> Action + Send + Sync + 'static) -> Self {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), handler)
    }

    /// Like [`Self::start`], listening on `addr` (any 127.0.0.0/8 address;
    /// port 0 picks a free one).
    pub fn start_at(
        addr: SocketAddr,
        handler: impl Fn(&Recorded) -> Action + Send + Sync + 'static,
    ) -> Self {
        let (gate, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            count: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            recorded: Mutex::new(Vec::new()),
            gate,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            tx.send(rt.handle().clone()).expect("send handle");
            rt.block_on(std::future::pending::<()>());
        });
        let runtime = rx.recv().expect("upstream runtime");
        let (generation, _) = watch::channel(0u64);
        let up = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shared,
            runtime,
            accept: Mutex::new(None),
            generation,
        };
        let addr = up.listen(addr);
        Self { addr, ..up }
    }

    fn listen(&self, addr: SocketAddr) -> SocketAddr {
        let listener = self.runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("reuseaddr");
            socket.bind(addr).expect("bind upstream");
            socket.listen(128).expect("listen")
        });
        let bound = listener.local_addr().expect("addr");
        let shared = self.shared.clone();
        let generation = self.generation.subscribe();
        let task = self.runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mut stop = generation.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(stream, shared) => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        *self.accept.lock().expect("lock") = Some(task);
        bound
    }

    /// Closes the listener and every open connection: new connections are
    /// refused, as with a crashed backend.
    pub fn stop(&self) {
        if let Some(task) = self.accept.lock().expect("lock").take() {
            task.abort();
            let _ = self.runtime.block_on(task);
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Listens again on the same address.
    pub fn restart(&self) {
        self.listen(self.addr);
    }

    /// An upstream that answers `200 body` to everything.
    pub fn fixed(body: &'static str) -> Self {
        Self::start(move |_| Action::Reply(Reply::ok(body)))
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Requests currently held waiting for [`Self::release`].
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().expect("lock").clone()
    }

    /// Lets held replies (and future ones) go out.
    pub fn release(&self) {
        self.shared.gate.send_replace(true);
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let mut reader = BufReader::new(stream);
    loop {
        let Some(req) = read_request(&mut reader).await else {
            return;
        };
        shared.count.fetch_add(1, Ordering::SeqCst);
        shared.recorded.lock().expect("lock").push(req.clone());
        let close_after = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let reply = match (shared.handler)(&req) {
            Action::Close => return,
            Action::Reply(r) => r,
            Action::ReplyWhenReleased(r) => {
                shared.held.fetch_add(1, Ordering::SeqCst);
                let mut gate = shared.gate.subscribe();
                let _ = gate.wait_for(|open| *open).await;
                shared.held.fetch_sub(1, Ordering::SeqCst);
                r
            }
        };
        // A reply that says `Transfer-Encoding: chunked` is sent in 4 KiB
        // chunks; any other with its length.
        let chunked = reply.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let mut head = if chunked {
            format!("HTTP/1.1 {} Test\r\n", reply.status)
        } else {
            format!(
                "HTTP/1.1 {} Test\r\nContent-Length: {}\r\n",
                reply.status,
                reply.body.len()
            )
        };
        for (n, v) in &reply.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        // One write: a head and body written apart meet Nagle and delayed
        // ACKs on a kept-alive connection, 40 ms per response.
        let mut bytes = head.into_bytes();
        if req.method != "HEAD" && chunked {
            for chunk in reply.body.chunks(4096) {
                bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                bytes.extend_from_slice(chunk);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
        } else if req.method != "HEAD" {
            bytes.extend_from_slice(&reply.body);
        }
        let stream = reader.get_mut();
        if stream.write_all(&bytes).await.is_err() || close_after {
            return;
        }
    }
}

async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await.ok()?;
    Some(Recorded {
        method,
        path,
        headers,
        body,
    })
}
