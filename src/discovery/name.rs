//! One backend name of one pool: its last good set of addresses (kept
//! through failures), when it is asked next, and what went wrong last.

use super::resolver::{Answer, Failure};
use crate::config::model::{DnsQuery, DnsSettings};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// An address a name currently gives, with when it first appeared.
#[derive(Debug, Clone)]
pub struct Member {
    /// Where to connect.
    pub addr: SocketAddr,
    /// RFC 2782 priority; 0 for A/AAAA answers.
    pub priority: u16,
    /// Weight factor from the SRV record (1 for A/AAAA answers), see
    /// [`srv_weight_factor`].
    pub weight_factor: u64,
    /// The SRV target it came from.
    pub target: Option<Box<str>>,
    /// When this address first appeared in the name's answers.
    pub since: SystemTime,
}

/// The last good answer of a name. `version` 0 means it never resolved.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Bumped on every change of the address set.
    pub version: u64,
    /// The addresses, in answer order.
    pub members: Vec<Member>,
}

/// RFC 2782 weights are proportions within a priority; a weight of 0 means
/// "a very small chance when others have weight". Weights are scaled by 100
/// and 0 becomes 1, so a weight-0 target gets 1/100 of a weight-1 target's
/// share and all-zero sets share evenly.
pub fn srv_weight_factor(weight: Option<u16>) -> u64 {
    match weight {
        None => 1,
        Some(0) => 1,
        Some(w) => u64::from(w) * 100,
    }
}

#[derive(Debug, Default)]
struct Status {
    next_due: Option<Instant>,
    consecutive_failures: u32,
    last_success: Option<SystemTime>,
    last_error: Option<(&'static str, String, SystemTime)>,
}

/// A name's live state, shared by every config generation that has it.
pub struct DnsName {
    upstream: Box<str>,
    query: DnsQuery,
    resolved: ArcSwap<Resolved>,
    status: Mutex<Status>,
    running: AtomicBool,
}

/// What applying a resolution did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The address set changed (or resolved for the first time).
    Changed,
    /// Same addresses as before.
    Unchanged,
    /// The resolution failed; the last good set stays.
    Failed,
}

impl DnsName {
    /// A name not yet asked.
    pub fn new(upstream: &str, query: DnsQuery) -> Self {
        Self {
            upstream: upstream.into(),
            query,
            resolved: ArcSwap::from_pointee(Resolved::default()),
            status: Mutex::new(Status::default()),
            running: AtomicBool::new(false),
        }
    }

    /// The pool it feeds.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The question.
    pub fn query(&self) -> &DnsQuery {
        &self.query
    }

    /// The last good answer.
    pub fn resolved(&self) -> Arc<Resolved> {
        self.resolved.load_full()
    }

    /// Whether the name has ever resolved.
    pub fn ever_resolved(&self) -> bool {
        self.resolved.load().version > 0
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the next resolution if it is due at `now` and none is
    /// running; the caller must then [`Self::apply`] a result.
    pub fn claim_if_due(&self, now: Instant) -> bool {
        let due = self.status().next_due.is_none_or(|at| now >= at);
        due && !self.running.swap(true, Ordering::AcqRel)
    }

    /// Records a resolution's result: a success replaces the set (keeping
    /// when each remaining address appeared) and schedules the next one at
    /// the TTL within `[min_ttl, max_ttl]`; a failure keeps the set and
    /// retries with backoff from `min_ttl` up to `max_ttl`.
    pub fn apply(&self, result: Result<Answer, Failure>, settings: &DnsSettings) -> Applied {
        let now = Instant::now();
        let applied = {
            let mut status = self.status();
            match result {
                Ok(answer) => {
                    status.consecutive_failures = 0;
                    status.last_success = Some(SystemTime::now());
                    status.next_due =
                        Some(now + answer.ttl.clamp(settings.min_ttl, settings.max_ttl));
                    self.replace(answer)
                }
                Err(failure) => {
                    status.consecutive_failures = status.consecutive_failures.saturating_add(1);
                    let backoff = settings
                        .min_ttl
                        .saturating_mul(1 << status.consecutive_failures.min(16))
                        .min(settings.max_ttl);
                    status.next_due = Some(now + backoff);
                    status.last_error = Some((failure.result, failure.message, SystemTime::now()));
                    Applied::Failed
                }
            }
        };
        self.running.store(false, Ordering::Release);
        applied
    }

    fn replace(&self, answer: Answer) -> Applied {
        let old = self.resolved.load_full();
        let members: Vec<Member> = answer
            .addrs
            .into_iter()
            .map(|a| {
                let since = old
                    .members
                    .iter()
                    .find(|m| m.addr == a.addr)
                    .map_or_else(SystemTime::now, |m| m.since);
                Member {
                    addr: a.addr,
                    priority: a.priority,
                    weight_factor: srv_weight_factor(a.srv_weight),
                    target: a.target.map(String::into_boxed_str),
                    since,
                }
            })
            .collect();
        let same = old.version > 0
            && old.members.len() == members.len()
            && old.members.iter().zip(&members).all(|(a, b)| {
                a.addr == b.addr && a.priority == b.priority && a.weight_factor == b.weight_factor
            });
        if same {
            return Applied::Unchanged;
        }
        self.resolved.store(Arc::new(Resolved {
            version: old.version + 1,
            members,
        }));
        Applied::Changed
    }

    /// For `/health` and the status page: the name, its addresses with
    /// when each appeared, the last error and its time, when it is asked next.
    pub fn report(&self) -> serde_json::Value {
        let resolved = self.resolved();
        let status = self.status();
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let state = match (
            &status.last_error,
            status.consecutive_failures,
            resolved.version,
        ) {
            (_, _, 0) => "unresolved",
            (Some(_), n, _) if n > 0 => "stale",
            _ => "ok",
        };
        serde_json::json!({
            "name": self.query.to_string(),
            "status": state,
            "addresses": resolved.members.iter().map(|m| serde_json::json!({
                "address": m.addr.to_string(),
                "priority": m.priority,
                "target": m.target.as_deref(),
                "since_unix": unix(m.since),
            })).collect::<Vec<_>>(),
            "last_success_unix": status.last_success.map(unix),
            "last_error": status.last_error.as_ref().map(|(result, message, at)| serde_json::json!({
                "result": result,
                "message": message,
                "at_unix": unix(*at),
            })),
            "consecutive_failures": status.consecutive_failures,
            "next_refresh_in_ms": status.next_due.map(|at| at.saturating_duration_since(Instant::now()).as_millis() as u64),
        })
    }

    /// Whether the last resolution failed (the set may be stale) or the
    /// name never resolved.
    pub fn is_failing(&self) -> bool {
        self.status().consecutive_failures > 0 || !self.ever_resolved()
    }

    /// Whether the name has been asked at least once (with any result).
    pub fn asked(&self) -> bool {
        let status = self.status();
        status.last_success.is_some() || status.last_error.is_some()
    }
}

/// Time left before `deadline`, zero when past; for the backoff test.
#[cfg(test)]
fn left(deadline: Instant) -> std::time::Duration {
    deadline.saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn answer(addrs: &[&str], ttl: u64) -> Answer {
        super::super::resolver::answer_for_tests(addrs, Duration::from_secs(ttl))
    }

    fn target() -> DnsName {
        DnsName::new(
            "api",
            DnsQuery::Host {
                name: "api.internal".into(),
                port: 80,
            },
        )
    }

    #[test]
    fn a_failure_keeps_the_last_good_set_and_backs_off_within_max_ttl() {
        let t = target();
        let settings = DnsSettings::default();
        assert!(t.claim_if_due(Instant::now()));
        assert!(!t.claim_if_due(Instant::now()), "one resolution at a time");
        assert_eq!(
            t.apply(Ok(answer(&["127.0.0.2:80"], 600)), &settings),
            Applied::Changed
        );
        let due = t.status().next_due.expect("scheduled");
        assert!(
            left(due) <= settings.max_ttl,
            "a long TTL is bounded by max_ttl"
        );
        for _ in 0..20 {
            let failure = Failure {
                result: "timeout",
                message: "x".into(),
            };
            assert_eq!(t.apply(Err(failure), &settings), Applied::Failed);
            assert!(left(t.status().next_due.expect("scheduled")) <= settings.max_ttl);
        }
        assert_eq!(t.resolved().members.len(), 1);
        assert!(t.is_failing());
        assert_eq!(t.report()["status"], "stale");
    }

    #[test]
    fn an_unchanged_answer_keeps_the_version_and_when_each_address_appeared() {
        let t = target();
        let settings = DnsSettings::default();
        t.apply(Ok(answer(&["127.0.0.2:80"], 0)), &settings);
        let first = t.resolved();
        assert!(
            left(t.status().next_due.expect("due")) >= Duration::from_millis(900),
            "min_ttl bounds a TTL of 0"
        );
        assert_eq!(
            t.apply(Ok(answer(&["127.0.0.2:80"], 5)), &settings),
            Applied::Unchanged
        );
        assert_eq!(t.resolved().version, first.version);
        assert_eq!(
            t.apply(Ok(answer(&["127.0.0.2:80", "127.0.0.3:80"], 5)), &settings),
            Applied::Changed
        );
        let now = t.resolved();
        assert_eq!(now.version, first.version + 1);
        assert_eq!(now.members[0].since, first.members[0].since);
    }

    #[test]
    fn srv_weights_scale_and_zero_gets_a_small_share() {
        assert_eq!(srv_weight_factor(None), 1);
        assert_eq!(srv_weight_factor(Some(0)), 1);
        assert_eq!(srv_weight_factor(Some(3)), 300);
    }
}
