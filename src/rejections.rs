//! Rate-limit rejections per tenant since the status sampler last looked:
//! the one thing the status page needs that `/metrics` does not carry for
//! every tier (`tollgate_ratelimit_tenant_decisions_total` is opt-in per
//! tier, because tenants are unbounded label values).
//!
//! Written on the 429 path only (a short lock on a small map), read and
//! reset every two seconds by the status sampler (`crate::status`). Bounded: past
//! [`MAX_TENANTS`] distinct tenants in one interval, the rest are counted
//! together as [`OTHERS`], so a flood of anonymous addresses cannot grow it.

use std::collections::HashMap;
use std::sync::Mutex;

/// Distinct tenants counted per interval.
pub const MAX_TENANTS: usize = 256;
/// What rejections beyond [`MAX_TENANTS`] are counted as.
pub const OTHERS: &str = "(others)";

/// Rejections per tenant label since the last [`RejectionTally::take`].
#[derive(Debug, Default)]
pub struct RejectionTally {
    counts: Mutex<HashMap<String, u64>>,
}

impl RejectionTally {
    /// Counts one rejection of `tenant` (a configured tenant's name, or an
    /// anonymous client's address or network).
    pub fn reject(&self, tenant: impl AsRef<str> + Into<String>) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(tenant.as_ref()) {
            *n += 1;
        } else if counts.len() < MAX_TENANTS {
            counts.insert(tenant.into(), 1);
        } else {
            *counts.entry(OTHERS.to_owned()).or_default() += 1;
        }
    }

    /// The counts since the last call, emptied.
    pub fn take(&self) -> Vec<(String, u64)> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_bounded_and_reset_by_take() {
        let tally = RejectionTally::default();
        for i in 0..(MAX_TENANTS + 50) {
            tally.reject(format!("203.0.113.{i}"));
        }
        tally.reject("203.0.113.0");
        let counts: HashMap<String, u64> = tally.take().into_iter().collect();
        assert_eq!(counts.len(), MAX_TENANTS + 1, "the cap plus the others");
        assert_eq!(counts[OTHERS], 50);
        assert_eq!(counts["203.0.113.0"], 2);
        assert!(tally.take().is_empty());
    }
}
