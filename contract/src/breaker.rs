//! The data-plane circuit breaker's configuration (`rollouts[].circuit_breaker`).
//!
//! When the canary's error share over the last `window_s` seconds in one proxy reaches
//! `error_rate_bp` (with at least `min_requests` canary answers in that window), the filter
//! sends the rollout's canary users to stable for `open_s` seconds without waiting for the
//! controller; the controller sees the trip in the stats and counts a failed analysis.

use serde::{Deserialize, Serialize};

use crate::validate::{field, Validator, MAX_WEIGHT_BP};

const MAX_WINDOW_S: u32 = 3_600;
const MAX_OPEN_S: u32 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreaker {
    /// Canary 5xx share that opens the breaker, in basis points (2000 = 20%); reached or
    /// exceeded trips it.
    pub error_rate_bp: u32,
    /// The rolling window the share is computed over, in seconds.
    pub window_s: u32,
    /// Fewer canary answers than this in the window never trip the breaker.
    pub min_requests: u32,
    /// How long the canary's users stay on stable after a trip; then the breaker closes
    /// with an empty window.
    pub open_s: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            error_rate_bp: 2_000,
            window_s: 10,
            min_requests: 20,
            open_s: 30,
        }
    }
}

impl CircuitBreaker {
    /// Whether `errors` of `requests` canary answers in the window trip the breaker. Errors
    /// are 5xx answers (an upstream reset reaches the client as Envoy's own 503; a gRPC
    /// server failure on HTTP 200 counts as 5xx too, see `grpc`).
    pub fn trips(&self, requests: u64, errors: u64) -> bool {
        // In u128 both products are exact: a u64 count times at most 10_000 cannot overflow,
        // where `error_rate_bp * requests` in u64 would (and saturating would blur the share).
        requests >= u64::from(self.min_requests)
            && u128::from(errors) * 10_000 >= u128::from(self.error_rate_bp) * u128::from(requests)
    }
}

pub(crate) fn validate_breaker(v: &mut Validator, at: &str, b: &CircuitBreaker) {
    v.check(
        (1..=MAX_WEIGHT_BP).contains(&b.error_rate_bp),
        field(at, ".error_rate_bp"),
        format!("must be 1-10000 (0.01%-100%), got {}", b.error_rate_bp),
    );
    v.check(
        (1..=MAX_WINDOW_S).contains(&b.window_s),
        field(at, ".window_s"),
        format!("must be 1-{MAX_WINDOW_S}, got {}", b.window_s),
    );
    v.check(
        b.min_requests >= 1,
        field(at, ".min_requests"),
        "must be at least 1",
    );
    v.check(
        (1..=MAX_OPEN_S).contains(&b.open_s),
        field(at, ".open_s"),
        format!("must be 1-{MAX_OPEN_S}, got {}", b.open_s),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FilterConfig;

    fn parse(breaker: &str) -> Result<FilterConfig, crate::ConfigError> {
        FilterConfig::from_json(
            format!(
                r#"{{"schema_version":1,"rollouts":[{{"name":"a","weight_bp":5,"circuit_breaker":{breaker}}}]}}"#
            )
            .as_bytes(),
        )
    }

    #[test]
    fn empty_object_gets_the_defaults_and_round_trips() {
        let c = parse("{}").expect("valid");
        assert_eq!(
            c.rollouts[0].circuit_breaker,
            Some(CircuitBreaker::default())
        );
        assert_eq!(FilterConfig::from_json(c.to_json().as_bytes()), Ok(c));
        let none = parse("null").expect("null is no breaker");
        assert_eq!(none.rollouts[0].circuit_breaker, None);
        assert!(!none.to_json().contains("circuit_breaker"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &[&str])] = &[
            (
                r#"{"error_rate_bp":0,"window_s":0}"#,
                &[
                    "rollouts[0].circuit_breaker.error_rate_bp",
                    "rollouts[0].circuit_breaker.window_s",
                ],
            ),
            (
                r#"{"error_rate_bp":10001}"#,
                &["rollouts[0].circuit_breaker.error_rate_bp"],
            ),
            (
                r#"{"min_requests":0,"open_s":0}"#,
                &[
                    "rollouts[0].circuit_breaker.min_requests",
                    "rollouts[0].circuit_breaker.open_s",
                ],
            ),
            (
                r#"{"window_s":3601,"open_s":86401}"#,
                &[
                    "rollouts[0].circuit_breaker.window_s",
                    "rollouts[0].circuit_breaker.open_s",
                ],
            ),
            (
                r#"{"error_rate":5}"#,
                &["rollouts[0].circuit_breaker.error_rate"],
            ),
            (
                r#"{"open_s":"30s"}"#,
                &["rollouts[0].circuit_breaker.open_s"],
            ),
        ];
        for (json, want) in cases {
            let err = parse(json).expect_err(json);
            let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, *want, "{json}: {err}");
        }
    }

    #[test]
    fn trip_rule_needs_the_share_and_the_minimum() {
        let b = CircuitBreaker {
            error_rate_bp: 5_000,
            min_requests: 20,
            ..CircuitBreaker::default()
        };
        // (requests, errors, trips)
        for (n, e, want) in [
            (20, 10, true),  // exactly 50%
            (20, 9, false),  // 45%
            (19, 19, false), // below the minimum
            (1_000, 500, true),
            (0, 0, false),
        ] {
            assert_eq!(b.trips(n, e), want, "{e}/{n}");
        }
    }

    #[test]
    fn trip_rule_is_exact_at_extreme_counts() {
        let half = CircuitBreaker {
            error_rate_bp: 5_000,
            min_requests: 1,
            ..CircuitBreaker::default()
        };
        let all = CircuitBreaker {
            error_rate_bp: MAX_WEIGHT_BP,
            ..half
        };
        let max = u64::MAX;
        // (breaker, requests, errors, trips)
        for (b, n, e, want) in [
            (all, max, max, true),
            (all, max, max - 1, false),
            (half, max, 0, false),
            (half, max, max / 2, false), // just under 50% of an odd count
            (half, max, max / 2 + 1, true),
            (half, max, max, true),
        ] {
            assert_eq!(b.trips(n, e), want, "{e}/{n} at {}bp", b.error_rate_bp);
        }
    }
}
