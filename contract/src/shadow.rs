//! The `shadow` part of a rollout: copy a sample of requests to the candidate, never let its
//! answer reach the user, and compare it with the primary's (issue 5, shadow mode).

use serde::{Deserialize, Serialize};

use crate::stats::{rollout_stat_name, StatTag};
use crate::validate::{field, Validator, MAX_WEIGHT_BP};
use crate::Version;

/// Shadow traffic for a rollout. Needs `llm` on the same rollout: the primary's answer is
/// read by the LLM response reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shadow {
    /// Envoy cluster of the candidate (the copies go there, not through the routes).
    pub cluster: String,
    /// Share of the rollout's LLM calls copied, in basis points; evenly spread (every
    /// 10000/sample_bp-th request of each worker), not random.
    #[serde(default = "default_sample_bp")]
    pub sample_bp: u32,
    /// How long the candidate may take; later answers count as failed.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Copies outstanding at once per worker; more are dropped (counted), never queued.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Request body bytes copied at most; a longer request is not shadowed (counted dropped).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u32,
    /// How answer texts are normalised before they are compared.
    #[serde(default)]
    pub text_normalisation: TextNormalisation,
    /// `:authority` of the copies; default: the user request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextNormalisation {
    /// Byte for byte.
    Exact,
    /// Leading and trailing whitespace ignored.
    TrimWhitespace,
    /// Every run of whitespace is one space, ends trimmed.
    #[default]
    CollapseWhitespace,
    /// As `collapse_whitespace`, and the case of ASCII letters ignored.
    CollapseWhitespaceLowercase,
}

impl Shadow {
    pub fn new(cluster: &str) -> Shadow {
        Shadow {
            cluster: cluster.to_string(),
            sample_bp: default_sample_bp(),
            timeout_ms: default_timeout_ms(),
            max_in_flight: default_max_in_flight(),
            max_request_bytes: default_max_request_bytes(),
            text_normalisation: TextNormalisation::default(),
            authority: None,
        }
    }
}

fn default_sample_bp() -> u32 {
    10_000
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_max_in_flight() -> u32 {
    64
}
fn default_max_request_bytes() -> u32 {
    64 * 1024
}

const MAX_TIMEOUT_MS: u64 = 600_000;
const MAX_IN_FLIGHT_LIMIT: u32 = 10_000;
const MAX_REQUEST_BYTES_LIMIT: u32 = 16 * 1024 * 1024;

pub(crate) fn validate_shadow(v: &mut Validator, at: &str, shadow: &Shadow, has_llm: bool) {
    v.check(
        has_llm,
        at.to_string(),
        "needs `llm` on the same rollout (the primary's answer is read by the LLM reader)",
    );
    validate_outgoing(
        v,
        at,
        Outgoing {
            cluster: &shadow.cluster,
            authority: shadow.authority.as_deref(),
            sample_bp: shadow.sample_bp,
            timeout_ms: shadow.timeout_ms,
            max_in_flight: shadow.max_in_flight,
            max_request_bytes: shadow.max_request_bytes,
        },
    );
}

/// The fields shared by the filter's own sampled calls (shadow copies, evaluations).
pub(crate) struct Outgoing<'a> {
    pub cluster: &'a str,
    pub authority: Option<&'a str>,
    pub sample_bp: u32,
    pub timeout_ms: u64,
    pub max_in_flight: u32,
    pub max_request_bytes: u32,
}

pub(crate) fn validate_outgoing(v: &mut Validator, at: &str, o: Outgoing) {
    v.check(
        !o.cluster.is_empty(),
        field(at, ".cluster"),
        "must not be empty",
    );
    if let Some(authority) = o.authority {
        v.check(
            !authority.is_empty() && authority.bytes().all(|b| b.is_ascii_graphic()),
            field(at, ".authority"),
            format!("{authority:?} is not a host[:port]"),
        );
    }
    let limits = [
        (
            "sample_bp",
            u64::from(o.sample_bp),
            u64::from(MAX_WEIGHT_BP),
        ),
        ("timeout_ms", o.timeout_ms, MAX_TIMEOUT_MS),
        (
            "max_in_flight",
            u64::from(o.max_in_flight),
            u64::from(MAX_IN_FLIGHT_LIMIT),
        ),
        (
            "max_request_bytes",
            u64::from(o.max_request_bytes),
            u64::from(MAX_REQUEST_BYTES_LIMIT),
        ),
    ];
    for (field, value, max) in limits {
        v.check(
            (1..=max).contains(&value),
            format!("{at}.{field}"),
            format!("must be 1-{max}, got {value}"),
        );
    }
}

/// The shadow counters, per rollout, tagged `version="canary"` (the candidate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShadowMetric {
    /// Copies sent to the candidate.
    Requests,
    /// Copies whose answer was compared with the primary's.
    Compared,
    /// Compared answers that agree in status, structure and text.
    Agree,
    AgreeStatus,
    AgreeStructure,
    AgreeText,
    /// The candidate gave no answer: timeout, reset, no such cluster.
    Failed,
    /// Sampled but not compared for reasons on our side: over `max_in_flight` or
    /// `max_request_bytes`, the primary's answer unreadable or cut.
    Dropped,
}

impl ShadowMetric {
    pub const ALL: [ShadowMetric; 8] = [
        ShadowMetric::Requests,
        ShadowMetric::Compared,
        ShadowMetric::Agree,
        ShadowMetric::AgreeStatus,
        ShadowMetric::AgreeStructure,
        ShadowMetric::AgreeText,
        ShadowMetric::Failed,
        ShadowMetric::Dropped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ShadowMetric::Requests => "canary_shadow_requests",
            ShadowMetric::Compared => "canary_shadow_compared",
            ShadowMetric::Agree => "canary_shadow_agree",
            ShadowMetric::AgreeStatus => "canary_shadow_agree_status",
            ShadowMetric::AgreeStructure => "canary_shadow_agree_structure",
            ShadowMetric::AgreeText => "canary_shadow_agree_text",
            ShadowMetric::Failed => "canary_shadow_failed",
            ShadowMetric::Dropped => "canary_shadow_dropped",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(name: &str) -> Option<ShadowMetric> {
        ShadowMetric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The stat name as the filter defines it (the candidate is the canary).
    pub fn stat_name(self, rollout: &str) -> String {
        rollout_stat_name(self.name(), rollout, StatTag::Version(Version::Canary))
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
    fn shadow_round_trips_with_defaults() {
        let c = parse(
            r#"{"schema_version":1,"rollouts":[{"name":"chat","weight_bp":0,"llm":{},"shadow":{"cluster":"candidate"}}]}"#,
        )
        .expect("valid");
        let s = c.rollouts[0].shadow.as_ref().expect("shadow");
        assert_eq!(s, &Shadow::new("candidate"));
        assert_eq!(s.text_normalisation, TextNormalisation::CollapseWhitespace);
        assert_eq!(parse(&c.to_json()).expect("valid"), c);
    }

    #[test]
    fn bad_shadow_fields_are_named() {
        let cases: &[(&str, &[&str])] = &[
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":0,"shadow":{"cluster":"c"}}]}"#,
                &["rollouts[0].shadow"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":0,"llm":{},"shadow":{"cluster":"","sample_bp":0,"timeout_ms":0,"max_in_flight":0,"max_request_bytes":0,"authority":"a b"}}]}"#,
                &[
                    "rollouts[0].shadow.cluster",
                    "rollouts[0].shadow.sample_bp",
                    "rollouts[0].shadow.timeout_ms",
                    "rollouts[0].shadow.max_in_flight",
                    "rollouts[0].shadow.max_request_bytes",
                    "rollouts[0].shadow.authority",
                ],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":0,"llm":{},"shadow":{"cluster":"c","sample_bp":10001}}]}"#,
                &["rollouts[0].shadow.sample_bp"],
            ),
        ];
        for (json, fields) in cases {
            let err = parse(json).expect_err(json).to_string();
            for field in *fields {
                assert!(err.contains(&format!("{field}:")), "{field} not in {err}");
            }
        }
        let err = parse(
            r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":0,"llm":{},"shadow":{"cluster":"c","text_normalisation":"fuzzy"}}]}"#,
        )
        .expect_err("unknown normalisation")
        .to_string();
        assert!(
            err.contains("rollouts[0].shadow.text_normalisation"),
            "{err}"
        );
    }

    #[test]
    fn shadow_metric_names_parse_back() {
        for m in ShadowMetric::ALL {
            assert_eq!(ShadowMetric::parse(m.name()), Some(m));
            assert_eq!(ShadowMetric::ALL[m.index()], m);
        }
        assert_eq!(
            ShadowMetric::AgreeText.stat_name("chat"),
            "canary_shadow_agree_text.rollout.chat.version.canary"
        );
    }
}
