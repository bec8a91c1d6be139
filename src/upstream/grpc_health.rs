//! `health_check.type: grpc`: the standard gRPC health check
//! (`grpc.health.v1.Health/Check`, gRPC's `health-checking.md`), over the
//! pool's HTTP/2 connection settings.
//!
//! Our own because Pingora's `HttpHealthCheck` sends a request without a
//! body and reads only the status line: a gRPC check sends one message
//! and reads the answer's message and trailers. The connection itself is
//! Pingora's (its HTTP connector, with the pool's peer options).
//!
//! The two messages are tiny protobufs, encoded by hand so no protobuf
//! code generator is needed: `HealthCheckRequest { string service = 1; }`
//! and `HealthCheckResponse { ServingStatus status = 1; }` (`SERVING` = 1).

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

/// The method every gRPC health service answers.
const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse.status` of a service that may take traffic.
const SERVING: u64 = 1;

/// The most of an answer's body a check reads: a `HealthCheckResponse`
/// is a few bytes, and a backend streaming more would otherwise grow the
/// checker's memory without bound.
const MAX_BODY: usize = 64 * 1024;

/// The gRPC health check of one pool.
pub struct GrpcHealthCheck {
    /// Peer options of the pool (TLS, HTTP/2, timeouts); the address is
    /// each backend's.
    pub peer_template: HttpPeer,
    connector: Connector,
    request: RequestHeader,
    body: Bytes,
    /// `health_check.timeout`: the whole check, connect to trailers.
    deadline: std::time::Duration,
    consecutive_success: usize,
    consecutive_failure: usize,
}

impl GrpcHealthCheck {
    /// A check of `service` (empty: the server as a whole), sent with
    /// `:authority` `host`.
    pub fn new(
        peer_template: HttpPeer,
        service: &str,
        host: &str,
        deadline: std::time::Duration,
        consecutive_success: usize,
        consecutive_failure: usize,
    ) -> Result<Self> {
        let mut request = RequestHeader::build("POST", CHECK_PATH.as_bytes(), None)?;
        request.insert_header("Host", host)?;
        request.insert_header("Content-Type", "application/grpc")?;
        request.insert_header("TE", "trailers")?;
        request.insert_header("User-Agent", "tollgate-health-check")?;
        Ok(Self {
            peer_template,
            connector: Connector::new(None),
            request,
            deadline,
            body: request_message(service),
            consecutive_success,
            consecutive_failure,
        })
    }
}

/// `HealthCheckRequest { service }`, framed as one gRPC message.
fn request_message(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0); // not compressed
    framed.put_u32(message.len() as u32);
    framed.put_slice(&message);
    framed.freeze()
}

fn put_varint(out: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut n = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
}

/// `HealthCheckResponse.status` from one framed message (unknown fields
/// skipped, as protobuf readers do); 0 (`UNKNOWN`) when absent.
fn serving_status(framed: &[u8]) -> Option<u64> {
    let len = u32::from_be_bytes(framed.get(1..5)?.try_into().ok()?) as usize;
    let mut message = framed.get(5..5usize.checked_add(len)?)?;
    let mut status = 0;
    while !message.is_empty() {
        let (key, used) = varint(message)?;
        message = &message[used..];
        match key & 7 {
            0 => {
                let (value, used) = varint(message)?;
                message = &message[used..];
                if key >> 3 == 1 {
                    status = value;
                }
            }
            2 => {
                let (len, used) = varint(message)?;
                let skip = usize::try_from(len).ok()?.checked_add(used)?;
                message = message.get(skip..)?;
            }
            1 => message = message.get(8..)?,
            5 => message = message.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn failed(why: impl Into<String>) -> Box<Error> {
    Error::explain(ErrorType::Custom("grpc health check failed"), why.into())
}

#[async_trait]
impl HealthCheck for GrpcHealthCheck {
    fn health_threshold(&self, success: bool) -> usize {
        match success {
            true => self.consecutive_success,
            false => self.consecutive_failure,
        }
    }

    async fn check(&self, target: &Backend) -> Result<()> {
        // Each read has its timeout; a backend that trickles bytes is
        // bounded by the check's own deadline.
        match tokio::time::timeout(self.deadline, self.check_within(target)).await {
            Ok(result) => result,
            Err(_) => Err(failed(format!("no answer within {:?}", self.deadline))),
        }
    }
}

impl GrpcHealthCheck {
    async fn check_within(&self, target: &Backend) -> Result<()> {
        let mut peer = self.peer_template.clone();
        peer._address = target.addr.clone();
        let (mut session, _) = self.connector.get_http_session(&peer).await?;
        session.set_write_timeout(peer.options.write_timeout);
        session.set_read_timeout(peer.options.read_timeout);
        session
            .write_request_header(Box::new(self.request.clone()))
            .await?;
        session.write_request_body(self.body.clone(), true).await?;
        session.read_response_header().await?;
        let header = session
            .response_header()
            .ok_or_else(|| failed("no response header"))?;
        if header.status != 200 {
            return Err(failed(format!("HTTP status {}", header.status)));
        }
        // A trailers-only answer carries the status in its header.
        let mut grpc_status = header
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_response_body().await? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(failed(format!("answer body over {MAX_BODY} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if grpc_status.is_none() {
            if let HttpSession::H2(h2) = &mut session {
                grpc_status = h2
                    .read_trailers()
                    .await?
                    .and_then(|t| t.get("grpc-status")?.to_str().ok().map(str::to_owned));
            }
        }
        match grpc_status.as_deref() {
            Some("0") => {}
            Some(code) => return Err(failed(format!("grpc-status {code}"))),
            None => return Err(failed("no grpc-status (is the pool's protocol HTTP/2?)")),
        }
        match serving_status(&body) {
            Some(SERVING) => Ok(()),
            Some(status) => Err(failed(format!("serving status {status}, not SERVING"))),
            None => Err(failed("malformed HealthCheckResponse")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_are_encoded_as_the_health_protocol_says() {
        assert_eq!(&request_message("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &request_message("pkg.Svc")[..],
            &[0, 0, 0, 0, 9, 0x0a, 7, b'p', b'k', b'g', b'.', b'S', b'v', b'c']
        );
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(SERVING));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0), "absent: UNKNOWN");
        // An unknown length-delimited field before the status is skipped.
        assert_eq!(
            serving_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]),
            Some(SERVING)
        );
        assert_eq!(serving_status(&[0, 0, 0, 0, 9, 0x08]), None, "truncated");
        assert_eq!(serving_status(&[0, 0]), None);
    }

    /// A backend's answer is outside input: lengths that would overflow
    /// (a field claiming 2^64 - 1 bytes, a frame claiming 4 GiB) are a
    /// malformed answer, never a panic or a wrapped offset.
    #[test]
    fn lengths_that_overflow_are_malformed() {
        let mut huge_field = vec![0, 0, 0, 0, 12, 0x12];
        huge_field.extend_from_slice(&[0xff; 9]);
        huge_field.push(0x01);
        huge_field.extend_from_slice(&[0x08, 1]);
        assert_eq!(serving_status(&huge_field), None);
        let mut almost = vec![0, 0, 0, 0, 11, 0x12];
        almost.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(serving_status(&almost), None);
        assert_eq!(serving_status(&[0, 0xff, 0xff, 0xff, 0xff, 0x08, 1]), None);
    }
}
