//! Lean mode's reading (see `spec::clusters`): one rollout's [`RolloutStats`] from the
//! stable and canary clusters' own stats in Envoy's `/stats/prometheus` text, instead of the
//! filter's. Requests are `upstream_rq_total`, the classes `upstream_rq_xx`, resets the
//! upstream's and Envoy's (`upstream_rq_rx_reset`, `upstream_rq_tx_reset`), the duration
//! `upstream_rq_time`. Names from the contract (`canary_contract::stats::CLUSTER_*`).

use canary_contract::stats::{
    CLUSTER_LABEL, CLUSTER_RQ_CLASS, CLUSTER_RQ_CLASS_LABEL, CLUSTER_RQ_RESETS, CLUSTER_RQ_TIME,
    CLUSTER_RQ_TOTAL,
};
use canary_contract::Version;
use prometheus_parse::Value;

use super::parse::{counter_value, scrape_text};
use super::{RolloutStats, StatsError};

/// The Envoy cluster of each version.
#[derive(Debug, Clone, Copy)]
pub struct ClusterNames<'a> {
    pub stable: &'a str,
    pub canary: &'a str,
}

impl ClusterNames<'_> {
    fn version(&self, cluster: Option<&str>) -> Option<Version> {
        match cluster {
            Some(c) if c == self.stable => Some(Version::Stable),
            Some(c) if c == self.canary => Some(Version::Canary),
            _ => None,
        }
    }
}

/// Reads rollout `rollout`'s stats from the clusters `clusters` in an Envoy
/// `/stats/prometheus` payload. A cluster without `upstream_rq_total` is a missing series
/// (Envoy has the counter from the start, at 0); classes never seen are 0 (Envoy creates
/// them at the first answer of the class).
pub fn parse_envoy_cluster_stats(
    text: &str,
    rollout: &str,
    clusters: ClusterNames,
) -> Result<RolloutStats, StatsError> {
    let scrape = scrape_text(text)?;
    let mut stats = RolloutStats::default();
    let mut found = [false; 2];
    for sample in &scrape.samples {
        let Some(version) = clusters.version(sample.labels.get(CLUSTER_LABEL)) else {
            continue;
        };
        let bad = |value: f64| StatsError::BadValue {
            rollout: rollout.to_string(),
            metric: sample.metric.clone(),
            value: value.to_string(),
        };
        let count = |value: f64| counter_value(value).ok_or_else(|| bad(value));
        let v = stats.version_mut(version);
        let name = sample.metric.as_str();
        match &sample.value {
            Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => {
                let x = *x;
                if name == CLUSTER_RQ_TOTAL {
                    v.requests = count(x)?;
                    found[version.index()] = true;
                } else if name == CLUSTER_RQ_CLASS {
                    let slot = match sample.labels.get(CLUSTER_RQ_CLASS_LABEL) {
                        Some("2") => &mut v.rq_2xx,
                        Some("3") => &mut v.rq_3xx,
                        Some("4") => &mut v.rq_4xx,
                        Some("5") => &mut v.rq_5xx,
                        _ => continue,
                    };
                    *slot = count(x)?;
                } else if CLUSTER_RQ_RESETS.contains(&name) {
                    v.resets = v.resets.saturating_add(count(x)?);
                } else if let Some(part) = name.strip_prefix(CLUSTER_RQ_TIME) {
                    match part {
                        "_count" => v.duration.count = count(x)?,
                        "_sum" => v.duration.sum_ms = x,
                        _ => {}
                    }
                }
            }
            // As Envoy's histograms are read: every bucket, `+Inf` included.
            Value::Histogram(buckets) if name == CLUSTER_RQ_TIME => {
                for b in buckets {
                    v.duration.buckets.push((b.less_than, count(b.count)?));
                }
            }
            _ => {}
        }
    }
    for version in Version::ALL {
        if !found[version.index()] {
            let cluster = match version {
                Version::Stable => clusters.stable,
                Version::Canary => clusters.canary,
            };
            return Err(StatsError::MissingCluster {
                metric: CLUSTER_RQ_TOTAL.to_string(),
                cluster: cluster.to_string(),
            });
        }
        let buckets = &mut stats.version_mut(version).duration.buckets;
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    super::sanity::check(&stats, rollout)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: ClusterNames = ClusterNames {
        stable: "stable",
        canary: "canary",
    };

    /// What Envoy 1.40 answered for `/stats/prometheus?filter=^cluster\.(stable|canary)\.upstream_rq_`
    /// (abridged: fewer buckets), plus a cluster no version uses.
    const ENVOY: &str = r#"# TYPE envoy_cluster_upstream_rq counter
envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="canary"} 90
envoy_cluster_upstream_rq{envoy_response_code="503",envoy_cluster_name="canary"} 10
# TYPE envoy_cluster_upstream_rq_completed counter
envoy_cluster_upstream_rq_completed{envoy_cluster_name="canary"} 100
envoy_cluster_upstream_rq_completed{envoy_cluster_name="stable"} 900
# TYPE envoy_cluster_upstream_rq_rx_reset counter
envoy_cluster_upstream_rq_rx_reset{envoy_cluster_name="canary"} 2
envoy_cluster_upstream_rq_rx_reset{envoy_cluster_name="stable"} 0
# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="canary"} 101
envoy_cluster_upstream_rq_total{envoy_cluster_name="stable"} 900
envoy_cluster_upstream_rq_total{envoy_cluster_name="controller"} 7
# TYPE envoy_cluster_upstream_rq_tx_reset counter
envoy_cluster_upstream_rq_tx_reset{envoy_cluster_name="canary"} 1
envoy_cluster_upstream_rq_tx_reset{envoy_cluster_name="stable"} 0
# TYPE envoy_cluster_upstream_rq_xx counter
envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="canary"} 90
envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="canary"} 10
envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="stable"} 880
envoy_cluster_upstream_rq_xx{envoy_response_code_class="4",envoy_cluster_name="stable"} 20
envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="controller"} 7
# TYPE envoy_cluster_upstream_rq_active gauge
envoy_cluster_upstream_rq_active{envoy_cluster_name="canary"} 1
# TYPE envoy_cluster_upstream_rq_time histogram
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="canary",le="0.5"} 30
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="canary",le="10"} 95
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="canary",le="+Inf"} 100
envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="canary"} 412.5
envoy_cluster_upstream_rq_time_count{envoy_cluster_name="canary"} 100
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="stable",le="0.5"} 800
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="stable",le="10"} 900
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="stable",le="+Inf"} 900
envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="stable"} 700
envoy_cluster_upstream_rq_time_count{envoy_cluster_name="stable"} 900
"#;

    #[test]
    fn each_version_is_its_clusters_stats() {
        let stats = parse_envoy_cluster_stats(ENVOY, "checkout", NAMES).expect("parses");
        let (c, s) = (&stats.canary, &stats.stable);
        assert_eq!((c.requests, c.rq_2xx, c.rq_5xx, c.resets), (101, 90, 10, 3));
        assert_eq!(
            (s.requests, s.rq_2xx, s.rq_4xx, s.rq_5xx),
            (900, 880, 20, 0)
        );
        assert_eq!(c.duration.count, 100);
        assert_eq!(c.duration.sum_ms, 412.5);
        assert_eq!(
            c.duration.buckets,
            vec![(0.5, 30), (10.0, 95), (f64::INFINITY, 100)]
        );
        assert_eq!(s.duration.quantile(0.5), Some(0.5 * 450.0 / 800.0));
        // The same reading with the clusters the other way round: the versions swap.
        let swapped = ClusterNames {
            stable: "canary",
            canary: "stable",
        };
        let other = parse_envoy_cluster_stats(ENVOY, "checkout", swapped).expect("parses");
        assert_eq!(other.stable, stats.canary);
    }

    #[test]
    fn a_cluster_without_its_request_counter_is_a_missing_series() {
        let named = ClusterNames {
            stable: "stable",
            canary: "canary-v2",
        };
        let err = parse_envoy_cluster_stats(ENVOY, "checkout", named).expect_err("no such cluster");
        assert_eq!(err.reason(), "missing_series");
        assert!(err.to_string().contains("`canary-v2`"), "{err}");
        assert!(err.to_string().contains("sources.clusters"), "{err}");
    }

    #[test]
    fn inconsistent_or_bad_readings_are_refused() {
        let more_5xx = ENVOY.replace(
            r#"envoy_response_code_class="5",envoy_cluster_name="canary"} 10"#,
            r#"envoy_response_code_class="5",envoy_cluster_name="canary"} 500"#,
        );
        let err = parse_envoy_cluster_stats(&more_5xx, "checkout", NAMES).expect_err("5xx > rq");
        assert_eq!(err.reason(), "invalid", "{err}");
        let negative = ENVOY.replace(
            r#"upstream_rq_total{envoy_cluster_name="stable"} 900"#,
            r#"upstream_rq_total{envoy_cluster_name="stable"} -1"#,
        );
        let err = parse_envoy_cluster_stats(&negative, "checkout", NAMES).expect_err("negative");
        assert_eq!(err.reason(), "invalid", "{err}");
    }
}
