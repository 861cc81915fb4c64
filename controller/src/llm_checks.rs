//! LLM checks (issue 5): cost per response, refusal rate, quality scores, task success,
//! thumbs-down rate and time to first token, canary against stable over the same window.
//!
//! The same care as for error rates: a check fails only when the canary is past its limit
//! *and* a one-sided test says it is worse than stable (Welch's t-test on means, Fisher's
//! exact test on proportions, a binomial test for absolute limits) at `analysis.alpha`;
//! too few samples is *inconclusive*; a signal with no samples at all in either version
//! (no `llm` configured, no feedback received) is not checked. Defaults follow the seeds.

use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, StudentsT};

use crate::judge::{binomial_greater, fisher_greater, CheckResult, Outcome, Worse};
use crate::spec::llm_checks::{CostCheck, LlmChecks, TaskSuccessCheck};
use crate::spec::Analysis;
use crate::stats::RolloutStats;
use crate::stats::{LlmStats, QualityStats};

/// The LLM checks of one window, each with whether its outcome counts towards the
/// verdict's (a check that is not `required` and has too few samples does not). `critical`
/// is set when the cost is past the critical multiple significantly at `critical_alpha`.
pub fn judge_llm(
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
        c.feedback_up + c.feedback_down,
        s.feedback_up + s.feedback_down,
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
        let name = format!(
            "ttft_p{}",
            crate::judge::trim_quantile(t.quantile).replace('.', "_")
        );
        let ttft_analysis = Analysis {
            min_window_requests: t.min_samples,
            ..analysis.clone()
        };
        let mut r = crate::judge::latency_check(
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
    })
}

/// One-sided Welch's t-test: p-value of "the mean of `a` is above the mean of `b`", from
/// (mean, sample variance, n) of each.
pub fn welch_greater(a: (f64, f64, u64), b: (f64, f64, u64)) -> f64 {
    let (ma, va, na) = (a.0, a.1, a.2 as f64);
    let (mb, vb, nb) = (b.0, b.1, b.2 as f64);
    if na < 2.0 || nb < 2.0 {
        return 1.0;
    }
    let (sa, sb) = (va / na, vb / nb);
    let se2 = sa + sb;
    if se2.is_nan() || se2 <= 0.0 {
        return if ma > mb { 0.0 } else { 1.0 };
    }
    let t = (ma - mb) / se2.sqrt();
    let df = se2 * se2 / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
    match StudentsT::new(0.0, 1.0, df.max(1.0)) {
        Ok(dist) => dist.sf(t),
        Err(_) => 1.0,
    }
}

/// P(X ≤ k) for X ~ Binomial(n, p): is a rate of k/n significantly below p?
pub fn binomial_less(k: u64, n: u64, p: f64) -> f64 {
    if k >= n {
        return 1.0;
    }
    match Binomial::new(p.clamp(0.0, 1.0), n) {
        Ok(b) => b.cdf(k),
        Err(_) => 1.0,
    }
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{judge, Verdict};
    use crate::spec::Checks;
    use crate::stats::{Histogram, VersionStats};
    use canary_contract::stats::cost_sumsq_micro_usd2;

    /// ((canary bad, n), (stable bad, n), expected)
    type ProportionRow = ((u64, u64), (u64, u64), Option<Outcome>);
    /// (signal, canary mean, canary n, stable mean, stable n, score?, check, expected)
    type QualityRow<'a> = (&'a str, f64, u64, f64, u64, bool, &'a str, Option<Outcome>);

    /// A repeatable PRNG (xorshift) giving values in 0..1.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// `n` answers of about `output_tokens` (±40%) at $15/Mtok output, $3/Mtok input
    /// (100 input tokens), of which `refusals` refused: the counters as the filter keeps them.
    fn answers(rng: &mut Rng, n: u64, output_tokens: f64, refusals: u64) -> LlmStats {
        let mut l = LlmStats {
            responses: n,
            refusals,
            ..LlmStats::default()
        };
        for _ in 0..n {
            let out = (output_tokens * (0.6 + 0.8 * rng.next())).round() as u64;
            let cost = 100 * 3_000 + out * 15_000;
            l.input_tokens += 100;
            l.output_tokens += out;
            l.cost_nanousd += cost;
            l.cost_sumsq_microusd2 += cost_sumsq_micro_usd2(cost);
        }
        l
    }

    /// `n` quality samples, each 1 with probability `mean` (or the score itself if `score`).
    fn quality(rng: &mut Rng, n: u64, mean: f64, score: bool) -> QualityStats {
        let mut q = QualityStats::default();
        for _ in 0..n {
            let v = if score {
                (mean + 0.2 * (rng.next() - 0.5)).clamp(0.0, 1.0)
            } else if rng.next() < mean {
                1.0
            } else {
                0.0
            };
            let milli = (v * 1_000.0).round() as u64;
            q.count += 1;
            q.sum_milli += milli;
            q.sumsq_micro += milli * milli;
        }
        q
    }

    fn window(canary: LlmStats, stable: LlmStats) -> RolloutStats {
        let version = |llm: LlmStats| VersionStats {
            requests: 1_000,
            rq_2xx: 1_000,
            duration: ttft(20.0, 1_000),
            llm,
            ..VersionStats::default()
        };
        RolloutStats {
            canary: version(canary),
            stable: version(stable),
            ..RolloutStats::default()
        }
    }

    fn run(w: &RolloutStats) -> (Vec<CheckResult>, bool) {
        let mut critical = false;
        let checks = judge_llm(
            w,
            &Analysis::default(),
            &LlmChecks::default(),
            0.001,
            &mut critical,
        );
        (checks.into_iter().map(|(c, _)| c).collect(), critical)
    }

    /// The results and whether each counts towards the verdict.
    fn run_counted(w: &RolloutStats) -> (Vec<CheckResult>, Vec<bool>) {
        let mut critical = false;
        let checks = LlmChecks::default();
        let judged = judge_llm(w, &Analysis::default(), &checks, 0.001, &mut critical);
        judged.into_iter().unzip()
    }

    fn outcome_of(w: &RolloutStats, check: &str) -> Option<Outcome> {
        run(w)
            .0
            .iter()
            .find(|c| c.check == check)
            .map(|c| c.outcome)
    }

    #[test]
    fn cost_table() {
        use Outcome::*;
        // (canary output tokens, canary n, stable n, expected, critical)
        let table: &[(f64, u64, u64, Option<Outcome>, bool)] = &[
            (400.0, 200, 1_800, Some(Pass), false),  // equal
            (500.0, 200, 1_800, Some(Pass), false),  // +24%: under 1.5×
            (800.0, 200, 1_800, Some(Fail), false),  // 2× tokens ≈ 1.9× cost
            (800.0, 60, 540, Some(Fail), false),     // also in a small window
            (1_400.0, 200, 1_800, Some(Fail), true), // ≈ 3.3×: roll back at once
            (800.0, 20, 1_800, Some(Inconclusive), false),
        ];
        for (i, &(tokens, nc, ns, want, critical)) in table.iter().enumerate() {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 + i as u64);
            let w = window(
                answers(&mut rng, nc, tokens, 0),
                answers(&mut rng, ns, 400.0, 0),
            );
            let (checks, crit) = run(&w);
            let c = checks
                .iter()
                .find(|c| c.check == "cost_per_response")
                .expect("cost checked");
            assert_eq!(Some(c.outcome), want, "row {i}: {}", c.reason);
            assert_eq!(crit, critical, "row {i}: {}", c.reason);
            assert_eq!((c.canary_n, c.stable_n), (Some(nc), Some(ns)));
            assert_eq!(c.worse, Some(Worse::Higher));
            assert!(c.reason.contains("higher is worse") || want == Some(Inconclusive));
        }
        // No prices: no cost check at all.
        let mut free = LlmStats {
            responses: 500,
            ..LlmStats::default()
        };
        free.output_tokens = 1_000;
        assert_eq!(
            outcome_of(&window(free.clone(), free), "cost_per_response"),
            None
        );
    }

    #[test]
    fn identical_costs_rarely_fail_a_window() {
        let mut rng = Rng(42);
        let mut failures = 0;
        for _ in 0..300 {
            let w = window(
                answers(&mut rng, 100, 400.0, 0),
                answers(&mut rng, 900, 400.0, 0),
            );
            if outcome_of(&w, "cost_per_response") == Some(Outcome::Fail) {
                failures += 1;
            }
        }
        // Failing needs the canary past 1.5×: identical distributions never get there.
        assert_eq!(failures, 0);
    }

    #[test]
    fn refusal_table() {
        use Outcome::*;
        // (canary refused/answers, stable refused/answers, expected)
        let table: &[ProportionRow] = &[
            ((40, 200), (18, 1_800), Some(Fail)),   // 20% vs 1%
            ((2, 200), (18, 1_800), Some(Pass)),    // equal
            ((3, 200), (18, 1_800), Some(Pass)),    // 1.5%: under 2× and not significant
            ((5, 200), (18, 1_800), Some(Pass)),    // 2.5%: over 2× but p ≈ 0.07
            ((60, 1_000), (90, 9_000), Some(Fail)), // 6% vs 1% with more data
            ((10, 20), (18, 1_800), Some(Inconclusive)),
            ((0, 0), (0, 0), None), // no LLM answers: not checked
        ];
        for (i, &(c, s, want)) in table.iter().enumerate() {
            let mut rng = Rng(7 + i as u64);
            let w = window(
                answers(&mut rng, c.1, 400.0, c.0),
                answers(&mut rng, s.1, 400.0, s.0),
            );
            let got = run(&w).0.into_iter().find(|r| r.check == "refusal_rate");
            assert_eq!(got.as_ref().map(|r| r.outcome), want, "row {i}: {got:?}");
            if let Some(r) = got.filter(|r| r.outcome != Inconclusive) {
                assert!(
                    r.reason.contains(&format!("({}/{})", c.0, c.1)),
                    "{}",
                    r.reason
                );
            }
        }
    }

    #[test]
    fn quality_and_task_success_table() {
        use Outcome::*;
        // (signal, canary mean, canary n, stable mean, stable n, score?, check, expected)
        let table: &[QualityRow] = &[
            (
                "helpful",
                0.80,
                300,
                0.90,
                2_700,
                true,
                "quality_helpful",
                Some(Fail),
            ),
            (
                "helpful",
                0.89,
                300,
                0.90,
                2_700,
                true,
                "quality_helpful",
                Some(Pass),
            ),
            (
                "helpful",
                0.80,
                10,
                0.90,
                2_700,
                true,
                "quality_helpful",
                Some(Inconclusive),
            ),
            (
                "helpful",
                0.95,
                300,
                0.90,
                2_700,
                true,
                "quality_helpful",
                Some(Pass),
            ),
            // Task success: absolute minimum 0.90, confidently below fails.
            (
                "task_success",
                0.75,
                300,
                0.95,
                2_700,
                false,
                "task_success_rate",
                Some(Fail),
            ),
            (
                "task_success",
                0.97,
                300,
                0.97,
                2_700,
                false,
                "task_success_rate",
                Some(Pass),
            ),
            (
                "task_success",
                0.80,
                10,
                0.95,
                2_700,
                false,
                "task_success_rate",
                Some(Inconclusive),
            ),
            // Task success is not judged as a relative score by default.
            (
                "task_success",
                0.75,
                300,
                0.95,
                2_700,
                false,
                "quality_task_success",
                None,
            ),
            // Eval scores: 10% below stable fails (seed 002), not the quality check's 5%.
            ("eval", 0.60, 60, 0.90, 500, true, "eval_score", Some(Fail)),
            (
                "eval",
                0.78,
                200,
                0.90,
                2_000,
                true,
                "eval_score",
                Some(Fail),
            ),
            (
                "eval",
                0.84,
                200,
                0.90,
                2_000,
                true,
                "eval_score",
                Some(Pass),
            ),
            (
                "eval",
                0.60,
                10,
                0.90,
                500,
                true,
                "eval_score",
                Some(Inconclusive),
            ),
            ("eval", 0.60, 60, 0.90, 500, true, "quality_eval", None),
        ];
        for (i, &(signal, cm, cn, sm, sn, score, check, want)) in table.iter().enumerate() {
            let mut rng = Rng(99 + i as u64);
            let mut c = LlmStats::default();
            let mut s = LlmStats::default();
            c.quality
                .insert(signal.into(), quality(&mut rng, cn, cm, score));
            s.quality
                .insert(signal.into(), quality(&mut rng, sn, sm, score));
            let results = run(&window(c, s)).0;
            let got = results.iter().find(|r| r.check == check);
            assert_eq!(got.map(|r| r.outcome), want, "row {i}: {got:?}");
            if let Some(r) = got {
                assert_eq!(r.worse, Some(Worse::Lower));
                assert_eq!((r.canary_n, r.stable_n), (Some(cn), Some(sn)));
            }
        }
        // Too few eval scores is reported, but does not hold the stage (not required).
        let mut c = LlmStats::default();
        let mut s = LlmStats::default();
        let mut rng = Rng(7);
        c.quality
            .insert("eval".into(), quality(&mut rng, 5, 0.5, true));
        s.quality
            .insert("eval".into(), quality(&mut rng, 50, 0.9, true));
        let (results, counted) = run_counted(&window(c, s));
        let i = results.iter().position(|r| r.check == "eval_score");
        let i = i.expect("eval_score reported");
        assert_eq!(results[i].outcome, Outcome::Inconclusive);
        assert!(!counted[i], "{:?}", results[i]);
        // A canary at 0.88 success with only 40 samples is not confidently below 0.90.
        let mut c = LlmStats::default();
        c.quality.insert(
            "task_success".into(),
            QualityStats {
                count: 40,
                sum_milli: 35_000,
                sumsq_micro: 35_000_000,
            },
        );
        assert_eq!(
            outcome_of(&window(c, LlmStats::default()), "task_success_rate"),
            Some(Outcome::Pass)
        );
    }

    #[test]
    fn thumbs_down_table() {
        use Outcome::*;
        // ((canary up, down), (stable up, down), expected)
        let table: &[ProportionRow] = &[
            ((70, 30), (950, 50), Some(Fail)), // 30% vs 5%
            ((95, 5), (950, 50), Some(Pass)),  // equal
            ((10, 5), (950, 50), Some(Inconclusive)),
            ((0, 0), (0, 0), None), // no feedback: not checked
        ];
        for (i, &(c, s, want)) in table.iter().enumerate() {
            let fb = |(up, down): (u64, u64)| LlmStats {
                feedback_up: up,
                feedback_down: down,
                ..LlmStats::default()
            };
            let w = window(fb(c), fb(s));
            let got = run(&w)
                .0
                .into_iter()
                .find(|r| r.check == "thumbs_down_rate");
            assert_eq!(got.as_ref().map(|r| r.outcome), want, "row {i}: {got:?}");
        }
        // The absolute ceiling (seed 002's 5%) when configured.
        let mut checks = LlmChecks::default();
        checks.thumbs_down.max_absolute = Some(0.05);
        let fb = |up, down| LlmStats {
            feedback_up: up,
            feedback_down: down,
            ..LlmStats::default()
        };
        let w = window(fb(880, 120), fb(8_800, 1_200));
        let mut critical = false;
        let r: Vec<CheckResult> =
            judge_llm(&w, &Analysis::default(), &checks, 0.001, &mut critical)
                .into_iter()
                .map(|(c, _)| c)
                .collect();
        assert_eq!(r[0].outcome, Outcome::Fail, "{}", r[0].reason);
        assert!(
            r[0].reason.contains("above the absolute limit"),
            "{}",
            r[0].reason
        );
    }

    /// `n` first-token times of `ms` each, in Envoy's default buckets.
    fn ttft(ms: f64, n: u64) -> Histogram {
        crate::judge::test_support::all_at(ms, n)
    }

    #[test]
    fn ttft_p95_table() {
        use Outcome::*;
        let table: &[(f64, u64, f64, u64, Option<Outcome>)] = &[
            (800.0, 200, 200.0, 1_800, Some(Fail)),
            (200.0, 200, 200.0, 1_800, Some(Pass)),
            (800.0, 10, 200.0, 1_800, Some(Inconclusive)),
        ];
        for (i, &(cms, cn, sms, sn, want)) in table.iter().enumerate() {
            let w = window(
                LlmStats {
                    ttft: ttft(cms, cn),
                    ..LlmStats::default()
                },
                LlmStats {
                    ttft: ttft(sms, sn),
                    ..LlmStats::default()
                },
            );
            let got = run(&w).0.into_iter().find(|r| r.check == "ttft_p95");
            assert_eq!(got.as_ref().map(|r| r.outcome), want, "row {i}: {got:?}");
            assert!(got.is_some_and(|r| r.reason.contains("time to first token")));
        }
    }

    fn verdict(w: &RolloutStats) -> Verdict {
        judge(w, &Analysis::default(), &Checks::default())
    }

    #[test]
    fn the_verdict_names_the_llm_check_that_failed() {
        let mut rng = Rng(5);
        let w = window(
            answers(&mut rng, 200, 800.0, 2),
            answers(&mut rng, 1_800, 400.0, 18),
        );
        let v = verdict(&w);
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.summary());
        assert!(!v.critical);
        assert!(
            v.summary().contains("cost per response canary $0.0"),
            "{}",
            v.summary()
        );
        // Equal signals pass, and the plain checks are all still there.
        let w = window(
            answers(&mut rng, 200, 400.0, 2),
            answers(&mut rng, 1_800, 400.0, 18),
        );
        let v = verdict(&w);
        let names: Vec<&str> = v.checks.iter().map(|c| c.check.as_str()).collect();
        assert_eq!(
            names,
            [
                "error_rate",
                "latency_p99",
                "latency_p95",
                "cost_per_response",
                "refusal_rate"
            ]
        );
        // A few ratings do not hold the stage (thumbs-down is not required by default)...
        let mut w = window(
            answers(&mut rng, 200, 400.0, 2),
            answers(&mut rng, 1_800, 400.0, 18),
        );
        w.canary.llm.feedback_down = 3;
        w.stable.llm.feedback_up = 10;
        let v = verdict(&w);
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.summary());
        let thumbs = v.checks.iter().find(|c| c.check == "thumbs_down_rate");
        assert_eq!(thumbs.map(|c| c.outcome), Some(Outcome::Inconclusive));
        // ...but a required quality signal with too few samples does.
        w.canary
            .llm
            .quality
            .insert("helpful".into(), quality(&mut rng, 5, 0.9, true));
        w.stable
            .llm
            .quality
            .insert("helpful".into(), quality(&mut rng, 500, 0.9, true));
        assert_eq!(verdict(&w).outcome, Outcome::Inconclusive);
        // A plain rollout gets no LLM checks at all.
        let plain = window(LlmStats::default(), LlmStats::default());
        assert_eq!(verdict(&plain).checks.len(), 3);
    }

    #[test]
    fn welch_and_binomial_values() {
        // Equal means: p = 0.5; far apart: tiny; reversed: near 1.
        assert!((welch_greater((1.0, 1.0, 100), (1.0, 1.0, 100)) - 0.5).abs() < 1e-9);
        assert!(welch_greater((2.0, 1.0, 100), (1.0, 1.0, 100)) < 1e-6);
        assert!(welch_greater((1.0, 1.0, 100), (2.0, 1.0, 100)) > 0.999_999);
        // P(X ≤ 0 | 10, 0.9) = 0.1^10.
        assert!((binomial_less(0, 10, 0.9) - 1e-10).abs() < 1e-15);
        assert_eq!(binomial_less(10, 10, 0.9), 1.0);
    }
}
