//! The lean build (`canary_filter_lean.wasm`, docs/lean-mode.md) on real Envoy: it routes
//! every user as the contract says, as the full filter does, with no stats of its own.

use std::collections::BTreeSet;

use anyhow::Result;
use canary_contract::{FilterConfig, RolloutConfig, StatsFrom, Version};
use canary_e2e::client::{http_client, send_all, Probe};
use canary_e2e::envoy;
use canary_e2e::paths;
use canary_e2e::rig::{CanaryRig, RigOptions};

const CONCURRENCY: usize = 32;

/// A rollout the lean build takes: stats from the clusters, no anonymous cookie.
fn lean_rollout(name: &str, weight_bp: u32) -> RolloutConfig {
    let mut r = RolloutConfig::new(name, weight_bp);
    r.stats = StatsFrom::Clusters;
    r.anonymous_cookie.enabled = false;
    r.allow = BTreeSet::from(["tester".to_string()]);
    r.deny = BTreeSet::from(["vip".to_string()]);
    r.force_header = Some("x-canary-user".to_string());
    r
}

fn version_of(served_by: Option<&str>) -> Option<Version> {
    match served_by {
        Some("stable") => Some(Version::Stable),
        Some("canary") => Some(Version::Canary),
        _ => None,
    }
}

/// 5,000 users on two workers at 25%, each sending a spoofed routing header too: every one
/// lands where the contract says (the same users as the full filter, which the routing tests
/// hold to the same contract), the lists and the force header behave as in the full build,
/// and the module defines no stats.
#[tokio::test]
async fn lean_routes_every_user_as_the_contract_says() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let rollout = lean_rollout("lean", 2_500);
    let rig = CanaryRig::start(
        &FilterConfig::new(vec![rollout.clone()]),
        RigOptions {
            concurrency: 2,
            wasm: Some(paths::lean_filter_wasm()?),
            ..RigOptions::default()
        },
    )
    .await?;
    let client = http_client(CONCURRENCY)?;
    let users: Vec<String> = (0..5_000).map(|i| format!("user-{i:05}")).collect();
    let probes: Vec<Probe> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let spoof = if i % 2 == 0 { "canary" } else { "stable" };
            Probe::user(rig.base(), "/item", u).header("x-canary-version", spoof)
        })
        .collect();
    let answers = send_all(&client, &probes, CONCURRENCY).await?;
    let mut canary = 0usize;
    for (user, answer) in users.iter().zip(&answers) {
        let expected = rollout.version_for_key(user);
        assert_eq!(
            version_of(answer.served_by.as_deref()),
            Some(expected),
            "{user}: {answer:?}"
        );
        assert_eq!(answer.seen_route.as_deref(), Some(expected.as_str()));
        assert!(answer.set_cookie.is_empty(), "{answer:?}");
        canary += usize::from(expected == Version::Canary);
    }
    let share = canary as f64 / users.len() as f64;
    assert!((0.23..0.27).contains(&share), "canary share {share}");

    // (probe, version): deny beats the force header, the force header beats the hash.
    let base = rig.base();
    let cases = [
        (
            Probe::user(base, "/", "vip").header("x-canary-user", "always"),
            "stable",
        ),
        (
            Probe::user(base, "/", "tester").header("x-canary-user", "never"),
            "canary",
        ),
        (
            Probe::user(base, "/", "someone").header("x-canary-user", "always"),
            "canary",
        ),
        (
            Probe::new(base, "/").header("x-canary-version", "canary"),
            "stable",
        ),
    ];
    for (probe, want) in cases {
        let answer = &send_all(&client, std::slice::from_ref(&probe), 1).await?[0];
        assert_eq!(
            answer.served_by.as_deref(),
            Some(want),
            "{probe:?}: {answer:?}"
        );
        assert_eq!(
            answer.seen_force.as_deref(),
            Some("-"),
            "stripped: {answer:?}"
        );
    }
    let stats = rig.envoys[0].admin_text("/stats?filter=canary_rq").await?;
    assert!(
        stats.trim().is_empty(),
        "the lean module keeps no stats: {stats}"
    );
    Ok(())
}
