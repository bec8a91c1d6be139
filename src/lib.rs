//! tollgate: a reverse proxy for HTTP APIs, built on Cloudflare's Pingora.
//! See README.md for what it is and how to run it, and the book in
//! docs/book for everything else (the architecture and decisions too).

// One audited exception: `upstream::deadline` borrows the upstream
// connection's descriptor Pingora hands to `connected_to_upstream`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod breaker;
pub mod cache;
pub mod certificates;
pub mod compression;
pub mod config;
pub mod config_watch;
pub mod connection_options;
pub mod connections;
pub mod ctx;
pub mod demo;
pub mod discovery;
pub mod errors;
pub mod forwarded;
pub mod gateway;
pub mod grpc;
pub mod headers;
pub mod http_client;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod redis_link;
pub mod rejections;
pub mod reload;
pub mod request_log;
pub mod router;
pub mod server;
pub mod split;
pub mod state;
pub mod status;
pub mod target;
pub mod trace;
pub mod tunnel;
pub mod upstream;
pub mod values;
