//! tollgate's own outgoing HTTP requests that are not proxied: the JWKS
//! fetch (`auth::keyring`), the OTLP trace export (`trace::exporter`) and
//! the forward-auth question (`auth::forward`), through Pingora's
//! connector (TLS verified against the system's roots and the URL's host
//! name, or as the pool says; idle connections pooled by the connector).

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use std::time::Duration;

pub use crate::values::url::Url;

/// How long a connection to the same place may idle in the connector's
/// pool between two requests (the exporter posts every batch interval).
const IDLE_REUSE: Duration = Duration::from_secs(30);

/// One request: what to send and how much of the answer to read.
pub struct Request<'a> {
    /// `GET`, `POST`.
    pub method: &'static str,
    /// Where.
    pub url: &'a Url,
    /// Fields besides `Host`, `User-Agent` and `Content-Length`.
    pub headers: &'a [(http::HeaderName, http::HeaderValue)],
    /// The body (`None`: no body).
    pub body: Option<bytes::Bytes>,
    /// Largest answer body read; a longer one is an error.
    pub max_answer: usize,
}

/// The status, fields and body of an answer.
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The answer's fields.
    pub headers: http::HeaderMap,
    /// The body, at most the request's `max_answer` bytes.
    pub body: Vec<u8>,
}

/// Sends `request` and reads its answer. The connection goes back to the
/// connector's pool when the exchange finished cleanly.
pub async fn send(connector: &Connector, request: Request<'_>) -> Result<Answer, String> {
    let url = request.url;
    let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", url.host))?;
    let peer = HttpPeer::new(addr, url.tls, url.host.clone());
    let mut req = RequestHeader::build(request.method, url.path.as_bytes(), None)
        .map_err(|e| format!("bad request target {:?}: {e}", url.path))?;
    let header = |e: pingora::BError| format!("request header: {e}");
    req.insert_header(http::header::HOST, url.authority.as_str())
        .map_err(header)?;
    req.insert_header(
        http::header::USER_AGENT,
        concat!("tollgate/", env!("CARGO_PKG_VERSION")),
    )
    .map_err(header)?;
    for (name, value) in request.headers {
        req.insert_header(name.clone(), value.clone())
            .map_err(header)?;
    }
    if let Some(body) = &request.body {
        req.insert_header(http::header::CONTENT_LENGTH, body.len())
            .map_err(header)?;
    }
    exchange(connector, &peer, req, request.body, request.max_answer).await
}

/// Sends `req` (and `body`) to `peer` and reads the answer, its body at
/// most `max_answer` bytes. The connection goes back to the connector's
/// pool when the exchange finished cleanly.
pub async fn exchange(
    connector: &Connector,
    peer: &HttpPeer,
    req: RequestHeader,
    body: Option<bytes::Bytes>,
    max_answer: usize,
) -> Result<Answer, String> {
    let (mut session, _) = connector
        .get_http_session(peer)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", peer._address))?;
    let sending = |e: pingora::BError| format!("sending the request: {e}");
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(sending)?;
    if let Some(body) = body {
        session
            .write_request_body(body, true)
            .await
            .map_err(sending)?;
    }
    session.finish_request_body().await.map_err(sending)?;
    session
        .read_response_header()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let (status, headers) = session
        .response_header()
        .map(|h| (h.status.as_u16(), h.headers.clone()))
        .unwrap_or_default();
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
    {
        if body.len() + chunk.len() > max_answer {
            return Err(format!(
                "answered {status} with a body larger than {max_answer} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(session, peer, Some(IDLE_REUSE))
        .await;
    Ok(Answer {
        status,
        headers,
        body,
    })
}
