//! Releases and runs: the state records the release its run rolls out. Pure transitions
//! for the spec as loaded ([`Input::SpecLoaded`]), [`Input::Retry`] and [`Input::Finalize`]:
//!
//! - The spec's `release` is the run's: nothing changes (a restart resumes; a rolled-back
//!   release stays rolled back, retried only by an operator).
//! - Another release: the run ends (to the history: rolled back, aborted, finalized, or
//!   superseded if it was still going) and the new release starts at stage 1. Except after
//!   promotion: a promoted release holds 100% until it is finalized, and the new one waits.
//! - Finalize (the operator, or `stable_release` naming the promoted release): weight 0 on
//!   the stable route, which serves the new release now that the subsets are relabelled.
//!
//! Nothing here starts a run past stage 1: a fresh state (a new volume) starts at stage 1
//! too, or finalized at weight 0 if the spec already names its release stable.

use std::collections::VecDeque;
use std::sync::Arc;

use super::history::{RunOutcome, RunRecord};
use super::{pct, shadow, Effect, EventKind, Input, Phase, Refused, RolloutState};
use crate::spec::RolloutSpec;

/// The run number of a state saved before runs were counted.
pub(super) fn first_run() -> u64 {
    1
}

/// Whether the spec's stable release is its release: nothing left to roll out.
pub(super) fn already_stable(spec: &RolloutSpec) -> bool {
    spec.release.is_some() && spec.stable_release == spec.release
}

/// `release v1.3.2 ` to begin a message with, or nothing for an unnamed release.
pub fn release_label(release: &Option<String>) -> String {
    release
        .as_ref()
        .map_or(String::new(), |r| format!("release {r} "))
}

fn name(release: &Option<String>) -> String {
    release
        .clone()
        .unwrap_or_else(|| "the unnamed release".into())
}

impl EventKind {
    /// The events after which a run is over (its end time in the history).
    pub fn ends_a_run(self) -> bool {
        matches!(
            self,
            EventKind::RolledBack
                | EventKind::Aborted
                | EventKind::Finalized
                | EventKind::Superseded
        )
    }
}

impl RolloutState {
    /// A rollout starting at its first stage.
    pub fn start(spec: &RolloutSpec, now_ms: u64) -> (RolloutState, Vec<Effect>) {
        Self::start_run(spec, 1, now_ms, "")
    }

    /// Run `run` of the spec's release at its first stage (`cause` ends the start message);
    /// finalized at weight 0 if the spec's stable release is that release already.
    pub fn start_run(
        spec: &RolloutSpec,
        run: u64,
        now_ms: u64,
        cause: &str,
    ) -> (RolloutState, Vec<Effect>) {
        // A shadow phase first: nobody is routed to the candidate until its gate passes.
        let weight_bp = match spec.shadow {
            Some(_) => 0,
            None => spec.stages.first().map_or(0, |s| s.weight_bp()),
        };
        let mut state = RolloutState {
            rollout: spec.name.clone(),
            release: spec.release.clone(),
            stable_release: spec.stable_release.clone(),
            run,
            phase: Phase::Progressing,
            stage: 0,
            weight_bp,
            stage_started_ms: now_ms,
            stage_canary_requests: 0,
            stage_stable_requests: 0,
            consecutive_failures: 0,
            analyses: 0,
            config_version: 1,
            verdicts: VecDeque::new(),
            timeline: VecDeque::new(),
            shadow: spec.shadow.as_ref().map(|_| shadow::ShadowState {
                active: true,
                started_ms: now_ms,
                ..Default::default()
            }),
            evidence: Arc::default(),
            stages: Vec::new(),
            progress_since_ms: now_ms,
            flipped_ms: None,
        };
        if already_stable(spec) {
            return state.start_finalized(now_ms);
        }
        if spec.shadow.is_none() {
            state.open_stage_totals(0, now_ms);
        }
        let mut effects = vec![Effect::PublishWeight(weight_bp)];
        let label = release_label(&spec.release);
        if let Some(shadow) = &spec.shadow {
            state.record(
                &mut effects,
                now_ms,
                EventKind::Started,
                format!(
                    "{label}started in shadow: {}% of requests copied to cluster {}, weight \
                     0%{cause}",
                    f64::from(shadow.copy.sample_bp) / 100.0,
                    shadow.copy.cluster
                ),
            );
            return (state, effects);
        }
        state.record(
            &mut effects,
            now_ms,
            EventKind::Started,
            format!(
                "{label}started at stage 1 of {}, weight {}{cause}",
                spec.stages.len(),
                pct(weight_bp)
            ),
        );
        (state, effects)
    }

    /// When this run started: its shadow phase or first stage (neither is ever dropped).
    pub fn run_started_ms(&self) -> u64 {
        self.shadow
            .as_ref()
            .map(|s| s.started_ms)
            .or_else(|| self.stages.first().map(|s| s.started_ms))
            .or_else(|| self.timeline.front().map(|e| e.at_ms))
            .unwrap_or(0)
    }

    /// A fresh run whose release the spec already names stable: weight 0, finalized.
    pub(super) fn start_finalized(mut self, now_ms: u64) -> (RolloutState, Vec<Effect>) {
        self.phase = Phase::Finalized;
        self.weight_bp = 0;
        self.shadow = None;
        let mut effects = vec![Effect::PublishWeight(0)];
        let message = format!(
            "{} is the stable release already (stable_release): weight 0, nothing to roll out",
            name(&self.release)
        );
        self.record(&mut effects, now_ms, EventKind::Finalized, message);
        (self, effects)
    }

    /// [`Input::SpecLoaded`], [`Input::Retry`] and [`Input::Finalize`].
    pub(super) fn release_step(
        &mut self,
        spec: &RolloutSpec,
        input: &Input,
        now_ms: u64,
    ) -> Result<Vec<Effect>, Refused> {
        let mut effects = Vec::new();
        match input {
            Input::SpecLoaded => self.spec_loaded(spec, now_ms, &mut effects),
            Input::Retry => {
                if !matches!(self.phase, Phase::RolledBack | Phase::Aborted) {
                    return Err(Refused::NotRolledBack(self.phase));
                }
                let was = self.ending();
                let cause = format!(" (retried by an operator after run {} {was})", self.run);
                self.next_run(spec, now_ms, &cause, &mut effects);
            }
            Input::Finalize => {
                if self.phase != Phase::Promoted {
                    return Err(Refused::NotPromoted(self.describe(spec)));
                }
                self.finalize(spec, now_ms, "by an operator", &mut effects);
            }
            _ => {}
        }
        Ok(effects)
    }

    fn spec_loaded(&mut self, spec: &RolloutSpec, now_ms: u64, effects: &mut Vec<Effect>) {
        let named_stable = spec.stable_release.is_some() && spec.stable_release == self.release;
        if named_stable && self.phase == Phase::Promoted {
            self.finalize(spec, now_ms, "stable_release in the spec names it", effects);
            return;
        }
        if spec.release == self.release {
            if named_stable && !self.phase.is_terminal() {
                let message = format!(
                    "stable_release names {}, which is not promoted yet ({}): it is finalized \
                     once promoted",
                    name(&self.release),
                    self.describe(spec)
                );
                self.note_once(effects, now_ms, EventKind::ReleaseWaiting, message);
            }
            return;
        }
        if self.phase == Phase::Promoted {
            let message = format!(
                "{} waits: {} is promoted and holds {} until it is finalized (relabel the \
                 subsets, then canaryctl finalize {}, or stable_release: {} in the spec)",
                name(&spec.release),
                name(&self.release),
                pct(self.weight_bp),
                self.rollout,
                self.release.as_deref().unwrap_or("…"),
            );
            self.note_once(effects, now_ms, EventKind::ReleaseWaiting, message);
            return;
        }
        let cause = format!(" (a new release; run {} {})", self.run, self.ending());
        self.next_run(spec, now_ms, &cause, effects);
    }

    /// Weight 0 and the run to the history; then the release that waited for it, if any.
    fn finalize(&mut self, spec: &RolloutSpec, now_ms: u64, by: &str, effects: &mut Vec<Effect>) {
        self.phase = Phase::Finalized;
        self.set_weight(effects, 0);
        let message = format!(
            "finalized ({by}): {} is the stable release; weight 0 on the stable route",
            name(&self.release)
        );
        self.record(effects, now_ms, EventKind::Finalized, message);
        let record = RunRecord::of(self, RunOutcome::Finalized, now_ms);
        effects.push(Effect::Archive(Box::new(record)));
        if spec.release != self.release {
            let cause = format!(" (it waited for run {} to be finalized)", self.run);
            self.next_run(spec, now_ms, &cause, effects);
        }
    }

    /// Ends this run (to the history) and starts the spec's release at stage 1.
    fn next_run(
        &mut self,
        spec: &RolloutSpec,
        now_ms: u64,
        cause: &str,
        effects: &mut Vec<Effect>,
    ) {
        if !self.phase.is_terminal() {
            let message = format!(
                "superseded by {} at stage {} ({})",
                name(&spec.release),
                self.stage.saturating_add(1),
                pct(self.weight_bp)
            );
            self.record(effects, now_ms, EventKind::Superseded, message);
        }
        // Finalized in this same step: archived already.
        if !effects
            .iter()
            .any(|e| matches!(e, Effect::Archive(r) if r.run == self.run))
        {
            let record = RunRecord::of(self, RunOutcome::of(self.phase), now_ms);
            effects.push(Effect::Archive(Box::new(record)));
        }
        let run = self.run.saturating_add(1);
        let (mut next, start) = RolloutState::start_run(spec, run, now_ms, cause);
        // The served configuration's version keeps going up from run to run.
        next.config_version = self.config_version.saturating_add(1);
        *self = next;
        effects.extend(start);
    }

    /// `rolled back`, `finalized`, or `superseded`: how this run ends if replaced now.
    fn ending(&self) -> &'static str {
        RunOutcome::of(self.phase).as_str()
    }

    /// e.g. `progressing at stage 2 of 4 (25%)`.
    fn describe(&self, spec: &RolloutSpec) -> String {
        let phase = self.phase.as_str().replace('_', " ");
        match self.phase {
            Phase::Progressing | Phase::Paused => format!(
                "{phase} at stage {} of {} ({})",
                self.stage.saturating_add(1),
                spec.stages.len(),
                pct(self.weight_bp)
            ),
            Phase::Finalized => "finalized already".into(),
            _ => phase,
        }
    }

    /// Records an event unless it is the last one already (the spec is loaded at every
    /// start: a waiting release is said once, not once per restart).
    fn note_once(
        &mut self,
        effects: &mut Vec<Effect>,
        now_ms: u64,
        kind: EventKind,
        message: String,
    ) {
        if self.timeline.back().is_some_and(|e| e.message == message) {
            return;
        }
        self.record(effects, now_ms, kind, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::test_support::verdict_of;
    use crate::judge::Outcome;
    use crate::machine::history::History;
    use crate::machine::tests::run;

    fn spec(release: Option<&str>, stable: Option<&str>) -> RolloutSpec {
        let mut yaml = "name: shop\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\n\
             analysis: {interval: 1s, failure_limit: 2}\n\
             stages:\n  - {weight_pct: 5, hold: 10s, min_requests: 100}\n  \
             - {weight_pct: 50, hold: 10s, min_requests: 100}\n  - {weight_pct: 100}\n"
            .to_string();
        if let Some(r) = release {
            yaml.push_str(&format!("release: {r}\n"));
        }
        if let Some(s) = stable {
            yaml.push_str(&format!("stable_release: {s}\n"));
        }
        RolloutSpec::from_yaml(&yaml).expect("valid spec")
    }

    fn pass(n: u64) -> Input {
        Input::Analysis(verdict_of(Outcome::Pass, false, false, n, n))
    }

    /// Release `v1` at stage 2 (50%), after a passed first stage.
    fn at_stage_2(spec: &RolloutSpec) -> RolloutState {
        let (s, _) = RolloutState::start(spec, 0);
        let (s, _) = run(spec, &s, pass(200), 10_000);
        assert_eq!((s.stage, s.weight_bp), (1, 5_000));
        s
    }

    fn promoted(spec: &RolloutSpec) -> RolloutState {
        let s = at_stage_2(spec);
        let (s, _) = run(spec, &s, pass(200), 20_000);
        assert_eq!((s.phase, s.weight_bp), (Phase::Promoted, 10_000));
        s
    }

    fn rolled_back(spec: &RolloutSpec) -> RolloutState {
        let s = at_stage_2(spec);
        let critical = Input::Analysis(verdict_of(Outcome::Fail, true, false, 10, 10));
        let (s, _) = run(spec, &s, critical, 12_000);
        assert_eq!((s.phase, s.weight_bp), (Phase::RolledBack, 0));
        s
    }

    fn archived(effects: &[Effect]) -> Vec<&RunRecord> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Archive(r) => Some(&**r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_fresh_state_starts_at_stage_1_with_the_spec_release() {
        let v1 = spec(Some("v1"), Some("v0"));
        let (s, effects) = RolloutState::start_run(&v1, 7, 5, "");
        assert_eq!(
            (s.phase, s.stage, s.weight_bp),
            (Phase::Progressing, 0, 500)
        );
        assert_eq!(
            (s.release.as_deref(), s.stable_release.as_deref(), s.run),
            (Some("v1"), Some("v0"), 7)
        );
        assert_eq!(effects[0], Effect::PublishWeight(500));
        assert_eq!(
            s.timeline[0].message,
            "release v1 started at stage 1 of 3, weight 5%"
        );
        // Nothing but stage 1, whatever the saved state would have said: a new volume knows
        // nothing of a promotion, a rollback or a later stage.
        for release in [None, Some("v1"), Some("v9")] {
            let (s, _) = RolloutState::start(&spec(release, None), 0);
            assert_eq!((s.stage, s.weight_bp), (0, 500), "{release:?}");
        }
        // A spec whose release is the stable one already: weight 0, nothing to roll out.
        let stable = spec(Some("v1"), Some("v1"));
        let (s, effects) = RolloutState::start(&stable, 5);
        assert_eq!((s.phase, s.weight_bp), (Phase::Finalized, 0));
        assert_eq!(effects[0], Effect::PublishWeight(0));
        assert!(
            s.timeline[0]
                .message
                .contains("v1 is the stable release already"),
            "{:?}",
            s.timeline
        );
        assert_eq!(s.check(&stable), Ok(()));
    }

    #[test]
    fn the_same_release_after_a_restart_resumes_in_every_phase() {
        let v1 = spec(Some("v1"), None);
        for s in [at_stage_2(&v1), promoted(&v1), rolled_back(&v1)] {
            let (next, effects) = run(&v1, &s, Input::SpecLoaded, 99_000);
            assert_eq!(next, s, "{:?}", s.phase);
            assert!(effects.is_empty(), "{effects:?}");
        }
        // An unnamed release is one release too.
        let unnamed = spec(None, None);
        let s = at_stage_2(&unnamed);
        assert_eq!(run(&unnamed, &s, Input::SpecLoaded, 99_000).0, s);
    }

    #[test]
    fn a_new_release_starts_a_new_run_at_stage_1() {
        let v1 = spec(Some("v1"), None);
        let s = at_stage_2(&v1);
        let v2 = spec(Some("v2"), Some("v0"));
        let (next, effects) = run(&v2, &s, Input::SpecLoaded, 15_000);
        assert_eq!(
            (next.phase, next.stage, next.weight_bp),
            (Phase::Progressing, 0, 500)
        );
        assert_eq!((next.release.as_deref(), next.run), (Some("v2"), 2));
        assert!(next.config_version > s.config_version, "ETags move forward");
        assert_eq!(
            (next.analyses, next.stages.len(), next.verdicts.len()),
            (0, 1, 0)
        );
        assert!(effects.contains(&Effect::PublishWeight(500)));
        let started = effects.iter().find_map(|e| match e {
            Effect::Notify(ev) if ev.kind == EventKind::Started => Some(ev.message.clone()),
            _ => None,
        });
        assert_eq!(
            started.as_deref(),
            Some("release v2 started at stage 1 of 3, weight 5% (a new release; run 1 superseded)")
        );
        let old = archived(&effects);
        assert_eq!(old.len(), 1);
        let old = old[0];
        assert_eq!(
            (old.run, old.release.as_deref(), old.outcome),
            (1, Some("v1"), RunOutcome::Superseded)
        );
        assert_eq!((old.stage, old.weight_bp, old.analyses), (2, 5_000, 1));
        assert_eq!((old.started_ms, old.ended_ms), (0, 15_000));
        assert_eq!(old.stage_totals.len(), 2);
        assert_eq!(old.verdicts.len(), 1);
        assert!(old
            .timeline
            .back()
            .is_some_and(|e| e.message == "superseded by v2 at stage 2 (50%)"));
        // A rolled-back release is followed by a new one the same way.
        let (next, effects) = run(&v2, &rolled_back(&v1), Input::SpecLoaded, 15_000);
        assert_eq!(
            (next.stage, next.run, next.phase),
            (0, 2, Phase::Progressing)
        );
        assert_eq!(archived(&effects)[0].outcome, RunOutcome::RolledBack);
        assert_eq!(
            archived(&effects)[0].ended_ms,
            12_000,
            "when it was rolled back"
        );
        // From unnamed to named: a new run too (the unnamed one may be another version).
        let (next, _) = run(
            &v1,
            &at_stage_2(&spec(None, None)),
            Input::SpecLoaded,
            15_000,
        );
        assert_eq!((next.stage, next.run), (0, 2));
    }

    #[test]
    fn a_rolled_back_release_stays_rolled_back_until_retried() {
        let v1 = spec(Some("v1"), None);
        let s = rolled_back(&v1);
        // Restarted with the same spec, any number of times: still rolled back, weight 0.
        let (s, _) = run(&v1, &s, Input::SpecLoaded, 20_000);
        let (s, _) = run(&v1, &s, Input::SpecLoaded, 30_000);
        assert_eq!((s.phase, s.weight_bp, s.run), (Phase::RolledBack, 0, 1));
        for input in [Input::Resume, Input::Promote, Input::Finalize] {
            assert!(s.step(&v1, input.clone(), 31_000).is_err(), "{input:?}");
        }
        let (s, _) = run(&v1, &s, pass(500), 40_000);
        assert_eq!(s.phase, Phase::RolledBack, "late windows change nothing");
    }

    #[test]
    fn retry_starts_the_release_again_at_stage_1() {
        let v1 = spec(Some("v1"), None);
        let s = rolled_back(&v1);
        let (next, effects) = run(&v1, &s, Input::Retry, 50_000);
        assert_eq!(
            (next.phase, next.stage, next.weight_bp),
            (Phase::Progressing, 0, 500)
        );
        assert_eq!((next.release.as_deref(), next.run), (Some("v1"), 2));
        assert!(
            next.timeline[0]
                .message
                .ends_with("(retried by an operator after run 1 rolled back)"),
            "{:?}",
            next.timeline[0]
        );
        assert!(
            next.evidence.errors.is_none(),
            "a new test, not the failed one"
        );
        let old = archived(&effects);
        assert_eq!(
            (old.len(), old[0].outcome, old[0].run),
            (1, RunOutcome::RolledBack, 1)
        );
        assert!(effects.contains(&Effect::PublishWeight(500)));
        // An aborted release may be retried too.
        let (aborted, _) = run(&v1, &at_stage_2(&v1), Input::Abort, 12_000);
        let (next, effects) = run(&v1, &aborted, Input::Retry, 13_000);
        assert_eq!((next.stage, next.run), (0, 2));
        assert_eq!(archived(&effects)[0].outcome, RunOutcome::Aborted);
        // Only those.
        for s in [at_stage_2(&v1), promoted(&v1)] {
            let refused = s.step(&v1, Input::Retry, 60_000).expect_err("refused");
            assert_eq!(refused, Refused::NotRolledBack(s.phase));
        }
        assert_eq!(
            Refused::NotRolledBack(Phase::Promoted).to_string(),
            "retry runs a rolled-back or aborted release again; this one is promoted"
        );
    }

    #[test]
    fn finalize_from_promoted_returns_the_weight_to_0_and_archives_the_run() {
        let v1 = spec(Some("v1"), Some("v0"));
        let s = promoted(&v1);
        let (next, effects) = run(&v1, &s, Input::Finalize, 30_000);
        assert_eq!(
            (next.phase, next.weight_bp, next.run),
            (Phase::Finalized, 0, 1)
        );
        assert!(effects.contains(&Effect::PublishWeight(0)));
        assert!(next.config_version > s.config_version);
        let old = archived(&effects);
        assert_eq!(old.len(), 1);
        assert_eq!(
            (old[0].outcome, old[0].stage, old[0].weight_bp),
            (RunOutcome::Finalized, 3, 0)
        );
        assert_eq!(old[0].stable_release.as_deref(), Some("v0"));
        assert!(effects.iter().any(|e| matches!(e, Effect::Notify(ev)
            if ev.kind == EventKind::Finalized
                && ev.message == "finalized (by an operator): v1 is the stable release; weight 0 on the stable route")));
        // Finalized: the same spec resumes it as it is; the next release starts stage 1.
        assert_eq!(run(&v1, &next, Input::SpecLoaded, 31_000).0, next);
        let (v2_run, effects) = run(
            &spec(Some("v2"), Some("v1")),
            &next,
            Input::SpecLoaded,
            32_000,
        );
        assert_eq!((v2_run.stage, v2_run.weight_bp, v2_run.run), (0, 500, 2));
        assert_eq!(archived(&effects)[0].outcome, RunOutcome::Finalized);
        assert_eq!(
            archived(&effects)[0].ended_ms,
            30_000,
            "ended when finalized"
        );
    }

    #[test]
    fn finalize_is_refused_unless_promoted() {
        let v1 = spec(Some("v1"), None);
        let refused = at_stage_2(&v1)
            .step(&v1, Input::Finalize, 12_000)
            .expect_err("refused");
        assert_eq!(
            refused.to_string(),
            "finalize needs a promoted release (at 100%); this one is progressing at stage 2 of 3 (50%)"
        );
        let refused = rolled_back(&v1)
            .step(&v1, Input::Finalize, 13_000)
            .expect_err("refused");
        assert_eq!(refused, Refused::NotPromoted("rolled back".into()));
        let (done, _) = run(&v1, &promoted(&v1), Input::Finalize, 30_000);
        let refused = done
            .step(&v1, Input::Finalize, 31_000)
            .expect_err("refused");
        assert_eq!(refused, Refused::NotPromoted("finalized already".into()));
    }

    #[test]
    fn stable_release_naming_the_promoted_release_finalizes_it() {
        let s = promoted(&spec(Some("v1"), Some("v0")));
        let relabelled = spec(Some("v1"), Some("v1"));
        let (next, effects) = run(&relabelled, &s, Input::SpecLoaded, 40_000);
        assert_eq!((next.phase, next.weight_bp), (Phase::Finalized, 0));
        assert_eq!(archived(&effects)[0].outcome, RunOutcome::Finalized);
        assert!(next
            .timeline
            .back()
            .is_some_and(|e| e.message.contains("stable_release in the spec")));
        // Before promotion it is only said, once: finalize waits for the promotion.
        let early = at_stage_2(&spec(Some("v1"), Some("v0")));
        let (next, effects) = run(&relabelled, &early, Input::SpecLoaded, 12_000);
        assert_eq!((next.phase, next.weight_bp), (Phase::Progressing, 5_000));
        assert_eq!(effects.len(), 1);
        let (again, effects) = run(&relabelled, &next, Input::SpecLoaded, 13_000);
        assert_eq!((again, effects.len()), (next, 0));
    }

    #[test]
    fn a_new_release_waits_for_the_promoted_one_to_be_finalized() {
        let s = promoted(&spec(Some("v1"), Some("v0")));
        let v2 = spec(Some("v2"), Some("v0"));
        let (held, effects) = run(&v2, &s, Input::SpecLoaded, 40_000);
        assert_eq!(
            (held.phase, held.weight_bp, held.run),
            (Phase::Promoted, 10_000, 1)
        );
        assert!(archived(&effects).is_empty());
        let Some(Effect::Notify(note)) = effects.first() else {
            panic!("notified: {effects:?}");
        };
        assert_eq!(note.kind, EventKind::ReleaseWaiting);
        assert!(
            note.message
                .starts_with("v2 waits: v1 is promoted and holds 100%"),
            "{}",
            note.message
        );
        // Said once, however often the controller restarts.
        let (again, effects) = run(&v2, &held, Input::SpecLoaded, 41_000);
        assert_eq!((&again, effects.len()), (&held, 0));
        // Finalized: v1 to the history, v2 at stage 1 in the same step.
        let (next, effects) = run(&v2, &held, Input::Finalize, 50_000);
        assert_eq!(
            (
                next.release.as_deref(),
                next.run,
                next.stage,
                next.weight_bp
            ),
            (Some("v2"), 2, 0, 500)
        );
        let old = archived(&effects);
        assert_eq!(
            (old.len(), old[0].outcome, old[0].release.as_deref()),
            (1, RunOutcome::Finalized, Some("v1"))
        );
        assert!(next.timeline[0]
            .message
            .ends_with("(it waited for run 1 to be finalized)"));
        // The same through the spec: stable_release v1 and release v2 at once.
        let (next, effects) = run(
            &spec(Some("v2"), Some("v1")),
            &held,
            Input::SpecLoaded,
            50_000,
        );
        assert_eq!((next.run, next.stage), (2, 0));
        assert_eq!(archived(&effects).len(), 1);
    }

    #[test]
    fn a_state_of_another_release_is_checked_only_for_what_comes_next() {
        let four = spec(Some("v1"), None);
        let mut s = promoted(&four);
        s.stage = 3; // as if the old spec had four stages
        let v2 = spec(Some("v2"), None);
        assert_eq!(s.check(&v2), Ok(()), "it ends or holds under the new spec");
        assert_eq!(s.check(&four).expect_err("same release")[0].field, "stage");
        // A shadow phase the new spec does not have: fine for a run it replaces at once,
        // not for one it holds (still served as it is).
        let mut shadowing = at_stage_2(&four);
        shadowing.shadow = Some(super::super::shadow::ShadowState {
            active: true,
            ..Default::default()
        });
        assert_eq!(shadowing.check(&v2), Ok(()));
        shadowing.phase = Phase::Promoted;
        assert_eq!(
            shadowing.check(&v2).expect_err("held")[0].field,
            "shadow.active"
        );
    }

    #[test]
    fn a_state_saved_before_releases_loads_as_run_1_of_an_unnamed_release() {
        let (s, _) = RolloutState::start(&spec(None, None), 0);
        let mut json = serde_json::to_value(&s).expect("json");
        let map = json.as_object_mut().expect("object");
        map.remove("run");
        assert!(!map.contains_key("release"), "unnamed is not written");
        let old: RolloutState = serde_json::from_value(json).expect("loads");
        assert_eq!((old.run, old.release), (1, None));
    }

    #[test]
    fn the_history_keeps_the_last_runs_once_each() {
        let v1 = spec(Some("v1"), None);
        let mut history = History::default();
        assert_eq!(history.next_run(), 1);
        let mut s = rolled_back(&v1);
        for i in 0..25u64 {
            let (next, effects) = run(&v1, &s, Input::Retry, 100_000 + i * 1_000);
            for r in archived(&effects) {
                history.record(r.clone());
                history.record(r.clone()); // archived again after a crash: one entry
            }
            let critical = Input::Analysis(verdict_of(Outcome::Fail, true, false, 10, 10));
            s = run(&v1, &next, critical, 100_500 + i * 1_000).0;
        }
        assert_eq!(history.runs.len(), 20);
        assert_eq!(history.runs.front().map(|r| r.run), Some(6));
        assert_eq!(history.runs.back().map(|r| r.run), Some(25));
        assert_eq!(history.next_run(), 26);
    }

    #[test]
    fn the_history_reads_for_people() {
        let v1 = spec(Some("v1"), Some("v0"));
        let (done, effects) = run(&v1, &promoted(&v1), Input::Finalize, 30_000);
        let mut history = History::default();
        for r in archived(&effects) {
            history.record(r.clone());
        }
        let (current, _) = run(
            &spec(Some("v2"), Some("v1")),
            &done,
            Input::SpecLoaded,
            40_000,
        );
        let view = super::super::history::HistoryView::of(&current, &history);
        let back: super::super::history::HistoryView =
            serde_json::from_str(&serde_json::to_string(&view).expect("json")).expect("view");
        assert_eq!(back, view);
        let text = view.render(60_000);
        for want in [
            "rollout shop: run 2 (release v2 over v1) progressing at stage 1, weight 5%, since 20s ago",
            "run 1 (release v1 over v0): finalized at stage 3 (0%), 2 analyses; 60s ago → 30s ago (30s)",
            "  stage 1 at 5%: windows 1 passed, 0 failed, 0 inconclusive; canary 200 requests (0 errors), stable 200 (0 errors)",
            "  last verdicts:",
            "stage 2: Pass: Pass",
            "release v1 started at stage 1 of 3, weight 5%",
            "promoted to 100% (analysis passed)",
            "finalized (by an operator): v1 is the stable release",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }
}
