//! The `llm` part of a rollout: which responses are LLM calls and what to read from them.

use serde::{Deserialize, Serialize};

use crate::validate::{field, is_header_name, is_signal_name, repeats, Validator, MAX_SIGNAL_LEN};
use crate::Version;

/// What the filter reads from an LLM service's responses, per version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSignals {
    /// Request path prefixes that are LLM calls; empty: every request the rollout routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
    /// Response body bytes inspected at most. A longer body is passed on untouched and
    /// counted as unparsed; nothing beyond the cap is copied into the filter.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u32,
    /// Token prices per version (the canary may be another model).
    #[serde(default)]
    pub prices: VersionPrices,
    /// `finish_reason` (OpenAI) / `stop_reason` (Anthropic) values that count as refusals;
    /// a non-null OpenAI `refusal` field always counts.
    #[serde(default = "default_refusal_reasons")]
    pub refusal_reasons: Vec<String>,
    /// Response headers carrying a quality signal: `1`/`0` (`true`/`false`) or a score in
    /// 0..=1, e.g. `{"header": "x-task-success", "signal": "task_success"}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quality_headers: Vec<QualityHeader>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionPrices {
    #[serde(default)]
    pub stable: TokenPrice,
    #[serde(default)]
    pub canary: TokenPrice,
}

impl VersionPrices {
    pub fn of(&self, version: Version) -> &TokenPrice {
        match version {
            Version::Stable => &self.stable,
            Version::Canary => &self.canary,
        }
    }
}

/// Prices in nano-USD per token, i.e. thousandths of a USD per million tokens ($3 per
/// million tokens is 3000). Integers: Envoy counters are integers, and the filter does no
/// floating point (its formatting and parsing code would add a fifth to the module).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPrice {
    #[serde(default)]
    pub input_nano_usd_per_token: u64,
    #[serde(default)]
    pub output_nano_usd_per_token: u64,
}

impl TokenPrice {
    /// The cost of one response in nano-USD.
    pub fn cost_nano_usd(&self, input_tokens: u64, output_tokens: u64) -> u64 {
        input_tokens
            .saturating_mul(self.input_nano_usd_per_token)
            .saturating_add(output_tokens.saturating_mul(self.output_nano_usd_per_token))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityHeader {
    pub header: String,
    /// Part of the stat names: `canary_quality_<signal>_count`, `_sum`, `_sumsq`.
    pub signal: String,
}

impl LlmSignals {
    /// Whether a request path is an LLM call.
    pub fn applies_to(&self, path: &[u8]) -> bool {
        self.path_prefixes.is_empty()
            || self
                .path_prefixes
                .iter()
                .any(|p| path.starts_with(p.as_bytes()))
    }
}

impl Default for LlmSignals {
    fn default() -> Self {
        LlmSignals {
            path_prefixes: Vec::new(),
            max_body_bytes: default_max_body_bytes(),
            prices: VersionPrices::default(),
            refusal_reasons: default_refusal_reasons(),
            quality_headers: Vec::new(),
        }
    }
}

pub const DEFAULT_MAX_BODY_BYTES: u32 = 256 * 1024;
const MAX_BODY_BYTES_LIMIT: u32 = 16 * 1024 * 1024;
const MAX_NANO_USD_PER_TOKEN: u64 = 1_000_000_000;

fn default_max_body_bytes() -> u32 {
    DEFAULT_MAX_BODY_BYTES
}

fn default_refusal_reasons() -> Vec<String> {
    vec!["content_filter".to_string(), "refusal".to_string()]
}

pub(crate) fn validate_llm(v: &mut Validator, at: &str, llm: &LlmSignals) {
    for (j, prefix) in llm.path_prefixes.iter().enumerate() {
        v.check(
            prefix.starts_with('/'),
            format!("{at}.path_prefixes[{j}]"),
            format!("{prefix:?} must start with '/'"),
        );
    }
    v.check(
        (1..=MAX_BODY_BYTES_LIMIT).contains(&llm.max_body_bytes),
        field(at, ".max_body_bytes"),
        format!(
            "must be 1-{MAX_BODY_BYTES_LIMIT}, got {}",
            llm.max_body_bytes
        ),
    );
    for version in Version::ALL {
        let price = llm.prices.of(version);
        for (field, value) in [
            ("input_nano_usd_per_token", price.input_nano_usd_per_token),
            ("output_nano_usd_per_token", price.output_nano_usd_per_token),
        ] {
            v.check(
                value <= MAX_NANO_USD_PER_TOKEN,
                format!("{at}.prices.{version}.{field}"),
                format!("must be at most {MAX_NANO_USD_PER_TOKEN} ($1 a token), got {value}"),
            );
        }
    }
    for (j, reason) in llm.refusal_reasons.iter().enumerate() {
        v.check(
            !reason.is_empty(),
            format!("{at}.refusal_reasons[{j}]"),
            "must not be empty",
        );
    }
    let repeated = repeats(&llm.quality_headers, |q| q.signal.as_str());
    for (j, q) in llm.quality_headers.iter().enumerate() {
        v.check(
            is_header_name(&q.header),
            format!("{at}.quality_headers[{j}].header"),
            format!("{:?} is not a lowercase HTTP header name", q.header),
        );
        v.check(
            is_signal_name(&q.signal),
            format!("{at}.quality_headers[{j}].signal"),
            format!(
                "{:?} must be 1-{MAX_SIGNAL_LEN} bytes of [a-z0-9_] (it is part of stat names)",
                q.signal
            ),
        );
        v.check(
            !repeated[j],
            format!("{at}.quality_headers[{j}].signal"),
            format!("duplicate signal {:?}", q.signal),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FilterConfig;

    fn parse(json: &str) -> Result<FilterConfig, crate::ConfigError> {
        FilterConfig::from_json(json.as_bytes())
    }

    #[test]
    fn llm_signals_round_trip_with_defaults() {
        let c = parse(
            r#"{"schema_version":1,"rollouts":[{"name":"chat","weight_bp":5,"llm":{"prices":{"canary":{"input_nano_usd_per_token":3000,"output_nano_usd_per_token":15000}}}}]}"#,
        )
        .expect("valid");
        let llm = c.rollouts[0].llm.as_ref().expect("llm");
        assert_eq!(llm.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(llm.refusal_reasons, ["content_filter", "refusal"]);
        assert!(llm.applies_to(b"/anything"));
        // 1000 input tokens at $3/Mtok + 500 output at $15/Mtok = $0.0105.
        assert_eq!(llm.prices.canary.cost_nano_usd(1_000, 500), 10_500_000);
        assert_eq!(llm.prices.stable.cost_nano_usd(1_000, 500), 0);
        assert_eq!(parse(&c.to_json()).expect("valid"), c);
        let only_v1 = LlmSignals {
            path_prefixes: vec!["/v1/".into()],
            ..LlmSignals::default()
        };
        assert!(only_v1.applies_to(b"/v1/messages"));
        assert!(!only_v1.applies_to(b"/healthz"));
    }
}
