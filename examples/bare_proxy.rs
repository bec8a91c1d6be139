//! The floors for tollgate's speed, with the same allocator and runtime
//! settings: a Pingora proxy whose `upstream_peer` returns one fixed peer and
//! does nothing else (the pass-through floor), and which, given a document,
//! answers `GET /cached` with it from memory in `request_filter` without
//! Pingora's cache machinery (the floor for a cache hit: Pingora reading a
//! request and writing a stored response, nothing more).
//! `benches/load/run.sh` measures tollgate against both (and nginx) in the
//! same run.
//!
//! Run: `cargo run --release --example bare_proxy -- 127.0.0.1:18083 127.0.0.1:18081 doc.json`
//! then `curl -i http://127.0.0.1:18083/uncached` or `.../cached`.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    peer: HttpPeer,
    /// The body answered from memory for `GET /cached`, if given.
    document: Option<bytes::Bytes>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let Some(doc) = &self.document else {
            return Ok(false);
        };
        if session.req_header().uri.path() != "/cached" {
            return Ok(false);
        }
        // The headers a cache hit carries (as nginx's origin sends them).
        let mut resp = ResponseHeader::build(200, Some(8))?;
        resp.insert_header("Content-Type", "application/json")?;
        resp.insert_header("Content-Length", doc.len().to_string())?;
        resp.insert_header("Cache-Control", "public, max-age=300")?;
        resp.insert_header("ETag", "\"6560a1b2-400\"")?;
        resp.insert_header("Last-Modified", "Mon, 23 Nov 2026 09:00:00 GMT")?;
        resp.insert_header("Accept-Ranges", "bytes")?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(doc.clone()), true).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(origin)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_proxy LISTEN_ADDR ORIGIN_ADDR [DOCUMENT_FOR_/cached]");
        std::process::exit(2);
    };
    let document = args.next().map(|path| match std::fs::read(&path) {
        Ok(body) => bytes::Bytes::from(body),
        Err(e) => {
            eprintln!("bare_proxy: cannot read {path}: {e}");
            std::process::exit(2);
        }
    });
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let peer = HttpPeer::new(origin.as_str(), false, String::new());
    let mut proxy = http_proxy_service(&server.configuration, Bare { peer, document });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
