//! Issue 15 on real Envoy: the sequential judge lets an incident that hits both versions alike
//! pass, and catches a p99 regression that stays inside one of Envoy's default buckets
//! (the bootstraps give the filter's histograms fine buckets).

use std::time::Duration;

use anyhow::Result;
use canary_e2e::controller::{upstream_pair, wait_status, ControlledRig};
use canary_e2e::envoy;
use canary_e2e::load::Load;
use serde_json::Value;

const ROLLOUT: &str = "shop";
const POLL_MS: u64 = 500;
/// Judged every second at 30%, the hold long enough that only the judge ends the stage.
const SPEC: &str = "analysis: {interval: 1s}\n\
                    stages:\n  - {weight_pct: 30, hold: 1h, min_requests: 100}\n  - {weight_pct: 100}\n";

fn analyses(status: &Value) -> u64 {
    status["analyses"].as_u64().unwrap_or(0)
}

fn last_event(status: &Value) -> String {
    status["timeline"]
        .as_array()
        .and_then(|t| t.last())
        .map(|e| e["message"].to_string())
        .unwrap_or_default()
}

/// A burst of 20% errors on both versions (as a shared dependency failing would give) is not
/// the canary's doing: no rollback, through the absolute 5% limit or otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_both_versions_does_not_roll_back() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstream_pair(50, 50);
    let rig = ControlledRig::start(ROLLOUT, 2, POLL_MS, stable, canary).await?;
    let ctl = rig.start_controller(SPEC).await?;
    let load = Load::start(rig.bases.clone(), 3_000, 12, 40);
    let before = wait_status(
        &ctl,
        "a few healthy windows",
        Duration::from_secs(60),
        |s| analyses(s) >= 3,
    )
    .await?;
    // The burst: every version fails 20% of its requests for 8 analysis windows.
    rig.stable.set_error_rate_bp(2_000);
    rig.canary.set_error_rate_bp(2_000);
    let during = wait_status(
        &ctl,
        "8 windows of the burst",
        Duration::from_secs(60),
        |s| analyses(s) >= analyses(&before) + 8 || s["phase"] != "progressing",
    )
    .await;
    rig.stable.set_error_rate_bp(50);
    rig.canary.set_error_rate_bp(50);
    let during = during?;
    let after = wait_status(&ctl, "5 windows after it", Duration::from_secs(60), |s| {
        analyses(s) >= analyses(&during) + 5 || s["phase"] != "progressing"
    })
    .await;
    load.stop().await;
    let after = after?;
    assert_eq!(after["phase"], "progressing", "{}", last_event(&after));
    // The burst was seen: stable's errors in the stage are well above its 0.5%.
    let totals = &after["stage_totals"][0];
    let stable_rate = totals["stable_errors"].as_f64().unwrap_or(0.0)
        / totals["stable_requests"].as_f64().unwrap_or(1.0).max(1.0);
    assert!(stable_rate > 0.03, "the burst reached stable: {totals}");
    eprintln!("shared burst: stage totals {totals}");
    Ok(())
}

/// Both versions answer in 120 ms but for 2% of their requests: stable's take 160 ms, the
/// canary's 240 ms. The canary's p99 is 1.5× stable's, both inside Envoy's default bucket
/// (100, 250], and its p95 is stable's. With the fine buckets every bootstrap sets, the p99
/// check rolls it back (and the p95 check does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p99_regression_inside_one_default_bucket_rolls_back() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (mut stable, mut canary) = upstream_pair(0, 0);
    for (version, slow_ms) in [(&mut stable, 160), (&mut canary, 240)] {
        version.delay = Duration::from_millis(120);
        version.slow_share_bp = 200;
        version.slow_delay = Duration::from_millis(slow_ms);
    }
    let rig = ControlledRig::start(ROLLOUT, 2, POLL_MS, stable, canary).await?;
    let ctl = rig.start_controller(SPEC).await?;
    // 12 workers × 40/s, each request ~120 ms: about 100 requests/s.
    let load = Load::start(rig.bases.clone(), 3_000, 12, 40);
    let status = wait_status(&ctl, "rollback", Duration::from_secs(120), |s| {
        s["phase"] != "progressing"
    })
    .await;
    load.stop().await;
    let status = status?;
    assert_eq!(status["phase"], "rolled_back", "{status}");
    let reason = last_event(&status);
    assert!(reason.contains("latency_p99"), "{reason}");
    assert!(
        !reason.contains("latency_p95 canary"),
        "p95 is unchanged: {reason}"
    );
    assert!(!reason.contains("coarse buckets"), "{reason}");
    eprintln!("p99 within one default bucket: {reason}");
    Ok(())
}
