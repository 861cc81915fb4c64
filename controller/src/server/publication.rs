//! Publication: the filter configuration served at `/filter-config` (built once per change
//! from the saved state, with the quota sentinel's throttle and the per-user allowances
//! divided among the proxies, the allow and deny lists as key hashes, validated by the
//! contract as the filters validate it) with its ETag, a hash of the served bytes. Each
//! rollout's controller publishes its part into the one [`Publisher`]: a filter takes many
//! rollouts, so one answer serves them all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use canary_contract::{FilterConfig, RolloutConfig};
use tokio::sync::watch;

use super::Controller;
use crate::spec::Serving;

/// The configuration `/filter-config` serves and its ETag. The default (empty ETag) is
/// "nothing published yet".
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Served {
    pub etag: String,
    pub json: axum::body::Bytes,
}

/// Every rollout's part of the served configuration, and the answer built from them.
pub(super) struct Publisher {
    inner: Mutex<Parts>,
    served: watch::Sender<Arc<Served>>,
}

#[derive(Default)]
struct Parts {
    /// By rollout name: the filter tries rollouts in this order (the first whose `match`
    /// fits decides), so the order is the names' and does not depend on load order.
    by_rollout: BTreeMap<String, (u64, Vec<RolloutConfig>)>,
    /// Until the fleet's first load is done nothing is served: a filter that saw only some
    /// rollouts would route the others' canary users to stable for a moment.
    held: bool,
}

impl Publisher {
    /// A publisher that serves nothing until [`Publisher::release`], and the receiving end
    /// the API answers polls from.
    pub(super) fn held() -> (Arc<Publisher>, watch::Receiver<Arc<Served>>) {
        let (served, receiver) = watch::channel(Arc::default());
        let inner = Mutex::new(Parts {
            held: true,
            ..Parts::default()
        });
        (Arc::new(Publisher { inner, served }), receiver)
    }

    /// Starts serving (an empty configuration if no rollout published anything).
    pub(super) fn release(&self) {
        let mut parts = self.lock();
        parts.held = false;
        self.rebuild(&parts);
    }

    /// Sets `rollout`'s part: its rollouts (one, or none) at `config_version`.
    pub(super) fn set(&self, rollout: &str, config_version: u64, rollouts: Vec<RolloutConfig>) {
        let mut parts = self.lock();
        let part = (config_version, rollouts);
        if parts.by_rollout.get(rollout) == Some(&part) {
            return;
        }
        parts.by_rollout.insert(rollout.to_string(), part);
        self.rebuild(&parts);
    }

    /// Drops `rollout` (its spec was removed): the filters stop routing for it.
    pub(super) fn remove(&self, rollout: &str) {
        let mut parts = self.lock();
        if parts.by_rollout.remove(rollout).is_some() {
            self.rebuild(&parts);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Parts> {
        // Parts are replaced whole, never left half-changed: a poisoned lock holds them intact.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn rebuild(&self, parts: &Parts) {
        if parts.held {
            return;
        }
        let rollouts = parts
            .by_rollout
            .values()
            .flat_map(|(_, r)| r.iter().cloned());
        let config = FilterConfig::new(rollouts.collect());
        // Each part was validated alone; together they still must pass (the filters refuse
        // a whole configuration for one bad rollout).
        if let Err(e) = config.validate() {
            eprintln!("canaryctl: the rollouts together make a configuration the filters would refuse ({e}); still serving the previous one");
            return;
        }
        let json = config.to_json();
        let version = parts
            .by_rollout
            .values()
            .fold(0u64, |sum, (v, _)| sum.saturating_add(*v));
        let etag = content_etag(version, json.as_bytes());
        if self.served.borrow().etag != etag {
            let json = json.into();
            self.served.send_replace(Arc::new(Served { etag, json }));
        }
    }
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
        self.last_good = Some(config);
        self.publisher
            .set(&self.spec.name, self.state.config_version, served.rollouts);
    }

    /// Takes this rollout out of the served configuration.
    pub(super) fn unpublish(&self) {
        self.publisher.remove(&self.spec.name);
    }
}

/// The ETag of a served configuration: its config version (the sum of the rollouts') and 64 bits of the SHA-256 of
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
