//! Publication: the filter configuration served at `/filter-config` (built once per change
//! from the saved state, with the quota sentinel's throttle and the per-user allowances
//! divided among the proxies, validated by the contract as the filters validate it) and the
//! webhooks that hear about events.

use std::sync::Arc;

use canary_contract::{FilterConfig, RolloutConfig};
use serde_json::json;

use super::Controller;
use crate::machine::Event;
use crate::spec::Serving;

/// The configuration `/filter-config` serves and its ETag. The default (empty ETag) is
/// "nothing published yet".
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Served {
    pub etag: String,
    pub json: axum::body::Bytes,
}

impl Controller {
    /// Publishes the filter configuration for the current state, if its ETag changed. The
    /// filters refuse a configuration their validator refuses, and then no later weight
    /// reaches them: so the contract's validator runs here, and a refused configuration is
    /// never published (see [`fallback`]).
    pub(super) fn publish(&mut self) {
        let etag = self.etag();
        if self.served.borrow().etag == etag {
            return;
        }
        let serving = Serving {
            weight_bp: self.state.weight_bp,
            shadowing: self.state.in_shadow(),
            throttled: self.quota.throttled,
            proxies: self.proxies,
        };
        let config = match self.spec.served_config(&serving) {
            Ok(config) => config,
            Err(e) => {
                self.config_refused += 1;
                eprintln!(
                    "canaryctl: {}: the filters would refuse the configuration for weight {}                      ({e}); serving the last good one with that weight instead",
                    self.spec.name,
                    crate::machine::pct(serving.weight_bp)
                );
                match fallback(self.last_good.as_ref(), &self.spec.name, &serving) {
                    Some(config) => config,
                    None => {
                        eprintln!(
                            "canaryctl: {}: no valid configuration at all; still serving the                              previous one",
                            self.spec.name
                        );
                        return;
                    }
                }
            }
        };
        let json = config.to_json().into();
        self.last_good = Some(config);
        self.served.send_replace(Arc::new(Served { etag, json }));
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

/// A configuration the filters accept that carries `serving.weight_bp`, for when the spec's
/// own is refused (spec validation makes that impossible; this is the defence, so that a
/// rollback always reaches the proxies): the last good configuration with the new weight
/// (the same key sources, salt and lists, so users stay where the ramp put them; the shadow
/// copy dropped once out of the shadow phase), or, before any, a rollout of just its name and
/// weight. `None` only if neither validates.
pub(super) fn fallback(
    last_good: Option<&FilterConfig>,
    name: &str,
    serving: &Serving,
) -> Option<FilterConfig> {
    let with_weight = last_good.cloned().map(|mut config| {
        for rollout in &mut config.rollouts {
            rollout.weight_bp = serving.weight_bp;
            if !serving.shadowing {
                rollout.shadow = None;
            }
        }
        config
    });
    let minimal = FilterConfig::new(vec![RolloutConfig::new(name, serving.weight_bp)]);
    with_weight
        .into_iter()
        .chain([minimal])
        .find(|config| config.validate().is_ok())
}
