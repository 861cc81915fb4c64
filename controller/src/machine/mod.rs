//! The rollout state machine: pure transitions. `step(spec, state, input, now)` returns the
//! next state and the effects to carry out (publish a weight, notify). No I/O here. Only this
//! module changes a [`RolloutState`]. The strategies read it and return a
//! [`Decision`]: [`canary`] (stages of increasing weight), [`blue_green`] (verify at 0%, one
//! flip, the old version kept) and [`shadow`] (the shadow phase's gate before the first
//! stage). [`quota`] is the quota sentinel, a second small machine over the same windows.
//! `release` starts runs: a new release in the spec, a retry, finalize after promotion;
//! [`history`] keeps the ended runs. May import `spec`, `stats` and `judge`; never `server`.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::judge::{Evidence, Outcome, Verdict};
use crate::spec::RolloutSpec;
use crate::stats::ShadowCounts;

pub mod blue_green;
pub mod canary;
mod check;
pub mod history;
#[cfg(test)]
mod properties;
pub mod quota;
mod release;
pub mod shadow;
mod totals;

pub use check::StateMismatch;
pub use history::{History, RunRecord};
pub use release::release_label;
pub use totals::StageTotals;

/// Verdicts and events kept in the state (and so in `status`).
const KEEP_VERDICTS: usize = 10;
const KEEP_EVENTS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Progressing,
    Paused,
    /// Terminal: the canary serves 100%.
    Promoted,
    /// Terminal: the judge rolled back (weight 0).
    RolledBack,
    /// Terminal: an operator aborted (weight 0).
    Aborted,
    /// Terminal: the promoted release is stable now (the subsets relabelled): weight 0.
    Finalized,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Progressing,
        Phase::Paused,
        Phase::Promoted,
        Phase::RolledBack,
        Phase::Aborted,
        Phase::Finalized,
    ];

    /// The name used in `/status` (serde) and as the `/metrics` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
            Phase::Finalized => "finalized",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, Phase::Progressing | Phase::Paused)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub kind: EventKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Started,
    StageAdvanced,
    AnalysisFailed,
    Paused,
    Resumed,
    RolledBack,
    Promoted,
    Aborted,
    Finalized,
    /// A run ended by a new release (or a retry) before it finished.
    Superseded,
    /// A new release waits for the promoted one to be finalized.
    ReleaseWaiting,
}

impl EventKind {
    /// Whether webhooks hear about it: stage changes, pause, rollback, promotion.
    pub fn notifies(self) -> bool {
        !matches!(self, EventKind::AnalysisFailed)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictRecord {
    pub at_ms: u64,
    pub stage: usize,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub rollout: String,
    /// The release this run rolls out (the spec's `release`; `None`: unnamed), the stable
    /// release it started against, and which run of the rollout it is (1, 2, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_release: Option<String>,
    #[serde(default = "release::first_run")]
    pub run: u64,
    pub phase: Phase,
    pub stage: usize,
    pub weight_bp: u32,
    pub stage_started_ms: u64,
    /// Requests each version served during the current stage (from analysis windows).
    pub stage_canary_requests: u64,
    pub stage_stable_requests: u64,
    pub consecutive_failures: u32,
    /// Analyses judged so far, over the whole rollout.
    #[serde(default)]
    pub analyses: u64,
    /// Bumped on every weight change: the filter config's version (ETag).
    pub config_version: u64,
    pub verdicts: VecDeque<VerdictRecord>,
    pub timeline: VecDeque<Event>,
    /// The shadow phase, for specs that start with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<shadow::ShadowState>,
    /// The current stage's evidence for the request checks' sequential tests: carried from
    /// window to window, started anew with each stage, and saved with the state so that a
    /// restart does not start the test over (which would spend its error budget again).
    /// Shared, not copied, by the state's copies (every step starts from one).
    #[serde(default)]
    pub evidence: Arc<Evidence>,
    /// Every stage entered, with its totals: `/status` keeps only the last few verdicts.
    #[serde(default)]
    pub stages: Vec<StageTotals>,
    /// Since when the current stage's progress deadline counts: its start, or the last
    /// resume.
    #[serde(default)]
    pub progress_since_ms: u64,
    /// Blue-green: when all traffic flipped to the new version (the old one is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flipped_ms: Option<u64>,
}

/// What happens to a rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The judge's verdict on the last window.
    Analysis(Verdict),
    /// The same, with the window's shadow counters (specs with a shadow phase).
    ShadowWindow(Verdict, ShadowCounts),
    /// Operator: go to the next stage now.
    Promote,
    Pause,
    Resume,
    Abort,
    /// The spec as loaded (at start, or edited): a new `release` starts a new run, a
    /// `stable_release` naming the promoted release finalizes it (see [`release`]).
    SpecLoaded,
    /// Operator: run a rolled-back (or aborted) release again from stage 1.
    Retry,
    /// Operator: the promoted release is stable now: weight 0 on the stable route.
    Finalize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the rollout has ended ({0:?})")]
    Ended(Phase),
    #[error("the rollout is not paused")]
    NotPaused,
    #[error("the rollout is already paused")]
    AlreadyPaused,
    #[error("retry runs a rolled-back or aborted release again; this one is {}", .0.as_str())]
    NotRolledBack(Phase),
    #[error("finalize needs a promoted release (at 100%); this one is {0}")]
    NotPromoted(String),
}

/// What a strategy decided about a window or a command; [`RolloutState`] carries it out.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing changes.
    Stay,
    /// A failed analysis below the limit: recorded in the timeline, not notified.
    CountFailure(String),
    /// Weight 0, rolled back, with this message.
    RollBack(String),
    /// Go to this stage (the last one promotes, or flips a blue-green rollout), and why.
    EnterStage(usize, String),
    /// End the shadow phase for the first stage, and why.
    LeaveShadow(String),
    /// Blue-green: the old version's keep time is over (or an operator promoted); why.
    Retire(String),
    /// Pause, notified, with this message (a stage past its progress deadline).
    Pause(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Serve this weight to the filters.
    PublishWeight(u32),
    Notify(Event),
    /// Keep this ended run in the history (saved before the state that follows it).
    Archive(Box<RunRecord>),
}

impl RolloutState {
    /// Whether the rollout is in its shadow phase (weight 0, copies to the candidate).
    pub fn in_shadow(&self) -> bool {
        self.shadow.as_ref().is_some_and(|s| s.active)
    }

    fn record(&mut self, effects: &mut Vec<Effect>, at_ms: u64, kind: EventKind, message: String) {
        let event = Event {
            at_ms,
            kind,
            message,
        };
        if kind.notifies() {
            effects.push(Effect::Notify(event.clone()));
        }
        self.timeline.push_back(event);
        while self.timeline.len() > KEEP_EVENTS {
            self.timeline.pop_front();
        }
    }

    fn set_weight(&mut self, effects: &mut Vec<Effect>, weight_bp: u32) {
        if weight_bp != self.weight_bp {
            self.weight_bp = weight_bp;
            self.config_version = self.config_version.saturating_add(1);
            effects.push(Effect::PublishWeight(weight_bp));
        }
    }

    fn enter_stage(
        &mut self,
        spec: &RolloutSpec,
        effects: &mut Vec<Effect>,
        stage: usize,
        now_ms: u64,
        why: &str,
    ) {
        let Some(next) = spec.stages.get(stage) else {
            return;
        };
        self.stage = stage;
        self.stage_started_ms = now_ms;
        self.stage_canary_requests = 0;
        self.stage_stable_requests = 0;
        self.consecutive_failures = 0;
        self.progress_since_ms = now_ms;
        // A new stage, a new test over the stage: the last stage's evidence was about
        // another weight (the tests over the whole rollout go on).
        self.evidence = Arc::new(self.evidence.next_stage());
        self.set_weight(effects, next.weight_bp());
        self.open_stage_totals(stage, now_ms);
        if stage + 1 < spec.stages.len() {
            let message = format!(
                "stage {} of {}: weight {} ({why})",
                stage + 1,
                spec.stages.len(),
                pct(self.weight_bp)
            );
            self.record(effects, now_ms, EventKind::StageAdvanced, message);
        } else if let Some(message) = blue_green::flip(spec, self.weight_bp, why) {
            // Blue-green: complete only after the old version's keep time.
            self.flipped_ms = Some(now_ms);
            self.record(effects, now_ms, EventKind::StageAdvanced, message);
        } else {
            self.phase = Phase::Promoted;
            let message = format!("promoted to {} ({why})", pct(self.weight_bp));
            self.record(effects, now_ms, EventKind::Promoted, message);
        }
    }

    /// Closes the last stage's totals and opens the next.
    fn open_stage_totals(&mut self, stage: usize, now_ms: u64) {
        if let Some(last) = self.stages.last_mut() {
            last.ended_ms.get_or_insert(now_ms);
        }
        self.stages.push(StageTotals {
            stage,
            weight_bp: self.weight_bp,
            started_ms: now_ms,
            ..StageTotals::default()
        });
    }

    fn roll_back(
        &mut self,
        effects: &mut Vec<Effect>,
        now_ms: u64,
        phase: Phase,
        kind: EventKind,
        message: String,
    ) {
        self.phase = phase;
        self.set_weight(effects, 0);
        self.record(effects, now_ms, kind, message);
    }

    /// Carries out a strategy's decision.
    fn carry_out(
        &mut self,
        spec: &RolloutSpec,
        decision: Decision,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) {
        match decision {
            Decision::Stay => {}
            Decision::CountFailure(message) => {
                self.record(effects, now_ms, EventKind::AnalysisFailed, message)
            }
            Decision::RollBack(message) => self.roll_back(
                effects,
                now_ms,
                Phase::RolledBack,
                EventKind::RolledBack,
                message,
            ),
            Decision::EnterStage(stage, why) => {
                self.enter_stage(spec, effects, stage, now_ms, &why)
            }
            Decision::LeaveShadow(why) => {
                if let Some(shadow) = self.shadow.as_mut() {
                    shadow.active = false;
                }
                // The served configuration changes (no shadow) even if the weight did not.
                self.config_version = self.config_version.saturating_add(1);
                self.enter_stage(spec, effects, 0, now_ms, &why);
            }
            Decision::Retire(why) => {
                self.phase = Phase::Promoted;
                let message = format!("promoted ({why}); the old version may be retired");
                self.record(effects, now_ms, EventKind::Promoted, message);
            }
            Decision::Pause(message) => {
                self.phase = Phase::Paused;
                self.record(effects, now_ms, EventKind::Paused, message);
            }
        }
    }

    /// The next state for `input` at `now_ms`, and what to do about it.
    pub fn step(
        &self,
        spec: &RolloutSpec,
        input: Input,
        now_ms: u64,
    ) -> Result<(RolloutState, Vec<Effect>), Refused> {
        let mut next = self.clone();
        let effects = next.advance(spec, input, now_ms)?;
        Ok((next, effects))
    }

    /// [`RolloutState::step`] in place, for a caller that keeps no copy of the state before
    /// it (a simulation of thousands of windows): a refused input leaves the state as it was.
    pub fn advance(
        &mut self,
        spec: &RolloutSpec,
        input: Input,
        now_ms: u64,
    ) -> Result<Vec<Effect>, Refused> {
        if matches!(input, Input::SpecLoaded | Input::Retry | Input::Finalize) {
            return self.release_step(spec, &input, now_ms);
        }
        let mut effects = Vec::new();
        if self.phase.is_terminal() {
            return match input {
                // Late verdicts after the end change nothing.
                Input::Analysis(_) | Input::ShadowWindow(..) => Ok(effects),
                _ => Err(Refused::Ended(self.phase)),
            };
        }
        match input {
            Input::Analysis(verdict) if self.in_shadow() => self.shadow_window(
                spec,
                &verdict,
                &ShadowCounts::default(),
                now_ms,
                &mut effects,
            ),
            Input::ShadowWindow(verdict, counts) if self.in_shadow() => {
                self.shadow_window(spec, &verdict, &counts, now_ms, &mut effects)
            }
            Input::Analysis(mut verdict) | Input::ShadowWindow(mut verdict, _) => {
                self.evidence = std::mem::take(&mut verdict.evidence);
                self.count_verdict(&verdict);
                let decision = canary::decide(spec, self, &verdict, now_ms);
                self.keep_verdict(verdict, now_ms);
                self.carry_out(spec, decision, now_ms, &mut effects);
                let decision = blue_green::after_window(spec, self, now_ms);
                self.carry_out(spec, decision, now_ms, &mut effects);
            }
            Input::Promote if blue_green::keeping_old(self) => self.carry_out(
                spec,
                Decision::Retire("promoted by an operator".into()),
                now_ms,
                &mut effects,
            ),
            Input::Promote if self.in_shadow() => {
                self.phase = Phase::Progressing;
                let decision = Decision::LeaveShadow("shadow ended by an operator".into());
                self.carry_out(spec, decision, now_ms, &mut effects);
            }
            Input::Promote => {
                self.phase = Phase::Progressing;
                let decision =
                    Decision::EnterStage(self.stage + 1, "promoted by an operator".into());
                self.carry_out(spec, decision, now_ms, &mut effects);
            }
            Input::Pause => {
                if self.phase == Phase::Paused {
                    return Err(Refused::AlreadyPaused);
                }
                self.phase = Phase::Paused;
                let message = format!("paused at {}", pct(self.weight_bp));
                self.record(&mut effects, now_ms, EventKind::Paused, message);
            }
            Input::Resume => {
                if self.phase != Phase::Paused {
                    return Err(Refused::NotPaused);
                }
                self.phase = Phase::Progressing;
                self.progress_since_ms = now_ms;
                let message = format!("resumed at {}", pct(self.weight_bp));
                self.record(&mut effects, now_ms, EventKind::Resumed, message);
            }
            Input::Abort => {
                let message = if blue_green::keeping_old(self) {
                    "aborted by an operator: flipped back to the old version, weight 0".into()
                } else {
                    "aborted by an operator: weight 0".into()
                };
                self.roll_back(
                    &mut effects,
                    now_ms,
                    Phase::Aborted,
                    EventKind::Aborted,
                    message,
                )
            }
            Input::SpecLoaded | Input::Retry | Input::Finalize => {} // release_step, above
        }
        Ok(effects)
    }

    /// A window in the shadow phase: the shadow gate decides.
    fn shadow_window(
        &mut self,
        spec: &RolloutSpec,
        verdict: &Verdict,
        counts: &ShadowCounts,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) {
        self.analyses = self.analyses.saturating_add(1);
        let phase = self.phase;
        let decision = match (&spec.shadow, self.shadow.as_mut()) {
            (Some(gate), Some(progress)) => {
                shadow::on_window(gate, progress, phase, verdict, counts, now_ms)
            }
            _ => Decision::Stay,
        };
        self.carry_out(spec, decision, now_ms, effects);
    }

    /// Counts a judged window: analyses, the stage's requests and totals, consecutive
    /// failures.
    fn count_verdict(&mut self, verdict: &Verdict) {
        self.analyses = self.analyses.saturating_add(1);
        self.stage_canary_requests = self
            .stage_canary_requests
            .saturating_add(verdict.canary_requests);
        self.stage_stable_requests = self
            .stage_stable_requests
            .saturating_add(verdict.stable_requests);
        match verdict.outcome {
            Outcome::Fail => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1)
            }
            Outcome::Pass => self.consecutive_failures = 0,
            Outcome::Inconclusive => {}
        }
        if let Some(totals) = self.stages.last_mut() {
            totals.count(verdict);
        }
    }

    /// Keeps the verdict for `status` (the last few).
    fn keep_verdict(&mut self, verdict: Verdict, now_ms: u64) {
        self.verdicts.push_back(VerdictRecord {
            at_ms: now_ms,
            stage: self.stage,
            verdict,
        });
        while self.verdicts.len() > KEEP_VERDICTS {
            self.verdicts.pop_front();
        }
    }
}

pub fn pct(weight_bp: u32) -> String {
    format!("{}%", f64::from(weight_bp) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(accelerate: bool) -> RolloutSpec {
        let yaml = format!(
            "name: shop\naccelerate: {accelerate}\nsources: {{envoy_admin: [\"http://127.0.0.1:1\"]}}\n\
             analysis: {{interval: 1s, failure_limit: 2}}\n\
             stages:\n  - {{weight_pct: 5, hold: 10s, min_requests: 100}}\n  - {{weight_pct: 50, hold: 10s, min_requests: 100}}\n  - {{weight_pct: 100}}\n"
        );
        RolloutSpec::from_yaml(&yaml).expect("valid spec")
    }

    fn verdict(outcome: Outcome, critical: bool, clearly_better: bool, n: u64) -> Verdict {
        crate::judge::test_support::verdict_of(outcome, critical, clearly_better, n, n)
    }

    /// One step that must be accepted (also used by the `release` tests).
    pub(super) fn run(
        spec: &RolloutSpec,
        state: &RolloutState,
        input: Input,
        at: u64,
    ) -> (RolloutState, Vec<Effect>) {
        state.step(spec, input, at).expect("accepted")
    }

    #[test]
    fn passes_advance_only_after_hold_and_enough_requests() {
        let spec = spec(false);
        let (s, effects) = RolloutState::start(&spec, 0);
        assert_eq!(effects[0], Effect::PublishWeight(500));
        let (s, e) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Pass, false, false, 200)),
            5_000,
        );
        assert_eq!((s.stage, e.len()), (0, 0), "hold not over");
        let (s, e) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Pass, false, false, 0)),
            10_000,
        );
        assert_eq!(s.stage, 1);
        assert_eq!(s.weight_bp, 5_000);
        assert!(e.contains(&Effect::PublishWeight(5_000)));
        // Held long enough but too few requests in the new stage.
        let (s, _) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Pass, false, false, 50)),
            25_000,
        );
        assert_eq!(s.stage, 1);
        let (s, e) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Pass, false, false, 50)),
            26_000,
        );
        assert_eq!(s.phase, Phase::Promoted);
        assert_eq!(s.weight_bp, 10_000);
        assert!(e
            .iter()
            .any(|e| matches!(e, Effect::Notify(ev) if ev.kind == EventKind::Promoted)));
        assert_eq!(s.config_version, 3);
    }

    #[test]
    fn phase_names_match_the_status_json() {
        for phase in Phase::ALL {
            assert_eq!(
                serde_json::to_value(phase).ok(),
                Some(phase.as_str().into())
            );
        }
    }

    #[test]
    fn inconclusive_never_advances() {
        let spec = spec(false);
        let (mut s, _) = RolloutState::start(&spec, 0);
        for t in 1..100 {
            s = run(
                &spec,
                &s,
                Input::Analysis(verdict(Outcome::Inconclusive, false, false, 0)),
                t * 1_000,
            )
            .0;
        }
        assert_eq!(
            (s.phase, s.stage, s.weight_bp),
            (Phase::Progressing, 0, 500)
        );
    }

    #[test]
    fn failure_limit_and_critical_failures_roll_back() {
        let spec = spec(false);
        let (s, _) = RolloutState::start(&spec, 0);
        let (s, e) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Fail, false, false, 10)),
            1_000,
        );
        assert_eq!((s.phase, s.consecutive_failures), (Phase::Progressing, 1));
        assert!(e.is_empty(), "a single failed analysis is not notified");
        // A pass in between resets the count.
        let (s, _) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Pass, false, false, 10)),
            2_000,
        );
        let (s, _) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Fail, false, false, 10)),
            3_000,
        );
        assert_eq!(s.phase, Phase::Progressing);
        let (s, e) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Fail, false, false, 10)),
            4_000,
        );
        assert_eq!((s.phase, s.weight_bp), (Phase::RolledBack, 0));
        assert!(e.contains(&Effect::PublishWeight(0)));

        let (s, _) = RolloutState::start(&spec, 0);
        let (s, _) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Fail, true, false, 10)),
            1_000,
        );
        assert_eq!(
            (s.phase, s.weight_bp),
            (Phase::RolledBack, 0),
            "critical: at once"
        );
        assert!(s.step(&spec, Input::Resume, 2_000).is_err());
    }

    #[test]
    fn operator_commands() {
        let spec = spec(false);
        let (s, _) = RolloutState::start(&spec, 0);
        let (s, _) = run(&spec, &s, Input::Pause, 1_000);
        assert_eq!(
            s.step(&spec, Input::Pause, 1_500),
            Err(Refused::AlreadyPaused)
        );
        // Paused: passes do not advance, failures still roll back.
        let (s, _) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Pass, false, false, 500)),
            60_000,
        );
        assert_eq!((s.phase, s.stage), (Phase::Paused, 0));
        let (s, _) = run(&spec, &s, Input::Resume, 61_000);
        let (s, e) = run(&spec, &s, Input::Promote, 62_000);
        assert_eq!((s.stage, s.weight_bp), (1, 5_000));
        assert!(e.contains(&Effect::PublishWeight(5_000)));
        let (s, _) = run(&spec, &s, Input::Abort, 63_000);
        assert_eq!((s.phase, s.weight_bp), (Phase::Aborted, 0));
        assert_eq!(
            s.step(&spec, Input::Promote, 64_000),
            Err(Refused::Ended(Phase::Aborted))
        );
    }

    #[test]
    fn clearly_better_canary_accelerates_only_when_enabled() {
        for accelerate in [false, true] {
            let spec = spec(accelerate);
            let (s, _) = RolloutState::start(&spec, 0);
            let (s, _) = run(
                &spec,
                &s,
                Input::Analysis(verdict(Outcome::Pass, false, true, 200)),
                1_000,
            );
            assert_eq!(s.stage, usize::from(accelerate), "accelerate={accelerate}");
        }
    }

    fn judged(
        spec: &RolloutSpec,
        state: &RolloutState,
        canary: (u64, u64),
        at: u64,
    ) -> RolloutState {
        use crate::stats::{RolloutStats, VersionStats};
        let version = |(n, errors): (u64, u64)| VersionStats {
            requests: n,
            rq_2xx: n - errors,
            rq_5xx: errors,
            duration: crate::judge::test_support::all_at(20.0, n),
            ..VersionStats::default()
        };
        let window = RolloutStats {
            canary: version(canary),
            stable: version((canary.0 * 9, canary.1 * 9)),
            ..RolloutStats::default()
        };
        let verdict = crate::judge::judge(&window, &state.evidence, spec);
        run(spec, state, Input::Analysis(verdict), at).0
    }

    #[test]
    fn a_stage_keeps_its_evidence_and_the_next_one_starts_anew() {
        let spec = spec(false);
        let (s, _) = RolloutState::start(&spec, 0);
        let s = judged(&spec, &s, (60, 1), 1_000);
        let s = judged(&spec, &s, (60, 1), 2_000);
        let errors = s.evidence.errors.as_ref().expect("the error test started");
        assert_eq!(errors.canary.requests, 120);
        assert_eq!(s.stages.len(), 1);
        assert_eq!(s.stages[0].canary_requests, 120);
        assert_eq!(s.stages[0].canary_errors, 2);
        assert_eq!(s.stages[0].stable_errors, 18);
        // Held 10 s with enough requests: the next stage starts with no evidence over the
        // stage, and the rollout's evidence goes on.
        let s = judged(&spec, &s, (60, 1), 11_000);
        assert_eq!(s.stage, 1);
        let errors = s
            .evidence
            .errors
            .as_ref()
            .expect("the rollout's error test");
        assert_eq!((errors.canary.requests, errors.windows), (0, 0));
        assert_eq!(errors.rollout.canary.requests, 180);
        assert_eq!(errors.rollout.windows, 3);
        assert!(
            !s.evidence.drift.is_empty(),
            "what was learnt of the noise is kept"
        );
        assert_eq!(s.stages.len(), 2);
        assert_eq!(s.stages[0].ended_ms, Some(11_000));
        // The first two windows gather stable's durations for the p99 bound (1,000 needed).
        let t = &s.stages[0];
        assert_eq!((t.passed, t.inconclusive, t.failed), (1, 2, 0), "{t:?}");
        assert_eq!(s.stages[1].weight_bp, 5_000);
        // The evidence survives a save and load.
        let s = judged(&spec, &s, (60, 1), 12_000);
        let saved: RolloutState =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("state");
        assert_eq!(saved.evidence, s.evidence);
    }

    #[test]
    fn a_stage_past_its_progress_deadline_pauses_or_rolls_back() {
        let yaml = |action: &str| {
            format!(
                "name: shop\nsources: {{envoy_admin: [\"http://127.0.0.1:1\"]}}\n\
                 analysis: {{interval: 1s, progress_deadline: 30s, on_progress_deadline: {action}}}\n\
                 stages:\n  - {{weight_pct: 5, hold: 10s, min_requests: 1000}}\n  - {{weight_pct: 100}}\n"
            )
        };
        let spec = RolloutSpec::from_yaml(&yaml("pause")).expect("valid spec");
        let (s, _) = RolloutState::start(&spec, 0);
        // Too few requests to advance: fine until hold + deadline (40 s).
        let (s, e) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Pass, false, false, 10)),
            39_000,
        );
        assert_eq!((s.phase, e.len()), (Phase::Progressing, 0));
        let (s, e) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Inconclusive, false, false, 10)),
            40_000,
        );
        assert_eq!(s.phase, Phase::Paused);
        let Some(Effect::Notify(event)) = e.last() else {
            panic!("notified: {e:?}");
        };
        assert!(
            event.message.contains("progress deadline: stage 1 of 2"),
            "{}",
            event.message
        );
        assert!(
            event
                .message
                .contains("canary 20 and stable 20 requests of the 1000"),
            "{}",
            event.message
        );
        // Resumed: the deadline counts again from then.
        let (s, _) = run(&spec, &s, Input::Resume, 50_000);
        let (s, _) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Pass, false, false, 10)),
            79_000,
        );
        assert_eq!(s.phase, Phase::Progressing);
        let (s, _) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Pass, false, false, 10)),
            80_000,
        );
        assert_eq!(s.phase, Phase::Paused);

        let spec = RolloutSpec::from_yaml(&yaml("roll_back")).expect("valid spec");
        let (s, _) = RolloutState::start(&spec, 0);
        let (s, e) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Pass, false, false, 10)),
            40_000,
        );
        assert_eq!(s.phase, Phase::RolledBack);
        assert!(e.contains(&Effect::PublishWeight(0)));
    }

    /// Issue 17: a hold of 2^64 ms and more was truncated by `as u64` (18446744073709552s
    /// became 384 ms): a stage that must be held for ages was left after 1 s.
    #[test]
    fn a_huge_hold_is_never_truncated_to_a_short_one() {
        let mut spec = spec(false);
        // Past validation's bound on purpose: the machine must not wrap whatever it gets.
        spec.stages[0].hold = std::time::Duration::from_secs(18_446_744_073_709_552);
        let (s, _) = RolloutState::start(&spec, 0);
        let pass = Input::Analysis(verdict(Outcome::Pass, false, false, 200));
        let (s, e) = run(&spec, &s, pass, 1_000);
        assert_eq!((s.stage, e.len()), (0, 0), "the hold is not over");
        let late = Input::Analysis(verdict(Outcome::Pass, false, false, 200));
        let (s, _) = run(&spec, &s, late, u64::MAX - 1);
        assert_eq!(s.stage, 0, "not over at the end of time either");
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let spec = spec(false);
        let (mut s, _) = RolloutState::start(&spec, 0);
        s.stage_canary_requests = u64::MAX - 1;
        s.consecutive_failures = u32::MAX;
        s.analyses = u64::MAX;
        let (s, _) = run(
            &spec,
            &s,
            Input::Analysis(verdict(Outcome::Inconclusive, false, false, 10)),
            1,
        );
        assert_eq!(s.stage_canary_requests, u64::MAX);
        assert_eq!(s.analyses, u64::MAX);
    }

    /// Issue 17: a state with stage 9 of a 4-stage spec, or weight_bp 20000, loaded and made
    /// every `/filter-config` fail. The check names each field.
    #[test]
    fn a_state_that_does_not_fit_the_spec_is_refused_naming_the_fields() {
        let spec = spec(false);
        let (good, _) = RolloutState::start(&spec, 0);
        assert_eq!(good.check(&spec), Ok(()));
        let mut bad = good.clone();
        bad.stage = 8;
        bad.weight_bp = 20_000;
        bad.rollout = "cart".into();
        let fields: Vec<&str> = bad
            .check(&spec)
            .expect_err("refused")
            .iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["rollout", "stage", "weight_bp"]);
        let mut shadowing = good;
        shadowing.shadow = Some(shadow::ShadowState {
            active: true,
            ..Default::default()
        });
        assert_eq!(
            shadowing.check(&spec).expect_err("no shadow phase")[0].field,
            "shadow.active"
        );
    }
}
