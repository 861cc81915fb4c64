//! Property tests of the state machine (proptest): whatever the verdicts and commands, and in
//! whatever order, a rollout never leaves its spec's stages and a rollback always publishes
//! weight 0. With releases changing in the spec, retries and finalizes among them: a run only
//! ever starts at stage 1, and a promoted run's 100% gives way to nothing but a finalize.

use proptest::prelude::*;

use super::{Effect, Input, Phase, RolloutState};
use crate::judge::test_support::verdict_of;
use crate::judge::Outcome;
use crate::spec::RolloutSpec;

fn spec() -> RolloutSpec {
    spec_of("")
}

fn spec_of(release: &str) -> RolloutSpec {
    RolloutSpec::from_yaml(&format!(
        "name: shop\n{release}sources: {{envoy_admin: [\"http://127.0.0.1:1\"]}}\n\
         analysis: {{interval: 1s, failure_limit: 2, progress_deadline: 30s}}\n\
         stages:\n  - {{weight_pct: 5, hold: 10s, min_requests: 100}}\n  \
         - {{weight_pct: 50, hold: 10s, min_requests: 100}}\n  - {{weight_pct: 100}}\n",
    ))
    .expect("a valid spec")
}

fn input() -> impl Strategy<Value = Input> {
    let outcome = prop_oneof![
        Just(Outcome::Pass),
        Just(Outcome::Fail),
        Just(Outcome::Inconclusive)
    ];
    prop_oneof![
        6 => (outcome, any::<bool>(), any::<bool>(), 0u64..400).prop_map(
            |(outcome, critical, better, n)| Input::Analysis(verdict_of(outcome, critical, better, n, n))
        ),
        1 => Just(Input::Promote),
        1 => Just(Input::Pause),
        1 => Just(Input::Resume),
        1 => Just(Input::Abort),
        1 => Just(Input::Retry),
        1 => Just(Input::Finalize),
    ]
}

proptest! {
    #[test]
    fn runs_start_at_stage_1_and_a_promotion_holds_until_finalized(
        steps in proptest::collection::vec((input(), 0usize..4, 0u64..20_000), 1..80)
    ) {
        // The spec the controller runs under changes now and then: its release, its stable one.
        let specs = [
            spec_of("release: v1\n"),
            spec_of("release: v2\n"),
            spec_of("release: v2\nstable_release: v1\n"),
            spec_of("release: v2\nstable_release: v2\n"),
        ];
        let mut spec = &specs[0];
        let (mut state, _) = RolloutState::start(spec, 0);
        let mut now = 0u64;
        for (input, which, wait_ms) in steps {
            now += wait_ms;
            let input = if which == 0 { input } else {
                spec = &specs[which];
                Input::SpecLoaded
            };
            let Ok((next, effects)) = state.step(spec, input.clone(), now) else {
                continue;
            };
            prop_assert!(next.stage < spec.stages.len());
            if next.run != state.run {
                prop_assert_eq!(next.run, state.run + 1);
                prop_assert!(next.stage == 0 && next.analyses == 0, "a new run at stage {}", next.stage);
                prop_assert!(next.config_version > state.config_version);
                prop_assert!(effects.iter().any(|e| matches!(e, Effect::Archive(r) if r.run == state.run)));
            }
            let zero = matches!(next.phase, Phase::RolledBack | Phase::Aborted | Phase::Finalized);
            prop_assert!(!zero || next.weight_bp == 0, "{:?} at {}", next.phase, next.weight_bp);
            if state.phase == Phase::Promoted && next.phase != Phase::Promoted {
                let finalized = effects.iter().any(|e| matches!(e, Effect::Archive(r)
                    if r.run == state.run && r.outcome == super::history::RunOutcome::Finalized));
                prop_assert!(finalized, "left the promotion without a finalize: {input:?}");
            }
            state = next;
        }
    }

    #[test]
    fn a_rollout_stays_in_its_stages_and_a_rollback_publishes_weight_0(
        steps in proptest::collection::vec((input(), 0u64..20_000), 1..60)
    ) {
        let spec = spec();
        let (mut state, _) = RolloutState::start(&spec, 0);
        let mut now = 0u64;
        for (input, wait_ms) in steps {
            now += wait_ms;
            let Ok((next, effects)) = state.step(&spec, input, now) else {
                continue; // refused: the state is unchanged
            };
            prop_assert!(next.stage < spec.stages.len(), "stage {}", next.stage);
            prop_assert!(next.weight_bp <= 10_000);
            // The weight is the stage's, or 0 once rolled back or aborted.
            let stage_weight = spec.stages[next.stage].weight_bp();
            prop_assert!(next.weight_bp == stage_weight || next.weight_bp == 0, "{} at stage {}", next.weight_bp, next.stage);
            let ended_at_zero = matches!(next.phase, Phase::RolledBack | Phase::Aborted | Phase::Finalized);
            if ended_at_zero && !matches!(state.phase, Phase::RolledBack | Phase::Aborted | Phase::Finalized) {
                prop_assert_eq!(next.weight_bp, 0);
                if state.weight_bp != 0 {
                    prop_assert!(effects.contains(&Effect::PublishWeight(0)), "{effects:?}");
                }
            }
            state = next;
        }
    }
}
