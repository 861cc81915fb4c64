//! Blue-green rollouts (seed 002 §4): the candidate is verified at 0% user traffic, then all
//! traffic flips to it at once; the old version stays configured for `keep_old_for`, during
//! which `abort` flips everyone back as fast.
//!
//! A blue-green spec is an ordinary two-stage rollout (derived in `spec::blue_green`): a
//! verification stage at weight 0 and the flip to 100%. Reaching
//! 100% does not end the rollout: it stays `progressing` with `flipped_ms` set until
//! `keep_old_for` has passed (or an operator promotes), then it is `promoted` and the timeline
//! says the old version may be retired. Pure: these functions read the state and return
//! what to do; the machine carries it out.

use super::{pct, Decision, Phase, RolloutState};
use crate::spec::blue_green::options;
use crate::spec::{millis, RolloutSpec};

/// Reaching the last stage of a blue-green spec: the flip's message (the machine records the
/// flip and keeps the rollout going, the old version kept). `None` for a canary spec: the
/// last stage promotes as usual.
pub fn flip(spec: &RolloutSpec, weight_bp: u32, why: &str) -> Option<String> {
    let options = options(spec)?;
    Some(format!(
        "flipped to {} ({why}); old version kept for {}s (abort flips back)",
        pct(weight_bp),
        options.keep_old_for.as_secs()
    ))
}

/// After an analysis window: once `keep_old_for` has passed since the flip (and the rollout
/// is not paused or ended), the rollout is complete.
pub fn after_window(spec: &RolloutSpec, state: &RolloutState, now_ms: u64) -> Decision {
    let (Some(options), Some(flipped)) = (options(spec), state.flipped_ms) else {
        return Decision::Stay;
    };
    if state.phase == Phase::Progressing
        && now_ms.saturating_sub(flipped) >= millis(options.keep_old_for)
    {
        Decision::Retire("old version kept for its time".into())
    } else {
        Decision::Stay
    }
}

/// Whether the rollout has flipped and still keeps the old version.
pub fn keeping_old(state: &RolloutState) -> bool {
    state.flipped_ms.is_some() && !state.phase.is_terminal()
}

/// `/status`'s `blue_green` block (null for a canary rollout).
pub fn status_json(spec: &RolloutSpec, state: &RolloutState, now_ms: u64) -> serde_json::Value {
    let Some(options) = options(spec) else {
        return serde_json::Value::Null;
    };
    let keep_ms = millis(options.keep_old_for);
    serde_json::json!({
        "flipped_ms": state.flipped_ms,
        "keep_old_for_s": options.keep_old_for.as_secs_f64(),
        "old_version_kept": keeping_old(state),
        "old_version_kept_for_s": state.flipped_ms.filter(|_| keeping_old(state))
            .map(|at| keep_ms.saturating_sub(now_ms.saturating_sub(at)) as f64 / 1000.0),
        "old_version_retirable": state.flipped_ms.is_some() && state.phase == Phase::Promoted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{Outcome, Verdict};
    use crate::machine::{Effect, EventKind, Input};

    const BASE: &str = "name: shop\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\n\
                        analysis: {interval: 1s, failure_limit: 2}\n";

    fn spec(extra: &str) -> RolloutSpec {
        RolloutSpec::from_yaml(&format!("{BASE}{extra}")).expect("valid spec")
    }

    fn verdict(outcome: Outcome, n: u64) -> Verdict {
        crate::judge::test_support::verdict_of(outcome, false, false, n, n)
    }

    fn step(spec: &RolloutSpec, s: &RolloutState, input: Input, at: u64) -> RolloutState {
        s.step(spec, input, at).expect("accepted").0
    }

    #[test]
    fn verifies_at_zero_then_flips_at_once_and_completes_after_keep() {
        let spec = spec(
            "strategy: blue_green\nblue_green: {verify_hold: 10s, verify_min_requests: 50, keep_old_for: 60s}\n",
        );
        let (s, effects) = RolloutState::start(&spec, 0);
        assert_eq!(effects[0], Effect::PublishWeight(0));
        // Verification: passes before the hold or with too few requests keep weight 0.
        let s = step(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Pass, 100)),
            5_000,
        );
        assert_eq!(s.weight_bp, 0);
        let (s, e) = s
            .step(&spec, Input::Analysis(verdict(Outcome::Pass, 0)), 10_000)
            .expect("accepted");
        // One flip straight to 100%, no intermediate weight.
        assert_eq!(s.weight_bp, 10_000);
        assert_eq!(
            e.iter()
                .filter(|e| matches!(e, Effect::PublishWeight(_)))
                .collect::<Vec<_>>(),
            [&Effect::PublishWeight(10_000)]
        );
        assert_eq!((s.phase, s.flipped_ms), (Phase::Progressing, Some(10_000)));
        assert!(keeping_old(&s));
        // No stable traffic after the flip: inconclusive windows; still kept before 60 s.
        let s = step(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Inconclusive, 0)),
            69_000,
        );
        assert_eq!(s.phase, Phase::Progressing);
        let (s, e) = s
            .step(
                &spec,
                Input::Analysis(verdict(Outcome::Inconclusive, 0)),
                70_000,
            )
            .expect("accepted");
        assert_eq!((s.phase, s.weight_bp), (Phase::Promoted, 10_000));
        assert!(e.iter().any(|e| matches!(e, Effect::Notify(ev)
            if ev.kind == EventKind::Promoted && ev.message.contains("may be retired"))));
        assert!(!keeping_old(&s));
    }

    #[test]
    fn abort_after_the_flip_flips_back_at_once() {
        let spec = spec("strategy: blue_green\nblue_green: {verify_min_requests: 0}\n");
        let (s, _) = RolloutState::start(&spec, 0);
        let s = step(&spec, &s, Input::Analysis(verdict(Outcome::Pass, 0)), 1_000);
        assert_eq!(s.weight_bp, 10_000);
        let (s, e) = s.step(&spec, Input::Abort, 2_000).expect("accepted");
        assert_eq!((s.phase, s.weight_bp), (Phase::Aborted, 0));
        assert!(e.contains(&Effect::PublishWeight(0)));
    }

    #[test]
    fn failed_verification_rolls_back_without_a_flip() {
        let spec = spec("strategy: blue_green\nblue_green: {verify_min_requests: 0}\n");
        let (mut s, _) = RolloutState::start(&spec, 0);
        for t in 1..=2 {
            s = step(
                &spec,
                &s,
                Input::Analysis(verdict(Outcome::Fail, 100)),
                t * 1_000,
            );
        }
        assert_eq!(
            (s.phase, s.weight_bp, s.flipped_ms),
            (Phase::RolledBack, 0, None)
        );
    }

    #[test]
    fn promote_flips_then_retires_and_pause_keeps_the_old_version() {
        let spec = spec("strategy: blue_green\nblue_green: {keep_old_for: 10s}\n");
        let (s, _) = RolloutState::start(&spec, 0);
        let s = step(&spec, &s, Input::Promote, 1_000);
        assert_eq!((s.weight_bp, s.flipped_ms), (10_000, Some(1_000)));
        let s = step(&spec, &s, Input::Pause, 2_000);
        let s = step(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Inconclusive, 0)),
            60_000,
        );
        assert_eq!(s.phase, Phase::Paused, "paused: the old version is kept");
        let s = step(&spec, &s, Input::Resume, 61_000);
        let s = step(&spec, &s, Input::Promote, 62_000);
        assert_eq!((s.phase, s.weight_bp), (Phase::Promoted, 10_000));
    }
}
