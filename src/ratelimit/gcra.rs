//! GCRA (the generic cell rate algorithm): a token bucket refilled
//! continuously, kept as one number per window — the theoretical arrival
//! time (TAT) of the next request. No timers, no refill loop.
//!
//! For a window allowing `quota` requests per `window`, each request moves
//! the TAT by `interval = window / quota` (times its cost). A request is
//! allowed when the new TAT is at most `tolerance` ahead of now; the
//! tolerance is the burst (default: the whole quota).
//!
//! Several windows (per second/minute/hour/day) are decided together: a
//! request passes only if every window allows it, and only then are the
//! TATs advanced. The same arithmetic runs in the Redis Lua script.

/// One window of a tier, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Requests per window.
    pub quota: u64,
    /// Window length in seconds (for headers).
    pub window_secs: u64,
    /// Nanoseconds per request.
    pub interval_ns: u64,
    /// How far ahead of now the TAT may run: `burst × interval`.
    pub tolerance_ns: u64,
}

impl Window {
    /// A window of `quota` per `window_secs` seconds with the given burst.
    pub fn new(quota: u64, window_secs: u64, burst: u64) -> Self {
        let quota = quota.max(1);
        let interval_ns = window_secs.saturating_mul(1_000_000_000) / quota;
        Self {
            quota,
            window_secs,
            interval_ns: interval_ns.max(1),
            tolerance_ns: interval_ns.max(1).saturating_mul(burst.clamp(1, quota)),
        }
    }
}

/// Per-window values of one decision: inline for up to four windows (a
/// tier's second/minute/hour/day), so a decision allocates nothing.
pub type PerWindow<T> = smallvec::SmallVec<[T; 4]>;

/// The state of one window after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// Requests still allowed right now.
    pub remaining: u64,
    /// Seconds until the window is full again (`t` in the `RateLimit` header).
    pub reset_secs: u64,
}

/// The outcome of deciding one request against every window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Seconds until a request of this cost would be allowed (0 when allowed).
    pub retry_after_secs: u64,
    /// Per window, in the order given.
    pub windows: PerWindow<WindowState>,
    /// The TATs to store when allowed (unchanged when limited).
    pub new_tats: PerWindow<u64>,
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// Decides a request of `cost` at `now_ns` given each window's stored TAT
/// (`0` or anything in the past means a full bucket).
pub fn decide(windows: &[Window], tats: &[u64], now_ns: u64, cost: u64) -> Verdict {
    let mut allowed = true;
    let mut retry_after_ns = 0u64;
    let mut new_tats = PerWindow::with_capacity(windows.len());
    for (w, &tat) in windows.iter().zip(tats) {
        let base = tat.max(now_ns);
        let new_tat = base.saturating_add(w.interval_ns.saturating_mul(cost));
        let ahead = new_tat - now_ns;
        if ahead > w.tolerance_ns {
            allowed = false;
            retry_after_ns = retry_after_ns.max(ahead - w.tolerance_ns);
        }
        new_tats.push(new_tat);
    }
    // What the windows hold after this request: its TATs if it passes.
    let windows_state = windows
        .iter()
        .zip(tats.iter().zip(&new_tats))
        .map(|(w, (&tat, &new_tat))| {
            let effective = if allowed { new_tat } else { tat.max(now_ns) };
            let used = effective.saturating_sub(now_ns);
            WindowState {
                remaining: w.tolerance_ns.saturating_sub(used) / w.interval_ns,
                reset_secs: ceil_secs(used),
            }
        })
        .collect();
    Verdict {
        allowed,
        retry_after_secs: if allowed {
            0
        } else {
            ceil_secs(retry_after_ns).max(1)
        },
        windows: windows_state,
        new_tats: if allowed {
            new_tats
        } else {
            PerWindow::from_slice(tats)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn run(windows: &[Window], tats: &mut Vec<u64>, now: u64, cost: u64) -> Verdict {
        let v = decide(windows, tats, now, cost);
        *tats = v.new_tats.to_vec();
        v
    }

    #[test]
    fn exactly_the_quota_passes_in_a_burst_then_refills_continuously() {
        let w = [Window::new(60, 60, 60)];
        let mut tats = vec![0];
        let now = 1_000 * SEC;
        for i in 0..60 {
            let v = run(&w, &mut tats, now, 1);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.windows[0].remaining, 59 - i);
        }
        let limited = run(&w, &mut tats, now, 1);
        assert!(!limited.allowed);
        assert_eq!(limited.retry_after_secs, 1);
        // One interval (1 s) later exactly one more request fits.
        assert!(run(&w, &mut tats, now + SEC, 1).allowed);
        assert!(!run(&w, &mut tats, now + SEC, 1).allowed);
    }

    #[test]
    fn the_tighter_window_binds_and_a_limited_request_consumes_nothing() {
        let w = [Window::new(10, 1, 10), Window::new(15, 3600, 15)];
        let mut tats = vec![0, 0];
        let now = 5_000 * SEC;
        for _ in 0..10 {
            assert!(run(&w, &mut tats, now, 1).allowed);
        }
        assert!(!run(&w, &mut tats, now, 1).allowed);
        // Per-second refills, per-hour does not: 5 more, then the hour binds.
        for _ in 0..5 {
            assert!(run(&w, &mut tats, now + 2 * SEC, 1).allowed);
        }
        let v = run(&w, &mut tats, now + 4 * SEC, 1);
        assert!(!v.allowed);
        assert!(
            v.retry_after_secs > 100,
            "the hour window decides: {}",
            v.retry_after_secs
        );
        assert_eq!(v.windows[1].remaining, 0);
    }

    #[test]
    fn cost_takes_several_tokens() {
        let w = [Window::new(10, 10, 10)];
        let mut tats = vec![0];
        let now = 100 * SEC;
        assert!(run(&w, &mut tats, now, 5).allowed);
        assert!(run(&w, &mut tats, now, 5).allowed);
        assert!(!run(&w, &mut tats, now, 1).allowed);
    }

    #[test]
    fn burst_limits_requests_at_once_without_lowering_the_rate() {
        let w = [Window::new(60, 60, 5)];
        let mut tats = vec![0];
        let now = 100 * SEC;
        for _ in 0..5 {
            assert!(run(&w, &mut tats, now, 1).allowed);
        }
        assert!(!run(&w, &mut tats, now, 1).allowed);
    }
}
