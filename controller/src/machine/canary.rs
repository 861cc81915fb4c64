//! The canary strategy: stages of increasing weight. After each judged window it decides
//! whether the rollout advances (the stage held long enough with enough requests, or early
//! when the canary is clearly better and `accelerate` is on), counts a failure, rolls back
//! (a decisive failure, or `failure_limit` failures in a row), or pauses or rolls back a
//! stage that has made no progress past its deadline.

use super::{pct, Decision, Phase, RolloutState};
use crate::judge::{Outcome, Verdict};
use crate::spec::{millis, DeadlineAction, RolloutSpec};

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
        Outcome::Inconclusive => past_deadline(spec, state, now_ms),
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
                past_deadline(spec, state, now_ms)
            }
        }
    }
}

/// A stage still progressing `analysis.progress_deadline` after its hold (or after the last
/// resume, if later) pauses or rolls back, as the spec says, and says why.
fn past_deadline(spec: &RolloutSpec, state: &RolloutState, now_ms: u64) -> Decision {
    let (Some(deadline), Some(stage)) = (
        spec.analysis.progress_deadline,
        spec.stages.get(state.stage),
    ) else {
        return Decision::Stay;
    };
    if state.phase != Phase::Progressing {
        return Decision::Stay;
    }
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let held_at = state.stage_started_ms.saturating_add(ms(stage.hold));
    let due = held_at
        .max(state.progress_since_ms)
        .saturating_add(ms(deadline));
    if now_ms < due {
        return Decision::Stay;
    }
    let totals = state.stages.last();
    let message = format!(
        "progress deadline: stage {} of {} ({}) has not advanced {} past its hold: canary {} \
         and stable {} requests of the {} each it needs; {} of {} windows passed, {} \
         inconclusive",
        state.stage + 1,
        spec.stages.len(),
        pct(state.weight_bp),
        humantime::format_duration(deadline),
        state.stage_canary_requests,
        state.stage_stable_requests,
        stage.min_requests,
        totals.map_or(0, |t| t.passed),
        totals.map_or(0, |t| {
            t.passed
                .saturating_add(t.failed)
                .saturating_add(t.inconclusive)
        }),
        totals.map_or(0, |t| t.inconclusive),
    );
    match spec.analysis.on_progress_deadline {
        DeadlineAction::Pause => Decision::Pause(format!("paused ({message})")),
        DeadlineAction::RollBack => Decision::RollBack(format!("rolled back ({message})")),
    }
}
