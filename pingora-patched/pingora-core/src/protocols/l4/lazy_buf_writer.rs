// Copyright 2026 tollgate contributors (Pingora patch 0007)
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! A write buffer that holds memory only while it holds bytes.
//!
//! [`tokio::io::BufWriter`] allocates its whole capacity when it is made and keeps
//! it for the life of the stream, so every idle keep-alive connection pays for a
//! buffer it is not using. This one allocates on the first buffered write and
//! frees the allocation once a flush has written everything out, so a connection
//! between responses holds none. Writes coalesce exactly as in `BufWriter`: what
//! fits is copied into the buffer, a write at least as large as the capacity goes
//! straight to the stream after the buffer is flushed.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A `BufWriter` whose buffer exists only between the first write and the next
/// completed flush.
#[derive(Debug)]
pub(crate) struct LazyBufWriter<W> {
    inner: W,
    buf: Vec<u8>,
    /// How much of `buf` has been written to `inner`.
    written: usize,
    capacity: usize,
}

impl<W> LazyBufWriter<W> {
    /// A writer buffering up to `capacity` bytes (0: every write goes straight
    /// through).
    pub(crate) fn with_capacity(capacity: usize, inner: W) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
            capacity,
        }
    }

    pub(crate) fn get_ref(&self) -> &W {
        &self.inner
    }

    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner stream. Anything still buffered is lost.
    pub(crate) fn into_inner(self) -> W {
        self.inner
    }

    /// Bytes held and not yet written out.
    #[cfg(test)]
    pub(crate) fn buffer(&self) -> &[u8] {
        &self.buf[self.written..]
    }

    /// Bytes of memory the buffer holds (its allocation, not its contents).
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        self.buf.capacity()
    }
}

impl<W: AsyncWrite + Unpin> LazyBufWriter<W> {
    /// Writes out everything buffered, then frees the buffer.
    fn flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..])) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write the buffered data",
                    )))
                }
                Ok(n) => self.written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.written = 0;
        if self.buf.capacity() != 0 {
            self.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    fn buffer_bytes(&mut self, data: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.capacity);
        }
        self.buf.extend_from_slice(data);
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LazyBufWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.buf.len() + data.len() > this.capacity {
            ready!(this.flush_buf(cx))?;
        }
        if data.len() >= this.capacity {
            Pin::new(&mut this.inner).poll_write(cx, data)
        } else {
            this.buffer_bytes(data);
            Poll::Ready(Ok(data.len()))
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total = bufs.iter().map(|b| b.len()).sum::<usize>();
        if this.buf.len() + total > this.capacity {
            ready!(this.flush_buf(cx))?;
        }
        if total >= this.capacity {
            Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
        } else {
            for b in bufs {
                this.buffer_bytes(b);
            }
            Poll::Ready(Ok(total))
        }
    }

    fn is_write_vectored(&self) -> bool {
        // As `BufWriter`: small slices are gathered into the buffer.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.flush_buf(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.flush_buf(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<W: AsyncRead + Unpin> AsyncRead for LazyBufWriter<W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio_test::io::Builder;

    #[tokio::test]
    async fn small_writes_coalesce_into_one_and_the_buffer_is_freed_after_the_flush() {
        // One write of both parts reaches the stream: the mock fails on any other.
        let mock = Builder::new().write(b"HTTP/1.1 200 OK\r\n\r\nbody").build();
        let mut w = LazyBufWriter::with_capacity(1024, mock);
        assert_eq!(w.allocated(), 0, "nothing allocated before the first write");
        w.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        w.write_all(b"body").await.unwrap();
        assert_eq!(w.buffer(), b"HTTP/1.1 200 OK\r\n\r\nbody");
        assert!(w.allocated() >= 1024);
        w.flush().await.unwrap();
        assert_eq!(w.allocated(), 0, "an idle writer holds no buffer");
        assert!(w.buffer().is_empty());
    }

    #[tokio::test]
    async fn a_write_past_the_capacity_flushes_what_is_held_then_goes_straight_through() {
        let big = vec![b'x'; 32];
        let mock = Builder::new().write(b"head").write(&big).build();
        let mut w = LazyBufWriter::with_capacity(16, mock);
        w.write_all(b"head").await.unwrap();
        w.write_all(&big).await.unwrap();
        assert!(w.buffer().is_empty());
        w.flush().await.unwrap();
    }

    #[tokio::test]
    async fn a_zero_capacity_writes_every_write_through() {
        let mock = Builder::new().write(b"a").write(b"b").build();
        let mut w = LazyBufWriter::with_capacity(0, mock);
        w.write_all(b"a").await.unwrap();
        w.write_all(b"b").await.unwrap();
        assert_eq!(w.allocated(), 0);
    }

    #[tokio::test]
    async fn vectored_writes_that_fit_are_gathered() {
        let mock = Builder::new().write(b"onetwo").build();
        let mut w = LazyBufWriter::with_capacity(64, mock);
        let n = w
            .write_vectored(&[io::IoSlice::new(b"one"), io::IoSlice::new(b"two")])
            .await
            .unwrap();
        assert_eq!(n, 6);
        w.flush().await.unwrap();
        assert_eq!(w.allocated(), 0);
    }
}
