//! Publication: the filter configuration served at `/filter-config` (built once per change
//! from the saved state, with the quota sentinel's throttle and the per-user allowances
//! divided among the proxies, the allow and deny lists as key hashes, validated by the
//! contract as the filters validate it) with its ETag, a hash of the served bytes.

use std::sync::Arc;

use canary_contract::{FilterConfig, RolloutConfig};

use super::Controller;
use crate::spec::Serving;

/// The configuration `/filter-config` serves and its ETag. The default (empty ETag) is
/// "nothing published yet".
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Served {
    pub etag: String,
    pub json: axum::body::Bytes,
}

impl Controller {
    /// Publishes the filter configuration for the current state, if its bytes changed. The
    /// filters refuse a configuration their validator refuses, and then no later weight
    /// reaches them: so the contract's validator runs here, and a refused configuration is
    /// never published (see [`fallback`]).
    pub(super) fn publish(&mut self) {
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
                    "canaryctl: {}: the filters would refuse the configuration for weight {} \
                     ({e}); serving the last good one with that weight instead",
                    self.spec.name,
                    crate::machine::pct(serving.weight_bp)
                );
                match fallback(self.last_good.as_ref(), &self.spec.name, &serving) {
                    Some(config) => config,
                    None => {
                        eprintln!(
                            "canaryctl: {}: no valid configuration at all; still serving the \
                             previous one",
                            self.spec.name
                        );
                        return;
                    }
                }
            }
        };
        // `/filter-config` is read without a token: no user id in clear. The last good
        // configuration keeps the lists as the spec wrote them (hashing is not idempotent).
        let mut served = config.clone();
        for rollout in &mut served.rollouts {
            rollout.hash_key_lists();
        }
        let json = served.to_json();
        let etag = content_etag(self.state.config_version, json.as_bytes());
        self.last_good = Some(config);
        if self.served.borrow().etag == etag {
            return;
        }
        let json = json.into();
        self.served.send_replace(Arc::new(Served { etag, json }));
    }
}

/// The ETag of a served configuration: its config version and 64 bits of the SHA-256 of
/// its bytes. The hash covers every byte served, so any change (a deny list, a breaker,
/// prices) reaches every filter with its next poll; the version is for people reading logs.
pub fn content_etag(config_version: u64, body: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("\"{config_version}-{hex}\"")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_etag_is_a_hash_of_the_served_bytes() {
        let a = content_etag(7, br#"{"deny":["fnv1a64:0000000000000001"]}"#);
        let b = content_etag(7, br#"{"deny":["fnv1a64:0000000000000002"]}"#);
        assert_ne!(a, b, "same version, other content");
        assert_eq!(
            a,
            content_etag(7, br#"{"deny":["fnv1a64:0000000000000001"]}"#)
        );
        assert!(
            a.starts_with("\"7-") && a.ends_with('"') && a.len() == 2 + 2 + 16,
            "{a}"
        );
    }
}
