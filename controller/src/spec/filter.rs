//! The filter configuration a spec serves: the contract's typed [`FilterConfig`], built from
//! the spec's `filter` options, the name and weight the controller owns, (during the shadow
//! phase) the shadow copy, and what the controller adds while it runs (the quota sentinel's
//! throttle, `quota.per_user` divided among the proxies), validated by the contract. Its
//! errors are renamed to the spec's own field names here, in one place.

use canary_contract::{FieldError, FilterConfig, RolloutConfig};

use super::quota::PerUser;
use super::{RolloutSpec, SpecError, SpecErrors};

/// What the served configuration depends on besides the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serving {
    pub weight_bp: u32,
    /// In the shadow phase: the copy is published.
    pub shadowing: bool,
    /// The quota sentinel's throttle is on.
    pub throttled: bool,
    /// Proxies `quota.per_user` is divided among.
    pub proxies: usize,
}

impl Serving {
    /// The served configurations whose validity stands for every other: each shadow setting
    /// with the throttle as the spec may publish it and one proxy (the per-proxy allowance
    /// is largest there; more proxies only divide it). Validating these at spec load means
    /// no weight change can later produce a configuration the filters refuse.
    pub fn worst_cases(spec: &RolloutSpec) -> Vec<Serving> {
        let shadow_settings: &[bool] = match spec.shadow {
            Some(_) => &[true, false],
            None => &[false],
        };
        shadow_settings
            .iter()
            .map(|&shadowing| Serving {
                weight_bp: 0,
                shadowing,
                throttled: spec.quota.is_some(),
                proxies: 1,
            })
            .collect()
    }
}

impl RolloutSpec {
    /// The filter configuration for this rollout at `weight_bp`, with the shadow copy if
    /// `shadowing` (and the spec has a shadow phase), validated by the contract.
    pub fn filter_config(
        &self,
        weight_bp: u32,
        shadowing: bool,
    ) -> Result<FilterConfig, SpecErrors> {
        let (config, shadow_copy) = self.build(weight_bp, shadowing)?;
        config
            .validate()
            .map_err(|e| spec_errors(e.errors, shadow_copy, None))?;
        // Lean mode serves the filter's lean build: refused now rather than by every proxy.
        if self.sources.clusters.is_some() {
            config
                .validate_lean()
                .map_err(|e| spec_errors(e.errors, shadow_copy, None))?;
        }
        Ok(config)
    }

    /// The configuration `/filter-config` serves: [`RolloutSpec::filter_config`] with the
    /// throttle and the per-user allowances, validated by the contract's own validator as a
    /// filter would validate it.
    pub fn served_config(&self, serving: &Serving) -> Result<FilterConfig, SpecErrors> {
        let (mut config, shadow_copy) = self.build(serving.weight_bp, serving.shadowing)?;
        let per_user = self.quota.as_ref().and_then(|q| q.per_user.as_ref());
        if let Some(per_user) = per_user {
            apply_per_user(&mut config, per_user, serving.proxies);
        }
        apply_throttle(&mut config, serving.throttled);
        config
            .validate()
            .map_err(|e| spec_errors(e.errors, shadow_copy, per_user))?;
        Ok(config)
    }

    /// The rollout's own entry of [`RolloutSpec::filter_config`] (outside the shadow phase).
    pub fn rollout_config(&self, weight_bp: u32) -> Option<RolloutConfig> {
        self.filter_config(weight_bp, false)
            .ok()
            .and_then(|c| c.rollouts.into_iter().next())
    }

    /// The configuration before validation, and whether it carries the shadow copy.
    fn build(&self, weight_bp: u32, shadowing: bool) -> Result<(FilterConfig, bool), SpecErrors> {
        let copy = self.shadow.as_ref().filter(|_| shadowing);
        let mut rollout = self.rollout_options(weight_bp, copy.is_some())?;
        if let Some(shadow) = copy {
            rollout.shadow = Some(shadow.copy.clone());
        }
        let mut config = FilterConfig::new(vec![rollout]);
        super::clusters::mark_lean(self, &mut config);
        Ok((config, copy.is_some()))
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
            spec_errors(vec![FieldError { field, reason }], shadow_copy, None)
        })
    }
}

/// Publishes the throttle into a filter configuration (the rollout's `rate_limit.throttled`).
pub fn apply_throttle(config: &mut FilterConfig, throttled: bool) {
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
pub fn apply_per_user(config: &mut FilterConfig, per_user: &PerUser, proxies: usize) {
    let proxies = u64::try_from(proxies.max(1)).unwrap_or(u64::MAX);
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

/// The contract's field errors (paths in the served configuration, `rollouts[0]...`) under
/// the spec's names: the rollout's name is the spec's `name`, the shadow copy (while the spec
/// provides it) is `shadow.copy`, a limit `quota.per_user` sets is `quota.per_user.<limit>`,
/// everything else comes from `filter`.
fn spec_errors(
    errors: Vec<FieldError>,
    shadow_copy: bool,
    per_user: Option<&PerUser>,
) -> SpecErrors {
    let from_per_user = |limit: &str| {
        per_user.is_some_and(|p| match limit {
            "tokens_per_minute" => p.tokens_per_minute.is_some(),
            "requests_per_minute" => p.requests_per_minute.is_some(),
            _ => false,
        })
    };
    let rename = |field: &str| match field {
        "rollouts[0].name" => "name".to_string(),
        other if shadow_copy && other.starts_with("rollouts[0].shadow") => {
            other.replacen("rollouts[0].shadow", "shadow.copy", 1)
        }
        other
            if other
                .strip_prefix("rollouts[0].rate_limit.")
                .is_some_and(from_per_user) =>
        {
            other.replacen("rollouts[0].rate_limit", "quota.per_user", 1)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
