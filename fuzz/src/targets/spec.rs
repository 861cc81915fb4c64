//! The controller's rollout spec: `RolloutSpec::from_yaml` (what `canaryctl` loads) and the
//! filter configuration it serves at every stage.

use canary_controller::machine::{Input, RolloutState};
use canary_controller::spec::RolloutSpec;

use super::published::{assert_effects, assert_publishable, assert_state_publishable};
use crate::Target;

pub const TARGET: Target = Target {
    name: "spec",
    about: "RolloutSpec::from_yaml on YAML bytes: a refusal names a spec field; an accepted \
            spec re-serialised reads back the same, and the config it serves at weight 0, \
            at every stage (operator promotions through the machine) and after an abort is \
            one the contract's validator accepts",
    run,
    max_len: 8 * 1024,
    dict: DICT,
};

/// The spec's field names and values, and YAML's punctuation.
const DICT: &[&str] = &[
    "name: ",
    "sources:",
    "envoy_admin: [\"http://127.0.0.1:9901\"]",
    "prometheus: {url: http://prometheus:9090, lag: 30s}",
    "stages:",
    "- {weight_pct: 5, hold: 30m, min_requests: 1000}",
    "weight_pct: ",
    "hold: ",
    "min_requests: ",
    "analysis:",
    "interval: ",
    "failure_limit: ",
    "min_window_requests: ",
    "alpha: ",
    "progress_deadline: ",
    "on_progress_deadline: roll_back",
    "checks:",
    "error_rate: {max_absolute: 0.05, max_relative_increase: 1.5}",
    "latency: [{quantile: 0.99, max_relative_increase: 1.5}]",
    "thumbs_down: {max_absolute: 0.05}",
    "llm:",
    "accelerate: true",
    "webhooks: [{url: http://127.0.0.1:1/hook}]",
    "filter:",
    "key_sources: [{header: x-user-id}]",
    "match: {hosts: [\"checkout.example.com\"]}",
    "llm: {}",
    "rate_limit: {requests_per_minute: 5}",
    "quota: {tokens_per_minute: 1000}",
    "per_user: {tokens_per_minute: 2000000000000}",
    "shadow: {copy: {cluster: candidate, sample_bp: 5000}, hold: 10s}",
    "min_agreement_pct: ",
    "strategy: blue_green",
    "blue_green: {verify_hold: 5s, keep_old_for: 1m}",
    "weight_bp: ",
    ".nan",
    ".inf",
    "-.inf",
    "18446744073709552s",
    "1e308",
    "0.001",
    "100",
    "100.001",
    "-1",
    "~",
    "null",
    "&a ",
    "*a",
    "!!str ",
    "{",
    "}",
    "[",
    "]",
    ": ",
    ", ",
    "\n  ",
    "\n- ",
];

/// Every top-level field of the spec: a refusal names one of these, the root, or an
/// unknown key.
const FIELDS: &[&str] = &[
    "name",
    "stages",
    "analysis",
    "checks",
    "accelerate",
    "sources",
    "webhooks",
    "filter",
    "quota",
    "shadow",
    "strategy",
    "blue_green",
    "(root)",
];

fn run(data: &[u8]) {
    // `canaryctl` refuses a file that is not UTF-8; decoding lossily gives the parser more.
    let text = String::from_utf8_lossy(data);
    let spec = match RolloutSpec::from_yaml(&text) {
        Ok(spec) => spec,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refusal with no error");
            for e in &errors.0 {
                let top = e.field.split(['.', '[']).next().unwrap_or_default();
                // A field of the spec, or the unknown key itself.
                assert!(
                    FIELDS.contains(&top) || e.reason.starts_with("unknown field"),
                    "a refusal that names no field of the spec: {e}"
                );
                assert!(!e.reason.is_empty(), "a refusal without a reason: {e}");
            }
            return;
        }
    };
    assert_eq!(
        spec.validate(),
        Ok(()),
        "accepted, then refused by validate"
    );

    // Re-serialised (JSON is YAML), it reads back the same.
    let json = serde_json::to_string(&spec).expect("a spec serializes");
    match RolloutSpec::from_yaml(&json) {
        Ok(again) => assert_eq!(again, spec, "re-serialised, it reads differently\n{json}"),
        Err(e) => panic!("its own serialization is refused: {e}\n{json}"),
    }

    // Weight 0 (a rollback, and the start of a shadow phase), in and out of the shadow.
    assert_publishable(&spec, 0, false);
    if spec.shadow.is_some() {
        assert_publishable(&spec, 0, true);
    }
    for stage in &spec.stages {
        assert_publishable(&spec, stage.weight_bp(), false);
    }

    // The machine, promoted by an operator through every stage: what it publishes at each,
    // and after an abort from each, is publishable.
    let (mut state, effects) = RolloutState::start(&spec, 0);
    assert_effects(&spec, &state, &effects);
    for now in 1..=spec.stages.len() as u64 + 2 {
        if let Ok((aborted, effects)) = state.step(&spec, Input::Abort, now) {
            assert_eq!(aborted.weight_bp, 0, "an abort that does not publish 0");
            assert_effects(&spec, &aborted, &effects);
        }
        match state.step(&spec, Input::Promote, now) {
            Ok((next, effects)) => {
                assert_effects(&spec, &next, &effects);
                state = next;
            }
            Err(_) => {
                assert!(state.phase.is_terminal(), "a promotion refused mid-rollout");
                break;
            }
        }
    }
    assert_state_publishable(&spec, &state);
}

#[cfg(test)]
mod tests {
    /// The kept seeds that are real specs stay accepted, so the corpus starts past the parser.
    #[test]
    fn the_spec_seeds_are_accepted() {
        for (name, bytes) in crate::smoke::corpus(&super::TARGET) {
            if name.contains("refused-") {
                continue;
            }
            let text = std::str::from_utf8(&bytes).expect("UTF-8");
            if let Err(e) = canary_controller::spec::RolloutSpec::from_yaml(text) {
                panic!("{name}: {e}");
            }
        }
    }
}
