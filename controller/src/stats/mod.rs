//! The filter's stats as the controller reads them: per version of one rollout
//! ([`RolloutStats`]), from one source or summed over a window. Data and parsing only, no I/O.
//!
//! - [`counters`]: the one table per counter struct, with `minus`/`plus` written once;
//! - [`histogram`], [`llm`] (LLM signals and feedback), [`shadow`] (shadow counters);
//! - [`parse`]: Envoy's `/stats/prometheus` text and Prometheus query answers into stats,
//!   each source's reading checked for consistency by `sanity`; [`clusters`]: lean mode's,
//!   the stable and canary clusters' own stats in Envoy's text;
//! - [`promql`]: every PromQL selector, generated from the contract's metric lists;
//! - [`window`]: successive readings of several Envoys into analysis windows.
//!
//! May import `spec` (nothing here does yet) and the contract; never `judge`, `machine` or
//! `server`.

use std::collections::BTreeMap;

use canary_contract::fallback::TierMetric;
use canary_contract::stats::Metric;
use canary_contract::Version;
use serde::{Deserialize, Serialize};

pub mod clusters;
pub(crate) mod counters;
pub mod histogram;
pub mod llm;
pub mod parse;
pub mod promql;
mod sanity;
pub mod shadow;
pub mod window;

use counters::counters;
pub use histogram::Histogram;
pub use llm::{LlmStats, QualityStats};
pub use parse::{
    parse_envoy_prometheus, parse_prometheus_query, parse_prometheus_query_per_instance,
};
pub use promql::{prometheus_query, prometheus_selector};
pub use shadow::ShadowCounts;

/// One version's counters and request-duration histogram.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionStats {
    pub requests: u64,
    pub rq_2xx: u64,
    pub rq_3xx: u64,
    pub rq_4xx: u64,
    pub rq_5xx: u64,
    pub resets: u64,
    pub duration: Histogram,
    /// LLM signals and user feedback (zero for rollouts without them).
    #[serde(default)]
    pub llm: LlmStats,
    /// Circuit breaker (canary only, rollouts with a breaker): trips and diverted requests
    /// are counters; `breaker_open` is the gauge, so a window holds its value at the end
    /// (summed over sources: the number of Envoys whose breaker is open).
    #[serde(default)]
    pub breaker_trips: u64,
    #[serde(default)]
    pub breaker_open: u64,
    #[serde(default)]
    pub breaker_diverted: u64,
}

impl VersionStats {
    /// Failed requests: 5xx answers (an upstream reset reaches the client as Envoy's own 503,
    /// so it is counted here too).
    pub fn errors(&self) -> u64 {
        self.rq_5xx
    }

    pub fn minus(&self, earlier: &VersionStats) -> Option<VersionStats> {
        // The counters of `self` without its histogram and LLM stats (which are worked out
        // on their own below): not copied only to be replaced.
        let counters_only = VersionStats {
            duration: Histogram::default(),
            llm: LlmStats::default(),
            ..*self
        };
        let mut delta = counters::minus(&counters_only, earlier)?;
        delta.duration = self.duration.minus(&earlier.duration)?;
        delta.llm = self.llm.minus(&earlier.llm)?;
        Some(delta)
    }

    pub fn plus(&self, other: &VersionStats) -> VersionStats {
        let mut sum = self.clone();
        sum += other;
        sum
    }
}

/// [`VersionStats::plus`] in place (a window's sum over its sources, each source's totals).
impl std::ops::AddAssign<&VersionStats> for VersionStats {
    fn add_assign(&mut self, other: &VersionStats) {
        counters::add_to(self, other);
        self.duration += &other.duration;
        self.llm += &other.llm;
    }
}

counters!(VersionStats: Metric {
    requests: Counter = Metric::RqTotal,
    rq_2xx: Counter = Metric::Rq2xx,
    rq_3xx: Counter = Metric::Rq3xx,
    rq_4xx: Counter = Metric::Rq4xx,
    rq_5xx: Counter = Metric::Rq5xx,
    resets: Counter = Metric::RqReset,
    breaker_trips: Counter = Metric::BreakerTrips,
    breaker_open: Gauge = Metric::BreakerOpen,
    breaker_diverted: Counter = Metric::BreakerDiverted,
});

/// Both versions of one rollout, from one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutStats {
    pub stable: VersionStats,
    pub canary: VersionStats,
    /// The shadow counters (zero without a shadow phase).
    #[serde(default)]
    pub shadow: ShadowCounts,
    /// The fallback chain's tiers by name (rollouts with `fallback` only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, TierStats>,
}

/// One tier of a rollout's fallback chain (`canary_tier_*{tier=...}`), from one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierStats {
    /// Requests the tier served (lighter tiers and the filter's response; the rollout's own
    /// service counts in `canary_rq_*`).
    pub requests: u64,
    pub rq_5xx: u64,
    pub trips: u64,
    /// Envoys whose breaker of this tier is open / half-open (gauges: the value at the end
    /// of a window, summed over sources).
    pub open: u64,
    pub half_open: u64,
}

counters!(TierStats: TierMetric {
    requests: Counter = TierMetric::RqTotal,
    rq_5xx: Counter = TierMetric::Rq5xx,
    trips: Counter = TierMetric::BreakerTrips,
    // Both from `TierMetric::BreakerState` (0 closed, 1 open, 2 half-open).
    open: Gauge,
    half_open: Gauge,
});

impl TierStats {
    /// Every tier metric the stats read: the table's, and the breaker state they are
    /// derived from.
    pub(crate) const METRICS: [TierMetric; 4] = [
        TierMetric::RqTotal,
        TierMetric::Rq5xx,
        TierMetric::BreakerTrips,
        TierMetric::BreakerState,
    ];

    /// `closed`, `open` or `half_open`: the worst over the Envoys.
    pub fn state(&self) -> &'static str {
        if self.open > 0 {
            "open"
        } else if self.half_open > 0 {
            "half_open"
        } else {
            "closed"
        }
    }
}

impl RolloutStats {
    pub fn version(&self, version: Version) -> &VersionStats {
        match version {
            Version::Stable => &self.stable,
            Version::Canary => &self.canary,
        }
    }

    pub(crate) fn version_mut(&mut self, version: Version) -> &mut VersionStats {
        match version {
            Version::Stable => &mut self.stable,
            Version::Canary => &mut self.canary,
        }
    }

    pub fn minus(&self, earlier: &RolloutStats) -> Option<RolloutStats> {
        Some(RolloutStats {
            stable: self.stable.minus(&earlier.stable)?,
            canary: self.canary.minus(&earlier.canary)?,
            tiers: minus_each(&self.tiers, &earlier.tiers, counters::minus)?,
            shadow: self.shadow.minus(&earlier.shadow)?,
        })
    }

    pub fn plus(&self, other: &RolloutStats) -> RolloutStats {
        let mut sum = self.clone();
        sum += other;
        sum
    }
}

/// [`RolloutStats::plus`] in place.
impl std::ops::AddAssign<&RolloutStats> for RolloutStats {
    fn add_assign(&mut self, other: &RolloutStats) {
        self.stable += &other.stable;
        self.canary += &other.canary;
        self.tiers = plus_each(&self.tiers, &other.tiers, counters::plus);
        counters::add_to(&mut self.shadow, &other.shadow);
    }
}

/// Per-key differences of maps of cumulative counters (a key new since `earlier` counts
/// from zero); `None` if any key's counters went backwards.
pub(crate) fn minus_each<T: Clone + Default>(
    now: &BTreeMap<String, T>,
    earlier: &BTreeMap<String, T>,
    minus: impl Fn(&T, &T) -> Option<T>,
) -> Option<BTreeMap<String, T>> {
    now.iter()
        .map(|(key, value)| {
            let before = earlier.get(key).cloned().unwrap_or_default();
            Some((key.clone(), minus(value, &before)?))
        })
        .collect()
}

/// Per-key sums of two maps of counters.
pub(crate) fn plus_each<T: Clone + Default>(
    a: &BTreeMap<String, T>,
    b: &BTreeMap<String, T>,
    plus: impl Fn(&T, &T) -> T,
) -> BTreeMap<String, T> {
    let mut sum = a.clone();
    for (key, value) in b {
        let total = plus(&sum.get(key).cloned().unwrap_or_default(), value);
        sum.insert(key.clone(), total);
    }
    sum
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    #[error("stats payload is not Prometheus text: {0}")]
    Unparsable(String),
    #[error("no `{metric}` series for rollout `{rollout}` (is the filter loaded and configured with it?)")]
    MissingSeries { rollout: String, metric: String },
    #[error("no `{metric}` series for Envoy cluster `{cluster}` (sources.clusters names it: is that the cluster's name?)")]
    MissingCluster { metric: String, cluster: String },
    #[error("`{metric}` for rollout `{rollout}` has an invalid value {value}")]
    BadValue {
        rollout: String,
        metric: String,
        value: String,
    },
    #[error("stats of rollout `{rollout}` are inconsistent: {reason}")]
    Inconsistent { rollout: String, reason: String },
}

impl StatsError {
    /// The `reason` label of the controller's source error counter.
    pub fn reason(&self) -> &'static str {
        match self {
            StatsError::Unparsable(_) => "unparsable",
            StatsError::MissingSeries { .. } | StatsError::MissingCluster { .. } => {
                "missing_series"
            }
            StatsError::BadValue { .. } | StatsError::Inconsistent { .. } => "invalid",
        }
    }
}
