//! The stream wrapper that times request heads: every byte the client
//! sends passes its clock (HTTP/1: [`Http1Clock`]; HTTP/2:
//! [`Http2Clock`]), and a read fails once a head is late, which makes
//! Pingora close the connection. The rest is plumbing: Pingora's stream
//! traits, forwarded to the wrapped stream.

use super::deadline::Deadline;
use super::http1::Http1Clock;
use super::http2::Http2Clock;
use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
    ALPN,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which protocol's heads are timed.
enum Clock {
    Http1(Http1Clock),
    Http2(Http2Clock),
}

impl Clock {
    fn watching(&self) -> bool {
        match self {
            Clock::Http1(c) => c.watching(),
            Clock::Http2(_) => true,
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        match self {
            Clock::Http1(c) => c.saw(bytes),
            Clock::Http2(c) => c.saw(bytes),
        }
    }

    fn wrote(&mut self, data: &[u8]) {
        if let Clock::Http1(c) = self {
            c.wrote(data);
        }
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        match self {
            Clock::Http1(c) => c.poll_expired(cx),
            Clock::Http2(c) => c.poll_expired(cx),
        }
    }
}

/// A client stream whose request heads must arrive within `limit`: from
/// the accept for the first, then as each protocol's clock says.
pub struct TimedHeads {
    inner: pingora::protocols::Stream,
    clock: Clock,
}

impl TimedHeads {
    /// Wraps `inner`, an HTTP/2 stream when `http2`: its first head has
    /// `first` left to arrive (what remains of `limit` since the accept),
    /// later heads `limit`; late heads are counted in `timeouts`.
    pub fn new(
        inner: pingora::protocols::Stream,
        http2: bool,
        first: Duration,
        limit: Duration,
        timeouts: prometheus::IntCounter,
    ) -> Self {
        let deadline = Deadline::new(limit, timeouts);
        let clock = if http2 {
            Clock::Http2(Http2Clock::from_accept(deadline, first))
        } else {
            Clock::Http1(Http1Clock::from_accept(deadline, first))
        };
        Self { inner, clock }
    }
}

impl AsyncRead for TimedHeads {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        if let Some(expired) = me.clock.poll_expired(cx) {
            return Poll::Ready(Err(expired));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.inner).poll_read(cx, buf);
        if me.clock.watching() && matches!(polled, Poll::Ready(Ok(()))) {
            me.clock.saw(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for TimedHeads {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = &mut *self;
        me.clock.wrote(data);
        Pin::new(&mut me.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = &mut *self;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            me.clock.wrote(first);
        }
        Pin::new(&mut me.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for TimedHeads {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for TimedHeads {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for TimedHeads {
    fn get_ssl(&self) -> Option<&pingora::tls::ssl::SslRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for TimedHeads {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for TimedHeads {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for TimedHeads {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for TimedHeads {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl std::fmt::Debug for TimedHeads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedHeads")
            .field("inner", &self.inner)
            .field("http2", &matches!(self.clock, Clock::Http2(_)))
            .finish()
    }
}
