//! Lean mode: the filter only routes, and each version's status and latency come from the
//! stats Envoy keeps anyway for the stable and canary clusters (`upstream_rq_*`,
//! `upstream_rq_time`). A rollout says where its stats come from (`"stats": "clusters"`),
//! and the filter's lean build takes only rollouts that say so and need nothing it cannot
//! do: it has no response callbacks (so no anonymous cookie to set) and keeps no counters
//! of its own (so no circuit breaker on them).
//!
//! Imports `validate`; `config` imports it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::validate::{field, Validator};

/// Where a rollout's per-version status and latency come from: `"filter"` or `"clusters"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatsFrom {
    /// The filter's own `canary_rq_*` stats per rollout and version.
    #[default]
    Filter,
    /// The stable and canary clusters' own stats (lean mode); a full build records its
    /// own stats all the same.
    Clusters,
}

impl StatsFrom {
    const NAMES: &'static [&'static str] = &["filter", "clusters"];

    pub fn is_filter(&self) -> bool {
        *self == StatsFrom::Filter
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatsFrom::Filter => "filter",
            StatsFrom::Clusters => "clusters",
        }
    }
}

// By hand, through the string deserializer every module has anyway: a derived enum costs the
// plain wasm module 2.5 KB more in visitors.
impl<'de> Deserialize<'de> for StatsFrom {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "filter" => Ok(StatsFrom::Filter),
            "clusters" => Ok(StatsFrom::Clusters),
            _ => Err(serde::de::Error::unknown_variant(&name, Self::NAMES)),
        }
    }
}

impl Serialize for StatsFrom {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What a lean build checks of one rollout, at `at` (`rollouts[i]`).
pub(crate) struct LeanRollout {
    pub(crate) stats: StatsFrom,
    pub(crate) anonymous_cookie: bool,
    pub(crate) circuit_breaker: bool,
}

pub(crate) fn validate_lean_rollout(v: &mut Validator, at: &str, r: LeanRollout) {
    v.check(
        r.stats == StatsFrom::Clusters,
        field(at, ".stats"),
        "this lean build of the filter keeps no per-version stats: set \"clusters\" and have \
         the controller read the stable and canary clusters' stats",
    );
    v.check(
        !r.anonymous_cookie,
        field(at, ".anonymous_cookie.enabled"),
        "this lean build of the filter never sees responses, so it cannot set the cookie: set \
         false and route by a user key (key_sources)",
    );
    v.check(
        !r.circuit_breaker,
        field(at, ".circuit_breaker"),
        "the breaker counts the filter's own canary answers, which this lean build does not \
         see",
    );
}
