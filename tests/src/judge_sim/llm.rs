//! LLM answers in the judge simulation: each version's cost per answer, refusals and time
//! to first token, as the filter's counters and TTFT histogram hold them for a window.
//! Sums are drawn from their moments (a window holds up to 300,000 answers), so a window
//! costs the same at every rate.

use canary_controller::stats::LlmStats;
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
}

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

    /// The window's models: each version's cost and refusal rate moved by its own drift.
    pub fn window(&self, rng: &mut SmallRng) -> LlmWindow {
        let sigma = self.scenario.drift_sigma;
        let mut moved = |m: LlmModel| LlmModel {
            cost_median_nanousd: m.cost_median_nanousd * drift(rng, sigma),
            refusal_rate: (m.refusal_rate * drift(rng, sigma)).min(1.0),
            ..m
        };
        LlmWindow {
            stable: moved(self.scenario.stable),
            canary: moved(self.scenario.canary),
        }
    }

    /// One Envoy's LLM counters for the window, over each version's answered requests.
    pub fn draw(
        &self,
        rng: &mut SmallRng,
        models: &LlmWindow,
        stable: u64,
        canary: u64,
    ) -> (LlmStats, LlmStats) {
        (
            answers(rng, &models.stable, &self.stable_ttft, stable),
            answers(rng, &models.canary, &self.canary_ttft, canary),
        )
    }
}

/// `n` answers: the cost sum and sum of squares from a log-normal's moments (normal
/// approximations of the sums), binomial refusals, the TTFT histogram.
fn answers(rng: &mut SmallRng, m: &LlmModel, ttft: &Buckets, n: u64) -> LlmStats {
    let count = n as f64;
    let (median, s2) = (m.cost_median_nanousd, m.cost_sigma * m.cost_sigma);
    let moment = |k: f64| median.powf(k) * (k * k * s2 / 2.0).exp();
    let (m1, m2, m4) = (moment(1.0), moment(2.0), moment(4.0));
    let mut normal = |mean: f64, var: f64| {
        let z: f64 = StandardNormal.sample(rng);
        (mean + z * var.max(0.0).sqrt()).max(0.0)
    };
    let cost = normal(count * m1, count * (m2 - m1 * m1));
    let squares = normal(count * m2, count * (m4 - m2 * m2));
    LlmStats {
        responses: n,
        cost_nanousd: cost.round() as u64,
        // The filter sums squares in µUSD² (10⁶ nano-USD²).
        cost_sumsq_microusd2: (squares / 1e6).round() as u64,
        refusals: binomial(rng, n, m.refusal_rate),
        ttft: ttft.draw(rng, count),
        ..LlmStats::default()
    }
}
