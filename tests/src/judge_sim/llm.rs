//! LLM answers in the judge simulation: each version's cost per answer, refusals, time to
//! first token and scores (a quality header on every answer, task success, eval scores of
//! a 1% sample), as the filter's counters and TTFT histogram hold them for a window.
//! Sums are drawn from their moments (a window holds up to 300,000 answers), so a window
//! costs the same at every rate.

use canary_controller::stats::{LlmStats, QualityStats};
use rand::rngs::SmallRng;
use rand_distr::{Distribution, StandardNormal};

use super::traffic::{binomial, drift, Buckets, Latency};

/// One version's answers.
#[derive(Debug, Clone, Copy)]
pub struct LlmModel {
    /// The cost of an answer is log-normal: this median (nano-USD) and log-sd.
    pub cost_median_nanousd: f64,
    pub cost_sigma: f64,
    /// Share of answers that are refusals.
    pub refusal_rate: f64,
    pub ttft: Latency,
    /// Mean of the `helpful` quality score (each answer's: normal, sd [`SCORE_SD`], in
    /// 0..1), the share of tasks that succeed, and the mean eval score.
    pub helpful_mean: f64,
    pub task_success: f64,
    pub eval_mean: f64,
}

/// One answer's score varies around its version's mean by this much.
pub const SCORE_SD: f64 = 0.2;
/// The share of answers sent to the evaluator (seed 002: 1%).
pub const EVAL_SAMPLE: f64 = 0.01;
/// The quality header signals the simulated filter records (and its eval's signal).
pub const HELPFUL: &str = "helpful";
pub const TASK_SUCCESS: &str = "task_success";
pub const EVAL: &str = "eval";

/// Both versions' answers, and how much each version's mean cost and refusal rate drift
/// between windows (log-sd of a multiplier drawn anew every window, per version).
#[derive(Debug, Clone, Copy)]
pub struct LlmScenario {
    pub stable: LlmModel,
    pub canary: LlmModel,
    pub drift_sigma: f64,
}

/// Every LLM scenario's stable: $0.002 a typical answer with token counts varying by a
/// factor of ~1.8, 2% refusals, first token after 400 ms (p95 ~650 ms).
pub const BASE_LLM: LlmModel = LlmModel {
    cost_median_nanousd: 2_000_000.0,
    cost_sigma: 0.6,
    refusal_rate: 0.02,
    ttft: Latency::LogNormal {
        median_ms: 400.0,
        sigma: 0.3,
    },
    helpful_mean: 0.8,
    task_success: 0.95,
    eval_mean: 0.75,
};

/// A scenario's LLM answers, with the TTFT buckets cut once.
pub struct LlmSim {
    scenario: LlmScenario,
    stable_ttft: Buckets,
    canary_ttft: Buckets,
}

/// Both versions' models for one window, drift applied.
pub struct LlmWindow {
    stable: LlmModel,
    canary: LlmModel,
}

impl LlmSim {
    pub fn new(scenario: LlmScenario, bounds: &[f64]) -> LlmSim {
        LlmSim {
            scenario,
            stable_ttft: Buckets::new(scenario.stable.ttft, bounds),
            canary_ttft: Buckets::new(scenario.canary.ttft, bounds),
        }
    }

    /// The window's models: each version's cost, refusal rate and task failure rate moved
    /// by its own drift, and its mean scores by a quarter of it (an answer mix that moves
    /// cost by 10% moves a mean score by a few per cent).
    pub fn window(&self, rng: &mut SmallRng) -> LlmWindow {
        let sigma = self.scenario.drift_sigma;
        let mut moved = |m: LlmModel| LlmModel {
            cost_median_nanousd: m.cost_median_nanousd * drift(rng, sigma),
            refusal_rate: (m.refusal_rate * drift(rng, sigma)).min(1.0),
            task_success: 1.0 - ((1.0 - m.task_success) * drift(rng, sigma)).min(1.0),
            helpful_mean: (m.helpful_mean * drift(rng, sigma / 4.0)).min(1.0),
            eval_mean: (m.eval_mean * drift(rng, sigma / 4.0)).min(1.0),
            ..m
        };
        LlmWindow {
            stable: moved(self.scenario.stable),
            canary: moved(self.scenario.canary),
        }
    }

    /// One Envoy's LLM counters for the window into `(stable, canary)` (their allocations
    /// reused), over each version's answered requests: `(answered, mean)`, the count and
    /// its expectation (which the TTFT histogram is drawn for).
    pub fn draw(
        &mut self,
        rng: &mut SmallRng,
        models: &LlmWindow,
        answered: ((u64, f64), (u64, f64)),
        (stable, canary): (&mut LlmStats, &mut LlmStats),
    ) {
        let (s, c) = answered;
        answers(rng, &models.stable, &mut self.stable_ttft, s, stable);
        answers(rng, &models.canary, &mut self.canary_ttft, c, canary);
    }
}

/// `n` answers into `out`: the cost sum and sum of squares from a log-normal's moments
/// (normal approximations of the sums), binomial refusals, the TTFT histogram of
/// `Poisson(mean)` answers (`mean` stays the same over a stage, so the draw's plan is
/// worked out once: see [`Buckets::draw_same_mean`]).
fn answers(
    rng: &mut SmallRng,
    m: &LlmModel,
    ttft: &mut Buckets,
    (n, mean): (u64, f64),
    out: &mut LlmStats,
) {
    let count = n as f64;
    // The k-th moment is median^k · e^(k²σ²/2): for k = 1, 2, 4 one `exp` and squarings.
    let (median, g) = (
        m.cost_median_nanousd,
        (m.cost_sigma * m.cost_sigma / 2.0).exp(),
    );
    let (g4, median2) = (g * g * (g * g), median * median);
    let (m1, m2, m4) = (
        median * g,
        median2 * g4,
        median2 * median2 * (g4 * g4) * (g4 * g4),
    );
    let mut normal = |mean: f64, var: f64| {
        let z: f64 = StandardNormal.sample(rng);
        (mean + z * var.max(0.0).sqrt()).max(0.0)
    };
    let cost = normal(count * m1, count * (m2 - m1 * m1));
    let squares = normal(count * m2, count * (m4 - m2 * m2));
    let successes = binomial(rng, n, m.task_success) * 1_000;
    let evals = binomial(rng, n, EVAL_SAMPLE);
    let quality = [
        (HELPFUL, scores(rng, n, m.helpful_mean)),
        (
            TASK_SUCCESS,
            QualityStats {
                count: n,
                sum_milli: successes,
                sumsq_micro: successes * 1_000,
            },
        ),
        (EVAL, scores(rng, evals, m.eval_mean)),
    ];
    let mut ttft_histogram = std::mem::take(&mut out.ttft);
    ttft.draw_same_mean(rng, mean, &mut ttft_histogram);
    let mut signals = std::mem::take(&mut out.quality);
    for (signal, q) in quality {
        // A signal without samples is not in the filter's stats at all.
        if q.count == 0 {
            signals.remove(signal);
        } else if let Some(kept) = signals.get_mut(signal) {
            *kept = q;
        } else {
            signals.insert(signal.to_string(), q);
        }
    }
    *out = LlmStats {
        responses: n,
        cost_nanousd: cost.round() as u64,
        // The filter sums squares in µUSD² (10⁶ nano-USD²).
        cost_sumsq_microusd2: (squares / 1e6).round() as u64,
        refusals: binomial(rng, n, m.refusal_rate),
        ttft: ttft_histogram,
        quality: signals,
        ..LlmStats::default()
    };
}

/// `n` scores of mean `mean` and sd [`SCORE_SD`] as the filter sums them (thousandths and
/// millionths), from the sums' moments: `Σx ≈ N(nμ, nσ²)`, `Σx² ≈ N(n(μ² + σ²), 4nμ²σ²)`,
/// kept where samples in 0..1 could put them.
fn scores(rng: &mut SmallRng, n: u64, mean: f64) -> QualityStats {
    let count = n as f64;
    let var = SCORE_SD * SCORE_SD;
    let mut normal = |mean: f64, var: f64| {
        let z: f64 = StandardNormal.sample(rng);
        mean + z * var.max(0.0).sqrt()
    };
    let sum = normal(count * mean, count * var).clamp(0.0, count);
    let squares = normal(count * (mean * mean + var), 4.0 * count * mean * mean * var)
        .clamp(sum * sum / count.max(1.0), sum);
    QualityStats {
        count: n,
        sum_milli: (sum * 1e3).round() as u64,
        sumsq_micro: (squares * 1e6).round() as u64,
    }
}
