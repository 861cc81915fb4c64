//! The LLM score checks (issue 5): quality scores, the eval score and task success, canary
//! against stable over the same window. Cost, refusals, time to first token and
//! thumbs-down accumulate over the stage instead ([`super::llm_evidence`]).
//!
//! A check fails only when the canary is past its limit *and* a one-sided test says it is
//! worse (Welch's t-test on means, a binomial test for the absolute task-success floor) at
//! `analysis.alpha`; too few samples is *inconclusive*; a signal with no samples at all in
//! either version (no feedback received, no eval sampled) is not checked. A failed window
//! counts towards the failure limit, so one noisy window does not roll back.

use super::significance::{binomial_less, welch_greater};
use super::{CheckResult, Outcome, Worse};
use crate::spec::llm_checks::{LlmChecks, TaskSuccessCheck};
use crate::spec::Analysis;
use crate::stats::RolloutStats;
use crate::stats::{LlmStats, QualityStats};

/// The LLM score checks of one window, each with whether its outcome counts towards the
/// verdict's (a check that is not `required` and has too few samples does not).
pub(crate) fn judge_llm(
    window: &RolloutStats,
    analysis: &Analysis,
    checks: &LlmChecks,
) -> Vec<(CheckResult, bool)> {
    let (c, s) = (&window.canary.llm, &window.stable.llm);
    let mut out = Vec::new();
    let optional = not_required;
    if checks.quality.enabled {
        let q = &checks.quality;
        let mut signals: Vec<&String> = c.quality.keys().chain(s.quality.keys()).collect();
        signals.sort();
        signals.dedup();
        for signal in signals {
            let judged = if q.signals.is_empty() {
                *signal != checks.task_success.signal && *signal != checks.eval.signal
            } else {
                q.signals.contains(signal)
            };
            if judged {
                let limits = (q.max_relative_decrease, q.min_samples);
                let name = format!("quality_{signal}");
                let what = format!("quality {signal}");
                if let Some(r) = score_check(signal, &name, &what, c, s, analysis, limits) {
                    out.push(optional(r, q.required));
                }
            }
        }
    }
    if checks.eval.enabled {
        let e = &checks.eval;
        let limits = (e.max_relative_decrease, e.min_samples);
        if let Some(r) = score_check(
            &e.signal,
            "eval_score",
            "eval score",
            c,
            s,
            analysis,
            limits,
        ) {
            out.push(optional(r, e.required));
        }
    }
    if checks.task_success.enabled {
        if let Some(r) = task_success_check(c, s, analysis, &checks.task_success) {
            out.push(optional(r, checks.task_success.required));
        }
    }
    out
}

/// A check that is not `required` does not hold the stage while it has too few samples.
pub(super) fn not_required(mut r: CheckResult, required: bool) -> (CheckResult, bool) {
    if required || r.outcome != Outcome::Inconclusive {
        (r, true)
    } else {
        // Not written into a reason that was skipped (see `Reasons`).
        if !r.reason.is_empty() {
            r.reason
                .push_str(" (not required: does not hold the stage)");
        }
        (r, false)
    }
}

fn inconclusive(
    check: &str,
    canary: Option<f64>,
    stable: Option<f64>,
    n: (u64, u64),
    worse: Worse,
    reason: String,
) -> CheckResult {
    CheckResult {
        check: check.into(),
        outcome: Outcome::Inconclusive,
        canary,
        stable,
        limit: None,
        p_value: None,
        reason,
        canary_n: Some(n.0),
        stable_n: Some(n.1),
        worse: Some(worse),
        sequential: None,
    }
}

fn quality_moments(q: &QualityStats) -> Option<(f64, f64, u64)> {
    let (mean, var) = q.mean_var()?;
    let n = q.count as f64;
    // Values are read in thousandths: never trust a variance below that resolution.
    Some((mean, var.max(1e-6) * n / (n - 1.0).max(1.0), q.count))
}

/// A score signal's mean, canary against stable: fails more than `max_relative_decrease`
/// below stable's. `name` is the check's name, `what` how the reason calls the signal.
fn score_check(
    signal: &str,
    name: &str,
    what: &str,
    c: &LlmStats,
    s: &LlmStats,
    analysis: &Analysis,
    (max_relative_decrease, min_samples): (f64, u64),
) -> Option<CheckResult> {
    let (cq, sq) = (
        c.quality.get(signal).copied().unwrap_or_default(),
        s.quality.get(signal).copied().unwrap_or_default(),
    );
    if cq.count == 0 && sq.count == 0 {
        return None;
    }
    let n = (cq.count, sq.count);
    let (cm, sm) = (cq.mean_var().map(|m| m.0), sq.mean_var().map(|m| m.0));
    if n.0 < min_samples || n.1 < min_samples {
        return Some(inconclusive(
            name,
            cm,
            sm,
            n,
            Worse::Lower,
            format!(
                "{what}: too few samples ({} canary, {} stable, need {min_samples})",
                n.0, n.1
            ),
        ));
    }
    let (a, b) = (quality_moments(&cq)?, quality_moments(&sq)?);
    let limit = (1.0 - max_relative_decrease) * b.0;
    // "Stable is above the canary": the canary is worse.
    let p = welch_greater(b, a);
    let fail = a.0 < limit && p < analysis.alpha;
    Some(CheckResult {
        check: name.to_string(),
        outcome: if fail { Outcome::Fail } else { Outcome::Pass },
        canary: Some(a.0),
        stable: Some(b.0),
        limit: Some(limit),
        p_value: Some(p),
        reason: format!(
            "{what} canary {:.3} ({} samples) vs stable {:.3} ({}); limit {limit:.3} \
             ({}% below stable), lower is worse; p={p:.2e}{}",
            a.0,
            n.0,
            b.0,
            n.1,
            max_relative_decrease * 100.0,
            if fail {
                ": worse than stable beyond the limit"
            } else {
                ""
            }
        ),
        canary_n: Some(n.0),
        stable_n: Some(n.1),
        worse: Some(Worse::Lower),
        sequential: None,
    })
}

fn task_success_check(
    c: &LlmStats,
    s: &LlmStats,
    analysis: &Analysis,
    check: &TaskSuccessCheck,
) -> Option<CheckResult> {
    let (cq, sq) = (
        c.quality.get(&check.signal).copied().unwrap_or_default(),
        s.quality.get(&check.signal).copied().unwrap_or_default(),
    );
    if cq.count == 0 && sq.count == 0 {
        return None;
    }
    let name = "task_success_rate";
    let n = (cq.count, sq.count);
    let (cm, sm) = (cq.mean_var().map(|m| m.0), sq.mean_var().map(|m| m.0));
    if n.0 < check.min_samples {
        return Some(inconclusive(
            name,
            cm,
            sm,
            n,
            Worse::Lower,
            format!(
                "task success ({}): too few canary samples ({}, need {})",
                check.signal, n.0, check.min_samples
            ),
        ));
    }
    let rate = cm.unwrap_or(0.0);
    // Successes as whole answers (values are 1/0; a fractional score is rounded).
    let successes = ((cq.sum_milli as f64 / 1_000.0).round() as u64).min(cq.count);
    let p = binomial_less(successes, cq.count, check.min_absolute);
    let fail = rate < check.min_absolute && p < analysis.alpha;
    Some(CheckResult {
        check: name.into(),
        outcome: if fail { Outcome::Fail } else { Outcome::Pass },
        canary: cm,
        stable: sm,
        limit: Some(check.min_absolute),
        p_value: Some(p),
        reason: format!(
            "task success ({}) canary {:.2}% ({successes}/{}) vs stable {}; minimum {:.2}%, \
             lower is worse; p={p:.2e}{}",
            check.signal,
            rate * 100.0,
            n.0,
            sm.map_or("-".to_string(), |v| format!(
                "{:.2}% ({} samples)",
                v * 100.0,
                n.1
            )),
            check.min_absolute * 100.0,
            if fail { ": below the minimum" } else { "" }
        ),
        canary_n: Some(n.0),
        stable_n: Some(n.1),
        worse: Some(Worse::Lower),
        sequential: None,
    })
}
