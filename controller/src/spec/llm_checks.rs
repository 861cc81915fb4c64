//! `checks.llm` of the rollout spec: the LLM checks' thresholds and sample minimums (cost
//! per response, refusal rate, quality scores, eval scores, task success, thumbs-down rate,
//! time to first token). Defaults follow the seeds; the checks run in `judge::llm`.

use serde::{Deserialize, Serialize};

use super::SpecError;

/// `checks.llm` of the rollout spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmChecks {
    pub cost: CostCheck,
    pub refusals: RefusalCheck,
    pub quality: QualityCheck,
    pub task_success: TaskSuccessCheck,
    pub thumbs_down: ThumbsDownCheck,
    pub ttft: TtftCheck,
    pub eval: EvalCheck,
}

/// Mean cost per LLM response (tokens × the version's prices).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostCheck {
    pub enabled: bool,
    /// Seed 001: more than 50% above stable fails. A sequential test over the stage, so a
    /// runaway (seed 002: 3× stable) is decided within a window or two.
    pub max_relative_increase: f64,
    /// Readable responses each version needs over the stage before the check decides.
    pub min_samples: u64,
}

impl Default for CostCheck {
    fn default() -> Self {
        CostCheck {
            enabled: true,
            max_relative_increase: 1.5,
            min_samples: 50,
        }
    }
}

/// Share of LLM answers ending in a refusal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefusalCheck {
    pub enabled: bool,
    /// Seed 001: refusal rate more than 100% above stable fails.
    pub max_relative_increase: f64,
    /// Answers each version needs over the stage before the check decides.
    pub min_samples: u64,
}

impl Default for RefusalCheck {
    fn default() -> Self {
        RefusalCheck {
            enabled: true,
            max_relative_increase: 2.0,
            min_samples: 50,
        }
    }
}

/// Quality scores (the `quality_headers` signals, values in 0..1, higher is better).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityCheck {
    pub enabled: bool,
    /// Seed 000: a mean more than 5% below stable's fails (a sequential test; a mean at
    /// most half as far below passes).
    pub max_relative_decrease: f64,
    /// Scores each version needs over the stage before the check decides.
    pub min_samples: u64,
    /// Signals judged as scores; empty: every signal of the filter's `llm.quality_headers`
    /// except `task_success.signal` (the error budget needs them known in advance).
    pub signals: Vec<String>,
    /// Whether too few samples is inconclusive (holds the stage); when false it is
    /// reported but does not hold the stage (for sparsely sampled scores).
    pub required: bool,
}

impl Default for QualityCheck {
    fn default() -> Self {
        QualityCheck {
            enabled: true,
            max_relative_decrease: 0.05,
            min_samples: 30,
            signals: Vec::new(),
            required: true,
        }
    }
}

/// Scores from continuous eval sampling (the filter's `eval`: an evaluator scores a share of
/// each version's answers, recorded as a quality signal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalCheck {
    pub enabled: bool,
    /// The quality signal holding the scores (the filter's `eval.signal`).
    pub signal: String,
    /// Seed 002: a mean score more than 10% below stable's rolls back.
    pub max_relative_decrease: f64,
    /// Scores each version needs over the stage before the check decides.
    pub min_samples: u64,
    /// As `quality.required`; off by default: at the seed's 1% sample a stage may have
    /// too few scores for a while, and that should not hold it.
    pub required: bool,
}

impl Default for EvalCheck {
    fn default() -> Self {
        EvalCheck {
            enabled: true,
            signal: canary_contract::eval::DEFAULT_EVAL_SIGNAL.into(),
            max_relative_decrease: 0.10,
            min_samples: 20,
            required: false,
        }
    }
}

/// Task success (a quality signal of 1/0 values) against an absolute minimum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskSuccessCheck {
    pub enabled: bool,
    /// The quality signal holding task success.
    pub signal: String,
    /// Seed 000: the canary's success rate must be at least 0.90 (a sequential test of its
    /// failed tasks against 10%; windows in which stable too is below it are left out).
    pub min_absolute: f64,
    /// Canary samples over the stage before the check decides.
    pub min_samples: u64,
    /// As `quality.required`.
    pub required: bool,
}

impl Default for TaskSuccessCheck {
    fn default() -> Self {
        TaskSuccessCheck {
            enabled: true,
            signal: "task_success".into(),
            min_absolute: 0.90,
            min_samples: 30,
            required: true,
        }
    }
}

/// Share of thumbs-down among the user ratings received at `POST /feedback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThumbsDownCheck {
    pub enabled: bool,
    /// More than this multiple of stable's rate fails (seed 001: "user feedback
    /// significantly negative", with the error rate's 1.5×).
    pub max_relative_increase: f64,
    /// Optional absolute ceiling (seed 002 gates on 5%); off by default, since the usual
    /// share of thumbs-down differs from product to product.
    pub max_absolute: Option<f64>,
    /// Ratings each version needs over the stage before the check decides.
    pub min_samples: u64,
    /// As `quality.required`; off by default: ratings come sparsely, and a window without
    /// enough of them should not hold the stage.
    pub required: bool,
}

impl Default for ThumbsDownCheck {
    fn default() -> Self {
        ThumbsDownCheck {
            enabled: true,
            max_relative_increase: 1.5,
            max_absolute: None,
            min_samples: 30,
            required: false,
        }
    }
}

/// A quantile of the time to first token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtftCheck {
    pub enabled: bool,
    pub quantile: f64,
    /// Seed 001: p95 latency more than 30% above stable fails.
    pub max_relative_increase: f64,
    pub min_samples: u64,
}

impl Default for TtftCheck {
    fn default() -> Self {
        TtftCheck {
            enabled: true,
            quantile: 0.95,
            max_relative_increase: 1.3,
            min_samples: 50,
        }
    }
}

impl LlmChecks {
    /// Problems with field paths under `checks.llm`.
    pub fn validate(&self) -> Vec<SpecError> {
        let mut errors = Vec::new();
        let mut push = |field: &str, reason: &str| {
            errors.push(SpecError {
                field: format!("checks.llm.{field}"),
                reason: reason.into(),
            })
        };
        let c = &self.cost;
        if not_a_multiple(c.max_relative_increase) {
            push("cost.max_relative_increase", "must be at least 1");
        }
        let r = &self.refusals;
        if not_a_multiple(r.max_relative_increase) {
            push("refusals.max_relative_increase", "must be at least 1");
        }
        let q = &self.quality;
        if !(q.max_relative_decrease > 0.0 && q.max_relative_decrease < 1.0) {
            push("quality.max_relative_decrease", "must be in (0, 1)");
        }
        let e = &self.eval;
        if !(e.max_relative_decrease > 0.0 && e.max_relative_decrease < 1.0) {
            push("eval.max_relative_decrease", "must be in (0, 1)");
        }
        if e.signal.is_empty() {
            push("eval.signal", "must name a quality signal");
        }
        let t = &self.task_success;
        if !(t.min_absolute > 0.0 && t.min_absolute < 1.0) {
            push("task_success.min_absolute", "must be in (0, 1)");
        }
        if t.signal.is_empty() {
            push("task_success.signal", "must name a quality signal");
        }
        let d = &self.thumbs_down;
        if not_a_multiple(d.max_relative_increase) {
            push("thumbs_down.max_relative_increase", "must be at least 1");
        }
        if d.max_absolute.is_some_and(|m| !(m > 0.0 && m <= 1.0)) {
            push("thumbs_down.max_absolute", "must be in (0, 1]");
        }
        let f = &self.ttft;
        if !(f.quantile > 0.0 && f.quantile < 1.0) {
            push("ttft.quantile", "must be in (0, 1), e.g. 0.95");
        }
        if not_a_multiple(f.max_relative_increase) {
            push("ttft.max_relative_increase", "must be at least 1");
        }
        for (name, min) in [
            ("cost", c.min_samples),
            ("refusals", r.min_samples),
            ("quality", q.min_samples),
            ("task_success", t.min_samples),
            ("thumbs_down", d.min_samples),
            ("ttft", f.min_samples),
            ("eval", e.min_samples),
        ] {
            if min < 2 {
                push(&format!("{name}.min_samples"), "must be at least 2");
            }
        }
        errors
    }
}

/// True when `x` is NOT a valid multiple (finite, at least 1): the validation's error
/// condition.
fn not_a_multiple(x: f64) -> bool {
    !super::is_multiple(x)
}
