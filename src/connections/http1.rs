//! The HTTP/1 request-head clock: a head must arrive within
//! `limits.header_timeout` — a connection's first head counted from the
//! accept (a connection that sends nothing is closed, as nginx's
//! `client_header_timeout` does), later heads from their first byte (the
//! idle time between requests is `limits.keepalive_timeout`, Pingora's
//! keep-alive timer). Empty lines before a request line (RFC 9112 §2.2
//! lets servers ignore them) start the clock but never end a head, so a
//! client cannot keep a connection by sending `\r\n` forever.

use super::deadline::Deadline;
use std::task::Context;

/// Where a connection is in its request/response cycle, as seen from the
/// bytes that pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for a request head.
    AwaitingHead,
    /// The head ended (`\r\n\r\n` seen): body bytes are not timed here.
    InMessage,
}

/// The head-timing state of one HTTP/1 connection.
pub(super) struct Http1Clock {
    pub(super) phase: Phase,
    /// A byte other than CR or LF of the current head was seen.
    started: bool,
    /// The last bytes of the head so far, to find `\r\n\r\n` across reads.
    tail: [u8; 3],
    pub(super) deadline: Deadline,
}

impl Http1Clock {
    /// A clock for a new connection, running with `left` of the first
    /// head's time (counted from the accept).
    pub(super) fn from_accept(mut deadline: Deadline, left: std::time::Duration) -> Self {
        deadline.arm_for(left);
        Self {
            phase: Phase::AwaitingHead,
            started: false,
            tail: [0; 3],
            deadline,
        }
    }

    /// Whether reads are being watched (a head is awaited).
    pub(super) fn watching(&self) -> bool {
        self.phase == Phase::AwaitingHead
    }

    /// Notes bytes read while a head is expected: any byte starts the clock
    /// (if the accept did not), the blank line after a request line stops it.
    pub(super) fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let content = if self.started {
            bytes
        } else {
            let skip = bytes
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            &bytes[skip..]
        };
        if content.is_empty() {
            self.deadline.arm_if_idle();
            return;
        }
        self.started = true;
        // A head that arrives whole in one read (the common case) never
        // needs the timer: resetting it costs a timer-wheel removal and
        // insertion per request.
        if ends_head(&self.tail, content) {
            self.phase = Phase::InMessage;
            self.deadline.disarm();
            self.tail = [0; 3];
            self.started = false;
            return;
        }
        self.deadline.arm_if_idle();
        let mut joined = [0u8; 6];
        joined[..3].copy_from_slice(&self.tail);
        let k = content.len().min(3);
        joined[3..3 + k].copy_from_slice(&content[content.len() - k..]);
        self.tail.copy_from_slice(&joined[k..k + 3]);
    }

    /// Whether a final response starts with `data`: what is read next is
    /// the next request's head.
    pub(super) fn wrote(&mut self, data: &[u8]) {
        if self.phase == Phase::InMessage && data.starts_with(b"HTTP/") && !is_interim(data) {
            self.phase = Phase::AwaitingHead;
            self.deadline.disarm();
        }
    }

    /// An error once the head's time is up.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        if self.phase != Phase::AwaitingHead {
            return None;
        }
        self.deadline.poll_expired(cx, "request head")
    }
}

/// Whether the blank line ending a head is in `tail` + `bytes`.
fn ends_head(tail: &[u8; 3], bytes: &[u8]) -> bool {
    let mut edge = [0u8; 6];
    edge[..3].copy_from_slice(tail);
    let k = bytes.len().min(3);
    edge[3..3 + k].copy_from_slice(&bytes[..k]);
    edge[..3 + k].windows(4).any(|w| w == b"\r\n\r\n")
        // A read usually ends where the head does.
        || bytes.ends_with(b"\r\n\r\n")
        || bytes.windows(4).any(|w| w == b"\r\n\r\n")
}

/// `HTTP/1.x 1xx` — an interim response.
fn is_interim(data: &[u8]) -> bool {
    data.get(9) == Some(&b'1')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn clock() -> Http1Clock {
        let counter = prometheus::IntCounter::new("t", "t").expect("counter");
        let limit = Duration::from_secs(60);
        Http1Clock::from_accept(Deadline::new(limit, counter), limit)
    }

    #[test]
    fn the_blank_line_is_found_across_reads() {
        assert!(ends_head(&[0; 3], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(ends_head(b"a\r\n", b"\r\nbody"));
        assert!(ends_head(b"\r\n\r", b"\n"));
        assert!(!ends_head(b"\r\nX", b"\r\n"));
        assert!(!ends_head(&[0; 3], b""));
    }

    #[tokio::test]
    async fn the_first_head_is_timed_from_the_accept_and_later_ones_from_their_first_byte() {
        let mut clock = clock();
        assert!(clock.deadline.armed(), "armed at the accept");
        clock.saw(b"GET / HT");
        clock.saw(b"TP/1.1\r\nHost: a\r");
        assert_eq!(clock.phase, Phase::AwaitingHead);
        clock.saw(b"\n\r");
        assert_eq!(clock.phase, Phase::AwaitingHead);
        clock.saw(b"\nbody");
        assert_eq!(clock.phase, Phase::InMessage);
        assert!(!clock.deadline.armed());
        clock.wrote(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(clock.phase, Phase::InMessage, "the body is still to come");
        clock.wrote(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(clock.phase, Phase::AwaitingHead);
        assert!(
            !clock.deadline.armed(),
            "armed again by the next head's first byte"
        );
        clock.saw(b"G");
        assert!(clock.deadline.armed());
    }

    /// RFC 9112 §2.2's leading empty lines start the clock but never end
    /// a head: `\r\n\r\n` before a request line is not a blank line.
    #[tokio::test]
    async fn leading_empty_lines_never_end_a_head() {
        let mut clock = clock();
        clock.saw(b"\r\n\r\n");
        clock.saw(b"\r\n\r\n\r\n");
        assert_eq!(clock.phase, Phase::AwaitingHead);
        assert!(clock.deadline.armed());
        clock.saw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(clock.phase, Phase::InMessage);
        clock.wrote(b"HTTP/1.1 200 OK\r\n");
        clock.saw(b"\r\n");
        assert!(
            clock.deadline.armed(),
            "an empty line starts the next head's clock"
        );
        clock.saw(b"\r\n\r\n");
        assert_eq!(clock.phase, Phase::AwaitingHead);
    }

    #[test]
    fn interim_responses_are_told_from_final_ones() {
        assert!(is_interim(b"HTTP/1.1 100 Continue\r\n"));
        assert!(!is_interim(b"HTTP/1.1 200 OK\r\n"));
    }
}
