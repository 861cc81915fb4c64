//! The shadow phase (issue 5): before any user is routed to the candidate, the filter copies a
//! sample of requests to it and compares its answers with stable's. The rollout leaves the
//! phase for its first stage only when the agreement rate over the phase reaches the gate and
//! the judge sees no regression of the candidate's own signals (its answers are counted as
//! the canary's); a gate that keeps failing rolls the rollout back, with the reason.
//!
//! Pure: the phase's progress ([`ShadowState`]) and its gate, which updates that progress and
//! returns a [`Decision`] for the machine to carry out.

use serde::{Deserialize, Serialize};

use super::{Decision, Phase};
use crate::judge::{Outcome, Verdict};
use crate::spec::shadow::ShadowSpec;
use crate::stats::ShadowCounts;

/// The shadow phase's progress, kept in the rollout state (and so in `status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowState {
    /// Still shadowing (weight 0); false once the rollout went on to its first stage.
    pub active: bool,
    pub started_ms: u64,
    /// Counters summed over the phase.
    pub counts: ShadowCounts,
    pub gate_failures: u32,
    /// What the gate said last, e.g. `agreement 62.0% < 90%`.
    pub gate: String,
}

impl ShadowState {
    pub fn agreement_pct(&self) -> Option<f64> {
        self.counts.agreement().map(|a| a * 100.0)
    }
}

fn pct1(x: f64) -> String {
    format!("{:.1}%", x)
}

/// One analysis window in the shadow phase: add the window's counters to the phase's, then
/// let the gate decide: go on to the first stage (only while `phase` is progressing), keep
/// shadowing, or count a failure (and roll back at the limit). Weight stays 0 until the gate
/// passes.
pub fn on_window(
    gate: &ShadowSpec,
    shadow: &mut ShadowState,
    phase: Phase,
    verdict: &Verdict,
    window: &ShadowCounts,
    now_ms: u64,
) -> Decision {
    shadow.counts = shadow.counts.plus(window);
    let compared = shadow.counts.compared;
    let agreement = shadow.agreement_pct();
    let held = now_ms.saturating_sub(shadow.started_ms) >= crate::spec::millis(gate.hold);
    let failure = if verdict.outcome == Outcome::Fail {
        Some(format!("the candidate regressed: {}", verdict.summary()))
    } else if compared < gate.min_compared || !held {
        shadow.gate = format!(
            "waiting: {compared} of {} answers compared{}",
            gate.min_compared,
            agreement.map_or(String::new(), |a| format!(", agreement {} so far", pct1(a)))
        );
        return Decision::Stay;
    } else {
        let a = agreement.unwrap_or(0.0);
        (a < gate.min_agreement_pct).then(|| {
            format!(
                "agreement {} < {} over {compared} answers",
                pct1(a),
                pct1(gate.min_agreement_pct)
            )
        })
    };
    match failure {
        None => {
            shadow.gate_failures = 0;
            let a = agreement.unwrap_or(0.0);
            shadow.gate = format!(
                "passed: agreement {} ≥ {} over {compared} answers",
                pct1(a),
                pct1(gate.min_agreement_pct)
            );
            if phase == Phase::Progressing {
                Decision::LeaveShadow(format!("shadow gate {}", shadow.gate))
            } else {
                Decision::Stay
            }
        }
        Some(reason) => {
            shadow.gate_failures = shadow.gate_failures.saturating_add(1);
            shadow.gate = format!("failing: {reason}");
            let (n, limit) = (shadow.gate_failures, gate.failure_limit);
            if n >= limit || verdict.critical {
                shadow.active = false;
                Decision::RollBack(format!(
                    "rolled back in shadow (gate failed {n} times): {reason}"
                ))
            } else {
                Decision::CountFailure(format!("shadow gate failed ({n} of {limit}): {reason}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Effect, Input, RolloutState};
    use crate::spec::RolloutSpec;

    fn spec() -> RolloutSpec {
        RolloutSpec::from_yaml(
            "name: chat\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\n\
             filter: {llm: {}}\n\
             shadow: {copy: {cluster: candidate, sample_bp: 5000}, hold: 10s, min_compared: 100, failure_limit: 2}\n\
             stages: [{weight_pct: 5, hold: 10s, min_requests: 10}, {weight_pct: 100}]\n",
        )
        .expect("valid spec")
    }

    fn verdict(outcome: Outcome) -> Verdict {
        crate::judge::test_support::verdict_of(outcome, false, false, 50, 500)
    }

    fn counts(compared: u64, agree: u64) -> ShadowCounts {
        ShadowCounts {
            requests: compared,
            compared,
            agree,
            ..ShadowCounts::default()
        }
    }

    fn window(
        state: &RolloutState,
        spec: &RolloutSpec,
        outcome: Outcome,
        c: ShadowCounts,
        at_ms: u64,
    ) -> (RolloutState, Vec<Effect>) {
        state
            .step(spec, Input::ShadowWindow(verdict(outcome), c), at_ms)
            .expect("step")
    }

    #[test]
    fn starts_in_shadow_with_weight_zero_and_the_copy_published() {
        let spec = spec();
        let (state, effects) = RolloutState::start(&spec, 0);
        assert_eq!(state.weight_bp, 0);
        assert!(state.in_shadow());
        assert_eq!(effects[0], Effect::PublishWeight(0));
        let config = spec
            .filter_config(state.weight_bp, state.in_shadow())
            .expect("valid");
        let copy = config.rollouts[0].shadow.as_ref().expect("shadow");
        assert_eq!((copy.cluster.as_str(), copy.sample_bp), ("candidate", 5000));
        let later = spec.filter_config(500, false).expect("valid");
        assert!(later.rollouts[0].shadow.is_none());
    }

    #[test]
    fn the_gate_waits_then_passes_into_the_first_stage() {
        let spec = spec();
        let (s0, _) = RolloutState::start(&spec, 0);
        // Enough answers but not held long enough: wait, still weight 0.
        let (s1, e1) = window(&s0, &spec, Outcome::Pass, counts(150, 140), 5_000);
        assert!(s1.in_shadow() && s1.weight_bp == 0 && e1.is_empty());
        assert!(s1
            .shadow
            .as_ref()
            .expect("shadow")
            .gate
            .starts_with("waiting"));
        // Held, 93% agreement over the phase, no regression: first stage.
        let (s2, e2) = window(&s1, &spec, Outcome::Inconclusive, counts(50, 46), 10_000);
        assert!(!s2.in_shadow());
        assert_eq!((s2.stage, s2.weight_bp), (0, 500));
        assert!(e2.contains(&Effect::PublishWeight(500)));
        assert!(s2.config_version > s1.config_version);
        let shadow = s2.shadow.as_ref().expect("kept for status");
        assert_eq!(shadow.counts.compared, 200);
        assert!(shadow.gate.contains("93.0%"), "{}", shadow.gate);
    }

    #[test]
    fn low_agreement_never_routes_users_and_rolls_back_at_the_limit() {
        let spec = spec();
        let (s0, _) = RolloutState::start(&spec, 0);
        let (s1, e1) = window(&s0, &spec, Outcome::Pass, counts(200, 160), 20_000);
        assert!(s1.in_shadow() && s1.weight_bp == 0);
        assert_eq!(s1.shadow.as_ref().expect("shadow").gate_failures, 1);
        assert!(e1.iter().all(|e| !matches!(e, Effect::PublishWeight(_))));
        let (s2, e2) = window(&s1, &spec, Outcome::Pass, counts(100, 80), 21_000);
        assert_eq!((s2.phase, s2.weight_bp), (Phase::RolledBack, 0));
        let message = match e2.last() {
            Some(Effect::Notify(event)) => event.message.clone(),
            other => panic!("no notification: {other:?}"),
        };
        assert!(message.contains("agreement 80.0% < 90.0%"), "{message}");
    }

    #[test]
    fn a_regression_fails_the_gate_even_with_full_agreement() {
        let spec = spec();
        let (s0, _) = RolloutState::start(&spec, 0);
        let (s1, _) = window(&s0, &spec, Outcome::Fail, counts(200, 200), 20_000);
        assert!(s1.in_shadow());
        assert_eq!(s1.shadow.as_ref().expect("shadow").gate_failures, 1);
        // A passing window after it resets the count and goes on.
        let (s2, _) = window(&s1, &spec, Outcome::Pass, counts(10, 10), 21_000);
        assert_eq!(s2.weight_bp, 500);
    }

    #[test]
    fn operator_promote_leaves_shadow_for_the_first_stage() {
        let spec = spec();
        let (s0, _) = RolloutState::start(&spec, 0);
        let (s1, e1) = s0.step(&spec, Input::Promote, 1_000).expect("promote");
        assert!(!s1.in_shadow());
        assert_eq!((s1.stage, s1.weight_bp), (0, 500));
        assert!(e1.contains(&Effect::PublishWeight(500)));
    }
}
