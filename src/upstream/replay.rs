//! Whether a failed attempt may be sent to a backend again: the one place
//! that decides it (RFC 9110 §9.2.2: a proxy "MUST NOT automatically
//! retry non-idempotent requests" that may have been processed).
//!
//! What a Pingora error type says about the request (pingora-core
//! `protocols/http/v1/client.rs`, pingora-proxy `proxy_h1.rs`):
//! - a connect failure (`fail_to_connect`): nothing was sent;
//! - `WriteError` / `WriteTimedout`: writing the request head or body
//!   failed, so the backend never received the whole request (Pingora
//!   reports a failed body write in preference to the read error that
//!   follows it);
//! - anything else after connecting — `ConnectionClosed`, `ReadError` or
//!   `ReadTimedout` while reading the response head (the ones Pingora marks
//!   `RetryType::ReusedOnly` on a pooled connection), an invalid response,
//!   a reset mid-body: the request was written and the backend may have
//!   acted on it, even when the connection came from the pool and looks
//!   merely stale.

use pingora::ErrorType;

/// What the request allows when an attempt failed after connecting.
#[derive(Debug, Clone, Copy)]
pub struct Replay {
    /// The method is idempotent (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// The whole request body is still in Pingora's retry buffer.
    pub body_buffered: bool,
    /// Part of the response already reached the client.
    pub response_started: bool,
    /// The upstream connection came from the pool (was used before).
    pub upstream_reused: bool,
}

/// How far a failed attempt got with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// The connection was never made: nothing was sent.
    Nothing,
    /// The connection failed while the request was being written: the
    /// backend has at most part of it.
    PartOfTheRequest,
    /// The request was written; the backend may have processed it.
    MaybeProcessed,
}

impl Reached {
    /// Reads a failure after connecting off Pingora's error type.
    pub fn after_connect(etype: &ErrorType) -> Reached {
        match etype {
            ErrorType::WriteError | ErrorType::WriteTimedout => Reached::PartOfTheRequest,
            _ => Reached::MaybeProcessed,
        }
    }
}

impl Replay {
    /// Whether the request may be sent again after a failure that reached
    /// `reached`: its body must still be buffered and nothing of the answer
    /// sent; a request the backend may have processed must be idempotent.
    pub fn allows(&self, reached: Reached) -> bool {
        let resendable = self.body_buffered && !self.response_started;
        match reached {
            Reached::Nothing => true,
            Reached::PartOfTheRequest => resendable,
            Reached::MaybeProcessed => resendable && self.idempotent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(idempotent: bool, body_buffered: bool, response_started: bool) -> Replay {
        Replay {
            idempotent,
            body_buffered,
            response_started,
            upstream_reused: true,
        }
    }

    #[test]
    fn the_decision_table() {
        use Reached::*;
        // (idempotent, buffered, started, reached) → allowed
        let table = [
            (false, true, false, Nothing, true),
            (false, false, false, Nothing, true),
            (false, true, false, PartOfTheRequest, true),
            (false, true, false, MaybeProcessed, false),
            (true, true, false, MaybeProcessed, true),
            (true, false, false, MaybeProcessed, false),
            (true, true, true, MaybeProcessed, false),
            (true, true, true, PartOfTheRequest, false),
            (false, false, false, PartOfTheRequest, false),
        ];
        for (idempotent, buffered, started, reached, allowed) in table {
            assert_eq!(
                replay(idempotent, buffered, started).allows(reached),
                allowed,
                "idempotent {idempotent}, buffered {buffered}, started {started}, {reached:?}"
            );
        }
    }

    #[test]
    fn only_a_failed_write_means_the_request_did_not_arrive() {
        assert_eq!(
            Reached::after_connect(&ErrorType::WriteError),
            Reached::PartOfTheRequest
        );
        assert_eq!(
            Reached::after_connect(&ErrorType::WriteTimedout),
            Reached::PartOfTheRequest
        );
        for etype in [
            ErrorType::ConnectionClosed,
            ErrorType::ReadError,
            ErrorType::ReadTimedout,
            ErrorType::InvalidHTTPHeader,
            ErrorType::H1Error,
        ] {
            assert_eq!(
                Reached::after_connect(&etype),
                Reached::MaybeProcessed,
                "{etype:?}"
            );
        }
    }
}
