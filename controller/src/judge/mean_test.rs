//! An anytime-valid test that the canary's mean score (a quality signal, the eval score) is
//! no lower than a fraction of stable's, over a stage and over the rollout, as
//! [`super::sequential`]'s tests are for event rates.
//!
//! **Per window.** With window means `m_c`, `m_s` and the null `μ_c ≥ f·μ_s` ("no worse",
//! `f = 1 − d/2` for a check that must catch a canary `d` below stable), the shortfall
//! `D = f·m_s − m_c` has mean at most 0 under the null and, by the central limit theorem,
//! variance `V = f²·σ_s²/n_s + σ_c²/n_c`, plus each version's drift of its mean between
//! windows (`v·μ²`, [`super::sequential::Drift::add_score`]). Each version's per-sample
//! variance is the larger of its window's and its rollout's so far, the latter shrunk
//! towards that of scores spread over 0..1 while its samples are few, never below the
//! scores' resolution.
//!
//! **E-process.** For a shortfall `θ > 0`, `exp((θ·D − θ²/2) / V)` is the Gaussian
//! likelihood ratio of `θ` against 0, and its mean is at most 1 under the null; a product
//! over windows, and a fixed mixture over a grid of `θ`, stay nonnegative
//! supermartingales, so Ville's inequality bounds the chance that the e-value ever reaches
//! `1/α` by `α`. The grid is in score units (scores run 0..1), from a quarter of the
//! check's margin to the whole scale.

use serde::{Deserialize, Serialize};

use super::sequential::{alternatives, grid, log_mixture, Derived, OverRollout, GRID};
use crate::stats::counters::add_to;
use crate::stats::QualityStats;

/// Scores are counted in thousandths: a variance below that resolution is not believed.
const MIN_VARIANCE: f64 = 1e-6;
/// Before many samples a version's variance is unknown, and a plug-in estimate from a
/// few is often far too small (one eval score has none at all): each version's starts as
/// that of scores spread evenly over 0..1 (1/12), weighted as this many samples.
const PRIOR_VARIANCE: f64 = 1.0 / 12.0;
const PRIOR_SAMPLES: f64 = 10.0;
/// The largest shortfall the mixture looks for: the whole score scale.
const MAX_SHORTFALL: f64 = 1.0;

/// The evidence that the canary's mean score is below `null_fraction` × stable's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeanTest {
    /// "No worse": the canary's mean is at least this fraction of stable's.
    pub null_fraction: f64,
    /// The smallest shortfall (score units) the mixture looks for.
    pub min_shortfall: f64,
    log_lr: Vec<f64>,
    /// The stage's samples.
    pub canary: QualityStats,
    pub stable: QualityStats,
    /// Windows with samples of both versions.
    pub windows: u64,
    /// The last window's variance over its sampling variance (1: no drift).
    pub dispersion: f64,
    pub max_log_e: f64,
    /// The same test over the rollout's windows so far, and the rollout's samples (they
    /// give the per-sample variances).
    #[serde(default)]
    pub rollout: OverRollout,
    #[serde(default)]
    pub rollout_canary: QualityStats,
    #[serde(default)]
    pub rollout_stable: QualityStats,
    #[serde(skip)]
    log_e: Derived<f64>,
    #[serde(skip)]
    shortfalls: Derived<Box<[f64; GRID]>>,
}

/// Mean and sample variance (0..1 units), `None` without samples or with sums no samples
/// in 0..1 could give (a state file or stats payload that was tampered with).
fn moments(q: &QualityStats) -> Option<(f64, f64)> {
    let (mean, var) = q.mean_var()?;
    let n = q.count as f64;
    let var = if q.count > 1 {
        var * n / (n - 1.0)
    } else {
        0.0
    };
    (mean.is_finite() && var.is_finite()).then_some((mean, var))
}

/// The variance over many samples, shrunk towards [`PRIOR_VARIANCE`] while they are few.
fn shrunk_variance(q: &QualityStats) -> Option<f64> {
    let (_, var) = q.mean_var()?;
    let n = q.count as f64;
    let v = (var * n + PRIOR_VARIANCE * PRIOR_SAMPLES) / (n - 1.0 + PRIOR_SAMPLES);
    v.is_finite().then_some(v)
}

impl MeanTest {
    /// A test of "the canary's mean is at least `1 − margin/2` of stable's", which a canary
    /// `margin` below stable fails.
    pub fn new(margin: f64) -> MeanTest {
        let margin = margin.clamp(1e-6, 1.0);
        MeanTest {
            null_fraction: 1.0 - margin / 2.0,
            min_shortfall: margin / 4.0,
            log_lr: vec![0.0; GRID],
            canary: QualityStats::default(),
            stable: QualityStats::default(),
            windows: 0,
            dispersion: 1.0,
            max_log_e: 0.0,
            rollout: OverRollout::default(),
            rollout_canary: QualityStats::default(),
            rollout_stable: QualityStats::default(),
            log_e: Derived::default(),
            shortfalls: Derived::default(),
        }
    }

    /// The test a new stage starts with: no evidence over the stage, the rollout's kept.
    pub fn next_stage(&self) -> MeanTest {
        MeanTest {
            null_fraction: self.null_fraction,
            min_shortfall: self.min_shortfall,
            rollout: self.rollout.clone(),
            rollout_canary: self.rollout_canary,
            rollout_stable: self.rollout_stable,
            ..MeanTest::new(0.0)
        }
    }

    /// Each version's per-score variance from its scores over the rollout so far, shrunk
    /// as they are few: what a window's drift is told to expect of one score (a window's
    /// own variance of one or two scores is nearly always too small, and would be taken
    /// for drift).
    pub fn sample_variances(&self) -> (f64, f64) {
        let of = |q: &QualityStats| shrunk_variance(q).unwrap_or(PRIOR_VARIANCE);
        (of(&self.rollout_canary), of(&self.rollout_stable))
    }

    /// Adds one window's samples of each version, with each version's relative variance
    /// of its mean between windows (from the windows before this one).
    pub fn add(&mut self, canary: QualityStats, stable: QualityStats, (v_c, v_s): (f64, f64)) {
        add_to(&mut self.canary, &canary);
        add_to(&mut self.stable, &stable);
        add_to(&mut self.rollout_canary, &canary);
        add_to(&mut self.rollout_stable, &stable);
        let (Some((mc, wvc)), Some((ms, wvs))) = (moments(&canary), moments(&stable)) else {
            return;
        };
        let (Some((rmc, _)), Some((rms, _))) =
            (moments(&self.rollout_canary), moments(&self.rollout_stable))
        else {
            return;
        };
        let (Some(rvc), Some(rvs)) = (
            shrunk_variance(&self.rollout_canary),
            shrunk_variance(&self.rollout_stable),
        ) else {
            return;
        };
        let f = self.null_fraction;
        let (var_c, var_s) = (
            wvc.max(rvc).max(MIN_VARIANCE),
            wvs.max(rvs).max(MIN_VARIANCE),
        );
        let sampling = f * f * var_s / stable.count as f64 + var_c / canary.count as f64;
        let drift = v_c.max(0.0) * rmc * rmc + f * f * v_s.max(0.0) * rms * rms;
        let v = sampling + drift;
        let d = f * ms - mc;
        if !(v.is_finite() && v > 0.0 && d.is_finite()) {
            return;
        }
        self.windows = self.windows.saturating_add(1);
        self.dispersion = v / sampling;
        let min = self.min_shortfall;
        let shortfalls = &**self
            .shortfalls
            .get_or(|| Box::new(grid(alternatives(min, MAX_SHORTFALL.max(min * 1.01)))));
        for ((l, r), theta) in (self.log_lr.iter_mut())
            .zip(self.rollout.log_lr_mut())
            .zip(shortfalls.iter())
        {
            let step = theta * (d - theta / 2.0) / v;
            *l += step;
            *r += step;
        }
        let log_e = log_mixture(&self.log_lr);
        self.log_e = Derived(Some(log_e));
        self.max_log_e = self.max_log_e.max(log_e);
        self.rollout.counted();
    }

    /// `ln` of the e-value over the stage.
    pub fn log_e(&self) -> f64 {
        if self.log_lr.len() != GRID {
            return 0.0;
        }
        self.log_e.0.unwrap_or_else(|| log_mixture(&self.log_lr))
    }

    /// The stage's mean of each version (`None` without samples).
    pub fn means(&self) -> (Option<f64>, Option<f64>) {
        let mean = |q: &QualityStats| q.mean_var().map(|m| m.0);
        (mean(&self.canary), mean(&self.stable))
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// `n` scores around `mean` (uniform ± `half_width`, in thousandths, as the filter
    /// counts them).
    fn scores(rng: &mut SmallRng, n: u64, mean: f64, half_width: f64) -> QualityStats {
        let mut q = QualityStats::default();
        for _ in 0..n {
            let x = (mean + rng.gen_range(-half_width..half_width)).clamp(0.0, 1.0);
            let milli = (x * 1_000.0).round() as u64;
            q.count += 1;
            q.sum_milli += milli;
            q.sumsq_micro += milli * milli;
        }
        q
    }

    /// The e-value of a rollout of `windows` windows, and the most it ever reached.
    fn run(seed: u64, windows: usize, n: u64, canary_mean: f64) -> f64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut t = MeanTest::new(0.05);
        for _ in 0..windows {
            let c = scores(&mut rng, n, canary_mean, 0.3);
            let s = scores(&mut rng, n, 0.8, 0.3);
            t.add(c, s, (0.0, 0.0));
        }
        t.max_log_e
    }

    #[test]
    fn identical_scores_rarely_reach_the_bar_however_long_they_are_watched() {
        // 200 rollouts of 400 windows each, at α = 5% (e = 20): Ville bounds the share
        // that ever gets there by 5%; a Gaussian approximation at 20 samples a window
        // keeps well inside it.
        let reached = (0..200)
            .filter(|&seed| run(seed, 400, 20, 0.8) >= 20f64.ln())
            .count();
        assert!(reached <= 10, "{reached} of 200 reached e = 20");
    }

    #[test]
    fn a_canary_half_the_margin_below_is_not_rejected_and_one_the_margin_below_is() {
        // At the null's edge (2.5% below): no more than α either.
        let reached = (0..100)
            .filter(|&seed| run(seed, 300, 50, 0.8 * 0.975) >= 20f64.ln())
            .count();
        assert!(reached <= 5, "{reached} of 100 at the null's edge");
        // 5% below, 100 scores a window: caught within a few hundred windows every time.
        let caught = (0..50)
            .filter(|&seed| run(seed, 300, 100, 0.8 * 0.95) >= 1e4f64.ln())
            .count();
        assert_eq!(caught, 50);
    }

    #[test]
    fn a_gross_drop_is_decided_in_two_windows() {
        // 0.6 against 0.9, 30 scores a window each: the variances are still mostly the
        // prior's after one window, not after two.
        let mut rng = SmallRng::seed_from_u64(7);
        let mut t = MeanTest::new(0.10);
        for _ in 0..2 {
            let (c, s) = (
                scores(&mut rng, 30, 0.6, 0.1),
                scores(&mut rng, 30, 0.9, 0.1),
            );
            t.add(c, s, (0.0025, 0.0025));
        }
        assert!(t.log_e() > 1e4f64.ln(), "{}", t.log_e());
        let (cm, sm) = t.means();
        assert!((cm.unwrap() - 0.6).abs() < 0.05 && (sm.unwrap() - 0.9).abs() < 0.05);
    }

    #[test]
    fn windows_without_both_versions_or_with_impossible_sums_add_nothing() {
        let mut t = MeanTest::new(0.05);
        let one = QualityStats {
            count: 10,
            sum_milli: 8_000,
            sumsq_micro: 6_500_000,
        };
        t.add(one, QualityStats::default(), (0.0, 0.0));
        assert_eq!((t.windows, t.log_e()), (0, 0.0));
        // Sums past u64 saturate and give a mean above the scale: still finite, no panic.
        let huge = QualityStats {
            count: 1,
            sum_milli: u64::MAX,
            sumsq_micro: u64::MAX,
        };
        t.add(huge, huge, (f64::NAN, 0.0));
        assert!(t.log_e().is_finite());
        assert_eq!(t.canary.count, 11);
    }

    #[test]
    fn a_new_stage_keeps_the_rollouts_evidence_and_survives_the_state_file() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut t = MeanTest::new(0.05);
        for _ in 0..20 {
            let (c, s) = (
                scores(&mut rng, 50, 0.7, 0.2),
                scores(&mut rng, 50, 0.8, 0.2),
            );
            t.add(c, s, (0.0, 0.0));
        }
        let next = t.next_stage();
        assert_eq!((next.windows, next.log_e()), (0, 0.0));
        assert_eq!(next.rollout, t.rollout);
        assert_eq!(next.rollout_canary, t.rollout_canary);
        assert_eq!(next.null_fraction, t.null_fraction);
        let saved = serde_json::to_string(&t).unwrap();
        let back: MeanTest = serde_json::from_str(&saved).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.log_e(), t.log_e());
    }
}
