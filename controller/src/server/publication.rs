//! Publication: the filter configuration served at `/filter-config` (built once per change
//! from the saved state, with the quota sentinel's throttle and the per-user allowances
//! divided among the proxies) and the webhooks that hear about events.

use canary_contract::FilterConfig;
use serde_json::json;

use super::Controller;
use crate::machine::Event;
use crate::spec::quota::PerUser;

impl Controller {
    /// The filter configuration for the current weight, as JSON.
    pub(super) fn filter_config_json(&mut self) -> Result<String, crate::spec::SpecErrors> {
        let etag = self.etag();
        if let Some((built_for, json)) = &self.published {
            if *built_for == etag {
                return Ok(json.clone());
            }
        }
        let mut config = self
            .spec
            .filter_config(self.state.weight_bp, self.state.in_shadow())?;
        if let Some(per_user) = self.spec.quota.as_ref().and_then(|q| q.per_user.as_ref()) {
            apply_per_user(&mut config, per_user, self.proxies);
        }
        apply_throttle(&mut config, self.quota.throttled);
        let json = config.to_json();
        self.published = Some((etag, json.clone()));
        Ok(json)
    }

    /// The served configuration's ETag: the config version, plus the proxy count per-user
    /// allowances are divided by and the throttle (both change the configuration without a
    /// new rollout state).
    pub(super) fn etag(&self) -> String {
        let mut etag = format!("\"{}", self.state.config_version);
        if self
            .spec
            .quota
            .as_ref()
            .is_some_and(|q| q.per_user.is_some())
        {
            etag.push_str(&format!("-p{}", self.proxies));
        }
        if self.quota.throttled {
            etag.push_str("-throttled");
        }
        etag.push('"');
        etag
    }

    /// POSTs `event` to every webhook of the spec, in the background.
    pub(super) fn notify_webhooks(&self, event: &Event, http: &reqwest::Client) {
        for hook in &self.spec.webhooks {
            let body = json!({
                "rollout": self.spec.name,
                "event": event.kind,
                "message": event.message,
                "at_ms": event.at_ms,
                "weight_bp": self.state.weight_bp,
                "stage": self.state.stage,
                "phase": self.state.phase,
            });
            let request = http.post(&hook.url).json(&body);
            let url = hook.url.clone();
            tokio::spawn(async move {
                if let Err(e) = request.send().await {
                    eprintln!("canaryctl: webhook {url}: {e}");
                }
            });
        }
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
