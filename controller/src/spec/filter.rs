//! The filter configuration a spec serves: the contract's typed [`FilterConfig`], built from
//! the spec's `filter` options, the name and weight the controller owns and (during the shadow
//! phase) the shadow copy, validated by the contract. Its errors are renamed to the spec's
//! own field names here, in one place.

use canary_contract::{FieldError, FilterConfig, RolloutConfig};

use super::{RolloutSpec, SpecError, SpecErrors};

impl RolloutSpec {
    /// The filter configuration for this rollout at `weight_bp`, with the shadow copy if
    /// `shadowing` (and the spec has a shadow phase), validated by the contract.
    pub fn filter_config(
        &self,
        weight_bp: u32,
        shadowing: bool,
    ) -> Result<FilterConfig, SpecErrors> {
        let copy = self.shadow.as_ref().filter(|_| shadowing);
        let mut rollout = self.rollout_options(weight_bp, copy.is_some())?;
        if let Some(shadow) = copy {
            rollout.shadow = Some(shadow.copy.clone());
        }
        let config = FilterConfig::new(vec![rollout]);
        config
            .validate()
            .map_err(|e| spec_errors(e.errors, copy.is_some()))?;
        Ok(config)
    }

    /// The rollout's own entry of [`RolloutSpec::filter_config`] (outside the shadow phase).
    pub fn rollout_config(&self, weight_bp: u32) -> Option<RolloutConfig> {
        self.filter_config(weight_bp, false)
            .ok()
            .and_then(|c| c.rollouts.into_iter().next())
    }

    /// The spec's `filter` options (already parsed from the YAML) as the contract's typed
    /// rollout, with the name and weight the controller owns.
    fn rollout_options(
        &self,
        weight_bp: u32,
        shadow_copy: bool,
    ) -> Result<RolloutConfig, SpecErrors> {
        let mut options = self.filter.clone();
        options.insert("name".into(), self.name.clone().into());
        options.insert("weight_bp".into(), weight_bp.into());
        serde_path_to_error::deserialize(serde_json::Value::Object(options)).map_err(|e| {
            let field = match e.path().to_string() {
                p if p == "." || p.is_empty() => "rollouts[0]".to_string(),
                p => format!("rollouts[0].{p}"),
            };
            let reason = e.into_inner().to_string();
            spec_errors(vec![FieldError { field, reason }], shadow_copy)
        })
    }
}

/// The contract's field errors (paths in the served configuration, `rollouts[0]...`) under
/// the spec's names: the rollout's name is the spec's `name`, the shadow copy (while the spec
/// provides it) is `shadow.copy`, everything else comes from `filter`.
fn spec_errors(errors: Vec<FieldError>, shadow_copy: bool) -> SpecErrors {
    let rename = |field: &str| match field {
        "rollouts[0].name" => "name".to_string(),
        other if shadow_copy && other.starts_with("rollouts[0].shadow") => {
            other.replacen("rollouts[0].shadow", "shadow.copy", 1)
        }
        other => other.replacen("rollouts[0]", "filter", 1),
    };
    SpecErrors(
        errors
            .into_iter()
            .map(|f| SpecError {
                field: rename(&f.field),
                reason: f.reason,
            })
            .collect(),
    )
}
