//! The history of a rollout's runs: each run that ended (finalized, rolled back, aborted, or
//! superseded by a new release or a retry) with its verdicts, timeline, outcome and stage
//! totals, the last [`KEEP_RUNS`] of them. A value: the store saves it (atomically, beside
//! the state), `GET /history` serves it as a [`HistoryView`] and `canaryctl history` prints
//! one with [`HistoryView::render`].

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{pct, Event, Phase, RolloutState, StageTotals, VerdictRecord};

/// Runs kept in the history: the oldest is dropped when a 21st ends. Each holds at most the
/// state's last verdicts and timeline, so the file stays within a few MB.
pub const KEEP_RUNS: usize = 20;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Promoted, then marked stable by the operator: weight back to 0.
    Finalized,
    RolledBack,
    Aborted,
    /// Still progressing (or paused) when a new release replaced it.
    Superseded,
}

impl RunOutcome {
    /// The outcome of a run that ends in `phase` (a promoted run is finalized, never
    /// superseded: it holds 100% until then).
    pub fn of(phase: Phase) -> RunOutcome {
        match phase {
            Phase::Finalized | Phase::Promoted => RunOutcome::Finalized,
            Phase::RolledBack => RunOutcome::RolledBack,
            Phase::Aborted => RunOutcome::Aborted,
            Phase::Progressing | Phase::Paused => RunOutcome::Superseded,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Finalized => "finalized",
            RunOutcome::RolledBack => "rolled back",
            RunOutcome::Aborted => "aborted",
            RunOutcome::Superseded => "superseded",
        }
    }
}

/// One ended run, as the state held it when it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_release: Option<String>,
    pub outcome: RunOutcome,
    pub started_ms: u64,
    pub ended_ms: u64,
    /// The last stage it was in, 1-based as in `/status`, and its weight then.
    pub stage: usize,
    pub weight_bp: u32,
    pub analyses: u64,
    /// Every stage it entered, with its totals.
    pub stage_totals: Vec<StageTotals>,
    /// Its last verdicts and timeline (as many as `/status` keeps).
    pub verdicts: VecDeque<VerdictRecord>,
    pub timeline: VecDeque<Event>,
}

impl RunRecord {
    /// `state`'s run as it ends with `outcome` at `now_ms`.
    pub fn of(state: &RolloutState, outcome: RunOutcome, now_ms: u64) -> RunRecord {
        let started_ms = state.run_started_ms();
        // A run archived again (finalized, then superseded) keeps the time it ended.
        let ended_ms = state
            .timeline
            .iter()
            .rev()
            .find(|e| e.kind.ends_a_run())
            .map_or(now_ms, |e| e.at_ms);
        RunRecord {
            run: state.run,
            release: state.release.clone(),
            stable_release: state.stable_release.clone(),
            outcome,
            started_ms,
            ended_ms,
            stage: state.stage.saturating_add(1),
            weight_bp: state.weight_bp,
            analyses: state.analyses,
            stage_totals: state.stages.clone(),
            verdicts: state.verdicts.clone(),
            timeline: state.timeline.clone(),
        }
    }
}

/// The ended runs, oldest first, at most [`KEEP_RUNS`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub runs: VecDeque<RunRecord>,
}

impl History {
    /// Keeps `record`, replacing an earlier account of the same run (the same number and
    /// start: archiving is repeated if a crash came between the history's save and the
    /// state's), and drops the oldest runs past [`KEEP_RUNS`].
    pub fn record(&mut self, record: RunRecord) {
        let same = |r: &RunRecord| r.run == record.run && r.started_ms == record.started_ms;
        match self.runs.iter_mut().find(|r| same(r)) {
            Some(known) => *known = record,
            None => self.runs.push_back(record),
        }
        while self.runs.len() > KEEP_RUNS {
            self.runs.pop_front();
        }
    }

    /// The number the next fresh run takes: one more than any kept (a state file moved
    /// away does not restart the count at 1 while its history stays).
    pub fn next_run(&self) -> u64 {
        self.runs
            .iter()
            .map(|r| r.run)
            .max()
            .map_or(1, |n| n.saturating_add(1))
    }
}

/// The current run, in brief (`/status` has the rest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurrentRun {
    pub run: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_release: Option<String>,
    pub phase: Phase,
    pub stage: usize,
    pub weight_bp: u32,
    pub started_ms: u64,
}

/// What `GET /history` answers: the current run and the ended ones, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryView {
    pub rollout: String,
    /// How many ended runs are kept.
    pub keep: usize,
    pub current: CurrentRun,
    pub runs: Vec<RunRecord>,
}

impl HistoryView {
    pub fn of(state: &RolloutState, history: &History) -> HistoryView {
        HistoryView {
            rollout: state.rollout.clone(),
            keep: KEEP_RUNS,
            current: CurrentRun {
                run: state.run,
                release: state.release.clone(),
                stable_release: state.stable_release.clone(),
                phase: state.phase,
                stage: state.stage.saturating_add(1),
                weight_bp: state.weight_bp,
                started_ms: state.run_started_ms(),
            },
            runs: history.runs.iter().rev().cloned().collect(),
        }
    }

    /// For people (`canaryctl history`): each run's outcome, stages, last verdicts and
    /// timeline, newest first; times relative to `now_ms`.
    pub fn render(&self, now_ms: u64) -> String {
        let ago = |at: u64| format!("{:>7.0}s ago", now_ms.saturating_sub(at) as f64 / 1000.0);
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        let c = &self.current;
        line(format!(
            "rollout {}: run {} ({}) {} at stage {}, weight {}, since {}",
            self.rollout,
            c.run,
            release_text(&c.release, &c.stable_release),
            c.phase.as_str(),
            c.stage,
            pct(c.weight_bp),
            ago(c.started_ms).trim_start()
        ));
        if self.runs.is_empty() {
            line("no ended runs yet".into());
        }
        for r in &self.runs {
            line(String::new());
            line(format!(
                "run {} ({}): {} at stage {} ({}), {} analyses; {} → {} ({:.0}s)",
                r.run,
                release_text(&r.release, &r.stable_release),
                r.outcome.as_str(),
                r.stage,
                pct(r.weight_bp),
                r.analyses,
                ago(r.started_ms).trim_start(),
                ago(r.ended_ms).trim_start(),
                r.ended_ms.saturating_sub(r.started_ms) as f64 / 1000.0
            ));
            for t in &r.stage_totals {
                line(format!(
                    "  stage {} at {}: windows {} passed, {} failed, {} inconclusive; \
                     canary {} requests ({} errors), stable {} ({} errors)",
                    t.stage.saturating_add(1),
                    pct(t.weight_bp),
                    t.passed,
                    t.failed,
                    t.inconclusive,
                    t.canary_requests,
                    t.canary_errors,
                    t.stable_requests,
                    t.stable_errors
                ));
            }
            if !r.verdicts.is_empty() {
                line("  last verdicts:".into());
            }
            for v in r.verdicts.iter().rev().take(3) {
                line(format!(
                    "    {} stage {}: {}",
                    ago(v.at_ms),
                    v.stage.saturating_add(1),
                    v.verdict.summary()
                ));
            }
            line("  timeline:".into());
            for e in &r.timeline {
                line(format!("    {} {}", ago(e.at_ms), e.message));
            }
        }
        out
    }
}

/// `v1.3.2 over v1.3.1`, `v1.3.2`, or `unnamed release`.
fn release_text(release: &Option<String>, stable: &Option<String>) -> String {
    match (release, stable) {
        (Some(r), Some(s)) if r != s => format!("release {r} over {s}"),
        (Some(r), _) => format!("release {r}"),
        (None, _) => "unnamed release".into(),
    }
}
