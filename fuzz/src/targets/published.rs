//! What the controller publishes, checked as a filter checks it: the invariant the three
//! controller targets (`spec`, `stats`, `state`) share, "the controller never publishes a
//! configuration the filter refuses", rollbacks (weight 0) included. Not a target itself.

use canary_contract::{FilterConfig, MAX_WEIGHT_BP};
use canary_controller::machine::{Effect, RolloutState};
use canary_controller::spec::{RolloutSpec, Serving};

/// The configuration `/filter-config` serves at `weight_bp` (what `server/publication.rs`
/// builds: `RolloutSpec::served_config` with the state's weight and shadow phase, the
/// throttle and the proxy count), for each throttle setting the spec can publish and a few
/// proxy counts (one, and several dividing `quota.per_user`): each is accepted by the contract's validator and read back whole by
/// `FilterConfig::from_json`, as a filter reads it.
pub fn assert_publishable(spec: &RolloutSpec, weight_bp: u32, shadowing: bool) {
    let throttles: &[bool] = match spec.quota {
        Some(_) => &[false, true],
        None => &[false],
    };
    for &throttled in throttles {
        for proxies in [1, 7] {
            let serving = Serving {
                weight_bp,
                shadowing,
                throttled,
                proxies,
            };
            let config = spec.served_config(&serving).unwrap_or_else(|e| {
                panic!(
                    "the controller would publish a config the filter refuses ({serving:?}): {e}"
                )
            });
            let json = config.to_json();
            let read = FilterConfig::from_json(json.as_bytes())
                .unwrap_or_else(|e| panic!("a filter refuses the served config: {e}\n{json}"));
            assert_eq!(read, config, "the served config does not read back\n{json}");
            assert_eq!(read.rollouts.len(), 1, "one rollout per spec");
            assert_eq!(read.rollouts[0].name, spec.name);
            assert_eq!(
                read.rollouts[0].weight_bp, weight_bp,
                "not the state's weight"
            );
            assert!(
                read.controller.is_none(),
                "the controller named a controller"
            );
        }
    }
}

/// A state the machine reached (or resumed): in the spec's stage range, at most 100%, and
/// what it publishes is publishable.
pub fn assert_state_publishable(spec: &RolloutSpec, state: &RolloutState) {
    if let Err(problems) = state.check(spec) {
        panic!("the machine left the spec: {problems:?}");
    }
    // A run of another release (held at 100% until finalized) may be past the new spec's
    // stages: it never advances under them.
    assert!(state.stage < spec.stages.len() || state.release != spec.release);
    assert!(state.weight_bp <= MAX_WEIGHT_BP);
    assert_publishable(spec, state.weight_bp, state.in_shadow());
}

/// The effects of a step: the state is in range, every weight published is within 100%
/// and publishable (a weight of 0, a rollback or an abort, like any other), and the last one
/// is the state's.
pub fn assert_effects(spec: &RolloutSpec, next: &RolloutState, effects: &[Effect]) {
    let published: Vec<u32> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::PublishWeight(w) => Some(*w),
            Effect::Notify(_) | Effect::Archive(_) => None,
        })
        .collect();
    if let Some(&last) = published.last() {
        assert_eq!(
            last, next.weight_bp,
            "the last weight published is not the state's"
        );
    }
    for &w in &published {
        assert!(w <= MAX_WEIGHT_BP, "published weight {w}");
        assert_publishable(spec, w, next.in_shadow());
    }
    for effect in effects {
        if let Effect::Notify(event) = effect {
            assert!(!event.message.is_empty(), "an event without a message");
        }
    }
    if let Err(problems) = next.check(spec) {
        panic!("the machine left the spec: {problems:?}");
    }
}

/// Parses the specs a target runs under (once per process: see each target's `specs`).
pub fn parse_specs(texts: &[&str]) -> Vec<RolloutSpec> {
    texts
        .iter()
        .map(|text| RolloutSpec::from_yaml(text).expect("a fuzz spec is valid"))
        .collect()
}
