//! The global quota sentinel (seed 002 §8): tokens per minute summed over every proxy the
//! controller reads, against the LLM provider's quota. At `activate_share` of the quota it
//! throttles the rollout (the filters then refuse non-priority requests with 429); it lets go
//! only after `clear_windows` windows in a row below `clear_share` (hysteresis, so a load
//! hovering at the threshold does not flap the throttle every window).
//!
//! Pure: windows in, state out; the server publishes the state in the filter configuration.

use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

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

/// What the sentinel knows, shown in `/status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sentinel {
    pub throttled: bool,
    /// Tokens per minute over the fleet in the last window.
    pub last_tokens_per_minute: Option<f64>,
    /// Windows in a row below the clear share while throttled.
    pub windows_below: u32,
    /// When the throttle last changed (ms since the epoch).
    pub changed_ms: Option<u64>,
    /// Times the throttle went on.
    pub activations: u64,
}

/// A change of the throttle, to publish and log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    Activated { tokens_per_minute: f64 },
    Cleared { tokens_per_minute: f64 },
}

impl Sentinel {
    /// One window of `tokens` (input + output, every proxy, both versions) over `window_ms`.
    pub fn observe(
        &mut self,
        spec: &QuotaSpec,
        tokens: u64,
        window_ms: u64,
        now_ms: u64,
    ) -> Option<Change> {
        if window_ms == 0 {
            return None;
        }
        let tpm = tokens as f64 * 60_000.0 / window_ms as f64;
        self.last_tokens_per_minute = Some(tpm);
        let quota = spec.tokens_per_minute as f64;
        if !self.throttled {
            if tpm >= quota * spec.activate_share {
                self.throttled = true;
                self.windows_below = 0;
                self.changed_ms = Some(now_ms);
                self.activations += 1;
                return Some(Change::Activated {
                    tokens_per_minute: tpm,
                });
            }
            return None;
        }
        if tpm < quota * spec.clear_share {
            self.windows_below += 1;
        } else {
            self.windows_below = 0;
        }
        if self.windows_below >= spec.clear_windows {
            self.throttled = false;
            self.windows_below = 0;
            self.changed_ms = Some(now_ms);
            return Some(Change::Cleared {
                tokens_per_minute: tpm,
            });
        }
        None
    }
}

/// Publishes the throttle into a filter configuration (the rollout's `rate_limit.throttled`).
pub fn apply_throttle(config: &mut canary_contract::FilterConfig, throttled: bool) {
    if !throttled {
        return;
    }
    for rollout in &mut config.rollouts {
        rollout
            .rate_limit
            .get_or_insert_with(Default::default)
            .throttled = true;
    }
}

/// Publishes each user's fleet allowance divided among `proxies` (rounded up: a user on
/// one proxy may exceed the allowance slightly rather than be refused below it).
pub fn apply_per_user(
    config: &mut canary_contract::FilterConfig,
    per_user: &PerUser,
    proxies: usize,
) {
    let proxies = proxies.max(1) as u64;
    for rollout in &mut config.rollouts {
        let limit = rollout.rate_limit.get_or_insert_with(Default::default);
        if let Some(t) = per_user.tokens_per_minute {
            limit.tokens_per_minute = Some(t.div_ceil(proxies));
        }
        if let Some(r) = per_user.requests_per_minute {
            limit.requests_per_minute = Some(r.div_ceil(proxies));
        }
        // The estimate must fit the smaller bucket.
        if let Some(t) = limit.tokens_per_minute {
            limit.estimate_tokens = limit.estimate_tokens.min(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn trips_at_80_percent_and_clears_with_hysteresis() {
        let s = spec();
        let mut q = Sentinel::default();
        // 1 s windows: 79 tokens/s = 4740/min (79%) stays off, 80/s = 4800/min trips.
        assert_eq!(q.observe(&s, 79, 1_000, 1), None);
        assert!(!q.throttled);
        assert_eq!(
            q.observe(&s, 80, 1_000, 2),
            Some(Change::Activated {
                tokens_per_minute: 4_800.0
            })
        );
        assert!(q.throttled && q.activations == 1);
        // Between the shares: stays on, however long.
        for t in 3..20 {
            assert_eq!(q.observe(&s, 70, 1_000, t), None);
            assert!(q.throttled);
        }
        // Below 60% for two windows, then a window above resets the count.
        q.observe(&s, 50, 1_000, 20);
        q.observe(&s, 50, 1_000, 21);
        q.observe(&s, 61, 1_000, 22);
        assert!(q.throttled);
        q.observe(&s, 10, 1_000, 23);
        q.observe(&s, 0, 1_000, 24);
        assert!(q.throttled, "two windows below only");
        assert!(matches!(
            q.observe(&s, 59, 1_000, 25),
            Some(Change::Cleared { .. })
        ));
        assert!(!q.throttled);
        assert_eq!(q.changed_ms, Some(25));
        // Window length matters: 160 tokens over 2 s is the same 4800/min.
        assert!(matches!(
            q.observe(&s, 160, 2_000, 26),
            Some(Change::Activated { .. })
        ));
        assert_eq!(
            q.observe(&s, 1_000_000, 0, 27),
            None,
            "empty window ignored"
        );
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

    #[test]
    fn the_throttle_is_published_in_the_rollout() {
        let mut c = canary_contract::FilterConfig::new(vec![canary_contract::RolloutConfig::new(
            "chat", 500,
        )]);
        apply_throttle(&mut c, false);
        assert_eq!(c.rollouts[0].rate_limit, None);
        apply_throttle(&mut c, true);
        let again =
            canary_contract::FilterConfig::from_json(c.to_json().as_bytes()).expect("valid");
        assert!(again.rollouts[0]
            .rate_limit
            .as_ref()
            .is_some_and(|r| r.throttled));
    }
}

#[cfg(test)]
mod spec_tests {
    use crate::spec::RolloutSpec;

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
}

#[cfg(test)]
mod per_user_tests {
    use super::*;
    use crate::spec::RolloutSpec;

    #[test]
    fn a_fleet_allowance_is_divided_among_the_proxies() {
        let mut c = canary_contract::FilterConfig::new(vec![canary_contract::RolloutConfig::new(
            "chat", 0,
        )]);
        let per_user = PerUser {
            tokens_per_minute: Some(10_000),
            requests_per_minute: Some(10),
        };
        apply_per_user(&mut c, &per_user, 3);
        let r = c.rollouts[0].rate_limit.clone().expect("published");
        assert_eq!(
            (r.tokens_per_minute, r.requests_per_minute),
            (Some(3_334), Some(4))
        );
        apply_per_user(&mut c, &per_user, 0);
        let r = c.rollouts[0].rate_limit.clone().expect("published");
        assert_eq!(r.requests_per_minute, Some(10), "no proxy known: as one");
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
