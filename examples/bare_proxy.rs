//! The floor for pass-through speed: a Pingora proxy whose `upstream_peer`
//! returns one fixed peer and does nothing else, with the same allocator
//! and runtime settings as tollgate. `benches/load/run.sh` measures
//! tollgate against it (and nginx) in the same run.
//!
//! Run: `cargo run --release --example bare_proxy -- 127.0.0.1:18083 127.0.0.1:18081`
//! then `curl -i http://127.0.0.1:18083/uncached`.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(origin)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_proxy LISTEN_ADDR ORIGIN_ADDR");
        std::process::exit(2);
    };
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
    let mut proxy = http_proxy_service(&server.configuration, Bare { peer });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
