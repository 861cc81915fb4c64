//! The judge simulation's schedules and scenarios: seed 000's default stages and seed 001's
//! multi-day schedule; A/A scenarios (identical versions under real kinds of noise) and
//! regressions (the canary worse from its first request).

use super::llm::{LlmModel, LlmScenario, BASE_LLM};
use super::traffic::Latency;

/// A rollout schedule, as the spec's `stages`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub name: &'static str,
    pub stages_yaml: &'static str,
}

pub const SCHEDULES: [Schedule; 2] = [
    // Seed 000: 5% for 30 min, 25% for 1 h, 50% for 2 h, then 100%.
    Schedule {
        name: "seed000",
        stages_yaml: "[{weight_pct: 5, hold: 30m}, {weight_pct: 25, hold: 1h}, \
                      {weight_pct: 50, hold: 2h}, {weight_pct: 100}]",
    },
    // Seed 001: 5%, 10%, 25%, 50%, 75%, a day each, then 100%.
    Schedule {
        name: "seed001",
        stages_yaml: "[{weight_pct: 5, hold: 24h}, {weight_pct: 10, hold: 24h}, \
                      {weight_pct: 25, hold: 24h}, {weight_pct: 50, hold: 24h}, \
                      {weight_pct: 75, hold: 24h}, {weight_pct: 100}]",
    },
];

/// Requests per second over both versions.
pub const RATES: [f64; 4] = [10.0, 100.0, 1_000.0, 10_000.0];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Identical versions: every rollback is a false one.
    AA,
    /// The canary is worse: every promotion is a miss.
    Regression,
    /// The canary is worse in a sparsely sampled signal (eval scores of 1% of answers):
    /// measured, but kept out of `regression_detected_min`, since at low rates a whole
    /// rollout holds too few scores for any test that keeps the A/A error budget (seed
    /// 000 at 10 req/s: ~460 canary scores, a 10% drop at sd 0.2 is z ≈ 3.5 in all).
    SparseRegression,
}

/// Stable's error rate in every scenario.
pub const BASE_ERROR_RATE: f64 = 0.005;
/// Both versions' latency where a scenario does not say otherwise: median 120 ms, p99 214 ms.
pub const BASE_LATENCY: Latency = Latency::LogNormal {
    median_ms: 120.0,
    sigma: 0.25,
};

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub kind: Kind,
    pub canary_error_rate: f64,
    /// A share of the canary's users whose requests fail at this rate instead.
    pub canary_user_subset: Option<(f64, f64)>,
    pub stable_latency: Latency,
    pub canary_latency: Latency,
    /// Log-sd of each version's own error-rate multiplier, drawn anew every window.
    pub drift_sigma: f64,
    /// Chance per window of an 8 s burst of 20% errors on both versions alike.
    pub burst_chance: f64,
    /// Envoys the traffic is spread over, and restarts (counter resets) per hour among them.
    pub proxies: usize,
    pub restarts_per_hour: f64,
    /// LLM answers on every successful request (the rollout's filter then has `llm`).
    pub llm: Option<LlmScenario>,
}

const fn aa(name: &'static str) -> Scenario {
    Scenario {
        name,
        kind: Kind::AA,
        canary_error_rate: BASE_ERROR_RATE,
        canary_user_subset: None,
        stable_latency: BASE_LATENCY,
        canary_latency: BASE_LATENCY,
        drift_sigma: 0.0,
        burst_chance: 0.0,
        proxies: 1,
        restarts_per_hour: 0.0,
        llm: None,
    }
}

/// Each version's mean cost and refusal rate drift by ~10% between windows.
const LLM_DRIFT: f64 = 0.1;

/// An LLM service whose canary answers as `canary`.
const fn llm(name: &'static str, kind: Kind, canary: LlmModel) -> Scenario {
    Scenario {
        kind,
        llm: Some(LlmScenario {
            stable: BASE_LLM,
            canary,
            drift_sigma: LLM_DRIFT,
        }),
        ..aa(name)
    }
}

const fn regression(name: &'static str) -> Scenario {
    Scenario {
        kind: Kind::Regression,
        ..aa(name)
    }
}

/// Stable's latency in the within-bucket p99 scenario: median 120 ms, p99 151 ms.
const NARROW: Latency = Latency::LogNormal {
    median_ms: 120.0,
    sigma: 0.1,
};
/// Stable's latency in the across-buckets p99 scenario: p99 100.4 ms, just above the
/// default bucket bound 100.
const ACROSS: Latency = Latency::LogNormal {
    median_ms: 50.0,
    sigma: 0.3,
};

pub fn all() -> Vec<Scenario> {
    vec![
        aa("aa_binomial"),
        Scenario {
            burst_chance: 1.0 / 120.0,
            ..aa("aa_shared_bursts")
        },
        Scenario {
            drift_sigma: 0.4,
            ..aa("aa_rate_drift")
        },
        Scenario {
            stable_latency: Latency::HeavyTail {
                median_ms: 120.0,
                sigma: 0.3,
                tail: 0.05,
                tail_from_ms: 250.0,
                alpha: 1.2,
            },
            canary_latency: Latency::HeavyTail {
                median_ms: 120.0,
                sigma: 0.3,
                tail: 0.05,
                tail_from_ms: 250.0,
                alpha: 1.2,
            },
            ..aa("aa_heavy_tail_latency")
        },
        Scenario {
            proxies: 4,
            restarts_per_hour: 1.0,
            ..aa("aa_proxy_restart")
        },
        Scenario {
            canary_error_rate: 0.10,
            ..regression("errors_10pct")
        },
        Scenario {
            canary_error_rate: 0.01,
            ..regression("errors_2x")
        },
        Scenario {
            canary_user_subset: Some((0.15, 0.05)),
            ..regression("errors_15pct_of_users")
        },
        Scenario {
            stable_latency: NARROW,
            // p99 151 → 227 ms, inside the default bucket (100, 250].
            canary_latency: Latency::LogNormal {
                median_ms: 120.0,
                sigma: 0.2733,
            },
            ..regression("p99_1_5x_within_bucket")
        },
        Scenario {
            stable_latency: ACROSS,
            // p99 100 → 151 ms, across the bound 100.
            canary_latency: Latency::LogNormal {
                median_ms: 50.0,
                sigma: 0.474,
            },
            ..regression("p99_1_5x_across_buckets")
        },
        Scenario {
            canary_latency: BASE_LATENCY.scaled(1.3),
            ..regression("slowdown_1_3x")
        },
        llm("aa_llm", Kind::AA, BASE_LLM),
        llm(
            "llm_cost_1_5x",
            Kind::Regression,
            LlmModel {
                cost_median_nanousd: 1.5 * BASE_LLM.cost_median_nanousd,
                ..BASE_LLM
            },
        ),
        llm(
            "llm_refusals_2x",
            Kind::Regression,
            LlmModel {
                refusal_rate: 2.0 * BASE_LLM.refusal_rate,
                ..BASE_LLM
            },
        ),
        llm(
            "llm_ttft_1_5x",
            Kind::Regression,
            LlmModel {
                ttft: BASE_LLM.ttft.scaled(1.5),
                ..BASE_LLM
            },
        ),
        llm(
            "llm_quality_5pct_lower",
            Kind::Regression,
            LlmModel {
                helpful_mean: 0.95 * BASE_LLM.helpful_mean,
                ..BASE_LLM
            },
        ),
        llm(
            "llm_eval_10pct_lower",
            Kind::SparseRegression,
            LlmModel {
                eval_mean: 0.9 * BASE_LLM.eval_mean,
                ..BASE_LLM
            },
        ),
        llm(
            "llm_task_success_0_85",
            Kind::Regression,
            LlmModel {
                task_success: 0.85,
                ..BASE_LLM
            },
        ),
    ]
}
