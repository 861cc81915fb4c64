//! What a stage has shown so far, check by check: the request checks' sequential tests
//! (error rate against stable and against the absolute limit, each latency quantile) and
//! what they need between windows. The rollout's state carries it from one window to the
//! next and starts each test's stage part anew with each stage (its part over the rollout
//! goes on); [`super::judge`] adds each window to it.

use serde::{Deserialize, Serialize};

use super::llm_evidence::{self, LlmEvidence};
use super::sequential::{Counts, Drift, EventTest, RateTest};
use super::stage_tests::{
    absolute, describe_quantiles, latency, relative, saved_histogram, Measure, Quantile, Totals,
    LATENCY_MIN_RATIO, MAX_RATIO,
};
use super::CheckResult;
use crate::spec::RolloutSpec;
use crate::stats::{Histogram, RolloutStats};

pub use super::stage_tests::{bucket_ratio, null_ratio, Reasons, Thresholds, COARSE_BUCKETS};

/// The evidence of the current stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Errors against stable's rate, and against the absolute limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<EventTest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_absolute: Option<RateTest>,
    /// Stable's errors against the canary's: grounds to accelerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_better: Option<EventTest>,
    /// One per `checks.latency` entry.
    #[serde(default)]
    pub latency: Vec<EventTest>,
    /// Each version's durations over the stage: stable's place the latency tests' bounds
    /// (from the windows before the one being added), both give the stage's quantiles.
    #[serde(default, with = "saved_histogram")]
    pub stable_duration: Histogram,
    #[serde(default, with = "saved_histogram")]
    pub canary_duration: Histogram,
    /// Each version's rate variation between windows, per kind of event (errors, then each
    /// latency check's slow requests): kept from stage to stage by [`Evidence::next_stage`].
    #[serde(default)]
    pub drift: Vec<Drift>,
    /// The LLM checks that accumulate over the stage too.
    #[serde(default, skip_serializing_if = "LlmEvidence::is_empty")]
    pub llm: LlmEvidence,
    /// Whether `stable_duration` and `canary_duration` ascend, as of the last window.
    #[serde(skip)]
    ascending: Ascending,
}

/// What [`Evidence::add`] knows of its stage histograms' counts: worked out from them when
/// unknown (a state just read), then kept as each window is added. Not state: left out of
/// comparisons, since it follows from what is compared.
#[derive(Debug, Clone, Copy, Default)]
struct Ascending(Option<(bool, bool)>);

impl PartialEq for Ascending {
    fn eq(&self, _: &Ascending) -> bool {
        true
    }
}

/// The e-values each check's tests must reach: `analysis.alpha` shared by every sequential
/// check (a union bound over them: the request checks and the LLM checks of
/// [`llm_evidence`]), and each check's share split in half between its test over the
/// rollout and its tests over each judged stage, so the chance that a canary no worse than
/// stable is ever rolled back over the whole rollout is at most `alpha`. With one judged
/// stage the two tests are the same test, and each gets the whole share.
pub fn e_thresholds(spec: &RolloutSpec) -> Thresholds {
    let stages = spec.stages.len().saturating_sub(1).max(1);
    let tests = 2 + spec.checks.latency.len() + llm_evidence::budgeted(spec);
    let check = tests as f64 / spec.analysis.alpha;
    if stages == 1 {
        return Thresholds::new(check, check);
    }
    Thresholds::new(2.0 * stages as f64 * check, 2.0 * check)
}

impl Evidence {
    /// The evidence a new stage starts with: none over the stage, but what was learnt about
    /// the noise and each test's evidence over the rollout.
    pub fn next_stage(&self) -> Evidence {
        Evidence {
            errors: self.errors.as_ref().map(EventTest::next_stage),
            errors_absolute: self.errors_absolute.as_ref().map(RateTest::next_stage),
            latency: self.latency.iter().map(EventTest::next_stage).collect(),
            drift: self.drift.clone(),
            llm: self.llm.next_stage(),
            ..Evidence::default()
        }
    }

    /// The drift of the `i`th kind of event (0: errors, 1 + k: latency check k).
    fn drift(&mut self, i: usize) -> &mut Drift {
        if self.drift.len() <= i {
            self.drift.resize_with(i + 1, Drift::default);
        }
        &mut self.drift[i]
    }

    /// Adds one window and says what each request check makes of the stage so far, against
    /// the spec's [`e_thresholds`].
    pub fn add(
        &mut self,
        window: &RolloutStats,
        spec: &RolloutSpec,
        (bars, reasons): (Thresholds, Reasons),
    ) -> Vec<CheckResult> {
        let e = &spec.checks.error_rate;
        let (canary, stable) = (&window.canary, &window.stable);
        let canary_errors = Counts::new(canary.errors(), canary.requests);
        let stable_errors = Counts::new(stable.errors(), stable.requests);
        let null = null_ratio(e.max_relative_increase);
        let (v_canary, v_stable) = self.drift(0).add(canary_errors, stable_errors);
        let against_stable = self
            .errors
            .get_or_insert_with(|| EventTest::new(null, e.max_relative_increase, MAX_RATIO));
        against_stable.add(canary_errors, stable_errors, (v_canary, v_stable));
        let ceiling = self
            .errors_absolute
            .get_or_insert_with(|| RateTest::new(e.max_absolute));
        // A window in which stable itself is past the limit is an incident, not evidence
        // against the canary (stable's requests are not the canary's, so leaving such
        // windows out keeps the test valid).
        if stable_errors.rate().is_some_and(|r| r <= e.max_absolute) {
            ceiling.add(canary_errors, v_canary);
        }
        let better = self
            .errors_better
            .get_or_insert_with(|| EventTest::new(1.0, 2.0, MAX_RATIO));
        better.add(stable_errors, canary_errors, (v_stable, v_canary));

        let mut checks = Vec::with_capacity(2 + spec.checks.latency.len());
        checks.extend([
            relative(
                ("error_rate", "error rate"),
                Measure::Share,
                against_stable,
                e.max_relative_increase,
                bars,
                reasons,
            ),
            absolute(
                ("error_rate_absolute", "error rate"),
                ceiling,
                against_stable,
                bars,
                reasons,
            ),
        ]);
        if self.latency.len() != spec.checks.latency.len() {
            self.latency = spec
                .checks
                .latency
                .iter()
                .map(|_| EventTest::new(1.0, LATENCY_MIN_RATIO, MAX_RATIO))
                .collect();
        }
        let (stable_up, _) = *self.ascending.0.get_or_insert_with(|| {
            (
                self.stable_duration.ascends(),
                self.canary_duration.ascends(),
            )
        });
        for (k, check) in spec.checks.latency.iter().enumerate() {
            let mut drift = std::mem::take(self.drift(1 + k));
            checks.push(latency(
                Quantile::of(check),
                &mut self.latency[k],
                &mut drift,
                Totals {
                    histogram: &self.stable_duration,
                    ascending: stable_up,
                },
                (&canary.duration, &stable.duration),
                bars,
                reasons,
            ));
            self.drift[1 + k] = drift;
        }
        let stable_up = self.stable_duration.add_ascending(&stable.duration);
        let canary_up = self.canary_duration.add_ascending(&canary.duration);
        self.ascending = Ascending(Some((stable_up, canary_up)));
        for (check, result) in spec.checks.latency.iter().zip(checks.iter_mut().skip(2)) {
            describe_quantiles(
                result,
                Quantile::of(check),
                (
                    Totals {
                        histogram: &self.canary_duration,
                        ascending: canary_up,
                    },
                    Totals {
                        histogram: &self.stable_duration,
                        ascending: stable_up,
                    },
                ),
                reasons,
            );
        }
        checks
    }

    /// Stable's error rate is significantly above the canary's (2× or more), against the
    /// spec's [`e_thresholds`].
    pub fn clearly_better(&self, bars: Thresholds) -> bool {
        self.errors_better
            .as_ref()
            .is_some_and(|t| t.log_e() >= bars.ln.0)
    }
}
