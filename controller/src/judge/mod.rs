//! The judge: one window of canary and stable stats in, a verdict out. Pure functions. Here:
//! the verdict and the main [`judge`]; the request checks' evidence over a stage is in
//! [`evidence`], the LLM checks' that accumulate too (cost, refusals, time to first token,
//! thumbs-down) in [`llm_evidence`], what both share (a test's e-value as a check result,
//! the quantile test) in `stage_tests`, the anytime-valid tests behind them in
//! [`sequential`];
//! the LLM score checks (quality, eval, task success) in [`llm`], window by window, with
//! the classical tests they use in [`significance`]; [`decimal`] prints the reasons'
//! numbers. May import `spec` and `stats`; never `machine` or `server`.
//!
//! Request checks are **sequential**: every window adds to the evidence of its stage and of
//! the whole rollout, and a check fails only when one of its two e-values passes its
//! threshold, `analysis.alpha` being shared by every check and each check's share split
//! between its stage tests and its rollout test ([`evidence::e_thresholds`]). Ville's
//! inequality then bounds the chance that a canary no worse than stable is *ever* rolled
//! back over the whole rollout by `analysis.alpha`, however many windows are looked at —
//! the peeking problem of a test
//! repeated every window is gone. The tests count where events fall (an error, a request
//! slower than a bound): under "no worse" each falls on the canary at most with its share of
//! the requests, so incidents that hit both versions alike cancel out, and each version's
//! own window-to-window variation widens the test (see [`sequential`]). A gross failure
//! (10% errors against 0.5%) passes the bar in one or two windows, so there is no separate
//! critical rule for requests.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::spec::RolloutSpec;
use crate::stats::{RolloutStats, VersionStats};

mod decimal;
pub mod evidence;
pub mod llm_evidence;
mod ln_batch;
mod mean_test;
mod score_evidence;
pub mod sequential;
mod stage_tests;

pub use evidence::{Evidence, Reasons};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
}

/// One check's result, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// e.g. `error_rate`, `latency_p99`.
    pub check: String,
    pub outcome: Outcome,
    pub canary: Option<f64>,
    pub stable: Option<f64>,
    /// The canary value above which the check fails (if the difference is significant).
    pub limit: Option<f64>,
    /// One-sided p-value of "the canary is worse".
    pub p_value: Option<f64>,
    pub reason: String,
    /// Samples behind each version's value (LLM checks: responses, ratings...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_n: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_n: Option<u64>,
    /// Which direction of the value is bad.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worse: Option<Worse>,
    /// The sequential test that decided a request check, with its statistic and threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<SequentialTest>,
}

/// What a request check's sequential test says about the stage so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequentialTest {
    /// The null hypothesis, e.g. `canary ≤ 1.25× stable`.
    pub null: String,
    /// The e-value of the stage so far, and the one that rejects the null (`1/α'`).
    pub e_value: f64,
    pub threshold: f64,
    /// Windows that added to it, and the noise allowance of the last one (1 = binomial).
    pub windows: u64,
    pub dispersion: f64,
    /// Which of the check's two tests this is: the one over the stage or the one over the
    /// rollout, whichever is nearer its threshold (on a failure, one that decided).
    #[serde(default)]
    pub scope: Scope,
}

/// What a sequential test's evidence spans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Stage,
    Rollout,
}

/// The bad direction of a checked value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Worse {
    Higher,
    Lower,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub outcome: Outcome,
    /// Decisive: a sequential test (a request check, or an LLM check of [`llm_evidence`])
    /// rejected "no worse": roll back now, without waiting for the failure limit.
    pub critical: bool,
    /// The canary is significantly better than stable (grounds to accelerate).
    pub clearly_better: bool,
    pub canary_requests: u64,
    pub stable_requests: u64,
    /// The window's failed requests (5xx) of each version.
    #[serde(default)]
    pub canary_errors: u64,
    #[serde(default)]
    pub stable_errors: u64,
    pub checks: Vec<CheckResult>,
    /// The stage's evidence with this window in: the state machine keeps it for the next
    /// window (and starts it anew with each stage). Not part of `/status`'s verdicts.
    /// Shared, so that handing it from the state to the judge and back moves a pointer.
    #[serde(skip)]
    pub evidence: Arc<Evidence>,
}

impl Verdict {
    /// One line for people: the outcome and the checks that decided it.
    pub fn summary(&self) -> String {
        let deciding: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.outcome == self.outcome)
            .map(|c| c.reason.as_str())
            .collect();
        format!(
            "{:?}{}: {}",
            self.outcome,
            if self.critical { " (critical)" } else { "" },
            deciding.join("; ")
        )
    }
}

/// The verdict on one window, given what the stage has shown before it (`evidence`, from
/// the rollout's state): the request checks' sequential tests take the window in, so their
/// verdict is on the whole stage so far, and the updated evidence comes back in the
/// verdict for the state machine to keep. A rejection by one of them is decisive
/// (`critical`: roll back now): the test has already weighed every window.
///
/// A circuit breaker that tripped in the window, or is open at its end, fails it whatever
/// the other checks say (the canary then has little or no traffic): it counts toward the
/// failure limit like any failed analysis, so a canary that keeps tripping (or stays open)
/// is rolled back, and one that recovers after a blip goes on.
pub fn judge(window: &RolloutStats, evidence: &Evidence, spec: &RolloutSpec) -> Verdict {
    judge_owned(window, Arc::new(evidence.clone()), spec)
}

/// [`judge`] for a caller that hands the stage's evidence over rather than keeping it
/// (a simulation of thousands of windows): the same verdict, without copying the evidence
/// (when no one else holds it).
pub fn judge_owned(window: &RolloutStats, evidence: Arc<Evidence>, spec: &RolloutSpec) -> Verdict {
    judge_with(window, evidence, spec, Reasons::Write)
}

/// [`judge_owned`] for a caller that reads only what the checks decided (a simulation of
/// millions of windows): the same verdict, but the request and LLM checks' reasons are
/// left empty.
pub fn judge_outcomes(
    window: &RolloutStats,
    evidence: Arc<Evidence>,
    spec: &RolloutSpec,
) -> Verdict {
    judge_with(window, evidence, spec, Reasons::Skip)
}

fn judge_with(
    window: &RolloutStats,
    evidence: Arc<Evidence>,
    spec: &RolloutSpec,
    reasons: Reasons,
) -> Verdict {
    let mut verdict = judge_requests(window, evidence, spec, reasons);
    if let Some(check) = breaker_check(&window.canary) {
        verdict.checks.insert(0, check);
        verdict.outcome = Outcome::Fail;
        verdict.clearly_better = false;
    }
    verdict
}

fn breaker_check(canary: &VersionStats) -> Option<CheckResult> {
    if canary.breaker_trips == 0 && canary.breaker_open == 0 {
        return None;
    }
    Some(CheckResult {
        check: "circuit_breaker".into(),
        outcome: Outcome::Fail,
        canary: Some(canary.breaker_trips as f64),
        stable: None,
        limit: Some(0.0),
        p_value: None,
        reason: format!(
            "circuit breaker: {} trip(s) in the window, open on {} Envoy(s) at its end, \
             {} canary request(s) sent to stable",
            canary.breaker_trips, canary.breaker_open, canary.breaker_diverted
        ),
        canary_n: None,
        stable_n: None,
        worse: Some(Worse::Higher),
        sequential: None,
    })
}

fn judge_requests(
    window: &RolloutStats,
    evidence: Arc<Evidence>,
    spec: &RolloutSpec,
    reasons: Reasons,
) -> Verdict {
    let (canary, stable) = (&window.canary, &window.stable);
    let analysis = &spec.analysis;
    let min = analysis.min_window_requests;
    let mut verdict = Verdict {
        outcome: Outcome::Inconclusive,
        critical: false,
        clearly_better: false,
        canary_requests: canary.requests,
        stable_requests: stable.requests,
        canary_errors: canary.errors(),
        stable_errors: stable.errors(),
        checks: Vec::new(),
        evidence,
    };
    if canary.requests < min.max(1) || stable.requests < min.max(1) {
        // Not judged: the window adds nothing to the stage's evidence either.
        verdict.checks.push(CheckResult {
            check: "traffic".into(),
            outcome: Outcome::Inconclusive,
            canary: Some(canary.requests as f64),
            stable: Some(stable.requests as f64),
            limit: Some(min as f64),
            p_value: None,
            reason: format!(
                "too little traffic: canary {} and stable {} requests, need {} each",
                canary.requests,
                stable.requests,
                min.max(1)
            ),
            canary_n: None,
            stable_n: None,
            worse: None,
            sequential: None,
        });
        return verdict;
    }
    // The thresholds come from the spec's checks: worked out once for the window's tests.
    let bars = evidence::e_thresholds(spec);
    let stage = Arc::make_mut(&mut verdict.evidence);
    verdict.checks = stage.add(window, spec, (bars, reasons));
    let llm = stage.llm.add(window, spec, (bars, reasons));
    // A rejection by a sequential test is final for the stage: roll back now.
    verdict.critical = verdict
        .checks
        .iter()
        .chain(llm.iter().map(|(c, _)| c))
        .any(|c| c.outcome == Outcome::Fail && c.sequential.is_some());
    let mut outcomes: Vec<Outcome> = verdict.checks.iter().map(|c| c.outcome).collect();
    outcomes.extend(
        llm.iter()
            .filter(|(_, counts)| *counts)
            .map(|(c, _)| c.outcome),
    );
    verdict.checks.extend(llm.into_iter().map(|(c, _)| c));

    verdict.outcome = if outcomes.contains(&Outcome::Fail) {
        Outcome::Fail
    } else if outcomes.contains(&Outcome::Inconclusive) {
        Outcome::Inconclusive
    } else {
        Outcome::Pass
    };
    verdict.clearly_better =
        verdict.outcome == Outcome::Pass && verdict.evidence.clearly_better(bars);
    verdict
}

/// `prefix` and the quantile as a percentage (`latency_p99`), in one allocation for a
/// whole percentage: every latency check names itself so every window.
pub(crate) fn quantile_name(prefix: &str, q: f64) -> String {
    let pct = q * 100.0;
    if !(pct.fract() == 0.0 && (0.0..=100.0).contains(&pct)) {
        return format!("{prefix}{}", trim_quantile(q));
    }
    let mut name = String::with_capacity(prefix.len() + 3);
    name.push_str(prefix);
    let whole = pct as u32;
    for place in [100, 10, 1] {
        if whole >= place || place == 1 {
            name.push(char::from(b'0' + (whole / place % 10) as u8));
        }
    }
    name
}

pub(crate) fn trim_quantile(q: f64) -> String {
    // A whole percentage (p99, p95) is the usual case, named for every window: no need for
    // the decimal formatter then.
    let pct = q * 100.0;
    if pct.fract() == 0.0 && (0.0..=100.0).contains(&pct) {
        return (pct as u64).to_string();
    }
    let s = format!("{:.3}", decimal::Fixed(pct));
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod llm_tests;
#[cfg(test)]
mod score_tests;

/// Shared by the controller's test modules.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{CheckResult, Outcome, Verdict};
    use crate::spec::RolloutSpec;
    use crate::stats::Histogram;

    /// Envoy's default histogram bounds up to 10 s.
    pub(crate) const BOUNDS: [f64; 13] = [
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    ];

    /// A histogram of `n` requests taking exactly `ms` each, over `bounds`.
    pub(crate) fn all_at_over(ms: f64, n: u64, bounds: &[f64]) -> Histogram {
        let mut buckets: Vec<(f64, u64)> = bounds
            .iter()
            .map(|b| (*b, if *b >= ms { n } else { 0 }))
            .collect();
        buckets.push((f64::INFINITY, n));
        Histogram {
            buckets,
            count: n,
            sum_ms: ms * n as f64,
        }
    }

    /// The same over Envoy's default bounds.
    pub(crate) fn all_at(ms: f64, n: u64) -> Histogram {
        all_at_over(ms, n, &BOUNDS)
    }

    /// A spec with every check at its default.
    pub(crate) fn default_spec() -> RolloutSpec {
        RolloutSpec::from_yaml("name: t\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\n")
            .expect("a valid spec")
    }

    /// A verdict with one error-rate check of that outcome.
    pub(crate) fn verdict_of(
        outcome: Outcome,
        critical: bool,
        clearly_better: bool,
        canary_requests: u64,
        stable_requests: u64,
    ) -> Verdict {
        Verdict {
            outcome,
            critical,
            clearly_better,
            canary_requests,
            stable_requests,
            canary_errors: 0,
            stable_errors: 0,
            checks: vec![CheckResult {
                check: "error_rate".into(),
                outcome,
                canary: None,
                stable: None,
                limit: None,
                p_value: None,
                reason: format!("{outcome:?}"),
                canary_n: None,
                stable_n: None,
                worse: None,
                sequential: None,
            }],
            evidence: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests;
