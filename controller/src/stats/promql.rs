//! Every PromQL selector the Prometheus source sends, generated from the contract's metric
//! lists and the stats' own tables of what they read ([`super::counters`]), so a series the
//! parser reads is always asked for.
//!
//! The names go into one `__name__=~` regex, grouped by family (`canary_rq_(total|2xx|…)`):
//! set operators (`A or B`) would match label sets without the metric name and drop every
//! series but one per label set.

use canary_contract::stats::{Metric, MetricKind, QualityPart};
use canary_contract::ShadowMetric;

use super::{LlmStats, TierStats, VersionStats};

/// The latency the stats read: each version's request duration (bucket counters) and the
/// LLM time to first token (an Envoy histogram).
const HISTOGRAMS: [Metric; 2] = [Metric::RqTimeMs, Metric::LlmTtftMs];

/// The PromQL selector for every series of `rollout` the judge needs.
pub fn prometheus_selector(rollout: &str) -> String {
    selector(&judge_names(), rollout)
}

/// The Prometheus source's query for `rollout`: the judge's series and the shadow counters.
pub fn prometheus_query(rollout: &str) -> String {
    selector(&format!("{}|{}", judge_names(), shadow_names()), rollout)
}

fn selector(names: &str, rollout: &str) -> String {
    format!("{{__name__=~\"{names}\",rollout=\"{rollout}\"}}")
}

/// The regex of every per-version and per-tier series the stats read.
fn judge_names() -> String {
    let per_version = Metric::ALL
        .into_iter()
        .filter(|m| {
            VersionStats::KEYS.contains(m) || LlmStats::KEYS.contains(m) || HISTOGRAMS.contains(m)
        })
        .flat_map(|m| match m.kind() {
            MetricKind::Histogram => ["_bucket", "_count", "_sum"]
                .map(|part| format!("{}{part}", m.name()))
                .to_vec(),
            MetricKind::Buckets => [m.in_bucket_name(), m.sum_name()]
                .into_iter()
                .flatten()
                .map(str::to_string)
                .collect(),
            MetricKind::Counter | MetricKind::Gauge => vec![m.name().to_string()],
        });
    let tiers = TierStats::METRICS.map(|m| m.name().to_string());
    let quality = {
        // `canary_quality_.+_` for any signal, then the part.
        let pattern = QualityPart::Count.metric_name(".+");
        let prefix = pattern.trim_end_matches(QualityPart::Count.suffix());
        let parts: Vec<&str> = QualityPart::ALL.iter().map(|p| p.suffix()).collect();
        format!("{prefix}({})", parts.join("|"))
    };
    format!("{}|{}|{quality}", by_family(per_version), by_family(tiers))
}

/// The shadow counters: their common prefix and any suffix.
fn shadow_names() -> String {
    let names = ShadowMetric::ALL.map(ShadowMetric::name);
    let mut prefix = names[0];
    for name in names {
        while !name.starts_with(prefix) {
            prefix = &prefix[..prefix.len() - 1];
        }
    }
    format!("{prefix}[a-z_]+")
}

/// `canary_rq_total`, `canary_rq_2xx`, `canary_llm_refusals` →
/// `canary_rq_(total|2xx)|canary_llm_(refusals)`, families in order of first appearance.
fn by_family(names: impl IntoIterator<Item = String>) -> String {
    let mut families: Vec<(String, Vec<String>)> = Vec::new();
    for name in names {
        // The family is the name up to its second `_`: `canary_rq_`, `canary_tier_`.
        let split = name.match_indices('_').nth(1).map_or(0, |(i, _)| i + 1);
        let (family, rest) = name.split_at(split);
        match families.iter_mut().find(|(f, _)| f == family) {
            Some((_, rests)) => rests.push(rest.to_string()),
            None => families.push((family.to_string(), vec![rest.to_string()])),
        }
    }
    families
        .iter()
        .map(|(family, rests)| format!("{family}({})", rests.join("|")))
        .collect::<Vec<_>>()
        .join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_group_the_read_series_by_family() {
        assert_eq!(
            prometheus_selector("shop"),
            "{__name__=~\"canary_rq_(total|2xx|3xx|4xx|5xx|reset|time_ms_in_bucket|time_ms_sum)\
             |canary_breaker_(trips|open|diverted)\
             |canary_llm_(responses|unparsed|input_tokens|output_tokens|cost_nanousd|refusals|ttft_ms_bucket|ttft_ms_count|ttft_ms_sum|cost_sumsq_microusd2)\
             |canary_tier_(rq_total|rq_5xx|breaker_trips|breaker_state)\
             |canary_quality_.+_(count|sum_milli|sumsq_micro)\",rollout=\"shop\"}"
        );
        assert!(prometheus_query("shop").ends_with("|canary_shadow_[a-z_]+\",rollout=\"shop\"}"));
    }
}
