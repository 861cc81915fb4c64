//! The `eval` part of a rollout: continuous eval sampling (issue 7, seed 002 §9). A share of
//! each version's LLM calls is sent, with the answer, to an evaluator (an LLM-as-judge
//! service) after the user has it; the evaluator's score becomes the quality signal
//! `canary_quality_<signal>_*` of the version that answered, which the controller judges.
//!
//! The evaluator is called with `POST <path>` and a JSON body
//! `{"rollout", "version", "request", "response": {"status", "text"}}` (`request` is the
//! user's request body as JSON, or as a string when it is not JSON; `text` is the answer's
//! text, streamed or not) and answers `2xx` with `{"score": <0..1>}`.

use serde::{Deserialize, Serialize};

use crate::stats::{rollout_stat_name, StatTag};
use crate::validate::{field, is_signal_name, Validator, MAX_SIGNAL_LEN};
use crate::Version;

/// Continuous eval sampling of a rollout's LLM calls. Needs `llm` on the same rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSampling {
    /// Envoy cluster of the evaluator.
    pub cluster: String,
    #[serde(default = "default_path")]
    pub path: String,
    /// `:authority` of the calls; default: the cluster's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Share of each version's LLM calls sent, in basis points (default 1%); evenly spread
    /// per worker and version (every 10000/sample_bp-th call), not random.
    #[serde(default = "default_sample_bp")]
    pub sample_bp: u32,
    /// How long the evaluator may take; a later score is counted failed.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Evaluations outstanding at once per worker; more are dropped (counted), never
    /// queued: a slow evaluator costs samples, never user latency.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Request body bytes copied at most; a longer request is not evaluated (dropped).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u32,
    /// The quality signal the scores are recorded as: `canary_quality_<signal>_*`.
    #[serde(default = "default_signal")]
    pub signal: String,
}

impl EvalSampling {
    pub fn new(cluster: &str) -> EvalSampling {
        EvalSampling {
            cluster: cluster.to_string(),
            path: default_path(),
            authority: None,
            sample_bp: default_sample_bp(),
            timeout_ms: default_timeout_ms(),
            max_in_flight: default_max_in_flight(),
            max_request_bytes: default_max_request_bytes(),
            signal: default_signal(),
        }
    }

    pub fn authority(&self) -> &str {
        self.authority.as_deref().unwrap_or(&self.cluster)
    }
}

fn default_path() -> String {
    "/evaluate".to_string()
}
fn default_sample_bp() -> u32 {
    100
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_in_flight() -> u32 {
    16
}
fn default_max_request_bytes() -> u32 {
    64 * 1024
}
/// The default quality signal of eval scores (the controller's `checks.llm.eval.signal`).
pub const DEFAULT_EVAL_SIGNAL: &str = "eval";
fn default_signal() -> String {
    DEFAULT_EVAL_SIGNAL.to_string()
}

pub(crate) fn validate_eval(
    v: &mut Validator,
    at: &str,
    eval: &EvalSampling,
    llm: Option<&crate::llm::LlmSignals>,
) {
    v.check(
        llm.is_some(),
        at.to_string(),
        "needs `llm` on the same rollout (the answer is read by the LLM reader)",
    );
    v.check(
        eval.path.starts_with('/') && eval.path.bytes().all(|b| b.is_ascii_graphic()),
        field(at, ".path"),
        format!("{:?} must be a path starting with '/'", eval.path),
    );
    crate::shadow::validate_outgoing(
        v,
        at,
        crate::shadow::Outgoing {
            cluster: &eval.cluster,
            authority: eval.authority.as_deref(),
            sample_bp: eval.sample_bp,
            timeout_ms: eval.timeout_ms,
            max_in_flight: eval.max_in_flight,
            max_request_bytes: eval.max_request_bytes,
        },
    );
    v.check(
        is_signal_name(&eval.signal),
        field(at, ".signal"),
        format!(
            "{:?} must be 1-{} bytes of [a-z0-9_] (it is part of stat names)",
            eval.signal, MAX_SIGNAL_LEN
        ),
    );
    let taken = llm.is_some_and(|l| l.quality_headers.iter().any(|q| q.signal == eval.signal));
    v.check(
        !taken,
        field(at, ".signal"),
        format!(
            "{:?} is also a quality header's signal: the scores would mix",
            eval.signal
        ),
    );
}

/// The eval sampling counters, per rollout and version (of the answer evaluated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvalMetric {
    /// Calls picked for evaluation (the configured share of LLM calls).
    Sampled,
    /// Evaluations sent to the evaluator.
    Sent,
    /// Scores received and recorded (in `canary_quality_<signal>_*`).
    Scored,
    /// Sent, but no usable score: the evaluator failed, timed out or answered without one.
    Failed,
    /// Sampled but not sent: `max_in_flight` evaluations outstanding, the request over
    /// `max_request_bytes`, or the answer unreadable.
    Dropped,
}

impl EvalMetric {
    pub const ALL: [EvalMetric; 5] = [
        EvalMetric::Sampled,
        EvalMetric::Sent,
        EvalMetric::Scored,
        EvalMetric::Failed,
        EvalMetric::Dropped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EvalMetric::Sampled => "canary_eval_sampled",
            EvalMetric::Sent => "canary_eval_sent",
            EvalMetric::Scored => "canary_eval_scored",
            EvalMetric::Failed => "canary_eval_failed",
            EvalMetric::Dropped => "canary_eval_dropped",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(name: &str) -> Option<EvalMetric> {
        EvalMetric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The stat name as the filter defines it.
    pub fn stat_name(self, rollout: &str, version: Version) -> String {
        rollout_stat_name(self.name(), rollout, StatTag::Version(version))
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
    fn eval_round_trips_with_defaults() {
        let c = parse(
            r#"{"schema_version":1,"rollouts":[{"name":"chat","weight_bp":500,"llm":{},"eval":{"cluster":"judge"}}]}"#,
        )
        .expect("valid");
        let e = c.rollouts[0].eval.as_ref().expect("eval");
        assert_eq!(e, &EvalSampling::new("judge"));
        assert_eq!(e.sample_bp, 100, "seed 002: 1% of traffic");
        assert_eq!(e.authority(), "judge");
        assert_eq!(e.signal, "eval");
        assert_eq!(parse(&c.to_json()).expect("valid"), c);
    }

    #[test]
    fn bad_eval_fields_are_named() {
        let cases: &[(&str, &[&str])] = &[
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":0,"eval":{"cluster":"c"}}]}"#,
                &["rollouts[0].eval"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":0,"llm":{},"eval":{"cluster":"","path":"evaluate","authority":"a b","sample_bp":0,"timeout_ms":0,"max_in_flight":0,"max_request_bytes":0,"signal":"Eval!"}}]}"#,
                &[
                    "rollouts[0].eval.cluster",
                    "rollouts[0].eval.path",
                    "rollouts[0].eval.authority",
                    "rollouts[0].eval.sample_bp",
                    "rollouts[0].eval.timeout_ms",
                    "rollouts[0].eval.max_in_flight",
                    "rollouts[0].eval.max_request_bytes",
                    "rollouts[0].eval.signal",
                ],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":0,"llm":{"quality_headers":[{"header":"x-q","signal":"eval"}]},"eval":{"cluster":"c"}}]}"#,
                &["rollouts[0].eval.signal"],
            ),
        ];
        for (json, fields) in cases {
            let err = parse(json).expect_err(json).to_string();
            for field in *fields {
                assert!(err.contains(&format!("{field}:")), "{field} not in {err}");
            }
        }
    }

    #[test]
    fn eval_metric_names_parse_back() {
        for m in EvalMetric::ALL {
            assert_eq!(EvalMetric::parse(m.name()), Some(m));
            assert_eq!(EvalMetric::ALL[m.index()], m);
        }
        assert_eq!(
            EvalMetric::Dropped.stat_name("chat", Version::Canary),
            "canary_eval_dropped.rollout.chat.version.canary"
        );
    }
}
