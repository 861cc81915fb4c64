//! The lean build (`canary_filter_lean.wasm`, docs/lean-mode.md) on real Envoy: it routes
//! every user as the contract says, as the full filter does, with no stats of its own.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use canary_contract::{FilterConfig, RolloutConfig, StatsFrom, Version};
use canary_e2e::client::{http_client, send_all, Probe};
use canary_e2e::controller::{
    passing_checks, rollback_message, upstream_pair, wait_status, ControlledRig,
};
use canary_e2e::envoy;
use canary_e2e::gate::fresh_envoy_sends_canary_users_to_canary;
use canary_e2e::load::{self, Load};
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
    // The clusters' request time has the fine bounds of the filter's latency buckets (the
    // bootstrap's bucket setting), not Envoy's default ones.
    let times = rig.envoys[0]
        .admin_text("/stats/prometheus?filter=cluster%5C.canary%5C.upstream_rq_time")
        .await?;
    let bounds = times
        .lines()
        .filter(|l| l.starts_with("envoy_cluster_upstream_rq_time_bucket{"))
        .count();
    let fine = canary_contract::stats::latency_buckets_ms().len();
    assert_eq!(bounds, fine + 1, "{times}");
    Ok(())
}

const ROLLOUT: &str = "shop";
const POLL_MS: u64 = 500;
/// Lean mode needs `filter.anonymous_cookie.enabled: false` (the lean build sets no cookie).
const LEAN_FILTER: &str = "filter: {anonymous_cookie: {enabled: false}}\n";

/// The controller reading the clusters' stats rolls back a canary that starts answering
/// 10% 5xx, on every Envoy, as it does with the filter's stats.
#[tokio::test]
async fn a_failing_canary_is_rolled_back_from_the_clusters_stats() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstream_pair(50, 0);
    let rig = ControlledRig::start_lean(ROLLOUT, 2, POLL_MS, stable, canary).await?;
    let spec = format!(
        "{LEAN_FILTER}analysis: {{interval: 1s, failure_limit: 3, min_window_requests: 30}}\n\
         stages:\n  - {{weight_pct: 20, hold: 1h, min_requests: 100}}\n  - {{weight_pct: 100}}\n"
    );
    let ctl = rig
        .start_controller_with_sources(&rig.lean_sources_yaml(), &spec)
        .await?;
    let load = Load::start(rig.bases.clone(), 5_000, 8, 100);
    let watched = load::canary_users(ROLLOUT, 2_000, 20);
    rig.wait_for_weight(2_000, &watched, Duration::from_secs(30))
        .await?;
    let passed = wait_status(&ctl, "a passing analysis", Duration::from_secs(30), |s| {
        s["verdicts"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["verdict"]["outcome"] == "pass"))
    })
    .await;
    if passed.is_err() {
        load.stop().await;
        anyhow::bail!("no passing analysis: {}", ctl.log());
    }

    rig.canary.set_error_rate_bp(1_000);
    let rolled_back = rig
        .wait_for_weight(0, &watched, Duration::from_secs(20))
        .await;
    load.stop().await;
    rolled_back?;
    let status = ctl.status().await?;
    assert_eq!(status["phase"], "rolled_back", "{}", ctl.log());
    let message = rollback_message(&status);
    assert!(message.contains("error rate"), "{message}");
    eprintln!("lean rollback: {message}");
    Ok(())
}

/// A healthy canary advances through its stages to promotion on the clusters' stats, and
/// the checks that passed saw both versions' requests.
#[tokio::test]
async fn a_healthy_canary_advances_on_the_clusters_stats() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstream_pair(50, 50);
    let rig = ControlledRig::start_lean(ROLLOUT, 2, POLL_MS, stable, canary).await?;
    let spec = format!(
        "{LEAN_FILTER}analysis: {{interval: 500ms, failure_limit: 3, min_window_requests: 30}}\n\
         stages:\n  - {{weight_pct: 10, hold: 2s, min_requests: 100}}\n  - {{weight_pct: 50, hold: 2s, min_requests: 100}}\n  - {{weight_pct: 100}}\n"
    );
    let ctl = rig
        .start_controller_with_sources(&rig.lean_sources_yaml(), &spec)
        .await?;
    let load = Load::start(rig.bases.clone(), 2_000, 8, 100);
    let status = wait_status(&ctl, "promotion", Duration::from_secs(120), |s| {
        s["phase"] == "promoted" || s["phase"] == "rolled_back"
    })
    .await;
    load.stop().await;
    let status = status?;
    assert_eq!(status["phase"], "promoted", "{}", ctl.log());
    assert!(
        !passing_checks(&status).is_empty(),
        "promoted with no passing check: {status}"
    );
    rig.wait_for_weight(
        10_000,
        &load::canary_users(ROLLOUT, 10_000, 50),
        Duration::from_secs(10),
    )
    .await?;
    Ok(())
}

/// The start-up hold in the lean module, which keeps no context per request: a fresh Envoy
/// whose bootstrap says 0% while the controller serves 50% sends none of the canary's users
/// to stable. Its requests wait for the first poll's answer and are routed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_lean_envoy_sends_no_canary_user_to_stable() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstream_pair(0, 0);
    let rig = ControlledRig::start_lean(ROLLOUT, 1, 1_000, stable, canary).await?;
    let spec = format!(
        "{LEAN_FILTER}analysis: {{interval: 1s, failure_limit: 1000, min_window_requests: 1000000}}\n\
         stages:\n  - {{weight_pct: 50, hold: 1h}}\n  - {{weight_pct: 100}}\n"
    );
    let _ctl = rig
        .start_controller_with_sources(&rig.lean_sources_yaml(), &spec)
        .await?;
    let users = load::canary_users(ROLLOUT, 5_000, 40);
    rig.wait_for_weight(5_000, &users, Duration::from_secs(10))
        .await?;

    fresh_envoy_sends_canary_users_to_canary(&rig, &users).await
}
