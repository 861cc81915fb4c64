//! The LLM signals of one version (`canary_llm_*`, `canary_quality_*`) and the user feedback
//! the controller itself receives (`POST /feedback`), as cumulative counts with the same
//! `minus`/`plus` as the request stats, so windows treat them alike.

use std::collections::BTreeMap;

use canary_contract::stats::{Metric, QualityPart};
use serde::{Deserialize, Serialize};

use super::counters::{self, counters};
use super::{minus_each, Histogram};

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
}

counters!(QualityStats: QualityPart {
    count: Counter = QualityPart::Count,
    sum_milli: Counter = QualityPart::SumMilli,
    sumsq_micro: Counter = QualityPart::SumSqMicro,
});

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

counters!(LlmStats: Metric {
    responses: Counter = Metric::LlmResponses,
    unparsed: Counter = Metric::LlmUnparsed,
    input_tokens: Counter = Metric::LlmInputTokens,
    output_tokens: Counter = Metric::LlmOutputTokens,
    cost_nanousd: Counter = Metric::LlmCostNanoUsd,
    cost_sumsq_microusd2: Counter = Metric::LlmCostSumSqMicroUsd2,
    refusals: Counter = Metric::LlmRefusals,
    feedback_up: Counter,
    feedback_down: Counter,
});

impl LlmStats {
    /// LLM answers seen, readable or not.
    pub fn answers(&self) -> u64 {
        self.responses.saturating_add(self.unparsed)
    }

    /// Whether anything LLM-related was counted at all.
    pub fn is_empty(&self) -> bool {
        self.answers() == 0
            && self.ttft.count == 0
            && self.quality.values().all(|q| q.count == 0)
            && self.feedback_up == 0
            && self.feedback_down == 0
    }

    /// Mean cost per readable response in nano-USD.
    pub fn cost_per_response_nanousd(&self) -> Option<f64> {
        (self.responses > 0).then(|| self.cost_nanousd as f64 / self.responses as f64)
    }

    pub fn minus(&self, earlier: &LlmStats) -> Option<LlmStats> {
        // A signal that disappeared means the counters were reset.
        if earlier
            .quality
            .iter()
            .any(|(s, q)| q.count > 0 && !self.quality.contains_key(s))
        {
            return None;
        }
        let mut delta = counters::minus(self, earlier)?;
        delta.ttft = self.ttft.minus(&earlier.ttft)?;
        delta.quality = minus_each(&self.quality, &earlier.quality, counters::minus)?;
        Some(delta)
    }

    pub fn plus(&self, other: &LlmStats) -> LlmStats {
        let mut sum = self.clone();
        sum += other;
        sum
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
            if let Some(slot) = q.slot(part) {
                *slot = count(value)?;
            }
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
        let Some(slot) = Metric::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .and_then(|m| self.slot(m))
        else {
            return Ok(false);
        };
        *slot = count(value)?;
        Ok(true)
    }

    /// Puts histogram buckets in bound order (samples may come in any order).
    pub(crate) fn finish(&mut self) {
        self.ttft.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
}

/// [`LlmStats::plus`] in place (a window's sum over its sources), without copying the
/// histogram and the signals only to replace them.
impl std::ops::AddAssign<&LlmStats> for LlmStats {
    fn add_assign(&mut self, other: &LlmStats) {
        counters::add_to(self, other);
        self.ttft += &other.ttft;
        for (signal, q) in &other.quality {
            counters::add_to(self.quality.entry(signal.clone()).or_default(), q);
        }
    }
}

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
