//! The filter on real Envoy: which version each user gets, and that it never changes.

use std::collections::BTreeSet;

use anyhow::Result;
use canary_contract::{FilterConfig, RequestMatch, RolloutConfig, Version, SCHEMA_VERSION};
use canary_e2e::client::{http_client, send_all, Probe};
use canary_e2e::envoy;
use canary_e2e::rig::{CanaryRig, RigOptions};

const CONCURRENCY: usize = 32;

fn rollout_on_prefix(name: &str, prefix: &str, salt: &str, weight_bp: u32) -> RolloutConfig {
    let mut r = RolloutConfig::new(name, weight_bp);
    r.request_match = RequestMatch {
        hosts: Vec::new(),
        path_prefix: Some(prefix.to_string()),
    };
    r.salt = Some(salt.to_string());
    r
}

fn config(rollouts: Vec<RolloutConfig>) -> FilterConfig {
    FilterConfig {
        schema_version: SCHEMA_VERSION,
        rollouts,
    }
}

fn version_of(served_by: Option<&str>) -> Option<Version> {
    match served_by {
        Some("stable") => Some(Version::Stable),
        Some("canary") => Some(Version::Canary),
        _ => None,
    }
}

/// Issue tests 1, 2 and 4: one Envoy, four rollouts sharing a salt at 1%, 5%, 25% and 50%
/// (one per path prefix, so one process serves every weight), 20,000 users each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_agrees_with_contract_at_every_weight_and_ramp_is_monotone() -> Result<()> {
    let _slot = envoy::exclusive();
    let weights = [100u32, 500, 2500, 5000];
    let rollouts: Vec<_> = weights
        .iter()
        .map(|w| rollout_on_prefix(&format!("ramp-{w}"), &format!("/w{w}/"), "ramp", *w))
        .collect();
    let config = config(rollouts.clone());
    let rig = CanaryRig::start(
        &config,
        RigOptions {
            concurrency: 2,
            ..RigOptions::default()
        },
    )
    .await?;
    let client = http_client(CONCURRENCY)?;
    let users: Vec<String> = (0..20_000).map(|i| format!("user-{i:05}")).collect();

    let mut canary_sets: Vec<BTreeSet<&str>> = Vec::new();
    for (rollout, weight) in rollouts.iter().zip(weights) {
        let probes: Vec<Probe> = users
            .iter()
            .map(|u| Probe::user(rig.base(), &format!("/w{weight}/item"), u))
            .collect();
        let answers = send_all(&client, &probes, CONCURRENCY).await?;
        let mut disagreements = Vec::new();
        let mut canary = BTreeSet::new();
        for (user, answer) in users.iter().zip(&answers) {
            let expected = rollout.version_for_key(user);
            let got = version_of(answer.served_by.as_deref());
            if got != Some(expected) {
                disagreements.push((user, expected, answer.clone()));
            }
            if got == Some(Version::Canary) {
                canary.insert(user.as_str());
            }
        }
        assert!(
            disagreements.is_empty(),
            "weight {weight}bp: {} of {} users routed differently from the contract, e.g. {:?}",
            disagreements.len(),
            users.len(),
            &disagreements[..disagreements.len().min(3)]
        );
        let share_pp = 100.0 * canary.len() as f64 / users.len() as f64;
        let want_pp = f64::from(weight) / 100.0;
        assert!(
            (share_pp - want_pp).abs() <= 1.0,
            "weight {weight}bp: canary share {share_pp:.2}% is not within 1pp of {want_pp}%"
        );
        eprintln!("weight {weight}bp: canary share {share_pp:.2}% (20,000 users, all agree)");
        canary_sets.push(canary);
    }
    for pair in canary_sets.windows(2) {
        let lost: Vec<_> = pair[0].difference(&pair[1]).take(3).collect();
        assert!(
            lost.is_empty(),
            "users on canary at a lower weight but not at the next: {lost:?}"
        );
    }
    Ok(())
}
