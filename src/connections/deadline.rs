//! One connection's head deadline: a timer made once per connection and
//! reset (never reallocated) for each head it times.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

/// A resettable deadline that counts the times it expired.
pub(super) struct Deadline {
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
    timeouts: prometheus::IntCounter,
}

impl Deadline {
    /// A disarmed deadline of `limit`; expiries are counted in `timeouts`.
    pub(super) fn new(limit: Duration, timeouts: prometheus::IntCounter) -> Self {
        Self {
            limit,
            timer: None,
            armed: false,
            timeouts,
        }
    }

    /// Starts the clock now.
    pub(super) fn arm(&mut self) {
        self.arm_for(self.limit);
    }

    /// Starts the clock now with `left` to run (what remains of a limit
    /// that started earlier).
    pub(super) fn arm_for(&mut self, left: Duration) {
        let at = tokio::time::Instant::now() + left;
        match self.timer.as_mut() {
            Some(timer) => timer.as_mut().reset(at),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        self.armed = true;
    }

    /// Starts the clock now unless it is already running.
    pub(super) fn arm_if_idle(&mut self) {
        if !self.armed {
            self.arm();
        }
    }

    /// Stops the clock.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Whether the clock is running.
    #[cfg(test)]
    pub(super) fn armed(&self) -> bool {
        self.armed
    }

    /// An error (and the expiry counted) once the running clock is past
    /// its limit; `what` names what did not arrive in time.
    pub(super) fn poll_expired(
        &mut self,
        cx: &mut Context<'_>,
        what: &str,
    ) -> Option<std::io::Error> {
        if !self.armed {
            return None;
        }
        let timer = self.timer.as_mut()?;
        if timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        self.armed = false;
        self.timeouts.inc();
        Some(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} not received within {:?}", self.limit),
        ))
    }
}
