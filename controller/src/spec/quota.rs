//! `quota` of the rollout spec: the global quota sentinel's thresholds (seed 002 §8) and the
//! per-user allowances over the fleet. The sentinel itself is `machine::quota`.

use serde::{Deserialize, Serialize};

use super::SpecError;

/// `quota` in the rollout spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// The provider's quota: input + output tokens per minute over the whole fleet.
    pub tokens_per_minute: u64,
    /// Share of the quota at which the throttle goes on.
    #[serde(default = "default_activate_share")]
    pub activate_share: f64,
    /// Share of the quota the load must stay below for the throttle to go off.
    #[serde(default = "default_clear_share")]
    pub clear_share: f64,
    /// Consecutive windows below `clear_share` before the throttle goes off.
    #[serde(default = "default_clear_windows")]
    pub clear_windows: u32,
    /// Each user's allowance over the whole fleet. The filters' buckets are per proxy, so the
    /// controller publishes `allowance / proxies` (rounded up) as their `rate_limit`, with
    /// proxies = the sources it read in the last round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<PerUser>,
}

/// `quota.per_user`: per-user allowances over the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerUser {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
}

fn default_activate_share() -> f64 {
    0.8
}

fn default_clear_share() -> f64 {
    0.6
}

fn default_clear_windows() -> u32 {
    3
}

impl QuotaSpec {
    /// `filter` is the spec's pass-through filter options.
    pub fn validate(&self, filter: &serde_json::Map<String, serde_json::Value>) -> Vec<SpecError> {
        let has_llm = filter.contains_key("llm");
        let mut errors = Vec::new();
        let mut push = |field: &str, reason: String| {
            errors.push(SpecError {
                field: format!("quota.{field}"),
                reason,
            })
        };
        if self.tokens_per_minute == 0 {
            push("tokens_per_minute", "must be at least 1".into());
        }
        if !(self.activate_share > 0.0 && self.activate_share <= 1.0) {
            push(
                "activate_share",
                format!("must be in (0, 1], got {}", self.activate_share),
            );
        }
        if !(self.clear_share > 0.0 && self.clear_share < self.activate_share) {
            push(
                "clear_share",
                format!(
                    "must be in (0, activate_share) for hysteresis, got {}",
                    self.clear_share
                ),
            );
        }
        if self.clear_windows == 0 {
            push("clear_windows", "must be at least 1".into());
        }
        if !has_llm {
            push(
                "tokens_per_minute",
                "needs filter.llm: tokens are counted from the LLM answers".into(),
            );
        }
        if let Some(per_user) = &self.per_user {
            let own = filter.get("rate_limit");
            for (field, value) in [
                ("tokens_per_minute", per_user.tokens_per_minute),
                ("requests_per_minute", per_user.requests_per_minute),
            ] {
                if value == Some(0) {
                    push(&format!("per_user.{field}"), "must be at least 1".into());
                }
                if value.is_some() && own.and_then(|r| r.get(field)).is_some() {
                    push(
                        &format!("per_user.{field}"),
                        format!("filter.rate_limit.{field} is set too: set one of them"),
                    );
                }
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RolloutSpec;

    fn spec() -> QuotaSpec {
        serde_yaml_ng::from_str("tokens_per_minute: 6000").expect("spec")
    }

    #[test]
    fn defaults_follow_the_seed() {
        let s = spec();
        assert_eq!(
            (s.activate_share, s.clear_share, s.clear_windows),
            (0.8, 0.6, 3)
        );
        let llm: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"llm": {}}"#).expect("json");
        assert!(s.validate(&llm).is_empty());
    }

    #[test]
    fn validation_names_fields() {
        let bad = QuotaSpec {
            tokens_per_minute: 0,
            activate_share: 1.5,
            clear_share: 0.0,
            clear_windows: 0,
            per_user: None,
        };
        let fields: Vec<String> = bad
            .validate(&serde_json::Map::new())
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "quota.tokens_per_minute",
                "quota.activate_share",
                "quota.clear_share",
                "quota.clear_windows",
                "quota.tokens_per_minute"
            ]
        );
        let mut s = spec();
        s.clear_share = s.activate_share;
        let llm: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"llm": {}}"#).expect("json");
        assert_eq!(s.validate(&llm).len(), 1, "no hysteresis");
    }

    const BASE: &str = "name: chat\nsources:\n  envoy_admin: [\"http://127.0.0.1:9901\"]\n";

    #[test]
    fn the_spec_takes_a_quota_and_names_its_fields() {
        let ok = format!("{BASE}filter:\n  llm: {{}}\nquota: {{tokens_per_minute: 1000}}\n");
        let spec = RolloutSpec::from_yaml(&ok).expect("valid");
        assert_eq!(spec.quota.map(|q| q.tokens_per_minute), Some(1000));
        let no_llm = format!("{BASE}quota: {{tokens_per_minute: 1000, clear_share: 0.9}}\n");
        let err = RolloutSpec::from_yaml(&no_llm).expect_err("invalid");
        let fields: Vec<&str> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["quota.clear_share", "quota.tokens_per_minute"]);
        let typo = format!("{BASE}quota: {{tokens_per_minute: 1000, share: 0.5}}\n");
        let err = RolloutSpec::from_yaml(&typo).expect_err("unknown field");
        assert!(err.to_string().contains("quota"), "{err}");
        // The filter's own rate limits pass through `filter` and are validated there.
        let bad = format!("{BASE}filter:\n  rate_limit: {{tokens_per_minute: 5}}\n");
        let err = RolloutSpec::from_yaml(&bad).expect_err("tokens need llm");
        assert_eq!(err.0[0].field, "filter.rate_limit.tokens_per_minute");
    }

    #[test]
    fn per_user_and_the_filter_own_limit_exclude_each_other() {
        let base = "name: chat\nsources:\n  envoy_admin: [\"http://127.0.0.1:9901\"]\n";
        let both = format!(
            "{base}filter:\n  llm: {{}}\n  rate_limit: {{requests_per_minute: 5}}\nquota: {{tokens_per_minute: 100, per_user: {{requests_per_minute: 10, tokens_per_minute: 0}}}}\n"
        );
        let err = RolloutSpec::from_yaml(&both).expect_err("invalid");
        let fields: Vec<&str> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "quota.per_user.tokens_per_minute",
                "quota.per_user.requests_per_minute"
            ]
        );
    }
}
