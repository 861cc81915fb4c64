//! The LLM score checks over a stage: each quality signal's mean and the eval score against
//! stable's ([`MeanTest`]), and task success against its absolute minimum (the share of
//! failed tasks, a [`RateTest`]). Sequential like every other check: each window adds to
//! the stage's and the rollout's evidence, and the tests share the rollout's error budget
//! ([`super::evidence::e_thresholds`]), so an identical model is not rolled back by
//! looking at its scores every window. `min_samples` is a stage total.
//!
//! The budget needs the number of tests before any data, so the judged signals come from
//! the spec: `checks.llm.quality.signals`, or else the filter's `llm.quality_headers`
//! (less task success's and the eval's signal); the eval score when the filter samples
//! evals; task success when a quality header records its signal.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::mean_test::MeanTest;
use super::sequential::{Counts, Drift, RateTest};
use super::stage_tests::{gate, not_required, Reasons, Standing, Thresholds};
use super::{CheckResult, Outcome, Worse};
use crate::spec::RolloutSpec;
use crate::stats::{QualityStats, RolloutStats};

/// The score evidence of the current stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreEvidence {
    /// One per judged quality signal.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quality: BTreeMap<String, MeanTest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<MeanTest>,
    /// Failed tasks against `1 − min_absolute`, and stable's tasks over the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_success: Option<RateTest>,
    #[serde(default)]
    pub task_success_stable: Counts,
    /// Each signal's drift between windows (of its mean; of its failure rate for task
    /// success): it describes the service, so it outlives a stage.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drift: BTreeMap<String, Drift>,
}

/// The signals in the filter's `llm.quality_headers`.
fn recorded_signals(spec: &RolloutSpec) -> Vec<&str> {
    let headers = spec
        .filter
        .get("llm")
        .and_then(|l| l.get("quality_headers"))
        .and_then(|h| h.as_array());
    headers
        .into_iter()
        .flatten()
        .filter_map(|h| h.get("signal").and_then(|s| s.as_str()))
        .collect()
}

/// The quality signals judged as scores.
fn quality_signals(spec: &RolloutSpec) -> Vec<&str> {
    let l = &spec.checks.llm;
    if !l.quality.enabled {
        return Vec::new();
    }
    let mut signals: Vec<&str> = if l.quality.signals.is_empty() {
        recorded_signals(spec)
    } else {
        l.quality.signals.iter().map(String::as_str).collect()
    };
    signals.retain(|s| *s != l.task_success.signal && *s != l.eval.signal);
    signals.sort_unstable();
    signals.dedup();
    signals
}

fn judges_eval(spec: &RolloutSpec) -> bool {
    spec.checks.llm.eval.enabled && spec.filter.contains_key("eval")
}

fn judges_task_success(spec: &RolloutSpec) -> bool {
    let t = &spec.checks.llm.task_success;
    t.enabled && recorded_signals(spec).contains(&t.signal.as_str())
}

/// The score tests a rollout's error budget is shared with.
pub fn budgeted(spec: &RolloutSpec) -> usize {
    quality_signals(spec).len()
        + usize::from(judges_eval(spec))
        + usize::from(judges_task_success(spec))
}

/// A signal's samples in one version's window (none if absent).
fn samples(window: &RolloutStats, signal: &str) -> (QualityStats, QualityStats) {
    let get = |q: &BTreeMap<String, QualityStats>| q.get(signal).copied().unwrap_or_default();
    (
        get(&window.canary.llm.quality),
        get(&window.stable.llm.quality),
    )
}

/// `map` with an entry for `key`, made with `new` if missing: the key is copied only then
/// (the signals are looked up every window).
fn with_key<'a, T>(
    map: &'a mut BTreeMap<String, T>,
    key: &str,
    new: impl FnOnce() -> T,
) -> &'a mut BTreeMap<String, T> {
    if !map.contains_key(key) {
        map.insert(key.to_string(), new());
    }
    map
}

/// `(sum, count)` as a [`Counts`] of thousandths, with a per-score variance (0..1 units)
/// in thousandths², for a drift of the mean.
fn as_mean(q: QualityStats, variance: f64) -> (Counts, f64) {
    let counts = Counts {
        events: q.sum_milli,
        requests: q.count,
    };
    (counts, variance * 1e6)
}

/// Whole successes out of the samples (values are 1/0; a fractional score is rounded).
fn failures(q: QualityStats) -> Counts {
    let successes = ((q.sum_milli as f64 / 1_000.0).round() as u64).min(q.count);
    Counts::new(q.count - successes, q.count)
}

impl ScoreEvidence {
    /// The evidence a new stage starts with: the drift, and each test's evidence over the
    /// rollout.
    pub fn next_stage(&self) -> ScoreEvidence {
        ScoreEvidence {
            quality: (self.quality.iter())
                .map(|(k, t)| (k.clone(), t.next_stage()))
                .collect(),
            eval: self.eval.as_ref().map(MeanTest::next_stage),
            task_success: self.task_success.as_ref().map(RateTest::next_stage),
            task_success_stable: Counts::default(),
            drift: self.drift.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == ScoreEvidence::default()
    }

    /// Adds one window; each result comes with whether its outcome counts towards the
    /// verdict (a check that is not `required` and has too few samples does not). A signal
    /// without samples of either version over the stage gives no result.
    pub fn add(
        &mut self,
        window: &RolloutStats,
        spec: &RolloutSpec,
        (bars, reasons): (Thresholds, Reasons),
    ) -> Vec<(CheckResult, bool)> {
        let checks = &spec.checks.llm;
        let mut out = Vec::new();
        let q = &checks.quality;
        for signal in quality_signals(spec) {
            let test = self.mean(window, signal, q.max_relative_decrease, false);
            if let Some(test) = test {
                let names = (format!("quality_{signal}"), format!("quality {signal}"));
                let r = score_result(names, test, q.max_relative_decrease, bars, reasons);
                let n = (test.canary.count, test.stable.count);
                let r = gate(r, n, (q.min_samples, "scores"), reasons);
                out.push(not_required(r, q.required));
            }
        }
        let e = &checks.eval;
        if judges_eval(spec) {
            if let Some(test) = self.mean(window, &e.signal, e.max_relative_decrease, true) {
                let names = ("eval_score".into(), "eval score".into());
                let r = score_result(names, test, e.max_relative_decrease, bars, reasons);
                let n = (test.canary.count, test.stable.count);
                let r = gate(r, n, (e.min_samples, "scores"), reasons);
                out.push(not_required(r, e.required));
            }
        }
        if judges_task_success(spec) {
            out.extend(self.task_success(window, spec, (bars, reasons)));
        }
        out
    }

    /// Adds the window to a signal's mean test (the eval's if `is_eval`), and gives the
    /// test if the stage has samples of it.
    fn mean(
        &mut self,
        window: &RolloutStats,
        signal: &str,
        margin: f64,
        is_eval: bool,
    ) -> Option<&MeanTest> {
        let (c, s) = samples(window, signal);
        let test = if is_eval {
            self.eval.get_or_insert_with(|| MeanTest::new(margin))
        } else {
            with_key(&mut self.quality, signal, || MeanTest::new(margin)).get_mut(signal)?
        };
        let (var_c, var_s) = test.sample_variances();
        let drift = with_key(&mut self.drift, signal, Drift::default).get_mut(signal)?;
        let noise = drift.add_score(as_mean(c, var_c), as_mean(s, var_s));
        test.add(c, s, noise);
        (test.canary.count > 0 || test.stable.count > 0).then_some(&*test)
    }

    fn task_success(
        &mut self,
        window: &RolloutStats,
        spec: &RolloutSpec,
        (bars, reasons): (Thresholds, Reasons),
    ) -> Option<(CheckResult, bool)> {
        let t = &spec.checks.llm.task_success;
        let (c, s) = samples(window, &t.signal);
        let (cf, sf) = (failures(c), failures(s));
        let (v_canary, _) = self.drift.entry(t.signal.clone()).or_default().add(cf, sf);
        let limit = 1.0 - t.min_absolute;
        let test = self
            .task_success
            .get_or_insert_with(|| RateTest::new(limit));
        // A window in which stable too is below the minimum is an incident (an upstream
        // tool down for both), not the canary's doing.
        if sf.rate().is_none_or(|r| r <= limit) {
            test.add(cf, v_canary);
        }
        self.task_success_stable.add(sf);
        let (canary, stable) = (test.totals, self.task_success_stable);
        if canary.requests == 0 && stable.requests == 0 {
            return None;
        }
        let standing = Standing::new(test.log_e(), &test.rollout, bars);
        let outcome = standing.outcome();
        let success = |c: Counts| c.rate().map(|r| 1.0 - r);
        let mut r = CheckResult {
            check: "task_success_rate".into(),
            outcome,
            canary: success(canary),
            stable: success(stable),
            limit: Some(t.min_absolute),
            p_value: Some(standing.p_value(test.max_log_e, &test.rollout)),
            reason: reasons.write(|| {
                let rate = |c: Counts| {
                    success(c).map_or("-".to_string(), |v| {
                        format!(
                            "{:.2}% ({}/{})",
                            v * 100.0,
                            c.requests - c.events,
                            c.requests
                        )
                    })
                };
                format!(
                    "task success ({}) canary {} vs stable {} over the stage; minimum {:.2}%, \
                     lower is worse; sequential test of canary ≥ minimum: {}{}",
                    t.signal,
                    rate(canary),
                    rate(stable),
                    t.min_absolute * 100.0,
                    standing.describe(),
                    if outcome == Outcome::Fail {
                        ": below the minimum"
                    } else {
                        ""
                    }
                )
            }),
            canary_n: Some(canary.requests),
            stable_n: Some(stable.requests),
            worse: Some(Worse::Lower),
            sequential: Some(standing.summary(
                reasons.write(|| format!("canary ≥ {:.2}%", t.min_absolute * 100.0)),
                (test.windows, test.rollout.windows),
                test.dispersion,
            )),
        };
        if canary.requests < t.min_samples {
            r.outcome = Outcome::Inconclusive;
            r.reason = reasons.write(|| {
                format!(
                    "task success ({}): too few canary samples over the stage ({}, need {}); {}",
                    t.signal, canary.requests, t.min_samples, r.reason
                )
            });
        }
        Some(not_required(r, t.required))
    }
}

/// A mean test as a check result over the stage so far. `names` are the check's name and
/// how its reason calls the signal.
fn score_result(
    (check, what): (String, String),
    t: &MeanTest,
    margin: f64,
    bars: Thresholds,
    reasons: Reasons,
) -> CheckResult {
    let standing = Standing::new(t.log_e(), &t.rollout, bars);
    let outcome = standing.outcome();
    let (cm, sm) = t.means();
    let limit = sm.map(|s| (1.0 - margin) * s);
    CheckResult {
        check,
        outcome,
        canary: cm,
        stable: sm,
        limit,
        p_value: Some(standing.p_value(t.max_log_e, &t.rollout)),
        reason: reasons.write(|| {
            let mean = |m: Option<f64>| m.map_or("-".to_string(), |m| format!("{m:.3}"));
            format!(
                "{what} canary {} ({} scores) vs stable {} ({}) over the stage; limit {} \
                 ({}% below stable), lower is worse; sequential test of canary ≥ {:.3}× \
                 stable: {} (dispersion {:.2}){}",
                mean(cm),
                t.canary.count,
                mean(sm),
                t.stable.count,
                mean(limit),
                margin * 100.0,
                t.null_fraction,
                standing.describe(),
                t.dispersion,
                if outcome == Outcome::Fail {
                    ": worse than stable beyond the limit"
                } else {
                    ""
                }
            )
        }),
        canary_n: Some(t.canary.count),
        stable_n: Some(t.stable.count),
        worse: Some(Worse::Lower),
        sequential: Some(standing.summary(
            reasons.write(|| format!("canary ≥ {:.3}× stable", t.null_fraction)),
            (t.windows, t.rollout.windows),
            t.dispersion,
        )),
    }
}
