//! A stage's totals, window by window, kept in the state for `/status` and the history.

use serde::{Deserialize, Serialize};

use crate::judge::{Outcome, Verdict};

/// What one stage saw, window by window: `/status` and the history keep these totals, where
/// the verdicts list holds only the last few windows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTotals {
    /// 0-based, as `RolloutState::stage`.
    pub stage: usize,
    pub weight_bp: u32,
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// Judged windows by outcome.
    pub passed: u64,
    pub failed: u64,
    pub inconclusive: u64,
    pub canary_requests: u64,
    pub stable_requests: u64,
    pub canary_errors: u64,
    pub stable_errors: u64,
}

impl StageTotals {
    pub(super) fn count(&mut self, verdict: &Verdict) {
        // Saturating, like the request totals: a resumed state file may hold any count.
        let windows = match verdict.outcome {
            Outcome::Pass => &mut self.passed,
            Outcome::Fail => &mut self.failed,
            Outcome::Inconclusive => &mut self.inconclusive,
        };
        *windows = windows.saturating_add(1);
        self.canary_requests = self.canary_requests.saturating_add(verdict.canary_requests);
        self.stable_requests = self.stable_requests.saturating_add(verdict.stable_requests);
        self.canary_errors = self.canary_errors.saturating_add(verdict.canary_errors);
        self.stable_errors = self.stable_errors.saturating_add(verdict.stable_errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::test_support::verdict_of;

    /// Found by the `state` fuzz target: a state file whose stage totals were at u64::MAX
    /// loaded (they are in range), then its next window overflowed them.
    #[test]
    fn totals_saturate() {
        let mut totals = StageTotals {
            passed: u64::MAX,
            failed: u64::MAX,
            inconclusive: u64::MAX,
            ..StageTotals::default()
        };
        for outcome in [Outcome::Pass, Outcome::Fail, Outcome::Inconclusive] {
            totals.count(&verdict_of(outcome, false, false, 1, 1));
        }
        assert_eq!(
            (totals.passed, totals.failed, totals.inconclusive),
            (u64::MAX, u64::MAX, u64::MAX)
        );
    }
}
