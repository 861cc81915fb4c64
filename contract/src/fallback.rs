//! The fallback chain's configuration (`rollouts[].fallback`, seed 002 §5).
//!
//! A rollout's own service (stable and canary together, tier `primary`) is the first tier;
//! `tiers` are lighter versions tried in order, each reached by setting the rollout's route
//! header to its `route_value`; the last resort is a deterministic `response` the filter
//! sends itself, marked degraded. Every tier but the response has a circuit breaker
//! (failure share over a rolling window, open for `open_s`, then half-open: a few probe
//! requests go through, one failure re-opens it, `half_open_probes` successes close it).
//! A request goes to the first tier whose breaker lets it through, without an error.

use serde::{Deserialize, Serialize};

use crate::breaker::CircuitBreaker;
use crate::stats::{rollout_stat_name, StatTag};
use crate::validate::{field, is_header_name, is_rollout_name, repeats, Validator};

/// The tier name of the rollout's own service in stats.
pub const PRIMARY_TIER: &str = "primary";
/// The tier name of the filter's own response in stats.
pub const RESPONSE_TIER: &str = "response";
/// The header marking the filter's own response.
pub const DEGRADED_HEADER: &str = "x-canary-degraded";
const MAX_TIERS: usize = 8;
const MAX_PROBES: u32 = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// The breaker of the rollout's own service (its stable and canary answers together).
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
    /// Lighter versions, tried in order when the tiers before them are open.
    #[serde(default)]
    pub tiers: Vec<Tier>,
    /// Successful probe answers that close a half-open breaker (one failure re-opens it).
    #[serde(default = "default_probes")]
    pub half_open_probes: u32,
    /// What the filter answers when every tier is open.
    #[serde(default)]
    pub response: FallbackResponse,
    /// Retry a request the rollout's own service failed (5xx) on the next tier that takes
    /// it: only the methods listed (default: the idempotent ones). Absent: no retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// Retries of failed requests down the chain (seed 002 §5: "retries only for idempotent
/// requests or where the config allows it").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Methods retried. Default: the idempotent methods of RFC 9110 §9.2.2; add e.g. `POST`
    /// where the service allows it (an LLM completion has no side effect).
    pub methods: Vec<String>,
    /// How long the tier may take to answer the retry; then the user gets the first error.
    pub timeout_ms: u64,
    /// Request body bytes kept for a retry at most; a longer request is not retried.
    pub max_request_bytes: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            methods: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
                .map(String::from)
                .to_vec(),
            timeout_ms: 10_000,
            max_request_bytes: 64 * 1024,
        }
    }
}

impl Fallback {
    /// The configured tier at `index` in the chain's order: 0 is the rollout's own service
    /// (no `Tier`), `i` is `tiers[i - 1]`.
    pub fn tier(&self, index: usize) -> Option<&Tier> {
        self.tiers.get(index.checked_sub(1)?)
    }
}

impl Retry {
    pub fn allows(&self, method: &[u8]) -> bool {
        self.methods.iter().any(|m| m.as_bytes() == method)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Stat tag (`tier="lite"`): `[a-z0-9][a-z0-9_-]*`, not `primary` or `response`.
    pub name: String,
    /// The route header's value for this tier; an Envoy route sends it to the tier's cluster.
    pub route_value: String,
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
    /// The tier's Envoy cluster: retries are sent there (a tier without one is not retried
    /// on; users still reach it through the route header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackResponse {
    pub status: u16,
    /// Extra response headers, `[name, value]`; `content-type: application/json` and
    /// `x-canary-degraded: 1` are always sent.
    pub headers: Vec<(String, String)>,
    /// The body, a JSON document.
    pub body_json: String,
}

impl Default for FallbackResponse {
    fn default() -> Self {
        FallbackResponse {
            status: 200,
            headers: Vec::new(),
            body_json: r#"{"response":"Service temporarily degraded. Please try again shortly.","source":"deterministic_fallback","degraded":true}"#.to_string(),
        }
    }
}

fn default_probes() -> u32 {
    3
}

pub(crate) fn validate_fallback(v: &mut Validator, at: &str, f: &Fallback) {
    crate::breaker::validate_breaker(v, &field(at, ".circuit_breaker"), &f.circuit_breaker);
    v.check(
        (1..=MAX_PROBES).contains(&f.half_open_probes),
        field(at, ".half_open_probes"),
        format!("must be 1-{MAX_PROBES}, got {}", f.half_open_probes),
    );
    v.check(
        f.tiers.len() <= MAX_TIERS,
        field(at, ".tiers"),
        format!("at most {MAX_TIERS} tiers, got {}", f.tiers.len()),
    );
    let repeated_names = repeats(&f.tiers, |t| t.name.as_str());
    let repeated_values = repeats(&f.tiers, |t| t.route_value.as_str());
    for (i, t) in f.tiers.iter().enumerate() {
        let at = format!("{at}.tiers[{i}]");
        let reserved = [PRIMARY_TIER, RESPONSE_TIER].contains(&t.name.as_str());
        let duplicate = repeated_names[i];
        v.check(
            is_rollout_name(&t.name) && !reserved && !duplicate,
            field(&at, ".name"),
            format!(
                "{:?} must be a unique name of [a-z0-9_-], not primary or response",
                t.name
            ),
        );
        let value_ok = !t.route_value.is_empty()
            && t.route_value.bytes().all(|b| b.is_ascii_graphic())
            && !["stable", "canary"].contains(&t.route_value.as_str())
            && !repeated_values[i];
        v.check(
            value_ok,
            field(&at, ".route_value"),
            format!(
                "{:?} must be a unique visible ASCII value, not stable or canary",
                t.route_value
            ),
        );
        crate::breaker::validate_breaker(v, &field(&at, ".circuit_breaker"), &t.circuit_breaker);
        if let Some(cluster) = &t.cluster {
            v.check(
                !cluster.is_empty() && cluster.bytes().all(|b| b.is_ascii_graphic()),
                field(&at, ".cluster"),
                format!("{cluster:?} is not a cluster name"),
            );
        }
    }
    if let Some(retry) = &f.retry {
        v.check(
            !retry.methods.is_empty(),
            field(at, ".retry.methods"),
            "must name at least one method",
        );
        for (j, m) in retry.methods.iter().enumerate() {
            v.check(
                !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()),
                format!("{at}.retry.methods[{j}]"),
                format!("{m:?} is not an HTTP method in capitals"),
            );
        }
        v.check(
            (1..=600_000).contains(&retry.timeout_ms),
            field(at, ".retry.timeout_ms"),
            format!("must be 1-600000, got {}", retry.timeout_ms),
        );
        v.check(
            (1..=16 * 1024 * 1024).contains(&retry.max_request_bytes),
            field(at, ".retry.max_request_bytes"),
            format!("must be 1-16777216, got {}", retry.max_request_bytes),
        );
    }
    let r = &f.response;
    v.check(
        (200..=599).contains(&r.status),
        field(at, ".response.status"),
        format!("must be 200-599, got {}", r.status),
    );
    for (j, (name, value)) in r.headers.iter().enumerate() {
        v.check(
            is_header_name(name) && name != DEGRADED_HEADER && name != "content-length",
            format!("{at}.response.headers[{j}]"),
            format!("{name:?} is not a lowercase header name the filter may set"),
        );
        v.check(
            value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b)),
            format!("{at}.response.headers[{j}]"),
            "the value must be visible ASCII",
        );
    }
    v.check(
        serde_json::from_str::<serde::de::IgnoredAny>(&r.body_json).is_ok(),
        field(at, ".response.body_json"),
        "must be a JSON document",
    );
}

/// The fallback chain's stats, per rollout and tier: `<name>.rollout.<r>.tier.<t>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierMetric {
    /// Requests a lighter tier or the filter's response served (not in `canary_rq_*`).
    RqTotal,
    /// Of those, 5xx answers (a lighter tier's breaker counts them).
    Rq5xx,
    /// Times the tier's breaker opened in this proxy (re-opening after a failed probe too).
    BreakerTrips,
    /// The tier's breaker: 0 closed, 1 open, 2 half-open.
    BreakerState,
}

impl TierMetric {
    pub fn name(self) -> &'static str {
        match self {
            TierMetric::RqTotal => "canary_tier_rq_total",
            TierMetric::Rq5xx => "canary_tier_rq_5xx",
            TierMetric::BreakerTrips => "canary_tier_breaker_trips",
            TierMetric::BreakerState => "canary_tier_breaker_state",
        }
    }
}

/// The stat name as the filter defines it (without Envoy's `wasmcustom.` prefix).
pub fn tier_stat_name(metric: TierMetric, rollout: &str, tier: &str) -> String {
    rollout_stat_name(metric.name(), rollout, StatTag::Tier(tier))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FilterConfig;

    #[test]
    fn tier_stat_names_follow_the_documented_shape() {
        assert_eq!(
            tier_stat_name(TierMetric::BreakerState, "chat", "lite"),
            "canary_tier_breaker_state.rollout.chat.tier.lite"
        );
    }

    #[test]
    fn chain_index_zero_is_the_rollouts_own_service() {
        let c = parse(
            r#"{"tiers":[{"name":"lite","route_value":"lite"},{"name":"tiny","route_value":"tiny"}]}"#,
        )
        .expect("valid");
        let f = c.rollouts[0].fallback.as_ref().expect("fallback");
        assert_eq!(f.tier(0), None);
        assert_eq!(f.tier(1).map(|t| t.name.as_str()), Some("lite"));
        assert_eq!(f.tier(2).map(|t| t.name.as_str()), Some("tiny"));
        assert_eq!(f.tier(3), None);
    }

    fn parse(fallback: &str) -> Result<FilterConfig, crate::ConfigError> {
        FilterConfig::from_json(
            format!(
                r#"{{"schema_version":1,"rollouts":[{{"name":"a","weight_bp":5,"fallback":{fallback}}}]}}"#
            )
            .as_bytes(),
        )
    }

    #[test]
    fn defaults_and_round_trip() {
        let c = parse(r#"{"tiers":[{"name":"lite","route_value":"lite"}]}"#).expect("valid");
        let f = c.rollouts[0].fallback.as_ref().expect("fallback");
        assert_eq!(f.circuit_breaker, CircuitBreaker::default());
        assert_eq!(f.tiers[0].circuit_breaker, CircuitBreaker::default());
        assert_eq!(f.half_open_probes, 3);
        assert_eq!(f.response, FallbackResponse::default());
        assert_eq!(f.retry, None, "no retries unless asked");
        assert_eq!(FilterConfig::from_json(c.to_json().as_bytes()), Ok(c));
        let none = parse("null").expect("null is no chain");
        assert!(!none.to_json().contains("fallback"));
        let c = parse(
            r#"{"tiers":[{"name":"lite","route_value":"lite","cluster":"lite"}],"retry":{}}"#,
        )
        .expect("valid");
        let f = c.rollouts[0].fallback.as_ref().expect("fallback");
        let retry = f.retry.as_ref().expect("retry");
        assert!(retry.allows(b"GET") && retry.allows(b"PUT") && !retry.allows(b"POST"));
        assert_eq!(f.tiers[0].cluster.as_deref(), Some("lite"));
        assert_eq!(FilterConfig::from_json(c.to_json().as_bytes()), Ok(c));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &[&str])] = &[
            (
                r#"{"tiers":[{"name":"primary","route_value":"canary","circuit_breaker":{"open_s":0}}]}"#,
                &[
                    "rollouts[0].fallback.tiers[0].name",
                    "rollouts[0].fallback.tiers[0].route_value",
                    "rollouts[0].fallback.tiers[0].circuit_breaker.open_s",
                ],
            ),
            (
                r#"{"tiers":[{"name":"a","route_value":"x"},{"name":"a","route_value":"x"}]}"#,
                &[
                    "rollouts[0].fallback.tiers[1].name",
                    "rollouts[0].fallback.tiers[1].route_value",
                ],
            ),
            (
                r#"{"half_open_probes":0,"response":{"status":99,"headers":[["X-A","b"],["x-canary-degraded","0"]],"body_json":"{oops"}}"#,
                &[
                    "rollouts[0].fallback.half_open_probes",
                    "rollouts[0].fallback.response.status",
                    "rollouts[0].fallback.response.headers[0]",
                    "rollouts[0].fallback.response.headers[1]",
                    "rollouts[0].fallback.response.body_json",
                ],
            ),
            (
                r#"{"tiers":[{"name":"a","route_value":"x","cluster":""}],"retry":{"methods":["get"],"timeout_ms":0,"max_request_bytes":0}}"#,
                &[
                    "rollouts[0].fallback.tiers[0].cluster",
                    "rollouts[0].fallback.retry.methods[0]",
                    "rollouts[0].fallback.retry.timeout_ms",
                    "rollouts[0].fallback.retry.max_request_bytes",
                ],
            ),
            (
                r#"{"retry":{"methods":[]}}"#,
                &["rollouts[0].fallback.retry.methods"],
            ),
            (
                r#"{"circuit_breaker":{"error_rate_bp":0}}"#,
                &["rollouts[0].fallback.circuit_breaker.error_rate_bp"],
            ),
            (r#"{"retries":1}"#, &["rollouts[0].fallback.retries"]),
        ];
        for (json, want) in cases {
            let err = parse(json).expect_err(json);
            let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, *want, "{json}: {err}");
        }
    }
}
