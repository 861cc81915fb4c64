//! The canary strategy: stages of increasing weight. After each judged window it decides
//! whether the rollout advances (the stage held long enough with enough requests, or early
//! when the canary is clearly better and `accelerate` is on), counts a failure, or rolls
//! back (a critical failure, or `failure_limit` failures in a row).

use super::{Decision, Phase, RolloutState};
use crate::judge::{Outcome, Verdict};
use crate::spec::{millis, RolloutSpec};

/// The decision on `verdict`, with `state` already counting it (requests of the stage,
/// consecutive failures).
pub fn decide(
    spec: &RolloutSpec,
    state: &RolloutState,
    verdict: &Verdict,
    now_ms: u64,
) -> Decision {
    match verdict.outcome {
        Outcome::Fail => {
            let limit = spec.analysis.failure_limit;
            let summary = verdict.summary();
            if verdict.critical || state.consecutive_failures >= limit {
                let why = if verdict.critical {
                    "critical failure".to_string()
                } else {
                    format!("{limit} failed analyses in a row")
                };
                Decision::RollBack(format!("rolled back ({why}): {summary}"))
            } else {
                let n = state.consecutive_failures;
                Decision::CountFailure(format!("analysis failed ({n} of {limit}): {summary}"))
            }
        }
        // Inconclusive neither counts against the canary nor for it.
        Outcome::Inconclusive => Decision::Stay,
        Outcome::Pass => {
            if state.phase != Phase::Progressing {
                return Decision::Stay;
            }
            let Some(stage) = spec.stages.get(state.stage) else {
                return Decision::Stay;
            };
            let enough = state.stage_canary_requests >= stage.min_requests
                && state.stage_stable_requests >= stage.min_requests;
            let held = now_ms.saturating_sub(state.stage_started_ms) >= millis(stage.hold);
            let next = state.stage + 1;
            if enough && held {
                Decision::EnterStage(next, "analysis passed".into())
            } else if enough && spec.accelerate && verdict.clearly_better {
                Decision::EnterStage(next, "canary clearly better: accelerated".into())
            } else {
                Decision::Stay
            }
        }
    }
}
