//! What the sequential checks share, in evidence of any kind ([`super::evidence`] for
//! requests, [`super::llm_evidence`] for LLM answers): how a test's e-value reads as a
//! check result (its outcome, the absolute-limit form, the `sequential` summary), the
//! quantile test over histograms and its reason, and how a histogram is saved in the state
//! file. A leaf below both evidence files.

use super::decimal::Fixed;
use super::sequential::{Counts, Drift, EventTest, OverRollout, RateTest};
use super::{CheckResult, Outcome, Scope, SequentialTest, Worse};
use crate::spec::LatencyCheck;
use crate::stats::Histogram;
/// The largest ratio the mixtures look for: a gross failure (10% errors against 0.5% is
/// 20×) sits well inside, so it is decided in a window or two.
pub(super) const MAX_RATIO: f64 = 100.0;
/// The smallest ratio of slow-request rates the latency mixtures look for.
pub(super) const LATENCY_MIN_RATIO: f64 = 1.25;
/// Buckets wider than this around stable's quantile hide changes within them.
const COARSE_BUCKET_RATIO: f64 = 1.25;
/// How a latency check's reason says so (the analysis loop logs the first one).
pub const COARSE_BUCKETS: &str = "coarse buckets";

/// The null hypothesis of a relative check with threshold `k`: at most halfway there. A
/// canary at `k`× stable is what the test must catch; one at `(1 + k) / 2` or better must
/// pass, whatever the traffic.
pub fn null_ratio(max_relative_increase: f64) -> f64 {
    1.0 + (max_relative_increase - 1.0) / 2.0
}

/// Whether the checks write their reasons (and their sequential tests' null hypotheses,
/// `sequential.null`). A simulation of millions of windows reads only what the checks
/// decided, and formatting every window's reasons was a fifth of its time; everything else
/// in a verdict is the same either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reasons {
    Write,
    Skip,
}

impl Reasons {
    /// `reason()` when reasons are written, an empty string otherwise.
    pub(super) fn write(self, reason: impl FnOnce() -> String) -> String {
        match self {
            Reasons::Write => reason(),
            Reasons::Skip => String::new(),
        }
    }
}

/// The e-values a check's two tests must reach: the one over the stage and the one over
/// the rollout (see [`super::evidence::e_thresholds`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub stage: f64,
    pub rollout: f64,
    /// `ln` of each: what the tests' `ln e` is compared with (worked out once for the
    /// window's checks, not once per check).
    pub(super) ln: (f64, f64),
}

impl Thresholds {
    pub(super) fn new(stage: f64, rollout: f64) -> Thresholds {
        Thresholds {
            stage,
            rollout,
            ln: (stage.ln(), rollout.ln()),
        }
    }
}

/// One check's two tests, read against their thresholds.
pub(super) struct Standing {
    stage: f64,
    rollout: f64,
    bars: Thresholds,
    /// `ln` of each threshold.
    ln_bars: (f64, f64),
}

impl Standing {
    pub(super) fn new(stage_log_e: f64, rollout: &OverRollout, bars: Thresholds) -> Standing {
        Standing {
            stage: stage_log_e,
            rollout: rollout.log_e(),
            bars,
            ln_bars: bars.ln,
        }
    }

    fn fails(&self) -> bool {
        self.stage >= self.ln_bars.0 || self.rollout >= self.ln_bars.1
    }

    pub(super) fn outcome(&self) -> Outcome {
        if self.fails() {
            Outcome::Fail
        } else {
            Outcome::Pass
        }
    }

    /// The test nearer its threshold (on a failure, one that decided).
    fn scope(&self) -> Scope {
        if self.rollout - self.ln_bars.1 > self.stage - self.ln_bars.0 {
            Scope::Rollout
        } else {
            Scope::Stage
        }
    }

    /// The check's anytime-valid p-value from both tests' largest e-values so far, on the
    /// rollout test's scale: the check fails once it is at most `1 / rollout threshold`.
    pub(super) fn p_value(&self, stage_max_log_e: f64, rollout: &OverRollout) -> f64 {
        let scale = self.bars.stage / self.bars.rollout;
        ((-stage_max_log_e).exp() * scale)
            .min((-rollout.max_log_e).exp())
            .min(1.0)
    }

    /// `e = … < 1/α = … over the stage, e = … ≥ … over the rollout`.
    pub(super) fn describe(&self) -> String {
        let side = |log_e: f64, bar: f64| if log_e >= bar.ln() { "≥" } else { "<" };
        format!(
            "e = {:.3e} {} 1/α = {:.0} over the stage, e = {:.3e} {} {:.0} over the rollout",
            self.stage.exp(),
            side(self.stage, self.bars.stage),
            Fixed(self.bars.stage),
            self.rollout.exp(),
            side(self.rollout, self.bars.rollout),
            Fixed(self.bars.rollout),
        )
    }

    /// The `sequential` summary: the test nearer its threshold, with its windows.
    pub(super) fn summary(
        &self,
        null: String,
        (stage_windows, rollout_windows): (u64, u64),
        dispersion: f64,
    ) -> SequentialTest {
        let scope = self.scope();
        let (log_e, threshold, windows) = match scope {
            Scope::Stage => (self.stage, self.bars.stage, stage_windows),
            Scope::Rollout => (self.rollout, self.bars.rollout, rollout_windows),
        };
        SequentialTest {
            null,
            e_value: log_e.exp(),
            threshold,
            windows,
            dispersion,
            scope,
        }
    }
}

pub(super) fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// What a relative check's counts measure: a share of bad requests (errors, refusals,
/// thumbs-down), or an amount per request (nano-USD per answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Measure {
    Share,
    Cost,
}

impl Measure {
    /// A version's stage totals as a reason shows them.
    fn describe(self, c: Counts) -> String {
        match self {
            Measure::Share => format!(
                "{:.2}% ({}/{})",
                Fixed(pct(c.events, c.requests)),
                c.events,
                c.requests
            ),
            Measure::Cost => {
                let mean = c.events as f64 / c.requests.max(1) as f64;
                format!("${:.6} ({} responses)", Fixed(mean / 1e9), c.requests)
            }
        }
    }
}

/// A sequential test of the canary against stable (`canary ≤ null × stable`, against
/// `k`–[`MAX_RATIO`]×) as a check result over the stage so far.
pub(super) fn relative(
    (check, what): (&str, &str),
    measure: Measure,
    t: &EventTest,
    k: f64,
    bars: Thresholds,
    reasons: Reasons,
) -> CheckResult {
    let standing = Standing::new(t.log_e(), &t.rollout, bars);
    let outcome = standing.outcome();
    let (c, s) = (t.canary, t.stable);
    CheckResult {
        check: check.into(),
        outcome,
        canary: c.rate(),
        stable: s.rate(),
        limit: s.rate().map(|r| r * k),
        p_value: Some(standing.p_value(t.max_log_e, &t.rollout)),
        reason: reasons.write(|| {
            format!(
                "{what} canary {} vs stable {} over the stage ({} vs {} over the rollout); \
             sequential test of canary ≤ {:.2}× stable against {k}–{MAX_RATIO}×: {} \
             (dispersion {:.2}){}",
                measure.describe(c),
                measure.describe(s),
                measure.describe(t.rollout.canary),
                measure.describe(t.rollout.stable),
                Fixed(t.null_ratio),
                standing.describe(),
                Fixed(t.dispersion),
                if outcome == Outcome::Fail {
                    ": worse than stable"
                } else {
                    ""
                },
            )
        }),
        canary_n: Some(c.requests),
        stable_n: Some(s.requests),
        worse: Some(Worse::Higher),
        sequential: Some(standing.summary(
            reasons.write(|| format!("canary ≤ {:.2}× stable", Fixed(t.null_ratio))),
            (t.windows, t.rollout.windows),
            t.dispersion,
        )),
    }
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

/// Inconclusive until both versions have `min` samples (`unit`) over the stage.
pub(super) fn gate(
    mut r: CheckResult,
    (nc, ns): (u64, u64),
    (min, unit): (u64, &str),
    reasons: Reasons,
) -> CheckResult {
    if nc < min || ns < min {
        r.outcome = Outcome::Inconclusive;
        r.reason = reasons.write(|| {
            format!(
                "{}: too few {unit} over the stage ({nc} canary, {ns} stable, need {min}); {}",
                r.check, r.reason
            )
        });
    }
    r
}

/// The absolute limit counts only when the canary alone is past it: an incident that takes
/// stable past the limit too is not the canary's doing.
pub(super) fn absolute(
    (check, what): (&str, &str),
    t: &RateTest,
    relative: &EventTest,
    bars: Thresholds,
    reasons: Reasons,
) -> CheckResult {
    let stable_rate = relative.stable.rate().unwrap_or(0.0);
    let stable_past = stable_rate > t.limit;
    let standing = Standing::new(t.log_e(), &t.rollout, bars);
    let outcome = match standing.outcome() {
        Outcome::Fail if !stable_past => Outcome::Fail,
        _ => Outcome::Pass,
    };
    let c = t.totals;
    CheckResult {
        check: check.into(),
        outcome,
        canary: c.rate(),
        stable: relative.stable.rate(),
        limit: Some(t.limit),
        p_value: Some(standing.p_value(t.max_log_e, &t.rollout)),
        reason: reasons.write(|| {
            format!(
                "{what} canary {:.2}% ({}/{}) against the absolute limit {:.2}%; sequential \
             test of canary ≤ limit: {}{}",
                Fixed(pct(c.events, c.requests)),
                c.events,
                c.requests,
                Fixed(t.limit * 100.0),
                standing.describe(),
                match (outcome, stable_past) {
                    (Outcome::Fail, _) => ": above the absolute limit".to_string(),
                    (_, true) => format!(
                        "; stable is past it too ({:.2}%): not the canary's doing",
                        Fixed(stable_rate * 100.0)
                    ),
                    _ => String::new(),
                }
            )
        }),
        canary_n: Some(c.requests),
        stable_n: Some(relative.stable.requests),
        worse: Some(Worse::Higher),
        sequential: Some(standing.summary(
            reasons.write(|| format!("canary ≤ {:.2}%", Fixed(t.limit * 100.0))),
            (t.windows, t.rollout.windows),
            t.dispersion,
        )),
    }
}

/// The smallest finite bound at or above `ms`.
fn bound_at_or_above(h: &Histogram, ms: f64) -> Option<f64> {
    // By bisection: the bounds ascend, the infinite one last (see `Histogram::count_above`).
    let at = ms * (1.0 - 1e-9);
    let first = h
        .buckets
        .partition_point(|(b, _)| b.partial_cmp(&at).is_none_or(|o| o.is_lt()));
    h.buckets
        .get(first)
        .map(|(b, _)| *b)
        .filter(|b| b.is_finite())
}

/// A stage's running histogram, and whether its cumulative counts are known to ascend
/// (then its quantiles are found by bisection: the same values, for every window).
#[derive(Debug, Clone, Copy)]
pub(super) struct Totals<'a> {
    pub histogram: &'a Histogram,
    pub ascending: bool,
}

impl Totals<'_> {
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.ascending {
            self.histogram.quantile_of_ascending(q)
        } else {
            self.histogram.quantile(q)
        }
    }
}

impl<'a> From<&'a Histogram> for Totals<'a> {
    fn from(histogram: &'a Histogram) -> Totals<'a> {
        Totals {
            histogram,
            ascending: false,
        }
    }
}

/// A quantile check: a request latency (`checks.latency`) or the time to first token.
#[derive(Debug, Clone, Copy)]
pub(super) struct Quantile<'a> {
    /// The check's name (`latency_p99`, `ttft_p95`).
    pub name: &'a str,
    pub quantile: f64,
    pub max_relative_increase: f64,
}

impl Quantile<'_> {
    pub(super) fn of(check: &LatencyCheck) -> Quantile<'static> {
        Quantile {
            name: "",
            quantile: check.quantile,
            max_relative_increase: check.max_relative_increase,
        }
    }
}

/// The latency check on one quantile: stable's requests slower than `B` (the first bucket
/// bound at or above stable's quantile over the stage before this window) against the
/// canary's slower than `(1 + k) / 2 · B` (the first bound at or above it). Under "the
/// canary is at most halfway to `k`× slower" the canary's share of those is at most its
/// share of the requests; a canary `k`× slower puts far more of its requests past the
/// second bound. `(canary, stable)` are the window's histograms.
pub(super) fn latency<'a>(
    check: Quantile,
    test: &mut EventTest,
    drift: &mut Drift,
    stable_before: impl Into<Totals<'a>>,
    (canary, stable): (&Histogram, &Histogram),
    bars: Thresholds,
    reasons: Reasons,
) -> CheckResult {
    let stable_before = stable_before.into();
    let name = if check.name.is_empty() {
        super::quantile_name("latency_p", check.quantile)
    } else {
        check.name.to_string()
    };
    let enough = stable_before.histogram.count as f64 * (1.0 - check.quantile) >= 10.0;
    let quantile = stable_before.quantile(check.quantile).filter(|_| enough);
    let bounds = quantile.and_then(|q| {
        let b = bound_at_or_above(stable, q)?;
        let upper = bound_at_or_above(canary, b * null_ratio(check.max_relative_increase))?;
        Some((b, upper))
    });
    if let Some((b, upper)) = bounds {
        let slow_canary = Counts::new(canary.count_above(upper), canary.count);
        let slow_stable = Counts::new(stable.count_above(b), stable.count);
        let noise = drift.add(slow_canary, slow_stable);
        test.add(slow_canary, slow_stable, noise);
    }
    let standing = Standing::new(test.log_e(), &test.rollout, bars);
    let outcome = if test.windows == 0 && bounds.is_none() {
        Outcome::Inconclusive
    } else {
        standing.outcome()
    };
    let (c, s) = (test.canary, test.stable);
    let reason = reasons.write(|| match bounds {
        None if test.windows == 0 => {
            format!("{name}: not enough of stable's durations in the stage yet to place the bound")
        }
        _ => format!(
            "slower than the bounds: canary {}/{} vs stable {}/{} over the stage \
             ({}/{} vs {}/{} over the rollout); sequential test of canary ≤ {:.2}× \
             stable: {}{}",
            c.events,
            c.requests,
            s.events,
            s.requests,
            test.rollout.canary.events,
            test.rollout.canary.requests,
            test.rollout.stable.events,
            test.rollout.stable.requests,
            Fixed(null_ratio(check.max_relative_increase)),
            standing.describe(),
            if outcome == Outcome::Fail {
                ": slower than stable beyond the limit"
            } else {
                ""
            },
        ),
    });
    CheckResult {
        check: name,
        outcome,
        canary: None,
        stable: None,
        limit: None,
        p_value: Some(standing.p_value(test.max_log_e, &test.rollout)),
        reason,
        canary_n: Some(c.requests),
        stable_n: Some(s.requests),
        worse: Some(Worse::Higher),
        sequential: (test.windows > 0).then(|| {
            standing.summary(
                reasons.write(|| {
                    format!(
                        "canary ≤ {:.2}× stable",
                        Fixed(null_ratio(check.max_relative_increase))
                    )
                }),
                (test.windows, test.rollout.windows),
                test.dispersion,
            )
        }),
    }
}

/// Puts the stage's quantiles in a latency result, and says so where the buckets are too
/// coarse to see a change of the quantile within them.
pub(super) fn describe_quantiles<'a>(
    result: &mut CheckResult,
    check: Quantile,
    (canary, stable): (impl Into<Totals<'a>>, impl Into<Totals<'a>>),
    reasons: Reasons,
) {
    let (canary, stable) = (canary.into(), stable.into());
    let (cq, sq) = (
        canary.quantile(check.quantile),
        stable.quantile(check.quantile),
    );
    let stable = stable.histogram;
    result.canary = cq;
    result.stable = sq;
    result.limit = sq.map(|s| s * check.max_relative_increase);
    if reasons == Reasons::Skip {
        return;
    }
    let mut head = format!("{} canary ", result.check);
    match (cq, sq) {
        (Some(c), Some(s)) => head += &format!("{:.1} ms vs stable {:.1} ms; ", Fixed(c), Fixed(s)),
        _ => head += "– vs stable –; ",
    }
    result.reason = head + &result.reason;
    if let Some(width) = sq.and_then(|s| bucket_ratio(stable, s)) {
        if width > COARSE_BUCKET_RATIO {
            result.reason += &format!(
                " ({COARSE_BUCKETS}: stable's p{} lies in a bucket {:.1}× wide, a change \
                 within it is invisible; set fine histogram_bucket_settings)",
                super::trim_quantile(check.quantile),
                Fixed(width),
            );
        }
    }
}

/// The ratio of the upper to the lower bound of the bucket that holds `ms`.
pub fn bucket_ratio(h: &Histogram, ms: f64) -> Option<f64> {
    let mut lower = 0.0;
    for &(bound, _) in &h.buckets {
        if bound >= ms {
            return (bound.is_finite() && lower > 0.0).then(|| bound / lower);
        }
        lower = bound;
    }
    None
}

/// A histogram in the state file: JSON has no infinity, so the `+Inf` bucket's bound is
/// saved as `null` and read back as infinity.
pub(super) mod saved_histogram {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::stats::Histogram;

    #[derive(Serialize, Deserialize)]
    struct Saved {
        buckets: Vec<(Option<f64>, u64)>,
        count: u64,
        sum_ms: f64,
    }

    pub fn serialize<S: Serializer>(h: &Histogram, s: S) -> Result<S::Ok, S::Error> {
        Saved {
            buckets: h
                .buckets
                .iter()
                .map(|&(b, c)| (b.is_finite().then_some(b), c))
                .collect(),
            count: h.count,
            sum_ms: h.sum_ms,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram, D::Error> {
        let saved = Saved::deserialize(d)?;
        Ok(Histogram {
            buckets: saved
                .buckets
                .into_iter()
                .map(|(b, c)| (b.unwrap_or(f64::INFINITY), c))
                .collect(),
            count: saved.count,
            sum_ms: saved.sum_ms,
        })
    }
}
