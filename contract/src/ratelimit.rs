//! The `rate_limit` part of a rollout (LLM build): per-user token buckets in tokens and
//! requests per minute, priority users, and the throttle the controller's quota sentinel
//! publishes when the whole fleet nears its quota.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::validate::{field, is_header_name, Validator};

/// Per-user limits of one rollout, keyed by the same user key as routing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// LLM tokens (input + output, as read from the answers) a user may spend per minute.
    /// Needs `llm`: tokens are only known once the answer is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Requests a user may make per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// The length of the "minute" in ms: buckets hold one period's allowance and refill
    /// continuously over it. 60000 in production; tests shorten it.
    #[serde(default = "default_refill_period_ms")]
    pub refill_period_ms: u64,
    /// Tokens charged when a request is admitted, before its answer is known; the answer's
    /// real count settles the difference (refund or extra charge).
    #[serde(default)]
    pub estimate_tokens: u64,
    /// Users tracked at most per worker; past it, users with full buckets are forgotten
    /// first, then the least recently seen.
    #[serde(default = "default_max_users")]
    pub max_users: u32,
    /// Envoy worker threads (`--concurrency`). Buckets live in each worker's VM: each gets
    /// `1/workers` of the limits, so a user spread over every worker gets the limit.
    #[serde(default = "default_workers")]
    pub workers: u32,
    /// Who passes while the rollout is throttled.
    #[serde(default, skip_serializing_if = "Priority::is_empty")]
    pub priority: Priority,
    /// Set by the controller's quota sentinel: non-priority requests get 429.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub throttled: bool,
    /// `retry-after` of a request refused by the throttle, in seconds.
    #[serde(default = "default_throttle_retry_after_s")]
    pub throttle_retry_after_s: u32,
}

/// Priority users: a request header with one of `values`, or a user key in `keys`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Priority {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub values: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub keys: BTreeSet<String>,
}

impl Priority {
    pub fn is_empty(&self) -> bool {
        self.header.is_none() && self.values.is_empty() && self.keys.is_empty()
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            tokens_per_minute: None,
            requests_per_minute: None,
            refill_period_ms: default_refill_period_ms(),
            estimate_tokens: 0,
            max_users: default_max_users(),
            workers: default_workers(),
            priority: Priority::default(),
            throttled: false,
            throttle_retry_after_s: default_throttle_retry_after_s(),
        }
    }
}

pub const DEFAULT_MAX_USERS: u32 = 10_000;
const MAX_USERS_LIMIT: u32 = 1_000_000;
const MAX_WORKERS: u32 = 1024;
/// Limits up to a trillion per minute: the filter's fixed-point arithmetic stays exact.
const MAX_PER_MINUTE: u64 = 1_000_000_000_000;

fn default_refill_period_ms() -> u64 {
    60_000
}

fn default_max_users() -> u32 {
    DEFAULT_MAX_USERS
}

fn default_workers() -> u32 {
    1
}

fn default_throttle_retry_after_s() -> u32 {
    10
}

pub(crate) fn validate_rate_limit(v: &mut Validator, at: &str, r: &RateLimit, has_llm: bool) {
    for (field, value) in [
        ("tokens_per_minute", r.tokens_per_minute),
        ("requests_per_minute", r.requests_per_minute),
    ] {
        if let Some(n) = value {
            v.check(
                (1..=MAX_PER_MINUTE).contains(&n),
                format!("{at}.{field}"),
                format!("must be within 1..={MAX_PER_MINUTE}, got {n} (leave it out for no limit)"),
            );
        }
    }
    if r.tokens_per_minute.is_some() {
        v.check(
            has_llm,
            field(at, ".tokens_per_minute"),
            "needs the rollout's `llm` (tokens are read from the LLM answers)",
        );
    }
    if let Some(tpm) = r.tokens_per_minute {
        v.check(
            r.estimate_tokens <= tpm,
            field(at, ".estimate_tokens"),
            format!(
                "must be at most tokens_per_minute ({tpm}), got {}: no request could pass",
                r.estimate_tokens
            ),
        );
    }
    v.check(
        (1_000..=3_600_000).contains(&r.refill_period_ms),
        field(at, ".refill_period_ms"),
        format!("must be within 1000..=3600000, got {}", r.refill_period_ms),
    );
    v.check(
        (1..=MAX_USERS_LIMIT).contains(&r.max_users),
        field(at, ".max_users"),
        format!("must be within 1..={MAX_USERS_LIMIT}, got {}", r.max_users),
    );
    v.check(
        (1..=MAX_WORKERS).contains(&r.workers),
        field(at, ".workers"),
        format!("must be within 1..={MAX_WORKERS}, got {}", r.workers),
    );
    v.check(
        (1..=3600).contains(&r.throttle_retry_after_s),
        field(at, ".throttle_retry_after_s"),
        format!("must be within 1..=3600, got {}", r.throttle_retry_after_s),
    );
    if let Some(header) = &r.priority.header {
        v.check(
            is_header_name(header),
            field(at, ".priority.header"),
            format!("{header:?} is not a lowercase HTTP header name"),
        );
        v.check(
            !r.priority.values.is_empty(),
            field(at, ".priority.values"),
            "must list the header values that mark a priority request",
        );
    } else if !r.priority.values.is_empty() {
        v.push(field(at, ".priority.header"), "values need a header");
    }
    for key in &r.priority.keys {
        v.check(
            !key.is_empty(),
            field(at, ".priority.keys"),
            "keys must not be empty",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::FilterConfig;

    fn fields(json: &str) -> Vec<String> {
        match FilterConfig::from_json(json.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.into_iter().map(|f| f.field).collect(),
        }
    }

    fn rollout(extra: &str) -> String {
        format!(r#"{{"schema_version":1,"rollouts":[{{"name":"chat","weight_bp":0{extra}}}]}}"#)
    }

    #[test]
    fn defaults_and_round_trip() {
        let json = rollout(
            r#","llm":{},"rate_limit":{"tokens_per_minute":1000,"priority":{"keys":["vip"]}}"#,
        );
        let c = FilterConfig::from_json(json.as_bytes()).expect("valid");
        let r = c.rollouts[0].rate_limit.as_ref().expect("rate_limit");
        assert_eq!(r.refill_period_ms, 60_000);
        assert_eq!(r.max_users, super::DEFAULT_MAX_USERS);
        assert_eq!((r.workers, r.estimate_tokens, r.throttled), (1, 0, false));
        assert_eq!(r.requests_per_minute, None);
        let again = FilterConfig::from_json(c.to_json().as_bytes()).expect("valid");
        assert_eq!(again, c);
        assert!(!c.to_json().contains("throttled"), "false is left out");
    }

    #[test]
    fn errors_name_the_field() {
        let at = "rollouts[0].rate_limit";
        let cases: &[(&str, &[&str])] = &[
            (
                r#","rate_limit":{"tokens_per_minute":100}"#,
                &["tokens_per_minute"],
            ),
            (
                r#","llm":{},"rate_limit":{"tokens_per_minute":0,"requests_per_minute":0}"#,
                &["tokens_per_minute", "requests_per_minute"],
            ),
            (
                r#","llm":{},"rate_limit":{"tokens_per_minute":100,"estimate_tokens":101}"#,
                &["estimate_tokens"],
            ),
            (
                r#","rate_limit":{"refill_period_ms":10,"max_users":0,"workers":0,"throttle_retry_after_s":0}"#,
                &[
                    "refill_period_ms",
                    "max_users",
                    "workers",
                    "throttle_retry_after_s",
                ],
            ),
            (
                r#","rate_limit":{"priority":{"header":"X-Tier"}}"#,
                &["priority.header", "priority.values"],
            ),
            (
                r#","rate_limit":{"priority":{"values":["gold"]}}"#,
                &["priority.header"],
            ),
            (
                r#","rate_limit":{"priority":{"keys":[""]}}"#,
                &["priority.keys"],
            ),
            (r#","rate_limit":{"rpm":5}"#, &["rpm"]),
        ];
        for (extra, expected) in cases {
            let expected: Vec<String> = expected.iter().map(|f| format!("{at}.{f}")).collect();
            assert_eq!(fields(&rollout(extra)), expected, "{extra}");
        }
        // Without tokens, no `llm` is needed: requests per minute and the throttle work alone.
        assert!(fields(&rollout(
            r#","rate_limit":{"requests_per_minute":5,"throttled":true,"priority":{"header":"x-tier","values":["gold"]}}"#
        ))
        .is_empty());
    }
}
