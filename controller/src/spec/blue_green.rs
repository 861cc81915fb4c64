//! `strategy` and `blue_green` of the rollout spec (seed 002 §4): a blue-green spec is an
//! ordinary two-stage rollout, derived here: a verification stage at weight 0 (candidate
//! traffic comes from a shadow phase before it, or from synthetic checks sent with the force
//! header, e.g. `x-canary-user: always`) and the flip to 100%. What happens at the flip is
//! `machine::blue_green`'s.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{RolloutSpec, SpecError, Stage};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Stages of increasing weight.
    #[default]
    Canary,
    /// Verify at 0%, then flip everyone at once.
    BlueGreen,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueGreenSpec {
    /// Minimum time the candidate is verified at 0% before the flip.
    #[serde(with = "humantime_serde", default)]
    pub verify_hold: Duration,
    /// Requests each version must have served during verification (the candidate's come
    /// from shadow copies or forced synthetic checks).
    #[serde(default = "default_verify_min_requests")]
    pub verify_min_requests: u64,
    /// How long the old version stays configured and warm after the flip; `abort` flips
    /// back during it.
    #[serde(with = "humantime_serde", default = "default_keep_old_for")]
    pub keep_old_for: Duration,
}

impl Default for BlueGreenSpec {
    fn default() -> Self {
        BlueGreenSpec {
            verify_hold: Duration::ZERO,
            verify_min_requests: default_verify_min_requests(),
            keep_old_for: default_keep_old_for(),
        }
    }
}

fn default_verify_min_requests() -> u64 {
    100
}

fn default_keep_old_for() -> Duration {
    Duration::from_secs(600)
}

/// The blue-green options of a blue-green spec (defaults when `blue_green` is absent).
pub fn options(spec: &RolloutSpec) -> Option<BlueGreenSpec> {
    (spec.strategy == Strategy::BlueGreen).then(|| spec.blue_green.clone().unwrap_or_default())
}

/// The two stages of a blue-green rollout: verify at 0%, flip to 100%.
pub fn stages(options: &BlueGreenSpec) -> Vec<Stage> {
    vec![
        Stage {
            weight_pct: 0.0,
            hold: options.verify_hold,
            min_requests: options.verify_min_requests,
        },
        Stage {
            weight_pct: 100.0,
            hold: Duration::ZERO,
            min_requests: 0,
        },
    ]
}

/// Fills in the stages of a blue-green spec that gave none (`stages_given`: the YAML had a
/// `stages` key; if so, [`validate`] refuses it).
pub fn derive(spec: &mut RolloutSpec, stages_given: bool) {
    if let (Some(options), false) = (options(spec), stages_given) {
        spec.stages = stages(&options);
    }
}

pub fn validate(spec: &RolloutSpec, errors: &mut Vec<SpecError>) {
    let mut push = |field: &str, reason: &str| {
        errors.push(SpecError {
            field: field.into(),
            reason: reason.into(),
        })
    };
    let Some(options) = options(spec) else {
        if spec.blue_green.is_some() {
            push("blue_green", "needs strategy: blue_green");
        }
        return;
    };
    if spec.stages != stages(&options) {
        push(
            "stages",
            "a blue_green rollout has no stages: it verifies at 0% and flips to 100% \
             (see blue_green.verify_hold, blue_green.verify_min_requests)",
        );
    }
    if spec.accelerate {
        push(
            "accelerate",
            "not with strategy: blue_green (there is one flip)",
        );
    }
    // verify_hold is checked as the first stage's hold.
    super::check_duration(
        errors,
        "blue_green.keep_old_for",
        options.keep_old_for,
        super::MAX_HOLD,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name: shop\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\n\
                        analysis: {interval: 1s, failure_limit: 2}\n";

    fn spec(extra: &str) -> RolloutSpec {
        RolloutSpec::from_yaml(&format!("{BASE}{extra}")).expect("valid spec")
    }

    fn errors(extra: &str) -> Vec<String> {
        match RolloutSpec::from_yaml(&format!("{BASE}{extra}")) {
            Ok(_) => vec![],
            Err(e) => e.0.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn spec_derives_verify_and_flip_stages() {
        let s = spec("strategy: blue_green\nblue_green: {verify_hold: 5s, keep_old_for: 1m}\n");
        assert_eq!(s.stages.len(), 2);
        assert_eq!(
            (s.stages[0].weight_bp(), s.stages[1].weight_bp()),
            (0, 10_000)
        );
        assert_eq!(s.stages[0].hold, Duration::from_secs(5));
        assert_eq!(s.stages[0].min_requests, 100);
        let defaults = spec("strategy: blue_green\n");
        assert_eq!(
            options(&defaults).map(|o| o.keep_old_for),
            Some(Duration::from_secs(600))
        );
        assert_eq!(options(&spec("")), None, "canary by default");
    }

    #[test]
    fn spec_errors_name_the_field() {
        assert_eq!(
            errors("strategy: blue_green\nstages: [{weight_pct: 100}]\n"),
            ["stages"]
        );
        assert_eq!(errors("blue_green: {keep_old_for: 1m}\n"), ["blue_green"]);
        assert_eq!(
            errors("strategy: blue_green\naccelerate: true\n"),
            ["accelerate"]
        );
        assert_eq!(
            errors("strategy: blue_green\nblue_green: {keep_old: 1m}\n"),
            ["blue_green.keep_old"]
        );
        assert_eq!(errors("strategy: linear\n"), ["strategy"]);
    }
}
