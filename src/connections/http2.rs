//! The HTTP/2 request-head clock: the bytes a client sends are followed
//! frame by frame (RFC 9113 §4.1: a 9-byte frame header, then its payload),
//! and a header block — a HEADERS frame and its CONTINUATIONs up to
//! END_HEADERS — must arrive within `limits.header_timeout`: the first
//! from the accept (a connection that sends only the preface, or nothing,
//! is closed), later ones from the first byte of their HEADERS frame.
//! Pingora's HTTP/2 server (the `h2` crate) has no such deadline.

use super::deadline::Deadline;
use std::task::Context;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
/// Frame types that carry a header block.
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
/// The flag that ends a header block.
const END_HEADERS: u8 = 0x4;

/// The frame-following state of one HTTP/2 connection.
pub(super) struct Http2Clock {
    preface_left: usize,
    header: [u8; 9],
    header_len: usize,
    payload_left: usize,
    /// The frame being read ends a header block.
    ends_block: bool,
    pub(super) deadline: Deadline,
}

impl Http2Clock {
    /// A clock for a new connection, running with `left` of the first
    /// header block's time (counted from the accept).
    pub(super) fn from_accept(mut deadline: Deadline, left: std::time::Duration) -> Self {
        deadline.arm_for(left);
        Self {
            preface_left: PREFACE_LEN,
            header: [0; 9],
            header_len: 0,
            payload_left: 0,
            ends_block: false,
            deadline,
        }
    }

    /// Follows the frames in `bytes`, read from the client.
    pub(super) fn saw(&mut self, mut bytes: &[u8]) {
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let take = self.payload_left.min(bytes.len());
                self.payload_left -= take;
                bytes = &bytes[take..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            let take = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == 9 {
                self.header_len = 0;
                self.frame_started();
            }
        }
    }

    /// A frame header was read: a HEADERS frame starts a header block.
    fn frame_started(&mut self) {
        let h = &self.header;
        self.payload_left = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        if kind == HEADERS {
            self.deadline.arm_if_idle();
        }
        self.ends_block = matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0;
        if self.payload_left == 0 {
            self.frame_done();
        }
    }

    /// A frame's payload was read whole.
    fn frame_done(&mut self) {
        if self.ends_block {
            self.deadline.disarm();
            self.ends_block = false;
        }
    }

    /// An error once the header block's time is up.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        self.deadline
            .poll_expired(cx, "HTTP/2 request header block")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn clock() -> Http2Clock {
        let counter = prometheus::IntCounter::new("t", "t").expect("counter");
        let limit = Duration::from_secs(60);
        Http2Clock::from_accept(Deadline::new(limit, counter), limit)
    }

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn a_header_block_is_timed_from_the_accept_then_from_its_first_frame() {
        let mut c = clock();
        c.saw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        c.saw(&frame(0x4, 0, &[0; 6])); // SETTINGS
        assert!(
            c.deadline.armed(),
            "the preface and settings are not a request"
        );
        let headers = frame(HEADERS, 0, &[1; 10]);
        let continuation = frame(CONTINUATION, END_HEADERS, &[2; 5]);
        // Split across reads at every awkward place.
        c.saw(&headers[..4]);
        c.saw(&headers[4..12]);
        c.saw(&headers[12..]);
        c.saw(&continuation[..9]);
        assert!(
            c.deadline.armed(),
            "the block's last payload byte is still to come"
        );
        c.saw(&continuation[9..]);
        assert!(!c.deadline.armed(), "the first header block is complete");
        c.saw(&frame(0x0, 0x1, b"body")); // DATA
        assert!(!c.deadline.armed());
        c.saw(&frame(HEADERS, 0, &[3; 3]));
        assert!(c.deadline.armed(), "a new block starts the clock");
        c.saw(&frame(CONTINUATION, END_HEADERS, &[]));
        assert!(!c.deadline.armed());
    }
}
