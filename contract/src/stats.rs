//! Names of the stats the filter emits, shared with whatever reads them.
//!
//! A stat is named `<metric>.rollout.<rollout>.version.<version>`, e.g.
//! `canary_rq_total.rollout.checkout.version.canary`. Envoy shows it at `/stats` as
//! `wasmcustom.canary_rq_total.rollout.checkout.version.canary`; with the tag extraction
//! rules in [`ENVOY_STATS_TAGS`] in the bootstrap, `/stats/prometheus` shows
//! `canary_rq_total{rollout="checkout",version="canary"}`.

use crate::Version;

/// Prefix Envoy puts in front of stats defined by wasm modules (dropped in Prometheus output).
pub const ENVOY_WASM_PREFIX: &str = "wasmcustom.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Histogram,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Requests routed by the rollout.
    RqTotal,
    Rq2xx,
    Rq3xx,
    Rq4xx,
    Rq5xx,
    /// Requests that ended without a response: the client went away, or the upstream
    /// reset before sending response headers (Envoy then answers 503 itself, which is
    /// also counted in `canary_rq_5xx`).
    RqReset,
    /// Milliseconds from request headers to the end of the stream.
    RqTimeMs,
    /// Milliseconds from request headers to response headers.
    RqHeaderTimeMs,
}

impl Metric {
    pub const ALL: [Metric; 8] = [
        Metric::RqTotal,
        Metric::Rq2xx,
        Metric::Rq3xx,
        Metric::Rq4xx,
        Metric::Rq5xx,
        Metric::RqReset,
        Metric::RqTimeMs,
        Metric::RqHeaderTimeMs,
    ];

    /// The metric name, also the Prometheus name once tags are extracted.
    pub fn name(self) -> &'static str {
        match self {
            Metric::RqTotal => "canary_rq_total",
            Metric::Rq2xx => "canary_rq_2xx",
            Metric::Rq3xx => "canary_rq_3xx",
            Metric::Rq4xx => "canary_rq_4xx",
            Metric::Rq5xx => "canary_rq_5xx",
            Metric::RqReset => "canary_rq_reset",
            Metric::RqTimeMs => "canary_rq_time_ms",
            Metric::RqHeaderTimeMs => "canary_rq_header_time_ms",
        }
    }

    pub fn kind(self) -> MetricKind {
        match self {
            Metric::RqTimeMs | Metric::RqHeaderTimeMs => MetricKind::Histogram,
            _ => MetricKind::Counter,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The response-class counter for an HTTP status, if it is a valid final status.
    pub fn for_status(status: u16) -> Option<Metric> {
        match status {
            200..=299 => Some(Metric::Rq2xx),
            300..=399 => Some(Metric::Rq3xx),
            400..=499 => Some(Metric::Rq4xx),
            500..=599 => Some(Metric::Rq5xx),
            _ => None,
        }
    }
}

/// The stat name as the filter defines it (without Envoy's `wasmcustom.` prefix).
pub fn stat_name(metric: Metric, rollout: &str, version: Version) -> String {
    format!(
        "{}.rollout.{rollout}.version.{}",
        metric.name(),
        version.as_str()
    )
}

/// `stats_config.stats_tags` entries that turn the stat name into `rollout` and `version`
/// labels. Envoy matches each regex against the full stat name; the first group is removed
/// from the name, the second is the tag value.
pub const ENVOY_STATS_TAGS: [(&str, &str); 2] = [
    ("rollout", r"^wasmcustom\.canary_\w+\.(rollout\.([^.]+)\.)"),
    (
        "version",
        r"^wasmcustom\.canary_\w+\.rollout\.[^.]+\.(version\.([^.]+))$",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_names_follow_the_documented_shape() {
        assert_eq!(
            stat_name(Metric::RqTotal, "checkout", Version::Canary),
            "canary_rq_total.rollout.checkout.version.canary"
        );
        assert_eq!(
            stat_name(Metric::RqHeaderTimeMs, "a-b_c", Version::Stable),
            "canary_rq_header_time_ms.rollout.a-b_c.version.stable"
        );
    }

    #[test]
    fn metric_names_are_unique_prometheus_names() {
        let mut seen = std::collections::HashSet::new();
        for m in Metric::ALL {
            assert!(seen.insert(m.name()));
            assert!(m
                .name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert_eq!(Metric::ALL[m.index()], m);
        }
    }

    #[test]
    fn status_classes() {
        let table = [
            (100, None),
            (200, Some(Metric::Rq2xx)),
            (204, Some(Metric::Rq2xx)),
            (302, Some(Metric::Rq3xx)),
            (404, Some(Metric::Rq4xx)),
            (503, Some(Metric::Rq5xx)),
            (600, None),
        ];
        for (status, want) in table {
            assert_eq!(Metric::for_status(status), want, "{status}");
        }
    }
}
