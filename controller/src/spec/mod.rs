//! The rollout spec (`rollout.yaml`): stages, analysis, checks, where the stats come from,
//! parsed and validated once. Its sections live here too: [`blue_green`], [`clusters`]
//! (`sources.clusters`, lean mode), [`shadow`],
//! [`quota`], [`llm_checks`] (`checks.llm`), [`release`] (`release`, `stable_release`), and
//! [`filter`] builds the filter configuration the spec serves. The bottom floor: imports only
//! the contract, never another module of the crate.
//!
//! Defaults follow the seeds: stages 5% → 25% → 50% → 100% with holds of 30 min, 1 h and 2 h
//! (seed 000), error rate at most 5% and at most 1.5× stable, p99 at most 1.5× stable and
//! p95 at most 1.3× stable (seed 000's thresholds and seed 001's rollback triggers), at least
//! 1,000 requests per version in a stage before it may advance (seed 001).

use std::time::Duration;

use canary_contract::MAX_WEIGHT_BP;
use serde::{Deserialize, Serialize};

pub mod blue_green;
pub mod clusters;
mod filter;
pub mod llm_checks;
pub mod quota;
pub mod release;
pub mod shadow;
pub mod webhook;

pub use webhook::{Webhook, WebhookFormat};

pub use filter::Serving;

/// A problem with one field of the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// Path of the field, e.g. `stages[2].weight_pct`.
    pub field: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid rollout spec: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct SpecErrors(pub Vec<SpecError>);

/// Longest hold, verification or keep time a spec may give: longer is a typo, and a bound
/// keeps every duration far inside the milliseconds of a `u64` (see [`millis`]).
pub const MAX_HOLD: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest analysis interval and Prometheus lag.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// `d` in whole milliseconds, saturating (where `as_millis() as u64` truncates: 2^64 ms and
/// more wrap around to a short time).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Refuses a duration above `max`, naming the field.
pub(crate) fn check_duration(errors: &mut Vec<SpecError>, field: &str, d: Duration, max: Duration) {
    if d > max {
        errors.push(SpecError {
            field: field.into(),
            reason: format!(
                "must be at most {}s ({} days), got {}s",
                max.as_secs(),
                max.as_secs() / 86_400,
                d.as_secs()
            ),
        });
    }
}

/// A finite `x` of at least 1: a "multiple of stable's" threshold (NaN and ∞ compare false
/// with every bound, so each must be refused explicitly or it passes every check).
pub(crate) fn is_multiple(x: f64) -> bool {
    x.is_finite() && x >= 1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// The rollout's name: the filter's `rollout` stat label and config entry.
    pub name: String,
    /// The release this rollout rolls out, e.g. `v1.3.2`: a new value starts a new run at
    /// stage 1 (see [`release`]). Unset: one unnamed release.
    #[serde(
        default,
        deserialize_with = "release::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub release: Option<String>,
    /// The release the stable subset serves. Set to `release` once the subsets are
    /// relabelled, it finalizes a promoted release (weight back to 0), like `canaryctl
    /// finalize`.
    #[serde(
        default,
        deserialize_with = "release::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub stable_release: Option<String>,
    #[serde(default = "default_stages")]
    pub stages: Vec<Stage>,
    #[serde(default)]
    pub analysis: Analysis,
    #[serde(default)]
    pub checks: Checks,
    /// Advance early when the canary is clearly better than stable (seed 001).
    #[serde(default)]
    pub accelerate: bool,
    pub sources: Sources,
    /// JSON POSTed on stage change, pause, rollback and promotion.
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
    /// Options passed through to the filter for this rollout (any field of the filter's
    /// rollout configuration except `name` and `weight_bp`, which the controller owns).
    #[serde(default)]
    pub filter: serde_json::Map<String, serde_json::Value>,
    /// The global quota sentinel: throttle non-priority requests near the LLM quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<quota::QuotaSpec>,
    /// A shadow phase before the first stage (see [`shadow`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<shadow::ShadowSpec>,
    /// `canary` (stages) or `blue_green` (verify at 0%, one flip; see [`blue_green`]).
    #[serde(default)]
    pub strategy: blue_green::Strategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<blue_green::BlueGreenSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Canary share during the stage, in percent (two decimals at most).
    pub weight_pct: f64,
    /// Time to observe the stage before it may advance.
    #[serde(with = "humantime_serde", default)]
    pub hold: Duration,
    /// Requests each version must have served during the stage before it may advance.
    #[serde(default = "default_stage_min_requests")]
    pub min_requests: u64,
}

impl Stage {
    pub fn weight_bp(&self) -> u32 {
        // `as` saturates (NaN gives 0): validation refuses anything out of range.
        (self.weight_pct * 100.0).round() as u32
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Analysis {
    /// How often the canary is judged, over the stats of the last interval.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Consecutive failed analyses that roll back (circuit breaker trips; every request
    /// and LLM check is a sequential test, whose rejection rolls back at once).
    pub failure_limit: u32,
    /// Fewer requests than this for either version in a window: the window is not judged
    /// (inconclusive) and adds nothing to the stage's evidence. The sequential tests need
    /// no minimum; set it higher to leave windows out.
    pub min_window_requests: u64,
    /// The chance that a canary no worse than stable is ever rolled back by the request
    /// and LLM checks over the whole rollout, shared among them.
    pub alpha: f64,
    /// A stage that has not advanced this long after its hold (too little traffic, or
    /// inconclusive windows) pauses or rolls back: seed 000's `progressDeadlineSeconds`.
    #[serde(with = "humantime_serde")]
    pub progress_deadline: Option<Duration>,
    pub on_progress_deadline: DeadlineAction,
}

/// What a stage past its progress deadline does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineAction {
    /// Pause with a notification: an operator resumes (the deadline counts again from
    /// then), promotes or aborts.
    #[default]
    Pause,
    RollBack,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            interval: Duration::from_secs(30),
            failure_limit: 3,
            min_window_requests: 1,
            alpha: 0.01,
            progress_deadline: Some(Duration::from_secs(3_600)),
            on_progress_deadline: DeadlineAction::Pause,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Checks {
    pub error_rate: ErrorRateCheck,
    pub latency: Vec<LatencyCheck>,
    /// LLM signals and user feedback (checked only where the window has such samples).
    pub llm: llm_checks::LlmChecks,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            error_rate: ErrorRateCheck::default(),
            latency: vec![
                LatencyCheck {
                    quantile: 0.99,
                    max_relative_increase: 1.5,
                },
                LatencyCheck {
                    quantile: 0.95,
                    max_relative_increase: 1.3,
                },
            ],
            llm: llm_checks::LlmChecks::default(),
        }
    }
}

/// 5xx and resets over requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorRateCheck {
    /// The canary fails above this rate, when stable is not above it too (an incident
    /// that takes both past it is not the canary's doing).
    pub max_absolute: f64,
    /// The regression the test is built to catch: a canary at this multiple of stable's
    /// rate is rolled back; one at most halfway there (1.25× for 1.5×) must pass.
    pub max_relative_increase: f64,
}

impl Default for ErrorRateCheck {
    fn default() -> Self {
        ErrorRateCheck {
            max_absolute: 0.05,
            max_relative_increase: 1.5,
        }
    }
}

/// A latency quantile, judged like the error rate: a canary whose quantile is
/// `max_relative_increase`× stable's is rolled back, one at most halfway there must pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyCheck {
    /// e.g. 0.99 for p99.
    pub quantile: f64,
    pub max_relative_increase: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sources {
    /// Envoy admin endpoints, e.g. `http://127.0.0.1:9901` (where the controller can reach
    /// them; not inside a mesh).
    #[serde(default)]
    pub envoy_admin: Vec<String>,
    /// A Prometheus server that scrapes the Envoys' `/stats/prometheus` (in a mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,
    /// Lean mode: each version's stats are its Envoy cluster's, not the filter's (see
    /// [`clusters`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<clusters::VersionClusters>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSource {
    /// e.g. `http://prometheus.istio-system:9090`.
    pub url: String,
    /// How far behind "now" to read, so the last scrape of every target has landed: at
    /// least one scrape interval.
    #[serde(with = "humantime_serde", default = "default_prometheus_lag")]
    pub lag: Duration,
}

fn default_prometheus_lag() -> Duration {
    Duration::from_secs(15)
}

fn default_stages() -> Vec<Stage> {
    let stage = |weight_pct: f64, minutes: u64| Stage {
        weight_pct,
        hold: Duration::from_secs(minutes * 60),
        min_requests: default_stage_min_requests(),
    };
    vec![
        stage(5.0, 30),
        stage(25.0, 60),
        stage(50.0, 120),
        stage(100.0, 0),
    ]
}

fn default_stage_min_requests() -> u64 {
    1_000
}

impl RolloutSpec {
    /// Parses and validates a YAML spec; every problem is reported with its field path.
    pub fn from_yaml(text: &str) -> Result<RolloutSpec, SpecErrors> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let mut spec: RolloutSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let parent = match e.path().to_string() {
                p if p == "." || p == "?" || p.is_empty() => None,
                p => Some(p),
            };
            let reason = e.into_inner().to_string();
            // serde reports a missing field at its parent; name the field itself.
            let missing = reason
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            let field = match (parent, missing) {
                (Some(p), Some(m)) => format!("{p}.{m}"),
                (None, Some(m)) => m.to_string(),
                (Some(p), None) => p,
                (None, None) => "(root)".to_string(),
            };
            SpecErrors(vec![SpecError { field, reason }])
        })?;
        let stages_given = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
            .is_ok_and(|v| v.get("stages").is_some());
        blue_green::derive(&mut spec, stages_given);
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), SpecErrors> {
        let mut errors = Vec::new();
        let mut durations = Vec::new();
        let mut push = |field: String, reason: String| errors.push(SpecError { field, reason });
        if self.stages.is_empty() {
            push("stages".into(), "at least one stage is needed".into());
        }
        let mut previous_bp = 0;
        for (i, stage) in self.stages.iter().enumerate() {
            let bp = stage.weight_pct * 100.0;
            if !(0.0..=f64::from(MAX_WEIGHT_BP)).contains(&bp) || bp.fract().abs() > 1e-6 {
                push(
                    format!("stages[{i}].weight_pct"),
                    format!(
                        "must be within 0..=100 with at most two decimals, got {}",
                        stage.weight_pct
                    ),
                );
            } else if stage.weight_bp() <= previous_bp && i > 0 {
                push(
                    format!("stages[{i}].weight_pct"),
                    "stages must increase the weight".into(),
                );
            } else {
                previous_bp = stage.weight_bp();
            }
        }
        if let Some(last) = self.stages.last() {
            if last.weight_bp() != MAX_WEIGHT_BP {
                push(
                    format!("stages[{}].weight_pct", self.stages.len() - 1),
                    "the last stage must be 100 (full promotion)".into(),
                );
            }
        }
        if self.analysis.interval < Duration::from_millis(100) {
            push("analysis.interval".into(), "must be at least 100ms".into());
        }
        for (i, stage) in self.stages.iter().enumerate() {
            // A blue-green spec's first stage is its verification, given as verify_hold.
            let field = match blue_green::options(self) {
                Some(_) if i == 0 => "blue_green.verify_hold".to_string(),
                _ => format!("stages[{i}].hold"),
            };
            check_duration(&mut durations, &field, stage.hold, MAX_HOLD);
        }
        check_duration(
            &mut durations,
            "analysis.interval",
            self.analysis.interval,
            MAX_INTERVAL,
        );
        if let Some(deadline) = self.analysis.progress_deadline {
            check_duration(
                &mut durations,
                "analysis.progress_deadline",
                deadline,
                MAX_HOLD,
            );
        }
        if let Some(p) = &self.sources.prometheus {
            check_duration(
                &mut durations,
                "sources.prometheus.lag",
                p.lag,
                MAX_INTERVAL,
            );
        }
        if self.analysis.failure_limit == 0 {
            push("analysis.failure_limit".into(), "must be at least 1".into());
        }
        if !(self.analysis.alpha > 0.0 && self.analysis.alpha < 0.5) {
            push("analysis.alpha".into(), "must be in (0, 0.5)".into());
        }
        let e = &self.checks.error_rate;
        if !(e.max_absolute > 0.0 && e.max_absolute <= 1.0) {
            push(
                "checks.error_rate.max_absolute".into(),
                "must be in (0, 1]".into(),
            );
        }
        if !(e.max_relative_increase.is_finite()
            && e.max_relative_increase > 1.0
            && e.max_relative_increase <= 100.0)
        {
            push(
                "checks.error_rate.max_relative_increase".into(),
                format!(
                    "must be a finite number more than 1 and at most 100, got {}",
                    e.max_relative_increase
                ),
            );
        }
        for (i, l) in self.checks.latency.iter().enumerate() {
            if !(l.quantile > 0.0 && l.quantile < 1.0) {
                push(
                    format!("checks.latency[{i}].quantile"),
                    "must be in (0, 1), e.g. 0.99".into(),
                );
            }
            if !(l.max_relative_increase.is_finite()
                && l.max_relative_increase > 1.0
                && l.max_relative_increase <= 100.0)
            {
                push(
                    format!("checks.latency[{i}].max_relative_increase"),
                    format!(
                        "must be a finite number more than 1 and at most 100, got {}",
                        l.max_relative_increase
                    ),
                );
            }
        }
        if self
            .analysis
            .progress_deadline
            .is_some_and(|d| d < self.analysis.interval && self.analysis.interval <= MAX_INTERVAL)
        {
            push(
                "analysis.progress_deadline".into(),
                "must be at least one analysis interval".into(),
            );
        }
        for e in self.checks.llm.validate() {
            push(e.field, e.reason);
        }
        match (
            &self.sources.prometheus,
            self.sources.envoy_admin.is_empty(),
        ) {
            (None, true) => push(
                "sources".into(),
                "name Envoy admin endpoints (envoy_admin) or a Prometheus server (prometheus)"
                    .into(),
            ),
            (Some(_), false) => push(
                "sources".into(),
                "use envoy_admin or prometheus, not both".into(),
            ),
            (Some(p), true) if !webhook::is_http_url(&p.url) => push(
                "sources.prometheus.url".into(),
                format!("must be an http(s) URL, got {:?}", p.url),
            ),
            _ => {}
        }
        for (i, url) in self.sources.envoy_admin.iter().enumerate() {
            if !webhook::is_http_url(url) {
                push(
                    format!("sources.envoy_admin[{i}]"),
                    format!("must be an http:// or https:// URL, got {url:?}"),
                );
            }
        }
        for e in webhook::validate(&self.webhooks) {
            push(e.field, e.reason);
        }
        for owned in ["name", "weight_bp", "stats"] {
            if self.filter.contains_key(owned) {
                push(
                    format!("filter.{owned}"),
                    "is set by the controller, not the spec".into(),
                );
            }
        }
        // The served configuration, shadow copy included, is built and validated once here.
        if let Err(e) = self.filter_config(0, true) {
            errors.extend(e.0);
        }
        if let Some(quota) = &self.quota {
            errors.extend(quota.validate(&self.filter));
        }
        shadow::validate(self, &mut errors);
        clusters::validate(self, &mut errors);
        blue_green::validate(self, &mut errors);
        release::validate(self, &mut errors);
        errors.extend(durations);
        // What `/filter-config` will serve, throttle and per-user allowances included, must
        // be what a filter accepts, or no weight change (rollbacks included) would reach the
        // proxies. One error per field: the checks above may have named it already.
        for serving in Serving::worst_cases(self) {
            if let Err(e) = self.served_config(&serving) {
                for e in e.0 {
                    if !errors.iter().any(|known| known.field == e.field) {
                        errors.push(e);
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SpecErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name: checkout\nsources:\n  envoy_admin: [\"http://127.0.0.1:9901\"]\n";

    #[test]
    fn minimal_spec_gets_the_seed_defaults() {
        let spec = RolloutSpec::from_yaml(MINIMAL).expect("valid");
        let weights: Vec<u32> = spec.stages.iter().map(Stage::weight_bp).collect();
        assert_eq!(weights, vec![500, 2_500, 5_000, 10_000]);
        assert_eq!(spec.stages[0].hold, Duration::from_secs(1_800));
        assert_eq!(spec.checks.error_rate.max_absolute, 0.05);
        assert_eq!(spec.checks.latency[0].quantile, 0.99);
        assert_eq!(spec.analysis.failure_limit, 3);
        let llm = &spec.checks.llm;
        assert_eq!(llm.cost.max_relative_increase, 1.5);
        assert_eq!(llm.refusals.max_relative_increase, 2.0);
        assert_eq!(llm.quality.max_relative_decrease, 0.05);
        assert_eq!(llm.task_success.min_absolute, 0.90);
        assert_eq!(llm.ttft.quantile, 0.95);
        assert_eq!(llm.eval.max_relative_decrease, 0.10);
        assert_eq!(llm.eval.signal, "eval");
        assert!(llm.thumbs_down.enabled && llm.thumbs_down.max_absolute.is_none());
        let rollout = spec.rollout_config(500).expect("filter config");
        assert_eq!(rollout.name, "checkout");
        assert_eq!(rollout.weight_bp, 500);
    }

    #[test]
    fn seed_001_schedule_is_expressible() {
        let yaml = format!(
            "{MINIMAL}stages:\n{}",
            [5, 10, 25, 50, 75, 100]
                .iter()
                .map(|w| format!("  - {{weight_pct: {w}, hold: 24h}}\n"))
                .collect::<String>()
        );
        let spec = RolloutSpec::from_yaml(&yaml).expect("valid");
        assert_eq!(spec.stages.len(), 6);
        assert_eq!(spec.stages[1].weight_bp(), 1_000);
        assert_eq!(spec.stages[1].hold, Duration::from_secs(86_400));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("name: a\n", "sources"),
            ("name: a\nsources: {envoy_admin: []}\n", "sources"),
            (
                "name: a\nsources: {prometheus: {url: \"prom:9090\"}}\n",
                "sources.prometheus.url",
            ),
            (
                "name: a\nsources: {envoy_admin: [\"x\"]}\n",
                "sources.envoy_admin[0]",
            ),
            (
                &format!("{MINIMAL}stages: [{{weight_pct: 50}}, {{weight_pct: 20}}, {{weight_pct: 100}}]\n"),
                "stages[1].weight_pct",
            ),
            (
                &format!("{MINIMAL}stages: [{{weight_pct: 50}}]\n"),
                "stages[0].weight_pct",
            ),
            (
                &format!("{MINIMAL}stages: [{{weight_pct: 5, hold: soon}}, {{weight_pct: 100}}]\n"),
                "stages[0].hold",
            ),
            (
                &format!("{MINIMAL}analysis: {{failure_limit: 0}}\n"),
                "analysis.failure_limit",
            ),
            (
                &format!("{MINIMAL}analysis: {{intervall: 5s}}\n"),
                "analysis",
            ),
            (
                &format!("{MINIMAL}checks: {{latency: [{{quantile: 99, max_relative_increase: 2}}]}}\n"),
                "checks.latency[0].quantile",
            ),
            (
                &format!("{MINIMAL}filter: {{key_sources: [{{query: u}}]}}\n"),
                "filter.key_sources[0]",
            ),
            (&format!("{MINIMAL}filter: {{weight_bp: 5}}\n"), "filter.weight_bp"),
            (
                &format!("{MINIMAL}filter: {{circuit_breaker: {{open_s: 0}}}}\n"),
                "filter.circuit_breaker.open_s",
            ),
            ("name: Bad.Name\nsources: {envoy_admin: [\"http://a\"]}\n", "name"),
            (
                &format!("{MINIMAL}webhooks: [{{url: ftp://x}}]\n"),
                "webhooks[0].url",
            ),
            (
                &format!("{MINIMAL}webhooks: [{{url: \"https://h\", format: teams}}]\n"),
                "webhooks[0].format",
            ),
            (
                &format!("{MINIMAL}webhooks: [{{url: \"https://h\", secret_env: \"1 x\"}}]\n"),
                "webhooks[0].secret_env",
            ),
            (
                &format!("{MINIMAL}checks: {{llm: {{task_success: {{min_absolute: 90}}}}}}\n"),
                "checks.llm.task_success.min_absolute",
            ),
            (
                &format!("{MINIMAL}checks: {{llm: {{refusals: {{min_samples: 0}}}}}}\n"),
                "checks.llm.refusals.min_samples",
            ),
            (
                &format!("{MINIMAL}checks: {{llm: {{ttft: {{quantil: 0.9}}}}}}\n"),
                "checks.llm.ttft",
            ),
            (
                &format!("{MINIMAL}checks: {{llm: {{eval: {{max_relative_decrease: 10}}}}}}\n"),
                "checks.llm.eval.max_relative_decrease",
            ),
            (
                &format!("{MINIMAL}filter: {{llm: {{}}, eval: {{cluster: judge, sample_bp: 0}}}}\n"),
                "filter.eval.sample_bp",
            ),
        ];
        for (yaml, field) in cases {
            let err = RolloutSpec::from_yaml(yaml).expect_err(yaml);
            assert!(
                err.0.iter().any(|e| e.field.starts_with(field)),
                "{yaml}: expected an error on {field}, got {err}"
            );
        }
    }

    /// Issue 17: NaN (and ±∞) compare false with every bound, so `x < 1.0` let them through;
    /// with a NaN latency limit a canary 10× slower passed.
    #[test]
    fn non_finite_numbers_are_refused_naming_the_field() {
        let llm = "filter: {llm: {}}\n";
        let cases: &[(&str, &str)] = &[
            (
                "checks: {error_rate: {max_absolute: V}}",
                "checks.error_rate.max_absolute",
            ),
            (
                "checks: {error_rate: {max_relative_increase: V}}",
                "checks.error_rate.max_relative_increase",
            ),
            (
                "checks: {latency: [{quantile: V, max_relative_increase: 2}]}",
                "checks.latency[0].quantile",
            ),
            (
                "checks: {latency: [{quantile: 0.9, max_relative_increase: V}]}",
                "checks.latency[0].max_relative_increase",
            ),
            ("analysis: {alpha: V}", "analysis.alpha"),
            (
                "stages: [{weight_pct: V}, {weight_pct: 100}]",
                "stages[0].weight_pct",
            ),
            (
                "checks: {llm: {cost: {max_relative_increase: V}}}",
                "checks.llm.cost.max_relative_increase",
            ),
            (
                "checks: {llm: {refusals: {max_relative_increase: V}}}",
                "checks.llm.refusals.max_relative_increase",
            ),
            (
                "checks: {llm: {quality: {max_relative_decrease: V}}}",
                "checks.llm.quality.max_relative_decrease",
            ),
            (
                "checks: {llm: {task_success: {min_absolute: V}}}",
                "checks.llm.task_success.min_absolute",
            ),
            (
                "checks: {llm: {thumbs_down: {max_relative_increase: V}}}",
                "checks.llm.thumbs_down.max_relative_increase",
            ),
            (
                "checks: {llm: {thumbs_down: {max_absolute: V}}}",
                "checks.llm.thumbs_down.max_absolute",
            ),
            (
                "checks: {llm: {ttft: {quantile: V}}}",
                "checks.llm.ttft.quantile",
            ),
            (
                "checks: {llm: {ttft: {max_relative_increase: V}}}",
                "checks.llm.ttft.max_relative_increase",
            ),
            (
                "checks: {llm: {eval: {max_relative_decrease: V}}}",
                "checks.llm.eval.max_relative_decrease",
            ),
            (
                "quota: {tokens_per_minute: 100, activate_share: V}",
                "quota.activate_share",
            ),
            (
                "quota: {tokens_per_minute: 100, clear_share: V}",
                "quota.clear_share",
            ),
            (
                "shadow: {copy: {cluster: c}, min_agreement_pct: V}",
                "shadow.min_agreement_pct",
            ),
        ];
        for (template, field) in cases {
            for value in [".nan", ".inf", "-.inf"] {
                let yaml = format!("{MINIMAL}{llm}{}\n", template.replace('V', value));
                let err = RolloutSpec::from_yaml(&yaml).expect_err(&yaml);
                assert!(
                    err.0.iter().any(|e| e.field == *field),
                    "{yaml}: expected an error on {field}, got {err}"
                );
            }
        }
    }

    /// Issue 17: `hold: 18446744073709552s` is 2^64 ms and a bit: `as_millis() as u64` made it
    /// 384 ms and the rollout was promoted after 1 s. Durations are bounded, the field named.
    #[test]
    fn durations_are_bounded_naming_the_field() {
        let huge = "18446744073709552s";
        let cases = [
            (
                format!("stages: [{{weight_pct: 5, hold: {huge}}}, {{weight_pct: 100}}]"),
                "stages[0].hold",
            ),
            (
                "stages: [{weight_pct: 5, hold: 366days}, {weight_pct: 100}]".to_string(),
                "stages[0].hold",
            ),
            (
                format!("analysis: {{interval: {huge}}}"),
                "analysis.interval",
            ),
            (
                format!("filter: {{llm: {{}}}}\nshadow: {{copy: {{cluster: c}}, hold: {huge}}}"),
                "shadow.hold",
            ),
            (
                format!("strategy: blue_green\nblue_green: {{verify_hold: {huge}}}"),
                "blue_green.verify_hold",
            ),
            (
                format!("strategy: blue_green\nblue_green: {{keep_old_for: {huge}}}"),
                "blue_green.keep_old_for",
            ),
        ];
        for (extra, field) in &cases {
            let yaml = format!("{MINIMAL}{extra}\n");
            let err = RolloutSpec::from_yaml(&yaml).expect_err(&yaml);
            assert_eq!(
                err.0.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
                [*field],
                "{yaml}: {err}"
            );
        }
        let prom =
            format!("name: a\nsources: {{prometheus: {{url: \"http://p\", lag: {huge}}}}}\n");
        let err = RolloutSpec::from_yaml(&prom).expect_err("lag");
        assert_eq!(err.0[0].field, "sources.prometheus.lag");
        let year =
            format!("{MINIMAL}stages: [{{weight_pct: 5, hold: 365days}}, {{weight_pct: 100}}]\n");
        RolloutSpec::from_yaml(&year).expect("a year is allowed");
        assert_eq!(
            millis(Duration::from_secs(18_446_744_073_709_552)),
            u64::MAX
        );
        assert_eq!(millis(Duration::from_millis(1_500)), 1_500);
    }

    /// Issue 17: `quota.per_user.tokens_per_minute: 2000000000000` was accepted, and every
    /// `/filter-config` after it was refused by every filter. The served configuration (per
    /// proxy, throttle included) is validated by the contract at load, the spec's field named.
    #[test]
    fn a_spec_whose_served_config_a_filter_refuses_is_refused() {
        let yaml = format!(
            "{MINIMAL}filter: {{llm: {{}}}}\nquota: {{tokens_per_minute: 100, per_user: {{tokens_per_minute: 2000000000000}}}}\n"
        );
        let err = RolloutSpec::from_yaml(&yaml).expect_err("the filter would refuse it");
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].field, "quota.per_user.tokens_per_minute", "{err}");
        assert!(err.0[0].reason.contains("2000000000000"), "{err}");
        let ok = yaml.replace("2000000000000", "1000000000000");
        let spec = RolloutSpec::from_yaml(&ok).expect("at the filter's limit");
        for serving in Serving::worst_cases(&spec) {
            spec.served_config(&serving).expect("served as validated");
        }
    }
}
