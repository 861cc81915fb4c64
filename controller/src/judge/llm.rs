//! LLM checks (issue 5): cost per response, refusal rate, quality scores, task success,
//! thumbs-down rate and time to first token, canary against stable over the same window.
//!
//! The same care as for error rates: a check fails only when the canary is past its limit
//! *and* a one-sided test says it is worse than stable (Welch's t-test on means, Fisher's
//! exact test on proportions, a binomial test for absolute limits) at `analysis.alpha`;
//! too few samples is *inconclusive*; a signal with no samples at all in either version
//! (no `llm` configured, no feedback received) is not checked. Defaults follow the seeds.

use super::significance::{binomial_greater, binomial_less, fisher_greater, welch_greater};
use super::{trim_quantile, CheckResult, Outcome, Worse};
use crate::spec::llm_checks::{CostCheck, LlmChecks, TaskSuccessCheck};
use crate::spec::Analysis;
use crate::stats::Histogram;
use crate::stats::RolloutStats;
use crate::stats::{LlmStats, QualityStats};

/// The LLM checks of one window, each with whether its outcome counts towards the
/// verdict's (a check that is not `required` and has too few samples does not). `critical`
/// is set when the cost is past the critical multiple significantly at `critical_alpha`.
pub(crate) fn judge_llm(
    window: &RolloutStats,
    analysis: &Analysis,
    checks: &LlmChecks,
    critical_alpha: f64,
    critical: &mut bool,
) -> Vec<(CheckResult, bool)> {
    let (c, s) = (&window.canary.llm, &window.stable.llm);
    let mut out = Vec::new();
    let optional = |mut r: CheckResult, required: bool| {
        if required || r.outcome != Outcome::Inconclusive {
            (r, true)
        } else {
            r.reason
                .push_str(" (not required: does not hold the stage)");
            (r, false)
        }
    };
    if checks.cost.enabled {
        if let Some(r) = cost_check(c, s, analysis, &checks.cost, critical_alpha, critical) {
            out.push((r, true));
        }
    }
    if checks.refusals.enabled && (c.answers() > 0 || s.answers() > 0) {
        let r = &checks.refusals;
        out.push(optional(
            proportion_check(
                Proportion {
                    check: "refusal_rate",
                    what: "refusal rate",
                    unit: "answers",
                    canary: (c.refusals.min(c.answers()), c.answers()),
                    stable: (s.refusals.min(s.answers()), s.answers()),
                    max_relative_increase: r.max_relative_increase,
                    max_absolute: None,
                    stable_rate_floor: r.stable_rate_floor,
                    min_samples: r.min_samples,
                },
                analysis,
            ),
            true,
        ));
    }
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
    let (cf, sf) = (
        c.feedback_up.saturating_add(c.feedback_down),
        s.feedback_up.saturating_add(s.feedback_down),
    );
    if checks.thumbs_down.enabled && (cf > 0 || sf > 0) {
        let d = &checks.thumbs_down;
        out.push(optional(
            proportion_check(
                Proportion {
                    check: "thumbs_down_rate",
                    what: "thumbs-down rate",
                    unit: "ratings",
                    canary: (c.feedback_down, cf),
                    stable: (s.feedback_down, sf),
                    max_relative_increase: d.max_relative_increase,
                    max_absolute: d.max_absolute,
                    stable_rate_floor: d.stable_rate_floor,
                    min_samples: d.min_samples,
                },
                analysis,
            ),
            d.required,
        ));
    }
    let t = &checks.ttft;
    if t.enabled && (c.ttft.count > 0 || s.ttft.count > 0) {
        let name = format!("ttft_p{}", trim_quantile(t.quantile).replace('.', "_"));
        let ttft_analysis = Analysis {
            min_window_requests: t.min_samples,
            ..analysis.clone()
        };
        let mut r = latency_check(
            &name,
            &c.ttft,
            &s.ttft,
            t.quantile,
            t.max_relative_increase,
            &ttft_analysis,
        );
        r.reason = r
            .reason
            .replacen(&name, &format!("{name} (time to first token)"), 1);
        r.canary_n = Some(c.ttft.count);
        r.stable_n = Some(s.ttft.count);
        r.worse = Some(Worse::Higher);
        out.push((r, true));
    }
    out
}

fn usd(nano: f64) -> String {
    format!("${:.6}", nano / 1e9)
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

/// Mean and sample variance (n − 1) of the cost per response, in µUSD.
fn cost_moments(l: &LlmStats) -> (f64, f64) {
    let n = l.responses as f64;
    let mean = l.cost_nanousd as f64 / 1_000.0 / n;
    // Each square was rounded to a whole µUSD²: the variance is known to ±0.5 µUSD² at
    // best, so it is never taken as less (a zero variance would make any difference
    // "significant").
    let var = (l.cost_sumsq_microusd2 as f64 / n - mean * mean).max(0.5);
    (mean, var * n / (n - 1.0))
}

fn cost_check(
    c: &LlmStats,
    s: &LlmStats,
    analysis: &Analysis,
    check: &CostCheck,
    critical_alpha: f64,
    critical: &mut bool,
) -> Option<CheckResult> {
    let name = "cost_per_response";
    if c.cost_nanousd == 0 && s.cost_nanousd == 0 {
        // No prices configured (or no LLM traffic): nothing to compare.
        return None;
    }
    let n = (c.responses, s.responses);
    let (cm, sm) = (c.cost_per_response_nanousd(), s.cost_per_response_nanousd());
    if n.0 < check.min_samples || n.1 < check.min_samples {
        return Some(inconclusive(
            name,
            cm,
            sm,
            n,
            Worse::Higher,
            format!(
                "cost per response: too few responses ({} canary, {} stable, need {})",
                n.0, n.1, check.min_samples
            ),
        ));
    }
    let ((cmu, cvar), (smu, svar)) = (cost_moments(c), cost_moments(s));
    if smu <= 0.0 {
        return Some(inconclusive(
            name,
            cm,
            sm,
            n,
            Worse::Higher,
            "cost per response: stable costs nothing (no stable prices?), no ratio to judge".into(),
        ));
    }
    let p = welch_greater((cmu, cvar, n.0), (smu, svar, n.1));
    let ratio = cmu / smu;
    let fail = ratio > check.max_relative_increase && p < analysis.alpha;
    if fail && ratio >= check.critical_relative_increase && p < critical_alpha {
        *critical = true;
    }
    let limit_nano = check.max_relative_increase * smu * 1_000.0;
    Some(CheckResult {
        check: name.into(),
        outcome: if fail { Outcome::Fail } else { Outcome::Pass },
        canary: cm,
        stable: sm,
        limit: Some(limit_nano),
        p_value: Some(p),
        reason: format!(
            "cost per response canary {} ({} responses) vs stable {} ({}): {ratio:.2}× \
             stable; limit {}× (critical {}×), higher is worse; p={p:.2e}{}",
            usd(cmu * 1_000.0),
            n.0,
            usd(smu * 1_000.0),
            n.1,
            check.max_relative_increase,
            check.critical_relative_increase,
            if fail {
                ": costlier than stable beyond the limit"
            } else {
                ""
            }
        ),
        canary_n: Some(n.0),
        stable_n: Some(n.1),
        worse: Some(Worse::Higher),
        sequential: None,
    })
}

struct Proportion<'a> {
    check: &'a str,
    what: &'a str,
    unit: &'a str,
    /// (bad, total)
    canary: (u64, u64),
    stable: (u64, u64),
    max_relative_increase: f64,
    max_absolute: Option<f64>,
    stable_rate_floor: f64,
    min_samples: u64,
}

fn rate((bad, n): (u64, u64)) -> f64 {
    if n == 0 {
        0.0
    } else {
        bad as f64 / n as f64
    }
}

/// Canary against stable for a share of bad outcomes, as the error-rate check does.
fn proportion_check(p: Proportion, analysis: &Analysis) -> CheckResult {
    let (pc, ps) = (rate(p.canary), rate(p.stable));
    let n = (p.canary.1, p.stable.1);
    if n.0 < p.min_samples || n.1 < p.min_samples {
        return inconclusive(
            p.check,
            (n.0 > 0).then_some(pc),
            (n.1 > 0).then_some(ps),
            n,
            Worse::Higher,
            format!(
                "{}: too few {} ({} canary, {} stable, need {})",
                p.what, p.unit, n.0, n.1, p.min_samples
            ),
        );
    }
    let limit = p.max_relative_increase * ps.max(p.stable_rate_floor);
    let p_worse = fisher_greater(p.canary.0, n.0, p.stable.0, n.1);
    let relative_breach = pc > limit && p_worse < analysis.alpha;
    let (absolute_breach, p_abs) = match p.max_absolute {
        Some(max) => {
            let p_abs = binomial_greater(p.canary.0, n.0, max);
            (pc > max && p_abs < analysis.alpha, p_abs)
        }
        None => (false, 1.0),
    };
    let shown_limit = p.max_absolute.map_or(limit, |m| m.min(limit));
    CheckResult {
        check: p.check.into(),
        outcome: if relative_breach || absolute_breach {
            Outcome::Fail
        } else {
            Outcome::Pass
        },
        canary: Some(pc),
        stable: Some(ps),
        limit: Some(shown_limit),
        p_value: Some(if absolute_breach && !relative_breach {
            p_abs
        } else {
            p_worse
        }),
        reason: format!(
            "{} canary {:.2}% ({}/{}) vs stable {:.2}% ({}/{}); limit {:.2}% ({}× stable{}), \
             higher is worse; p={:.2e}{}",
            p.what,
            pc * 100.0,
            p.canary.0,
            n.0,
            ps * 100.0,
            p.stable.0,
            n.1,
            shown_limit * 100.0,
            p.max_relative_increase,
            p.max_absolute
                .map_or(String::new(), |m| format!(", max {:.2}%", m * 100.0)),
            p_worse,
            match (relative_breach, absolute_breach) {
                (true, _) => ": worse than stable beyond the limit",
                (false, true) => ": above the absolute limit",
                _ => "",
            }
        ),
        canary_n: Some(n.0),
        stable_n: Some(n.1),
        worse: Some(Worse::Higher),
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

/// Requests above the smallest bucket bound that holds `quantile_ms`.
fn above_bucket_of(h: &Histogram, quantile_ms: f64) -> (f64, u64) {
    let bound = h
        .buckets
        .iter()
        .map(|(b, _)| *b)
        .find(|b| *b >= quantile_ms)
        .unwrap_or(f64::INFINITY);
    (bound, h.count_above(bound))
}

/// Time to first token, window by window (the request latency checks are sequential,
/// see [`super::evidence`]): the canary's quantile against stable's, tested on the
/// requests above the bucket bound that holds stable's quantile.
pub(crate) fn latency_check(
    name: &str,
    canary: &Histogram,
    stable: &Histogram,
    quantile: f64,
    max_relative_increase: f64,
    analysis: &Analysis,
) -> CheckResult {
    let min = analysis.min_window_requests;
    let (Some(cq), Some(sq)) = (canary.quantile(quantile), stable.quantile(quantile)) else {
        return CheckResult {
            check: name.into(),
            outcome: Outcome::Inconclusive,
            canary: None,
            stable: None,
            limit: None,
            p_value: None,
            reason: format!("{name}: no duration samples"),
            canary_n: Some(canary.count),
            stable_n: Some(stable.count),
            worse: Some(Worse::Higher),
            sequential: None,
        };
    };
    if canary.count < min || stable.count < min {
        return CheckResult {
            check: name.into(),
            outcome: Outcome::Inconclusive,
            canary: Some(cq),
            stable: Some(sq),
            limit: None,
            p_value: None,
            reason: format!(
                "{name}: too few duration samples ({} canary, {} stable)",
                canary.count, stable.count
            ),
            canary_n: Some(canary.count),
            stable_n: Some(stable.count),
            worse: Some(Worse::Higher),
            sequential: None,
        };
    }
    let limit = max_relative_increase * sq;
    let (bound, stable_above) = above_bucket_of(stable, sq);
    let canary_above = canary.count_above(bound);
    let p = fisher_greater(canary_above, canary.count, stable_above, stable.count);
    let fail = cq > limit && p < analysis.alpha;
    CheckResult {
        check: name.into(),
        outcome: if fail { Outcome::Fail } else { Outcome::Pass },
        canary: Some(cq),
        stable: Some(sq),
        limit: Some(limit),
        p_value: Some(p),
        reason: format!(
            "{name} canary {cq:.1} ms vs stable {sq:.1} ms; limit {limit:.1} ms \
             ({max_relative_increase}× stable); above {bound} ms: canary {canary_above}/{}, \
             stable {stable_above}/{}; p={p:.2e}{}",
            canary.count,
            stable.count,
            if fail {
                ": slower than stable beyond the limit"
            } else {
                ""
            }
        ),
        canary_n: Some(canary.count),
        stable_n: Some(stable.count),
        worse: Some(Worse::Higher),
        sequential: None,
    }
}
