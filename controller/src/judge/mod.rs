//! The judge: one window of canary and stable stats in, a verdict out. Pure functions. Here:
//! the verdict, the request checks (error rate, latency quantiles, circuit breaker) and the
//! main [`judge`], which calls the LLM checks of [`llm`]; the statistical tests they share
//! are in [`significance`]. May import `spec` and `stats`; never `machine` or `server`.
//!
//! A check fails only when the canary is worse by more than its threshold *and* a test says
//! the difference is not noise (Fisher's exact test on the 2×2 table of canary/stable ×
//! bad/good requests, one-sided, at `analysis.alpha`). So one error in 50 requests does not
//! roll back, and a real 10% error rate does within a window or two. Too few requests is
//! *inconclusive*, never a pass.
//!
//! Latency: the canary's and stable's quantiles are interpolated from the histogram buckets;
//! the difference is tested on the number of requests above the bucket bound that holds
//! stable's quantile (under "no difference" both versions put the same share above it).

use serde::{Deserialize, Serialize};

use crate::spec::{Analysis, Checks};
use crate::stats::{Histogram, RolloutStats, VersionStats};

mod llm;
pub mod significance;

pub use significance::{binomial_greater, binomial_less, fisher_greater, welch_greater};

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
    /// A gross failure: roll back now, without waiting for the failure limit.
    pub critical: bool,
    /// The canary is significantly better than stable (grounds to accelerate).
    pub clearly_better: bool,
    pub canary_requests: u64,
    pub stable_requests: u64,
    pub checks: Vec<CheckResult>,
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

fn rate(bad: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        bad as f64 / n as f64
    }
}

/// The verdict on one window. A circuit breaker that tripped in the window, or is open at
/// its end, fails it whatever the other checks say (the canary then has little or no
/// traffic, which alone would be inconclusive): it counts toward the failure limit like
/// any failed analysis, so a canary that keeps tripping (or stays open) is rolled back,
/// and one that recovers after a blip goes on.
pub fn judge(window: &RolloutStats, analysis: &Analysis, checks: &Checks) -> Verdict {
    let mut verdict = judge_requests(window, analysis, checks);
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
    })
}

fn judge_requests(window: &RolloutStats, analysis: &Analysis, checks: &Checks) -> Verdict {
    let canary = &window.canary;
    let stable = &window.stable;
    let min = analysis.min_window_requests;
    let mut verdict = Verdict {
        outcome: Outcome::Inconclusive,
        critical: false,
        clearly_better: false,
        canary_requests: canary.requests,
        stable_requests: stable.requests,
        checks: Vec::new(),
    };
    if canary.requests < min || stable.requests < min {
        verdict.checks.push(CheckResult {
            check: "traffic".into(),
            outcome: Outcome::Inconclusive,
            canary: Some(canary.requests as f64),
            stable: Some(stable.requests as f64),
            limit: Some(min as f64),
            p_value: None,
            reason: format!(
                "too little traffic: canary {} and stable {} requests, need {min} each",
                canary.requests, stable.requests
            ),
            canary_n: None,
            stable_n: None,
            worse: None,
        });
        return verdict;
    }

    // Error rate.
    let e = &checks.error_rate;
    let (ec, nc, es, ns) = (
        canary.errors().min(canary.requests),
        canary.requests,
        stable.errors().min(stable.requests),
        stable.requests,
    );
    let (pc, ps) = (rate(ec, nc), rate(es, ns));
    let stable_floor = ps.max(e.stable_rate_floor);
    let relative_limit = e.max_relative_increase * stable_floor;
    let p_worse = fisher_greater(ec, nc, es, ns);
    let p_above_absolute = binomial_greater(ec, nc, e.max_absolute);
    let relative_breach = pc > relative_limit && p_worse < analysis.alpha;
    let absolute_breach = pc > e.max_absolute && p_above_absolute < analysis.alpha;
    let critical_limit = checks.critical.error_rate_factor * stable_floor;
    verdict.critical = pc >= critical_limit && p_worse < checks.critical.alpha;
    let error_outcome = if relative_breach || absolute_breach {
        Outcome::Fail
    } else {
        Outcome::Pass
    };
    verdict.checks.push(CheckResult {
        check: "error_rate".into(),
        outcome: error_outcome,
        canary: Some(pc),
        stable: Some(ps),
        limit: Some(relative_limit.min(e.max_absolute)),
        p_value: Some(if absolute_breach && !relative_breach {
            p_above_absolute
        } else {
            p_worse
        }),
        reason: format!(
            "error rate canary {:.2}% ({ec}/{nc}) vs stable {:.2}% ({es}/{ns}); limit {:.2}% \
             (max {:.2}%, {}× stable); p={:.2e}{}",
            pc * 100.0,
            ps * 100.0,
            relative_limit.min(e.max_absolute) * 100.0,
            e.max_absolute * 100.0,
            e.max_relative_increase,
            p_worse,
            match (relative_breach, absolute_breach) {
                (true, _) => ": worse than stable beyond the limit",
                (false, true) => ": above the absolute limit",
                _ => "",
            }
        ),
        canary_n: Some(nc),
        stable_n: Some(ns),
        worse: Some(Worse::Higher),
    });
    // Significantly fewer errors than half of stable's (seed 001's acceleration rule).
    let errors_clearly_better =
        ps > 0.0 && pc < 0.5 * ps && fisher_greater(es, ns, ec, nc) < analysis.alpha;

    // Latency quantiles.
    let mut latency_clearly_better = false;
    for (i, l) in checks.latency.iter().enumerate() {
        let name = format!("latency_p{}", trim_quantile(l.quantile));
        let result = latency_check(
            &name,
            &canary.duration,
            &stable.duration,
            l.quantile,
            l.max_relative_increase,
            analysis,
        );
        if i == 0 {
            latency_clearly_better =
                latency_better(&canary.duration, &stable.duration, l.quantile, analysis);
        }
        verdict.checks.push(result);
    }

    let llm = llm::judge_llm(
        window,
        analysis,
        &checks.llm,
        checks.critical.alpha,
        &mut verdict.critical,
    );
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
        verdict.outcome == Outcome::Pass && (errors_clearly_better || latency_clearly_better);
    verdict
}

pub(crate) fn trim_quantile(q: f64) -> String {
    let s = format!("{:.3}", q * 100.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
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
    }
}

/// The canary's quantile is at least 20% below stable's, significantly (seed 001).
fn latency_better(
    canary: &Histogram,
    stable: &Histogram,
    quantile: f64,
    analysis: &Analysis,
) -> bool {
    let (Some(cq), Some(sq)) = (canary.quantile(quantile), stable.quantile(quantile)) else {
        return false;
    };
    if canary.count < analysis.min_window_requests || cq > 0.8 * sq {
        return false;
    }
    let (bound, canary_above) = above_bucket_of(canary, cq);
    let stable_above = stable.count_above(bound);
    fisher_greater(stable_above, stable.count, canary_above, canary.count) < analysis.alpha
}

#[cfg(test)]
mod llm_tests;

/// Shared by the controller's test modules.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{CheckResult, Outcome, Verdict};
    use crate::stats::Histogram;

    /// Envoy's default histogram bounds up to 10 s.
    const BOUNDS: [f64; 13] = [
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    ];

    /// A histogram of `n` requests taking exactly `ms` each.
    pub(crate) fn all_at(ms: f64, n: u64) -> Histogram {
        let mut buckets: Vec<(f64, u64)> = BOUNDS
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
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_support::all_at;

    fn version(n: u64, errors: u64, ms: f64) -> VersionStats {
        VersionStats {
            requests: n,
            rq_2xx: n - errors,
            rq_5xx: errors,
            duration: all_at(ms, n),
            ..VersionStats::default()
        }
    }

    fn window(canary: VersionStats, stable: VersionStats) -> RolloutStats {
        RolloutStats {
            stable,
            canary,
            ..RolloutStats::default()
        }
    }

    fn verdict(w: &RolloutStats) -> Verdict {
        judge(w, &Analysis::default(), &Checks::default())
    }

    #[test]
    fn one_error_in_fifty_does_not_fail() {
        let v = verdict(&window(version(50, 1, 20.0), version(950, 0, 20.0)));
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.summary());
        assert!(!v.critical);
    }

    #[test]
    fn ten_percent_errors_against_half_a_percent_fail_critically() {
        let v = verdict(&window(version(200, 20, 20.0), version(1_800, 9, 20.0)));
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.summary());
        assert!(v.critical, "10% vs 0.5% is 20×: {}", v.summary());
        let e = &v.checks[0];
        assert_eq!(e.check, "error_rate");
        assert!(e.p_value.unwrap_or(1.0) < 1e-6);
    }

    #[test]
    fn a_small_excess_is_not_critical() {
        // 3% vs 1.5%: worse than 1.5× with enough data, but not 5×.
        let v = verdict(&window(
            version(4_000, 120, 20.0),
            version(36_000, 540, 20.0),
        ));
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.summary());
        assert!(!v.critical);
    }

    #[test]
    fn too_little_traffic_is_inconclusive_never_pass() {
        let v = verdict(&window(version(10, 0, 20.0), version(900, 0, 20.0)));
        assert_eq!(v.outcome, Outcome::Inconclusive);
        let v = verdict(&RolloutStats::default());
        assert_eq!(v.outcome, Outcome::Inconclusive);
    }

    #[test]
    fn doubled_p99_fails() {
        let v = verdict(&window(version(500, 0, 40.0), version(4_500, 0, 20.0)));
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.summary());
        assert!(v
            .checks
            .iter()
            .any(|c| c.check == "latency_p99" && c.outcome == Outcome::Fail));
        assert!(!v.critical, "latency alone is not a gross failure");
    }

    #[test]
    fn same_latency_passes() {
        let v = verdict(&window(version(500, 1, 20.0), version(4_500, 9, 20.0)));
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.summary());
        assert_eq!(v.checks.len(), 3);
        assert_eq!(v.checks[1].check, "latency_p99");
        assert_eq!(v.checks[2].check, "latency_p95");
    }

    #[test]
    fn clearly_better_canary_is_flagged() {
        let v = verdict(&window(version(2_000, 0, 20.0), version(18_000, 360, 20.0)));
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.summary());
        assert!(v.clearly_better);
        let v = verdict(&window(version(2_000, 0, 3.0), version(18_000, 0, 20.0)));
        assert!(v.clearly_better, "{}", v.summary());
    }

    #[test]
    fn a_breaker_trip_or_open_breaker_fails_the_window() {
        // Open all window long: the canary had no traffic, which alone is inconclusive.
        let mut idle = window(version(0, 0, 20.0), version(900, 0, 20.0));
        idle.canary.breaker_open = 1;
        idle.canary.breaker_diverted = 95;
        let v = verdict(&idle);
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.summary());
        assert!(!v.critical, "counts toward the failure limit");
        assert_eq!(v.checks[0].check, "circuit_breaker");
        assert!(
            v.summary().contains("open on 1 Envoy(s)"),
            "{}",
            v.summary()
        );
        // A trip in an otherwise passing window.
        let mut tripped = window(version(500, 1, 20.0), version(4_500, 9, 20.0));
        tripped.canary.breaker_trips = 1;
        let v = verdict(&tripped);
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.summary());
        assert!(!v.clearly_better);
        assert_eq!(v.checks.len(), 4);
        // Closed and no trip: no breaker check at all.
        let v = verdict(&window(version(500, 1, 20.0), version(4_500, 9, 20.0)));
        assert!(v.checks.iter().all(|c| c.check != "circuit_breaker"));
    }

    /// A/A: identical versions with binomial noise in errors must not fail over many
    /// windows (the failure limit needs consecutive failures on top of this).
    #[test]
    fn identical_versions_rarely_fail_a_window() {
        // A small deterministic PRNG (xorshift) so the test is repeatable.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut failures = 0;
        for _ in 0..300 {
            let mut errors = |n: u64| (0..n).filter(|_| next() < 0.01).count() as u64;
            let (ec, es) = (errors(500), errors(4_500));
            let v = verdict(&window(version(500, ec, 20.0), version(4_500, es, 20.0)));
            if v.outcome == Outcome::Fail {
                failures += 1;
            }
        }
        assert!(failures <= 6, "{failures} of 300 A/A windows failed");
    }
}
