//! Reading `/stats/prometheus` the way a Prometheus server would.

use anyhow::Result;
use canary_contract::stats::prometheus_metric_name;
pub use prometheus_parse::Sample;
use prometheus_parse::{Scrape, Value};

pub fn parse(text: &str) -> Result<Vec<Sample>> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    Ok(Scrape::parse(lines)?.samples)
}

/// The value of the sample named `metric` (as the filter names it: the native build's
/// series carry Envoy's `envoy_wasmcustom_` in front) whose labels include all of `labels`. Histogram
/// series are matched by their `_count` / `_sum` samples (the buckets are not scalars).
pub fn value(samples: &[Sample], metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .filter(|s| prometheus_metric_name(&s.metric) == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(scalar)
}

/// The samples named `metric` (as [`value`] matches names) whose labels include all of
/// `labels`: e.g. every latency bucket counter of one version.
pub fn series<'a>(
    samples: &'a [Sample],
    metric: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples
        .iter()
        .filter(move |s| prometheus_metric_name(&s.metric) == metric)
        .filter(move |s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

/// A scalar sample's value (a counter, gauge or untyped sample).
pub fn scalar(sample: &Sample) -> Option<f64> {
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        Value::Histogram(_) | Value::Summary(_) => None,
    }
}
