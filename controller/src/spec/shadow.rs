//! `shadow` of the rollout spec: the copy the filter makes during the shadow phase and the gate
//! that ends it. The gate itself runs in `machine::shadow`.

use std::time::Duration;

use canary_contract::Shadow;
use serde::{Deserialize, Serialize};

use super::{RolloutSpec, SpecError};

/// `shadow:` in the rollout spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// The filter's `shadow` settings during the phase: `cluster` (the candidate's Envoy
    /// cluster), `sample_bp`, `timeout_ms`, `max_in_flight`, `max_request_bytes`,
    /// `text_normalisation`, `authority`.
    pub copy: Shadow,
    /// Minimum time in the shadow phase.
    #[serde(with = "humantime_serde", default)]
    pub hold: Duration,
    /// Compared answers needed before the gate decides.
    #[serde(default = "default_min_compared")]
    pub min_compared: u64,
    /// Agreement over the phase (status, structure and text all agree) needed to go on.
    #[serde(default = "default_min_agreement_pct")]
    pub min_agreement_pct: f64,
    /// Consecutive failed gate decisions (agreement below the gate, or a regression) that
    /// roll the rollout back.
    #[serde(default = "default_failure_limit")]
    pub failure_limit: u32,
}

fn default_min_compared() -> u64 {
    200
}
fn default_min_agreement_pct() -> f64 {
    90.0
}
fn default_failure_limit() -> u32 {
    3
}

/// Spec checks of `shadow` (field paths as in the spec). The copy itself is validated with
/// the rest of the filter configuration (see [`super::filter`]).
pub fn validate(spec: &RolloutSpec, errors: &mut Vec<SpecError>) {
    let Some(s) = &spec.shadow else {
        return;
    };
    let mut push = |field: &str, reason: String| {
        errors.push(SpecError {
            field: field.into(),
            reason,
        })
    };
    if !(0.0..=100.0).contains(&s.min_agreement_pct) {
        push(
            "shadow.min_agreement_pct",
            format!("must be within 0..=100, got {}", s.min_agreement_pct),
        );
    }
    if s.failure_limit == 0 {
        push("shadow.failure_limit", "must be at least 1".into());
    }
    if spec.filter.contains_key("shadow") {
        push(
            "filter.shadow",
            "is set by the controller during the shadow phase (use shadow.copy)".into(),
        );
    }
    super::check_duration(errors, "shadow.hold", s.hold, super::MAX_HOLD);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_errors_name_shadow_fields() {
        let bad = "name: chat\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\n\
                   shadow: {copy: {cluster: candidate, sample_bp: 0}, min_agreement_pct: 120, failure_limit: 0}\n";
        let err = RolloutSpec::from_yaml(bad)
            .expect_err("invalid")
            .to_string();
        for field in [
            "shadow.min_agreement_pct",
            "shadow.failure_limit",
            "shadow.copy.sample_bp",
            "shadow.copy:",
        ] {
            assert!(err.contains(field), "{field} not in {err}");
        }
    }
}
