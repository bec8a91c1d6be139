//! Backends that move: host names and SRV names in `backends`, re-resolved
//! in the background as their records' TTL says (bounded by `dns.min_ttl`
//! and `dns.max_ttl`). The request path never waits for DNS: it selects
//! among the members a pool last built from its names' last good answers.
//!
//! - [`resolver`]: the questions, asked through `hickory-resolver`.
//! - [`name`]: one name's last good answer, schedule and last error.
//! - [`record`]: what an answer does to a name (screened, counted, logged).
//!
//! Who asks, and when, is `upstream::refresh`: the pools own their names.

pub mod name;
pub mod resolver;
pub mod screen;

pub use name::{Applied, DnsName};
pub use resolver::DnsClient;

use crate::config::model::DnsSettings;
use crate::metrics::Metrics;
use resolver::{Answer, Failure};

/// Counts a resolution, logs a change or a failure, and records it on the
/// target; returns what applying it did.
pub fn record(
    target: &DnsName,
    result: Result<Answer, Failure>,
    settings: &DnsSettings,
    metrics: Option<&Metrics>,
) -> Applied {
    let result = result.and_then(|answer| {
        let (screened, left_out) =
            screen::screen(answer, &settings.own_addresses, &target.query().to_string());
        if left_out != screen::Screened::default() {
            log::warn!(
                "upstream {} backend {}: left out of the answer: {:?}, and {} past the limit of {}",
                target.upstream(),
                target.query(),
                left_out.refused,
                left_out.over_limit,
                screen::MAX_ADDRESSES
            );
        }
        screened
    });
    let label = match &result {
        Ok(_) => "ok",
        Err(f) => f.result,
    };
    if let Some(metrics) = metrics {
        metrics
            .dns_resolutions
            .with_label_values(&[target.upstream(), label])
            .inc();
    }
    let was_failing = target.asked() && target.is_failing();
    let failure = result.as_ref().err().cloned();
    let applied = target.apply(result, settings);
    match (applied, failure) {
        (Applied::Changed, _) => {
            let addrs: Vec<String> = target
                .resolved()
                .members
                .iter()
                .map(|m| m.addr.to_string())
                .collect();
            log::info!(
                "upstream {} backend {}: now {}",
                target.upstream(),
                target.query(),
                addrs.join(", ")
            );
        }
        (Applied::Failed, Some(f)) if !was_failing => log::warn!(
            "upstream {} backend {}: resolution failed ({}: {}); {}",
            target.upstream(),
            target.query(),
            f.result,
            f.message,
            if target.ever_resolved() {
                "keeping its last good addresses"
            } else {
                "it has no addresses yet"
            }
        ),
        (Applied::Failed, Some(f)) => log::debug!(
            "upstream {} backend {}: still failing ({}: {})",
            target.upstream(),
            target.query(),
            f.result,
            f.message
        ),
        (Applied::Unchanged, _) if was_failing => log::info!(
            "upstream {} backend {}: resolves again",
            target.upstream(),
            target.query()
        ),
        _ => {}
    }
    applied
}
