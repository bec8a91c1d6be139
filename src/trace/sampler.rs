//! Which requests are recorded: the parent's decision when a trusted
//! caller made one, else a share of new traces chosen by their id, as
//! OpenTelemetry's `ParentBased(TraceIdRatioBased)` decides — so every
//! instance (and every service after tollgate that samples by ratio on
//! the trace id) makes the same decision for the same trace.

use super::context::{Parent, TraceId};

/// Whether the request is recorded: `parent`'s flag when there is one,
/// else whether the trace id's last 8 bytes fall under `ratio` of the
/// 64-bit range (the specification's `TraceIdRatioBased`).
pub fn sampled(parent: Option<&Parent>, trace_id: &TraceId, ratio: f64) -> bool {
    if let Some(parent) = parent {
        return parent.sampled;
    }
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    // `as` saturates: a ratio just under 1.0 stays under u64::MAX.
    let threshold = (ratio * 2f64.powi(64)) as u64;
    u64::from_be_bytes(low) < threshold
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::context::new_trace_id;

    #[test]
    fn a_parent_decides() {
        let parent = Parent {
            trace_id: [1; 16],
            span_id: [1; 8],
            sampled: true,
        };
        assert!(sampled(Some(&parent), &[1; 16], 0.0));
        let parent = Parent {
            sampled: false,
            ..parent
        };
        assert!(!sampled(Some(&parent), &[1; 16], 1.0));
    }

    #[test]
    fn the_ratio_holds_over_many_traces() {
        let n = 100_000;
        for ratio in [0.0, 0.01, 0.25, 1.0] {
            let hits = (0..n)
                .filter(|_| sampled(None, &new_trace_id(), ratio))
                .count() as f64;
            let expected = ratio * n as f64;
            // Five standard deviations of the binomial.
            let bound = 5.0 * (n as f64 * ratio * (1.0 - ratio)).sqrt() + 1.0;
            assert!(
                (hits - expected).abs() <= bound,
                "ratio {ratio}: {hits} sampled of {n}"
            );
        }
    }
}
