//! The filter's shadow counters of one rollout (`canary_shadow_*`, tagged with the candidate's
//! `version="canary"`).

use canary_contract::ShadowMetric;
use serde::{Deserialize, Serialize};

use super::counters::{self, counters};

/// The filter's shadow counters of one rollout (from one source, or a window's deltas).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowCounts {
    pub requests: u64,
    pub compared: u64,
    pub agree: u64,
    pub agree_status: u64,
    pub agree_structure: u64,
    pub agree_text: u64,
    pub failed: u64,
    pub dropped: u64,
}

counters!(ShadowCounts: ShadowMetric {
    requests: Counter = ShadowMetric::Requests,
    compared: Counter = ShadowMetric::Compared,
    agree: Counter = ShadowMetric::Agree,
    agree_status: Counter = ShadowMetric::AgreeStatus,
    agree_structure: Counter = ShadowMetric::AgreeStructure,
    agree_text: Counter = ShadowMetric::AgreeText,
    failed: Counter = ShadowMetric::Failed,
    dropped: Counter = ShadowMetric::Dropped,
});

impl ShadowCounts {
    /// `self - earlier`, `None` if a counter went down (the proxy restarted).
    pub fn minus(&self, earlier: &ShadowCounts) -> Option<ShadowCounts> {
        counters::minus(self, earlier)
    }

    pub fn plus(&self, other: &ShadowCounts) -> ShadowCounts {
        counters::plus(self, other)
    }

    /// Share of compared answers that agree, `None` before any comparison.
    pub fn agreement(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.agree as f64 / self.compared as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(compared: u64, agree: u64) -> ShadowCounts {
        ShadowCounts {
            requests: compared,
            compared,
            agree,
            ..ShadowCounts::default()
        }
    }

    #[test]
    fn counts_subtract_and_add() {
        let a = counts(10, 9);
        let b = counts(25, 20);
        assert_eq!(b.minus(&a), Some(counts(15, 11)));
        assert_eq!(a.minus(&b), None);
        assert_eq!(a.plus(&b), counts(35, 29));
        assert_eq!(counts(0, 0).agreement(), None);
        assert_eq!(counts(4, 3).agreement(), Some(0.75));
    }
}
