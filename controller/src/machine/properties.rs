//! Property tests of the state machine (proptest): whatever the verdicts and commands, and in
//! whatever order, a rollout never leaves its spec's stages and a rollback always publishes
//! weight 0.

use proptest::prelude::*;

use super::{Effect, Input, Phase, RolloutState};
use crate::judge::test_support::verdict_of;
use crate::judge::Outcome;
use crate::spec::RolloutSpec;

fn spec() -> RolloutSpec {
    RolloutSpec::from_yaml(
        "name: shop\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\n\
         analysis: {interval: 1s, failure_limit: 2, progress_deadline: 30s}\n\
         stages:\n  - {weight_pct: 5, hold: 10s, min_requests: 100}\n  \
         - {weight_pct: 50, hold: 10s, min_requests: 100}\n  - {weight_pct: 100}\n",
    )
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
    ]
}

proptest! {
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
            let ended_at_zero = matches!(next.phase, Phase::RolledBack | Phase::Aborted);
            if ended_at_zero && !matches!(state.phase, Phase::RolledBack | Phase::Aborted) {
                prop_assert_eq!(next.weight_bp, 0);
                if state.weight_bp != 0 {
                    prop_assert!(effects.contains(&Effect::PublishWeight(0)), "{effects:?}");
                }
            }
            state = next;
        }
    }
}
