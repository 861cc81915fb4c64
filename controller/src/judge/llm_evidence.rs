//! The LLM checks that accumulate over a stage as the request checks do
//! ([`super::evidence`]): cost per response, refusal rate, time to first token and
//! thumbs-down rate. Each is a sequential test of "no worse than stable" whose e-value
//! shares the rollout's error budget ([`super::evidence::e_thresholds`]), so an identical
//! model is not rolled back by looking at these every window either. The score checks
//! (quality, eval, task success) are sequential too, in [`super::score_evidence`], and
//! their evidence is kept here with the rest.
//!
//! - **Refusals** and **thumbs-down** are counts of bad answers among answers (ratings): the
//!   conditional test of [`super::sequential`], as for errors.
//! - **Cost** is an amount each response carries some of: the same test where the "events"
//!   are nano-USD, widened by Σ cost² / Σ cost (a compound Poisson count) and by each
//!   version's drift of its mean cost per response between windows.
//! - **Time to first token** is a quantile: the latency test, on the TTFT histograms.
//!
//! `min_samples` is a stage total here: until both versions have that many, the check is
//! inconclusive (its evidence still accumulates).

use serde::{Deserialize, Serialize};

use super::score_evidence::{self, ScoreEvidence};
use super::sequential::{Counts, Drift, EventTest, RateTest};
use super::stage_tests::{
    absolute, describe_quantiles, gate, latency, not_required, null_ratio, relative,
    saved_histogram, Measure, Quantile, Reasons, Thresholds, LATENCY_MIN_RATIO, MAX_RATIO,
};
use super::{trim_quantile, CheckResult};
use crate::spec::RolloutSpec;
use crate::stats::{Histogram, LlmStats, RolloutStats};

/// Each signal's drift between windows: it describes the service, so it outlives a stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmDrift {
    pub cost: Drift,
    pub refusals: Drift,
    pub ttft: Drift,
    pub thumbs_down: Drift,
}

/// The LLM evidence of the current stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmEvidence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<EventTest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusals: Option<EventTest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft: Option<EventTest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbs_down: Option<EventTest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbs_down_absolute: Option<RateTest>,
    /// Each version's time to first token over the stage (stable's places the bound).
    #[serde(default, with = "saved_histogram")]
    pub stable_ttft: Histogram,
    #[serde(default, with = "saved_histogram")]
    pub canary_ttft: Histogram,
    #[serde(default)]
    pub drift: LlmDrift,
    /// The score checks (quality, eval, task success).
    #[serde(default, skip_serializing_if = "ScoreEvidence::is_empty")]
    pub scores: ScoreEvidence,
}

/// Whether the filter reads LLM answers for this rollout (`filter.llm` is set): the cost,
/// refusal and TTFT tests exist only then.
fn reads_llm(spec: &RolloutSpec) -> bool {
    spec.filter.contains_key("llm")
}

/// The sequential LLM tests a rollout's error budget is shared with: the answer signals
/// when the filter reads them, the thumbs-down rate (with its absolute ceiling, if set)
/// whenever it is on, since ratings reach `/feedback` for any service, and the score
/// checks ([`score_evidence::budgeted`]).
pub fn budgeted(spec: &RolloutSpec) -> usize {
    let l = &spec.checks.llm;
    let answers = if reads_llm(spec) {
        usize::from(l.cost.enabled) + usize::from(l.refusals.enabled) + usize::from(l.ttft.enabled)
    } else {
        0
    };
    let ratings = if l.thumbs_down.enabled {
        1 + usize::from(l.thumbs_down.max_absolute.is_some())
    } else {
        0
    };
    answers + ratings + score_evidence::budgeted(spec)
}

/// The variance of one response's cost in nano-USD², from the filter's sums.
fn cost_variance(l: &LlmStats) -> f64 {
    let n = l.responses.max(1) as f64;
    let mean = l.cost_nanousd as f64 / n;
    // Each square was rounded to a whole µUSD² (10⁶ nano-USD²).
    let second = l.cost_sumsq_microusd2 as f64 * 1e6 / n;
    (second - mean * mean).max(0.0)
}

/// Each version's requests over the stage.
fn totals(t: &EventTest) -> (u64, u64) {
    (t.canary.requests, t.stable.requests)
}

impl LlmEvidence {
    /// The evidence a new stage starts with: the drift, and each test's evidence over the
    /// rollout.
    pub fn next_stage(&self) -> LlmEvidence {
        let next = |t: &Option<EventTest>| t.as_ref().map(EventTest::next_stage);
        LlmEvidence {
            cost: next(&self.cost),
            refusals: next(&self.refusals),
            ttft: next(&self.ttft),
            thumbs_down: next(&self.thumbs_down),
            thumbs_down_absolute: self.thumbs_down_absolute.as_ref().map(RateTest::next_stage),
            drift: self.drift.clone(),
            scores: self.scores.next_stage(),
            ..LlmEvidence::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == LlmEvidence::default()
    }

    /// Adds one window; each result comes with whether its outcome counts towards the
    /// verdict (a check that is not `required` and has too few samples does not). A check
    /// whose signal has never had data in the stage gives no result.
    pub fn add(
        &mut self,
        window: &RolloutStats,
        spec: &RolloutSpec,
        (bars, reasons): (Thresholds, Reasons),
    ) -> Vec<(CheckResult, bool)> {
        let checks = &spec.checks.llm;
        let (c, s) = (&window.canary.llm, &window.stable.llm);
        let mut out = Vec::new();
        if reads_llm(spec) && checks.cost.enabled {
            let k = checks.cost.max_relative_increase;
            let test = self
                .cost
                .get_or_insert_with(|| EventTest::new(null_ratio(k), k, MAX_RATIO));
            let (cc, sc) = (
                Counts {
                    events: c.cost_nanousd,
                    requests: c.responses,
                },
                Counts {
                    events: s.cost_nanousd,
                    requests: s.responses,
                },
            );
            // A stable without prices is no yardstick: such windows add nothing.
            if s.cost_nanousd > 0 || s.responses == 0 {
                let variances = (cost_variance(c), cost_variance(s));
                let noise = self
                    .drift
                    .cost
                    .add_mean((cc, variances.0), (sc, variances.1));
                let total = c.cost_nanousd.saturating_add(s.cost_nanousd);
                let squares = c
                    .cost_sumsq_microusd2
                    .saturating_add(s.cost_sumsq_microusd2) as f64
                    * 1e6;
                let unit = if total > 0 {
                    squares / total as f64
                } else {
                    1.0
                };
                test.add_weighted(cc, sc, unit, noise);
            }
            if test.canary.events > 0 || test.stable.events > 0 {
                let names = ("cost_per_response", "cost per response");
                let r = relative(names, Measure::Cost, test, k, bars, reasons);
                let r = gate(
                    r,
                    totals(test),
                    (checks.cost.min_samples, "responses"),
                    reasons,
                );
                out.push((r, true));
            }
        }
        if reads_llm(spec) && checks.refusals.enabled {
            let k = checks.refusals.max_relative_increase;
            let test = self
                .refusals
                .get_or_insert_with(|| EventTest::new(null_ratio(k), k, MAX_RATIO));
            let cc = Counts::new(c.refusals, c.answers());
            let sc = Counts::new(s.refusals, s.answers());
            let noise = self.drift.refusals.add(cc, sc);
            test.add(cc, sc, noise);
            if test.canary.requests > 0 || test.stable.requests > 0 {
                let names = ("refusal_rate", "refusal rate");
                let r = relative(names, Measure::Share, test, k, bars, reasons);
                let r = gate(
                    r,
                    totals(test),
                    (checks.refusals.min_samples, "answers"),
                    reasons,
                );
                out.push((r, true));
            }
        }
        if reads_llm(spec) && checks.ttft.enabled {
            out.extend(self.ttft(window, spec, (bars, reasons)));
        }
        let d = &checks.thumbs_down;
        if d.enabled {
            let k = d.max_relative_increase;
            let test = self
                .thumbs_down
                .get_or_insert_with(|| EventTest::new(null_ratio(k), k, MAX_RATIO));
            let ratings = |l: &LlmStats| l.feedback_up.saturating_add(l.feedback_down);
            let cc = Counts::new(c.feedback_down, ratings(c));
            let sc = Counts::new(s.feedback_down, ratings(s));
            let noise = self.drift.thumbs_down.add(cc, sc);
            test.add(cc, sc, noise);
            if let Some(max) = d.max_absolute {
                let ceiling = self
                    .thumbs_down_absolute
                    .get_or_insert_with(|| RateTest::new(max));
                // As for errors: a window in which stable is past the ceiling too is not
                // the canary's doing.
                if sc.rate().is_some_and(|r| r <= max) {
                    ceiling.add(cc, noise.0);
                }
            }
            if test.canary.requests > 0 || test.stable.requests > 0 {
                let names = ("thumbs_down_rate", "thumbs-down rate");
                let r = relative(names, Measure::Share, test, k, bars, reasons);
                let r = gate(r, totals(test), (d.min_samples, "ratings"), reasons);
                out.push(not_required(r, d.required));
                if let Some(ceiling) = &self.thumbs_down_absolute {
                    let names = ("thumbs_down_rate_absolute", "thumbs-down rate");
                    let r = absolute(names, ceiling, test, bars, reasons);
                    out.push(not_required(
                        gate(r, totals(test), (d.min_samples, "ratings"), reasons),
                        d.required,
                    ));
                }
            }
        }
        out.extend(self.scores.add(window, spec, (bars, reasons)));
        out
    }

    fn ttft(
        &mut self,
        window: &RolloutStats,
        spec: &RolloutSpec,
        (bars, reasons): (Thresholds, Reasons),
    ) -> Option<(CheckResult, bool)> {
        let t = &spec.checks.llm.ttft;
        let (c, s) = (&window.canary.llm.ttft, &window.stable.llm.ttft);
        let name = format!("ttft_p{}", trim_quantile(t.quantile).replace('.', "_"));
        let check = Quantile {
            name: &name,
            quantile: t.quantile,
            max_relative_increase: t.max_relative_increase,
        };
        // As for request latency: the bounds carry the null ratio.
        let test = self
            .ttft
            .get_or_insert_with(|| EventTest::new(1.0, LATENCY_MIN_RATIO, MAX_RATIO));
        let mut r = latency(
            check,
            test,
            &mut self.drift.ttft,
            &self.stable_ttft,
            (c, s),
            bars,
            reasons,
        );
        self.stable_ttft += s;
        self.canary_ttft += c;
        if self.stable_ttft.count == 0 && self.canary_ttft.count == 0 {
            return None;
        }
        describe_quantiles(
            &mut r,
            check,
            (&self.canary_ttft, &self.stable_ttft),
            reasons,
        );
        if reasons == Reasons::Write {
            r.reason = r
                .reason
                .replacen(&name, &format!("{name} (time to first token)"), 1);
        }
        let n = (self.canary_ttft.count, self.stable_ttft.count);
        r.canary_n = Some(n.0);
        r.stable_n = Some(n.1);
        let r = gate(r, n, (t.min_samples, "first tokens"), reasons);
        Some((r, true))
    }
}
