//! The route's total deadline, held by a timer on the upstream connection.
//!
//! Pingora's read and write timeouts are per I/O call: an upstream that
//! trickles its response head or body, or a client whose slow body keeps
//! the upstream connection waiting, restarts them at every byte, so an
//! attempt's timeouts alone let a request run a whole read timeout past
//! the route's total. Pingora has no per-request deadline, and the
//! upstream stream is not ours to wrap, so this is our own: when the
//! deadline passes while an attempt still holds its connection, a timer
//! shuts the socket down (both directions). Pingora's pending read or
//! write then fails at once, the attempt reads as the route's
//! `request_timeout` (504 if nothing was sent yet, a cut stream otherwise),
//! and a response cut this way is never stored: the cache commits an
//! entry only when its body finished.
//!
//! The timer works on a duplicate of the connection's descriptor, so it can
//! only ever touch this connection, even if Pingora closes its own
//! descriptor first and the number is reused. It is disarmed before
//! Pingora can put the connection back in its pool (the last body byte, a
//! response without a body, a failed attempt), and when the request ends.

use std::net::Shutdown;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// An armed deadline on one upstream connection; disarmed when dropped.
pub struct DeadlineTimer {
    task: tokio::task::JoinHandle<()>,
    fired: Arc<AtomicBool>,
}

impl DeadlineTimer {
    /// Arms a timer that shuts down the connection `fd` at `at`. `None`
    /// (and the reason logged) if the descriptor cannot be duplicated;
    /// the attempt then keeps only its per-call timeouts.
    pub fn arm(fd: RawFd, at: std::time::Instant) -> Option<Self> {
        let socket = match duplicate(fd) {
            Ok(owned) => std::net::TcpStream::from(owned),
            Err(e) => {
                log::warn!("upstream connection {fd}: no deadline timer: {e}");
                return None;
            }
        };
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(Instant::from_std(at)).await;
            flag.store(true, Ordering::Release);
            // Fails only if the peer already closed it: nothing left to cut.
            let _ = socket.shutdown(Shutdown::Both);
        });
        Some(Self { task, fired })
    }

    /// Whether the deadline passed and the connection was cut.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

impl Drop for DeadlineTimer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A descriptor of our own for the socket Pingora passes to
/// `connected_to_upstream`.
#[allow(unsafe_code)]
fn duplicate(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: Pingora passes the descriptor of the upstream connection it
    // holds open for the whole `connected_to_upstream` call
    // (pingora-proxy `proxy_h1.rs`), and we only borrow it within that
    // call, to duplicate it; the duplicate is ours to close.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[tokio::test]
    async fn a_passed_deadline_cuts_the_connection_and_a_dropped_timer_does_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut cut = std::net::TcpStream::connect(addr).expect("connect");
        let (_peer_a, _) = listener.accept().expect("accept");
        let kept = std::net::TcpStream::connect(addr).expect("connect");
        let (_peer_b, _) = listener.accept().expect("accept");

        let now = std::time::Instant::now();
        let timer = DeadlineTimer::arm(cut.as_raw_fd(), now).expect("armed");
        let dropped = DeadlineTimer::arm(kept.as_raw_fd(), now).expect("armed");
        drop(dropped);
        // The read returns once the timer shut the socket down.
        let read = tokio::task::spawn_blocking(move || cut.read(&mut [0u8; 1]))
            .await
            .expect("join");
        assert_eq!(read.expect("read"), 0, "shut down: end of stream");
        assert!(timer.fired());
        kept.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 1];
        let still_open = (&kept).read(&mut buf);
        assert_eq!(
            still_open.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "the disarmed connection is untouched"
        );
    }
}
