//! The LLM signals of one version (`canary_llm_*`, `canary_quality_*`) and the user feedback
//! the controller itself receives (`POST /feedback`), as cumulative counts with the same
//! `minus`/`plus` as the request stats, so windows treat them alike.

use std::collections::BTreeMap;

use canary_contract::stats::{Metric, QualityPart};
use serde::{Deserialize, Serialize};

use crate::stats::{minus_each, plus_each, Histogram};

/// One quality signal's samples: their number, sum (thousandths) and sum of squares
/// (millionths), as the filter counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QualityStats {
    pub count: u64,
    pub sum_milli: u64,
    pub sumsq_micro: u64,
}

impl QualityStats {
    /// Mean and (population) variance of the samples in 0..1 units; `None` without samples.
    pub fn mean_var(&self) -> Option<(f64, f64)> {
        if self.count == 0 {
            return None;
        }
        let n = self.count as f64;
        let mean = self.sum_milli as f64 / 1_000.0 / n;
        let var = (self.sumsq_micro as f64 / 1_000_000.0 / n - mean * mean).max(0.0);
        Some((mean, var))
    }

    fn minus(&self, earlier: &QualityStats) -> Option<QualityStats> {
        Some(QualityStats {
            count: self.count.checked_sub(earlier.count)?,
            sum_milli: self.sum_milli.checked_sub(earlier.sum_milli)?,
            sumsq_micro: self.sumsq_micro.checked_sub(earlier.sumsq_micro)?,
        })
    }

    fn plus(&self, other: &QualityStats) -> QualityStats {
        QualityStats {
            count: self.count + other.count,
            sum_milli: self.sum_milli + other.sum_milli,
            sumsq_micro: self.sumsq_micro + other.sumsq_micro,
        }
    }
}

/// One version's LLM signals. All zero for a rollout without `llm` in its filter config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlmStats {
    pub responses: u64,
    pub unparsed: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_nanousd: u64,
    /// Σ (cost per response in µUSD)², for the variance of the cost per response.
    pub cost_sumsq_microusd2: u64,
    pub refusals: u64,
    /// Time to first token (first response body bytes), ms.
    pub ttft: Histogram,
    /// Per quality signal (`canary_quality_<signal>_*`).
    pub quality: BTreeMap<String, QualityStats>,
    /// User ratings received by the controller (`POST /feedback`), attributed to the version.
    pub feedback_up: u64,
    pub feedback_down: u64,
}

impl LlmStats {
    /// LLM answers seen, readable or not.
    pub fn answers(&self) -> u64 {
        self.responses + self.unparsed
    }

    /// Whether anything LLM-related was counted at all.
    pub fn is_empty(&self) -> bool {
        self.answers() == 0
            && self.ttft.count == 0
            && self.quality.values().all(|q| q.count == 0)
            && self.feedback_up + self.feedback_down == 0
    }

    /// Mean cost per readable response in nano-USD.
    pub fn cost_per_response_nanousd(&self) -> Option<f64> {
        (self.responses > 0).then(|| self.cost_nanousd as f64 / self.responses as f64)
    }

    pub fn minus(&self, earlier: &LlmStats) -> Option<LlmStats> {
        let quality = minus_each(&self.quality, &earlier.quality, QualityStats::minus)?;
        // A signal that disappeared means the counters were reset.
        if earlier
            .quality
            .iter()
            .any(|(s, q)| q.count > 0 && !self.quality.contains_key(s))
        {
            return None;
        }
        Some(LlmStats {
            responses: self.responses.checked_sub(earlier.responses)?,
            unparsed: self.unparsed.checked_sub(earlier.unparsed)?,
            input_tokens: self.input_tokens.checked_sub(earlier.input_tokens)?,
            output_tokens: self.output_tokens.checked_sub(earlier.output_tokens)?,
            cost_nanousd: self.cost_nanousd.checked_sub(earlier.cost_nanousd)?,
            cost_sumsq_microusd2: self
                .cost_sumsq_microusd2
                .checked_sub(earlier.cost_sumsq_microusd2)?,
            refusals: self.refusals.checked_sub(earlier.refusals)?,
            ttft: self.ttft.minus(&earlier.ttft)?,
            quality,
            feedback_up: self.feedback_up.checked_sub(earlier.feedback_up)?,
            feedback_down: self.feedback_down.checked_sub(earlier.feedback_down)?,
        })
    }

    pub fn plus(&self, other: &LlmStats) -> LlmStats {
        let quality = plus_each(&self.quality, &other.quality, QualityStats::plus);
        LlmStats {
            responses: self.responses + other.responses,
            unparsed: self.unparsed + other.unparsed,
            input_tokens: self.input_tokens + other.input_tokens,
            output_tokens: self.output_tokens + other.output_tokens,
            cost_nanousd: self.cost_nanousd.saturating_add(other.cost_nanousd),
            cost_sumsq_microusd2: self
                .cost_sumsq_microusd2
                .saturating_add(other.cost_sumsq_microusd2),
            refusals: self.refusals + other.refusals,
            ttft: self.ttft.plus(&other.ttft),
            quality,
            feedback_up: self.feedback_up + other.feedback_up,
            feedback_down: self.feedback_down + other.feedback_down,
        }
    }

    /// Takes one flat sample if it is an LLM or quality series. `count` turns a value into
    /// a counter (refusing negative, fractional or non-finite ones). Returns whether the
    /// sample was an LLM one.
    pub(crate) fn add_sample<E>(
        &mut self,
        name: &str,
        le: Option<f64>,
        value: f64,
        count: impl Fn(f64) -> Result<u64, E>,
    ) -> Result<bool, E> {
        if let Some((signal, part)) = QualityPart::parse(name) {
            let q = self.quality.entry(signal.to_string()).or_default();
            let slot = match part {
                QualityPart::Count => &mut q.count,
                QualityPart::SumMilli => &mut q.sum_milli,
                QualityPart::SumSqMicro => &mut q.sumsq_micro,
            };
            *slot = count(value)?;
            return Ok(true);
        }
        if let Some(suffix) = name.strip_prefix(Metric::LlmTtftMs.name()) {
            match (suffix, le) {
                ("_bucket", Some(le)) => self.ttft.buckets.push((le, count(value)?)),
                ("_count", _) => self.ttft.count = count(value)?,
                ("_sum", _) => self.ttft.sum_ms = value,
                _ => return Ok(false),
            }
            return Ok(true);
        }
        let slot = match Metric::ALL.iter().find(|m| m.name() == name) {
            Some(Metric::LlmResponses) => &mut self.responses,
            Some(Metric::LlmUnparsed) => &mut self.unparsed,
            Some(Metric::LlmInputTokens) => &mut self.input_tokens,
            Some(Metric::LlmOutputTokens) => &mut self.output_tokens,
            Some(Metric::LlmCostNanoUsd) => &mut self.cost_nanousd,
            Some(Metric::LlmCostSumSqMicroUsd2) => &mut self.cost_sumsq_microusd2,
            Some(Metric::LlmRefusals) => &mut self.refusals,
            _ => return Ok(false),
        };
        *slot = count(value)?;
        Ok(true)
    }

    /// Puts histogram buckets in bound order (samples may come in any order).
    pub(crate) fn finish(&mut self) {
        self.ttft.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
}

/// The part of the Prometheus selector (a regex alternative of `__name__`) for LLM series.
pub const PROMETHEUS_NAME_ALTERNATIVES: &str = "canary_llm_(responses|unparsed|input_tokens|output_tokens|cost_nanousd|cost_sumsq_microusd2|refusals|ttft_ms_bucket|ttft_ms_count|ttft_ms_sum)|canary_quality_.+_(count|sum_milli|sumsq_micro)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_mean_and_variance() {
        // Samples 1, 1, 0, 0.5: mean 0.625, E[x²] = 2.25/4 = 0.5625, var = 0.171875.
        let q = QualityStats {
            count: 4,
            sum_milli: 2_500,
            sumsq_micro: 2_250_000,
        };
        let (mean, var) = q.mean_var().expect("samples");
        assert!((mean - 0.625).abs() < 1e-12);
        assert!((var - 0.171_875).abs() < 1e-12);
        assert_eq!(QualityStats::default().mean_var(), None);
    }

    #[test]
    fn minus_and_plus_cover_every_field() {
        let mut a = LlmStats {
            responses: 10,
            cost_nanousd: 1_000,
            refusals: 1,
            feedback_down: 2,
            ..LlmStats::default()
        };
        a.quality.insert(
            "q".into(),
            QualityStats {
                count: 3,
                sum_milli: 2_000,
                sumsq_micro: 1_500_000,
            },
        );
        let twice = a.plus(&a);
        assert_eq!(twice.minus(&a), Some(a.clone()));
        assert_eq!(twice.quality["q"].count, 6);
        // Counters that went down (a restart) give no delta.
        assert_eq!(a.minus(&twice), None);
        let mut vanished = twice.clone();
        vanished.quality.clear();
        assert_eq!(vanished.minus(&a), None);
    }
}
