//! Reads the filter's stats of one rollout from Envoy's `/stats/prometheus` text and from a
//! Prometheus `/api/v1/query` answer, both through one [`Accumulator`] of flat samples.
//!
//! The request duration comes as counters (`canary_rq_time_ms_in_bucket{upper_us="…"}`, one
//! per bucket, not cumulative, and `canary_rq_time_ms_sum`): the accumulator gathers them
//! into the cumulative [`super::Histogram`] the judge reads, as Envoy's own histograms are.

use std::collections::BTreeMap;

use canary_contract::stats::{bucket_upper_ms, prometheus_metric_name, Metric, BUCKET_LABEL};
use canary_contract::{ShadowMetric, Version};
use prometheus_parse::{Scrape, Value};

use super::{RolloutStats, StatsError, TierStats};

/// One scalar sample of the filter's metrics for one version.
struct FlatSample<'a> {
    name: &'a str,
    version: Version,
    /// The `le` bound of a `_bucket` sample.
    le: Option<f64>,
    /// The `upper_us` label of a latency bucket counter.
    upper_us: Option<&'a str>,
    value: f64,
}

/// Builds one source's [`RolloutStats`] from flat samples (counters, `_bucket`, `_count`,
/// `_sum`), as both Envoy's text format and Prometheus' query API deliver them. The
/// duration's buckets are gathered as (bound, count in the bucket) and made cumulative in
/// [`Accumulator::finish`].
#[derive(Default)]
struct Accumulator {
    stats: RolloutStats,
    found: [[bool; Metric::ALL.len()]; 2],
}

impl Accumulator {
    /// A `canary_tier_*` sample of tier `tier`.
    fn add_tier(
        &mut self,
        rollout: &str,
        tier: &str,
        name: &str,
        value: f64,
    ) -> Result<(), StatsError> {
        // Like the version series, a metric the stats do not read is skipped unchecked.
        let Some(metric) = TierStats::METRICS.into_iter().find(|m| m.name() == name) else {
            return Ok(());
        };
        let Some(n) = counter_value(value) else {
            return Err(StatsError::BadValue {
                rollout: rollout.to_string(),
                metric: name.to_string(),
                value: value.to_string(),
            });
        };
        let t = self.stats.tiers.entry(tier.to_string()).or_default();
        match t.slot(metric) {
            Some(slot) => *slot = n,
            // The breaker's state gauge: 0 closed, 1 open, 2 half-open.
            None => (t.open, t.half_open) = (u64::from(n == 1), u64::from(n == 2)),
        }
        Ok(())
    }

    fn add(&mut self, rollout: &str, s: FlatSample) -> Result<(), StatsError> {
        let count = |value: f64| -> Result<u64, StatsError> {
            counter_value(value).ok_or_else(|| StatsError::BadValue {
                rollout: rollout.to_string(),
                metric: s.name.to_string(),
                value: value.to_string(),
            })
        };
        if let Some(m) = ShadowMetric::parse(s.name) {
            if let (Version::Canary, Some(slot)) = (s.version, self.stats.shadow.slot(m)) {
                *slot = count(s.value)?;
            }
            return Ok(());
        }
        let v = self.stats.version_mut(s.version);
        let duration = Metric::RqTimeMs;
        if Some(s.name) == duration.in_bucket_name() {
            let bound =
                s.upper_us
                    .and_then(bucket_upper_ms)
                    .ok_or_else(|| StatsError::BadValue {
                        rollout: rollout.to_string(),
                        metric: format!("{}{{{BUCKET_LABEL}}}", s.name),
                        value: format!("{:?}", s.upper_us.unwrap_or("")),
                    })?;
            v.duration.buckets.push((bound, count(s.value)?));
            return Ok(());
        }
        if Some(s.name) == duration.sum_name() {
            // A counter of whole ms.
            v.duration.sum_ms = count(s.value)? as f64;
            self.found[s.version.index()][duration.index()] = true;
            return Ok(());
        }
        if v.llm.add_sample(s.name, s.le, s.value, count)? {
            return Ok(());
        }
        // Histograms other than the duration, and LLM signals other than the above: not
        // judged yet.
        let Some((metric, slot)) = Metric::ALL
            .into_iter()
            .find(|m| m.name() == s.name)
            .and_then(|m| Some((m, v.slot(m)?)))
        else {
            return Ok(());
        };
        *slot = count(s.value)?;
        self.found[s.version.index()][metric.index()] = true;
        Ok(())
    }

    fn finish(mut self, rollout: &str) -> Result<RolloutStats, StatsError> {
        for version in Version::ALL {
            for metric in [Metric::RqTotal, Metric::Rq5xx] {
                if !self.found[version.index()][metric.index()] {
                    return Err(StatsError::MissingSeries {
                        rollout: rollout.to_string(),
                        metric: metric.name().to_string(),
                    });
                }
            }
            cumulate(&mut self.stats.version_mut(version).duration);
            self.stats.version_mut(version).llm.finish();
        }
        super::sanity::check(&self.stats, rollout)?;
        Ok(self.stats)
    }
}

/// Bucket counts in any order, each of its own bucket, into a cumulative histogram: sorted
/// by bound, each the count at or below it, the total the count.
fn cumulate(h: &mut super::Histogram) {
    h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0u64;
    for (_, count) in &mut h.buckets {
        total = total.saturating_add(*count);
        *count = total;
    }
    h.count = total;
}

/// A counter's value as a `u64`: finite, not negative, whole, and below 2^64 (`as u64`
/// would saturate a larger one, and sums of saturated counters are meaningless).
pub(super) fn counter_value(value: f64) -> Option<u64> {
    const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
    (value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value < TWO_POW_64)
        .then_some(value as u64)
}

fn version_label(value: Option<&str>) -> Option<Version> {
    match value {
        Some("stable") => Some(Version::Stable),
        Some("canary") => Some(Version::Canary),
        _ => None,
    }
}

/// Envoy's `/stats/prometheus` text, parsed: what both readers of it (the filter's stats and
/// lean mode's cluster stats) start from.
pub(super) fn scrape_text(text: &str) -> Result<Scrape, StatsError> {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| StatsError::Unparsable(e.to_string()))
}

/// Reads one rollout's stats from an Envoy `/stats/prometheus` payload.
pub fn parse_envoy_prometheus(text: &str, rollout: &str) -> Result<RolloutStats, StatsError> {
    let scrape = scrape_text(text)?;
    let mut acc = Accumulator::default();
    for sample in &scrape.samples {
        if sample.labels.get("rollout") != Some(rollout) {
            continue;
        }
        // Either build's series (see `prometheus_metric_name`).
        let metric = prometheus_metric_name(&sample.metric);
        if let (Some(tier), Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x)) =
            (sample.labels.get("tier"), &sample.value)
        {
            acc.add_tier(rollout, tier, metric, *x)?;
            continue;
        }
        let Some(version) = version_label(sample.labels.get("version")) else {
            continue;
        };
        match &sample.value {
            Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => acc.add(
                rollout,
                FlatSample {
                    name: metric,
                    version,
                    le: None,
                    upper_us: sample.labels.get(BUCKET_LABEL),
                    value: *x,
                },
            )?,
            Value::Histogram(buckets) => {
                let name = format!("{metric}_bucket");
                for b in buckets {
                    acc.add(
                        rollout,
                        FlatSample {
                            name: &name,
                            version,
                            le: Some(b.less_than),
                            upper_us: None,
                            value: b.count,
                        },
                    )?;
                }
            }
            Value::Summary(_) => {}
        }
    }
    acc.finish(rollout)
}

/// Reads a Prometheus `/api/v1/query` answer (an instant vector of
/// [`super::prometheus_selector`]) into one [`RolloutStats`] per scraped Envoy (`instance` label).
pub fn parse_prometheus_query(
    body: &[u8],
    rollout: &str,
) -> Result<BTreeMap<String, RolloutStats>, StatsError> {
    parse_prometheus_query_per_instance(body, rollout)?
        .into_iter()
        .map(|(instance, stats)| Ok((instance, stats?)))
        .collect()
}

/// [`parse_prometheus_query`] with each Envoy's reading on its own: one whose series are
/// invalid or inconsistent is an error for that Envoy only. The outer error is the answer's.
pub fn parse_prometheus_query_per_instance(
    body: &[u8],
    rollout: &str,
) -> Result<BTreeMap<String, Result<RolloutStats, StatsError>>, StatsError> {
    let answer: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| StatsError::Unparsable(e.to_string()))?;
    if answer["status"] != "success" {
        return Err(StatsError::Unparsable(format!(
            "query failed: {}",
            answer["error"].as_str().unwrap_or("no error message")
        )));
    }
    let results = answer["data"]["result"]
        .as_array()
        .ok_or_else(|| StatsError::Unparsable("no data.result array".into()))?;
    // Each instance's accumulator, or the first error of its series.
    let mut per_instance: BTreeMap<String, Result<Accumulator, StatsError>> = BTreeMap::new();
    for r in results {
        let labels = &r["metric"];
        if labels["rollout"] != rollout {
            continue;
        }
        let (Some(name), Some(instance)) =
            (labels["__name__"].as_str(), labels["instance"].as_str())
        else {
            continue;
        };
        let entry = per_instance
            .entry(instance.to_string())
            .or_insert_with(|| Ok(Accumulator::default()));
        let Ok(acc) = entry else {
            continue;
        };
        if let Err(e) = add_query_sample(acc, r, name, rollout) {
            *entry = Err(e);
        }
    }
    Ok(per_instance
        .into_iter()
        .map(|(instance, acc)| (instance, acc.and_then(|acc| acc.finish(rollout))))
        .collect())
}

/// One series of a query answer into its instance's accumulator.
fn add_query_sample(
    acc: &mut Accumulator,
    r: &serde_json::Value,
    name: &str,
    rollout: &str,
) -> Result<(), StatsError> {
    let labels = &r["metric"];
    let value = r["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| StatsError::Unparsable(format!("bad value for {name}")))?;
    if let Some(tier) = labels["tier"].as_str() {
        return acc.add_tier(rollout, tier, name, value);
    }
    let Some(version) = version_label(labels["version"].as_str()) else {
        return Ok(());
    };
    let le = match labels["le"].as_str() {
        Some("+Inf") => Some(f64::INFINITY),
        Some(le) => Some(
            le.parse::<f64>()
                .map_err(|_| StatsError::Unparsable(format!("bad le {le:?} for {name}")))?,
        ),
        None => None,
    };
    acc.add(
        rollout,
        FlatSample {
            name,
            version,
            le,
            upper_us: labels[BUCKET_LABEL].as_str(),
            value,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::prometheus_selector;

    pub(crate) fn envoy_payload(rollout: &str, canary_total: u64, canary_5xx: u64) -> String {
        let mut out = String::new();
        for (metric, stable, canary) in [
            ("canary_rq_total", 900, canary_total),
            ("canary_rq_2xx", 895, canary_total - canary_5xx),
            ("canary_rq_5xx", 5, canary_5xx),
            ("canary_rq_reset", 0, 1),
        ] {
            out.push_str(&format!("# TYPE {metric} counter\n"));
            out.push_str(&format!(
                "{metric}{{rollout=\"{rollout}\",version=\"stable\"}} {stable}\n"
            ));
            out.push_str(&format!(
                "{metric}{{rollout=\"{rollout}\",version=\"canary\"}} {canary}\n"
            ));
        }
        // The duration as the filter counts it: per bucket (not cumulative) and the sum.
        out.push_str("# TYPE canary_rq_time_ms_in_bucket counter\n");
        for (version, n) in [("stable", 900), ("canary", canary_total)] {
            let l = format!("rollout=\"{rollout}\",version=\"{version}\"");
            for (upper_us, c) in [
                ("1000", n / 2),
                ("10000", n - n / 10 - n / 2),
                ("inf", n / 10),
            ] {
                out.push_str(&format!(
                    "canary_rq_time_ms_in_bucket{{{l},upper_us=\"{upper_us}\"}} {c}\n"
                ));
            }
        }
        out.push_str("# TYPE canary_rq_time_ms_sum counter\n");
        for (version, n) in [("stable", 900), ("canary", canary_total)] {
            let l = format!("rollout=\"{rollout}\",version=\"{version}\"");
            out.push_str(&format!("canary_rq_time_ms_sum{{{l}}} {}\n", n * 3));
        }
        // Another rollout's series must be ignored.
        out.push_str("canary_rq_total{rollout=\"other\",version=\"canary\"} 77\n");
        out
    }

    #[test]
    fn reads_counters_and_histograms_of_one_rollout() {
        let stats = parse_envoy_prometheus(&envoy_payload("shop", 100, 7), "shop").expect("ok");
        assert_eq!(stats.canary.requests, 100);
        assert_eq!(stats.canary.rq_5xx, 7);
        assert_eq!(stats.canary.resets, 1);
        assert_eq!(stats.stable.requests, 900);
        assert_eq!(stats.canary.duration.count, 100);
        assert_eq!(
            stats.canary.duration.buckets,
            vec![(1.0, 50), (10.0, 90), (f64::INFINITY, 100)],
            "bucket counts made cumulative, bounds in ms"
        );
        assert_eq!(stats.canary.duration.sum_ms, 300.0);
        assert_eq!(stats.stable.duration.count, 900);
    }

    #[test]
    fn a_latency_bucket_whose_upper_us_does_not_parse_is_refused_naming_it() {
        let good = envoy_payload("shop", 100, 7);
        for bad in [
            "upper_us=\"1.5\"",
            "upper_us=\"+Inf\"",
            "upper_us=\"\"",
            "le=\"1\"",
        ] {
            let text = good.replacen("upper_us=\"1000\"", bad, 1);
            let err = parse_envoy_prometheus(&text, "shop").expect_err(bad);
            assert!(matches!(err, StatsError::BadValue { .. }), "{bad}: {err}");
            assert!(
                err.to_string()
                    .contains("canary_rq_time_ms_in_bucket{upper_us}"),
                "{bad}: {err}"
            );
        }
    }

    /// The native build's `/stats/prometheus` (every series with Envoy's `envoy_wasmcustom_`
    /// in front) reads as the wasm build's.
    #[test]
    fn the_native_builds_series_read_as_the_wasm_builds() {
        let wasm = envoy_payload("shop", 100, 7);
        let native: String = wasm
            .lines()
            .map(|l| match l.strip_prefix("# TYPE ") {
                Some(rest) => format!("# TYPE envoy_wasmcustom_{rest}\n"),
                None if l.starts_with("canary_") => format!("envoy_wasmcustom_{l}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        assert!(native.contains("envoy_wasmcustom_canary_rq_total{"));
        assert_eq!(
            parse_envoy_prometheus(&native, "shop").expect("ok"),
            parse_envoy_prometheus(&wasm, "shop").expect("ok")
        );
    }

    /// Turns an Envoy text payload into the JSON a Prometheus instant query returns for it.
    fn as_query_answer(text: &str, instance: &str) -> serde_json::Value {
        let mut result = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = series.split_once('{').expect("labels");
            let mut metric =
                serde_json::json!({"__name__": name, "instance": instance, "job": "envoy"});
            for pair in labels.trim_end_matches('}').split(',') {
                let (k, v) = pair.split_once('=').expect("label");
                metric[k] = serde_json::json!(v.trim_matches('"'));
            }
            result.push(serde_json::json!({"metric": metric, "value": [1.0, value]}));
        }
        serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}})
    }

    #[test]
    fn prometheus_query_answers_match_the_envoy_payload_per_instance() {
        let a = envoy_payload("shop", 100, 7);
        let b = envoy_payload("shop", 40, 1);
        let mut answer = as_query_answer(&a, "10.0.0.1:15090");
        let other = as_query_answer(&b, "10.0.0.2:15090");
        if let (Some(x), Some(y)) = (
            answer["data"]["result"].as_array_mut(),
            other["data"]["result"].as_array(),
        ) {
            x.extend(y.iter().cloned());
        }
        let body = answer.to_string();
        let parsed = parse_prometheus_query(body.as_bytes(), "shop").expect("parsed");
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            parsed["10.0.0.1:15090"],
            parse_envoy_prometheus(&a, "shop").expect("a")
        );
        assert_eq!(
            parsed["10.0.0.2:15090"],
            parse_envoy_prometheus(&b, "shop").expect("b")
        );
        let failed = br#"{"status":"error","error":"parse error"}"#;
        assert!(parse_prometheus_query(failed, "shop").is_err());
        assert!(prometheus_selector("shop").contains("rollout=\"shop\""));
    }

    /// Envoy's `/stats/prometheus` for an LLM rollout: the request series plus LLM counters,
    /// the TTFT histogram and one quality signal, as Envoy 1.40 prints them.
    fn llm_payload(canary_responses: u64) -> String {
        let mut out = envoy_payload("chat", 100, 0);
        for (metric, stable, canary) in [
            ("canary_llm_responses", 900, canary_responses),
            ("canary_llm_unparsed", 2, 1),
            ("canary_llm_input_tokens", 90_000, canary_responses * 100),
            ("canary_llm_output_tokens", 180_000, canary_responses * 400),
            (
                "canary_llm_cost_nanousd",
                135_000_000,
                canary_responses * 300_000,
            ),
            (
                "canary_llm_cost_sumsq_microusd2",
                22_500_000,
                canary_responses * 90_000,
            ),
            ("canary_llm_refusals", 9, 3),
            ("canary_quality_helpful_count", 450, 50),
            ("canary_quality_helpful_sum_milli", 400_000, 40_000),
            (
                "canary_quality_helpful_sumsq_micro",
                380_000_000,
                36_000_000,
            ),
        ] {
            out.push_str(&format!("# TYPE {metric} counter\n"));
            out.push_str(&format!(
                "{metric}{{rollout=\"chat\",version=\"stable\"}} {stable}\n"
            ));
            out.push_str(&format!(
                "{metric}{{rollout=\"chat\",version=\"canary\"}} {canary}\n"
            ));
        }
        out.push_str("# TYPE canary_llm_ttft_ms histogram\n");
        for (version, n) in [("stable", 900), ("canary", canary_responses)] {
            let l = format!("rollout=\"chat\",version=\"{version}\"");
            for (le, c) in [("100", n / 2), ("250", n - n / 20), ("+Inf", n)] {
                out.push_str(&format!(
                    "canary_llm_ttft_ms_bucket{{{l},le=\"{le}\"}} {c}\n"
                ));
            }
            out.push_str(&format!("canary_llm_ttft_ms_sum{{{l}}} {}.5\n", n * 120));
            out.push_str(&format!("canary_llm_ttft_ms_count{{{l}}} {n}\n"));
        }
        out
    }

    #[test]
    fn reads_llm_counters_ttft_and_quality_signals() {
        let stats = parse_envoy_prometheus(&llm_payload(100), "chat").expect("ok");
        let (c, s) = (&stats.canary.llm, &stats.stable.llm);
        assert_eq!(c.responses, 100);
        assert_eq!(c.unparsed, 1);
        assert_eq!(c.output_tokens, 40_000);
        assert_eq!(c.cost_nanousd, 30_000_000);
        assert_eq!(c.cost_sumsq_microusd2, 9_000_000);
        assert_eq!(c.cost_per_response_nanousd(), Some(300_000.0));
        assert_eq!((c.refusals, s.refusals), (3, 9));
        assert_eq!(c.ttft.count, 100);
        assert_eq!(
            c.ttft.buckets,
            vec![(100.0, 50), (250.0, 95), (f64::INFINITY, 100)]
        );
        assert_eq!(c.ttft.sum_ms, 12_000.5);
        let q = s.quality["helpful"];
        assert_eq!(
            (q.count, q.sum_milli, q.sumsq_micro),
            (450, 400_000, 380_000_000)
        );
        // The request series are unaffected; a plain rollout has no LLM stats at all.
        assert_eq!(stats.canary.requests, 100);
        let plain = parse_envoy_prometheus(&envoy_payload("shop", 100, 7), "shop").expect("ok");
        assert!(plain.canary.llm.is_empty() && plain.stable.llm.is_empty());
        // Windows: deltas of everything.
        let later = parse_envoy_prometheus(&llm_payload(160), "chat").expect("ok");
        let delta = later.minus(&stats).expect("delta");
        assert_eq!(delta.canary.llm.responses, 60);
        assert_eq!(delta.canary.llm.cost_nanousd, 18_000_000);
        assert_eq!(delta.canary.llm.ttft.count, 60);
        assert_eq!(delta.stable.llm.quality["helpful"].count, 0);
        assert_eq!(stats.plus(&delta), later);
    }

    #[test]
    fn prometheus_query_answers_carry_the_llm_series_too() {
        let text = llm_payload(100);
        let body = as_query_answer(&text, "10.0.0.1:15090").to_string();
        let parsed = parse_prometheus_query(body.as_bytes(), "chat").expect("parsed");
        assert_eq!(
            parsed["10.0.0.1:15090"],
            parse_envoy_prometheus(&text, "chat").expect("envoy")
        );
        assert_eq!(parsed["10.0.0.1:15090"].canary.llm.responses, 100);
        // The query asks for every series the judge reads.
        let selector = prometheus_selector("chat");
        for metric in canary_contract::stats::Metric::ALL {
            if metric.is_llm() && metric != canary_contract::stats::Metric::LlmStreamMs {
                let stem = metric.name().trim_start_matches("canary_llm_");
                assert!(selector.contains(stem), "{selector} lacks {stem}");
            }
        }
        assert!(selector.contains("canary_quality_.+_(count|sum_milli|sumsq_micro)"));
    }

    #[test]
    fn breaker_series_are_read_and_the_gauge_is_not_a_delta() {
        let with_breaker = |trips: u64, open: u64, diverted: u64| {
            let mut text = envoy_payload("shop", 100, 7);
            text.push_str(&format!(
                "# TYPE canary_breaker_trips counter\ncanary_breaker_trips{{rollout=\"shop\",version=\"canary\"}} {trips}\n\
                 # TYPE canary_breaker_open gauge\ncanary_breaker_open{{rollout=\"shop\",version=\"canary\"}} {open}\n\
                 # TYPE canary_breaker_diverted counter\ncanary_breaker_diverted{{rollout=\"shop\",version=\"canary\"}} {diverted}\n"
            ));
            text
        };
        let before = parse_envoy_prometheus(&with_breaker(1, 1, 40), "shop").expect("ok");
        assert_eq!(
            (
                before.canary.breaker_trips,
                before.canary.breaker_open,
                before.canary.breaker_diverted
            ),
            (1, 1, 40)
        );
        let after = parse_envoy_prometheus(&with_breaker(1, 0, 90), "shop").expect("ok");
        let delta = after.minus(&before).expect("delta");
        assert_eq!(
            (
                delta.canary.breaker_trips,
                delta.canary.breaker_open,
                delta.canary.breaker_diverted
            ),
            (0, 0, 50)
        );
        assert_eq!(before.plus(&before).canary.breaker_open, 2, "Envoys open");
        // Without a breaker the series are absent: zeros, not an error.
        let plain = parse_envoy_prometheus(&envoy_payload("shop", 100, 7), "shop").expect("ok");
        assert_eq!(plain.canary.breaker_trips, 0);
        // The Prometheus source asks for them too.
        assert!(prometheus_selector("shop").contains("breaker_(trips|open|diverted)"));
        let answer = as_query_answer(&with_breaker(2, 1, 5), "10.0.0.1:15090").to_string();
        let parsed = parse_prometheus_query(answer.as_bytes(), "shop").expect("parsed");
        assert_eq!(parsed["10.0.0.1:15090"].canary.breaker_trips, 2);
        assert_eq!(parsed["10.0.0.1:15090"].canary.breaker_open, 1);
    }

    #[test]
    fn fallback_tier_series_are_read_from_both_sources() {
        let with_tiers = |lite: u64, lite_5xx: u64, state: u64| {
            format!(
                "{}# TYPE canary_tier_rq_total counter\ncanary_tier_rq_total{{rollout=\"shop\",tier=\"lite\"}} {lite}\n\
                 canary_tier_rq_total{{rollout=\"shop\",tier=\"response\"}} 4\n\
                 canary_tier_rq_total{{rollout=\"other\",tier=\"lite\"}} 999\n\
                 # TYPE canary_tier_rq_5xx counter\ncanary_tier_rq_5xx{{rollout=\"shop\",tier=\"lite\"}} {lite_5xx}\n\
                 # TYPE canary_tier_breaker_trips counter\ncanary_tier_breaker_trips{{rollout=\"shop\",tier=\"primary\"}} 1\n\
                 # TYPE canary_tier_breaker_state gauge\ncanary_tier_breaker_state{{rollout=\"shop\",tier=\"primary\"}} {state}\n",
                envoy_payload("shop", 100, 7)
            )
        };
        let before = parse_envoy_prometheus(&with_tiers(10, 2, 1), "shop").expect("ok");
        let lite = &before.tiers["lite"];
        assert_eq!((lite.requests, lite.rq_5xx), (10, 2));
        assert_eq!(before.tiers["response"].requests, 4);
        assert_eq!(before.tiers["primary"].state(), "open");
        let after = parse_envoy_prometheus(&with_tiers(25, 2, 2), "shop").expect("ok");
        let delta = after.minus(&before).expect("delta");
        assert_eq!(delta.tiers["lite"].requests, 15);
        assert_eq!(delta.tiers["primary"].trips, 0);
        assert_eq!(
            delta.tiers["primary"].state(),
            "half_open",
            "the gauge, not a delta"
        );
        assert_eq!(before.plus(&before).tiers["primary"].open, 2, "Envoys open");
        // Without a chain: no tiers, and none serialized.
        let plain = parse_envoy_prometheus(&envoy_payload("shop", 100, 7), "shop").expect("ok");
        assert!(plain.tiers.is_empty());
        assert!(!serde_json::to_string(&plain)
            .expect("json")
            .contains("tiers"));
        assert!(prometheus_selector("shop").contains("canary_tier_(rq_total|"));
        let answer = as_query_answer(&with_tiers(7, 1, 0), "10.0.0.1:15090").to_string();
        let parsed = parse_prometheus_query(answer.as_bytes(), "shop").expect("parsed");
        let from_prometheus = &parsed["10.0.0.1:15090"];
        assert_eq!(
            from_prometheus,
            &parse_envoy_prometheus(&with_tiers(7, 1, 0), "shop").expect("envoy")
        );
        assert_eq!(from_prometheus.tiers["primary"].state(), "closed");
    }

    #[test]
    fn missing_rollout_is_an_error_not_zeros() {
        let err = parse_envoy_prometheus(&envoy_payload("shop", 100, 7), "cart").expect_err("");
        assert!(matches!(err, StatsError::MissingSeries { .. }), "{err}");
    }

    #[test]
    fn counter_restart_yields_no_delta() {
        let before = parse_envoy_prometheus(&envoy_payload("s", 100, 7), "s").expect("ok");
        let after = parse_envoy_prometheus(&envoy_payload("s", 40, 1), "s").expect("ok");
        assert_eq!(after.minus(&before), None);
        let later = parse_envoy_prometheus(&envoy_payload("s", 150, 9), "s").expect("ok");
        let delta = later.minus(&before).expect("delta");
        assert_eq!(delta.canary.requests, 50);
        assert_eq!(delta.canary.rq_5xx, 2);
        assert_eq!(delta.stable.requests, 0);
    }

    #[test]
    fn shadow_counters_are_read_from_envoy_and_prometheus() {
        let mut text = String::new();
        for v in ["stable", "canary"] {
            for m in ["canary_rq_total", "canary_rq_5xx"] {
                text.push_str(&format!("{m}{{rollout=\"chat\",version=\"{v}\"}} 7\n"));
            }
        }
        text.push_str("canary_shadow_compared{rollout=\"chat\",version=\"canary\"} 40\n");
        text.push_str("canary_shadow_agree{rollout=\"chat\",version=\"canary\"} 31\n");
        text.push_str("canary_shadow_agree{rollout=\"other\",version=\"canary\"} 99\n");
        let stats = parse_envoy_prometheus(&text, "chat").expect("parsed");
        assert_eq!((stats.shadow.compared, stats.shadow.agree), (40, 31));

        let series = |name: &str, value: u64| {
            serde_json::json!({"metric": {"__name__": name, "rollout": "chat", "version": "canary",
                                          "instance": "e1"}, "value": [0, value.to_string()]})
        };
        let mut result = vec![
            series("canary_shadow_compared", 12),
            series("canary_shadow_failed", 2),
        ];
        for v in ["stable", "canary"] {
            for m in ["canary_rq_total", "canary_rq_5xx"] {
                let mut s = series(m, 1);
                s["metric"]["version"] = v.into();
                result.push(s);
            }
        }
        let body = serde_json::json!({"status": "success", "data": {"result": result}});
        let per = parse_prometheus_query(body.to_string().as_bytes(), "chat").expect("parsed");
        let e1 = &per["e1"].shadow;
        assert_eq!((e1.compared, e1.failed), (12, 2));
        let query = crate::stats::prometheus_query("chat");
        assert!(
            query.starts_with(r#"{__name__=~"canary_rq_(total|"#)
                && query.ends_with(r#"|canary_shadow_[a-z_]+",rollout="chat"}"#),
            "{query}"
        );
    }

    /// Issue 17: readings no filter could have counted were accepted (one `le="-NaN"` made a
    /// canary 10× slower pass; counters past 2^64 saturated, then wrapped in sums). Each is
    /// refused by both parsers, for that source only.
    #[test]
    fn impossible_readings_are_refused_by_both_parsers() {
        let good = envoy_payload("shop", 100, 7);
        let l = "rollout=\"shop\",version=\"canary\"";
        let line =
            |series: &str, labels: &str, value: &str| format!("{series}{{{l}{labels}}} {value}\n");
        let cases: Vec<(&str, String, String)> = vec![
            (
                "an upper_us not in whole µs",
                line("canary_rq_time_ms_in_bucket", ",upper_us=\"1000\"", "50"),
                line("canary_rq_time_ms_in_bucket", ",upper_us=\"NaN\"", "50"),
            ),
            (
                "a negative bound",
                line("canary_rq_time_ms_in_bucket", ",upper_us=\"1000\"", "50"),
                line("canary_rq_time_ms_in_bucket", ",upper_us=\"-1000\"", "50"),
            ),
            (
                "a count past 2^64",
                line("canary_rq_total", "", "100"),
                line("canary_rq_total", "", "18446744073709551616"),
            ),
            (
                "a negative bucket",
                line("canary_rq_time_ms_in_bucket", ",upper_us=\"1000\"", "50"),
                line("canary_rq_time_ms_in_bucket", ",upper_us=\"1000\"", "-50"),
            ),
            (
                "more 5xx than requests",
                line("canary_rq_5xx", "", "7"),
                line("canary_rq_5xx", "", "170"),
            ),
            (
                "a NaN sum",
                line("canary_rq_time_ms_sum", "", "300"),
                line("canary_rq_time_ms_sum", "", "NaN"),
            ),
            (
                "two buckets of one bound",
                line("canary_rq_time_ms_in_bucket", ",upper_us=\"10000\"", "40"),
                line("canary_rq_time_ms_in_bucket", ",upper_us=\"1000\"", "40"),
            ),
            (
                // 40 samples above 1 ms and 10 above 10 ms: at least 140 ms.
                "a sum below what its buckets hold",
                line("canary_rq_time_ms_sum", "", "300"),
                line("canary_rq_time_ms_sum", "", "139"),
            ),
        ];
        let mut shadow = good.clone();
        shadow.push_str(&line("canary_shadow_compared", "", "40"));
        shadow.push_str(&line("canary_shadow_agree", "", "31"));
        let mut texts: Vec<(&str, String)> = cases
            .iter()
            .map(|(what, from, to)| {
                assert!(
                    good.contains(from.as_str()),
                    "{what}: {from} not in the payload"
                );
                (*what, good.replace(from.as_str(), to))
            })
            .collect();
        parse_envoy_prometheus(&shadow, "shop").expect("31 of 40 agree");
        texts.push(("agreement over 100%", shadow.replace("} 31\n", "} 41\n")));
        for (what, text) in &texts {
            let err = parse_envoy_prometheus(text, "shop").expect_err(what);
            assert!(
                matches!(
                    err,
                    StatsError::Inconsistent { .. } | StatsError::BadValue { .. }
                ),
                "{what}: {err}"
            );
            assert_eq!(err.reason(), "invalid", "{what}");
            // The same answer from Prometheus, beside a good Envoy: only the bad one is refused.
            let mut answer = as_query_answer(text, "bad:15090");
            let other = as_query_answer(&good, "good:15090");
            if let (Some(x), Some(y)) = (
                answer["data"]["result"].as_array_mut(),
                other["data"]["result"].as_array(),
            ) {
                x.extend(y.iter().cloned());
            }
            let body = answer.to_string();
            let per = parse_prometheus_query_per_instance(body.as_bytes(), "shop").expect("answer");
            assert!(per["bad:15090"].is_err(), "{what}: {:?}", per["bad:15090"]);
            assert_eq!(
                per["good:15090"].as_ref().ok(),
                Some(&parse_envoy_prometheus(&good, "shop").expect("good")),
                "{what}"
            );
            assert!(
                parse_prometheus_query(body.as_bytes(), "shop").is_err(),
                "{what}"
            );
        }
    }
}
