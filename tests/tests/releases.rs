//! Release after release on real Envoys (issue 16, item 2): finalize after promotion returns
//! the weight to 0, a new release in the spec starts a new run at stage 1, the history of
//! ended runs survives a SIGKILL of the controller, and a rolled-back release stays rolled
//! back across restarts until `canaryctl retry`.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use canary_e2e::controller::{upstream_pair, wait_status, Canaryctl, ControlledRig, TOKEN};
use canary_e2e::envoy;
use canary_e2e::load::{self, Load};
use canary_e2e::paths;
use serde_json::Value;

const ROLLOUT: &str = "shop";
const POLL_MS: u64 = 300;
/// Nothing moves the weight by itself: stage 1 at 20% waits for an operator.
const HELD: &str = "analysis: {interval: 1s, failure_limit: 1000, min_window_requests: 1000000}\n\
                    stages:\n  - {weight_pct: 20, hold: 1h}\n  - {weight_pct: 100}\n";

/// `canaryctl ARGS --controller URL` with the operator token; its stdout, or an error with
/// what it printed.
fn canaryctl(ctl: &Canaryctl, args: &[&str]) -> Result<String> {
    let out = Command::new(paths::canaryctl_bin()?)
        .args(args)
        .args(["--controller", &ctl.url()])
        .env("CANARY_TOKEN", TOKEN)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "canaryctl {args:?} failed: {text}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `canaryctl ARGS` expected to fail: what it said.
fn canaryctl_refused(ctl: &Canaryctl, args: &[&str]) -> Result<String> {
    let out = Command::new(paths::canaryctl_bin()?)
        .args(args)
        .args(["--controller", &ctl.url()])
        .env("CANARY_TOKEN", TOKEN)
        .output()?;
    ensure!(!out.status.success(), "canaryctl {args:?} was accepted");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

async fn history(ctl: &Canaryctl) -> Result<Value> {
    let json = canaryctl(ctl, &["history", ROLLOUT, "--output", "json"])?;
    serde_json::from_str(&json).context("canaryctl history --output json")
}

fn kinds(run: &Value) -> Vec<String> {
    run["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .collect()
}

/// Promoted, then finalized by the operator: every user back on the stable route (weight
/// 0). The next release, set in the spec while the controller is down, starts a new run at
/// stage 1; the finalized run is in the history, and stays there through another SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_returns_to_0_and_the_next_release_starts_a_new_run() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstream_pair(0, 0);
    let rig = ControlledRig::start(ROLLOUT, 1, POLL_MS, stable, canary).await?;
    let users = load::canary_users(ROLLOUT, 10_000, 60);
    let v1 = format!("release: v1.3.1\nstable_release: v1.3.0\n{HELD}");
    let mut ctl = rig.start_controller(&v1).await?;
    rig.wait_for_weight(2_000, &users, Duration::from_secs(15))
        .await?;
    let refused = canaryctl_refused(&ctl, &["finalize", ROLLOUT])?;
    ensure!(
        refused.contains("finalize needs a promoted release")
            && refused.contains("progressing at stage 1 of 2 (20%)"),
        "{refused}"
    );
    assert_eq!(ctl.command("promote", Some(TOKEN)).await?, 200);
    rig.wait_for_weight(10_000, &users, Duration::from_secs(15))
        .await?;
    // The subsets are relabelled now (stable → v1.3.1); the operator says so.
    let out = canaryctl(&ctl, &["finalize", ROLLOUT])?;
    ensure!(out.contains("finalized"), "{out}");
    rig.wait_for_weight(0, &users, Duration::from_secs(15))
        .await?;
    let status = ctl.status().await?;
    assert_eq!(
        (&status["phase"], &status["weight_bp"], &status["run"]),
        (&"finalized".into(), &0.into(), &1.into())
    );

    ctl.kill();
    let v2 = format!("release: v1.3.2\nstable_release: v1.3.1\n{HELD}");
    let mut ctl = rig.start_controller(&v2).await?;
    let status = ctl.status().await?;
    assert_eq!(
        (&status["release"], &status["run"], &status["stage"]),
        (&"v1.3.2".into(), &2.into(), &1.into()),
        "{status}"
    );
    assert_eq!(status["phase"], "progressing");
    rig.wait_for_weight(2_000, &users, Duration::from_secs(15))
        .await?;
    let view = history(&ctl).await?;
    let runs = view["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 1, "{view}");
    assert_eq!(
        (&runs[0]["run"], &runs[0]["release"], &runs[0]["outcome"]),
        (&1.into(), &"v1.3.1".into(), &"finalized".into())
    );
    let events = kinds(&runs[0]);
    for kind in ["started", "promoted", "finalized"] {
        ensure!(events.iter().any(|k| k == kind), "{kind} not in {events:?}");
    }
    let text = canaryctl(&ctl, &["history", ROLLOUT])?;
    for want in [
        "rollout shop: run 2 (release v1.3.2 over v1.3.1) progressing at stage 1, weight 20%",
        "run 1 (release v1.3.1 over v1.3.0): finalized at stage 2 (0%)",
        "promoted to 100% (promoted by an operator)",
        "finalized (by an operator): v1.3.1 is the stable release; weight 0 on the stable route",
    ] {
        ensure!(text.contains(want), "{want:?} not in\n{text}");
    }
    let started = &status["timeline"][0]["message"];
    assert_eq!(
        started,
        "release v1.3.2 started at stage 1 of 2, weight 20% (a new release; run 1 finalized)"
    );
    let before = ctl.status().await?;

    // SIGKILL again: the same release resumes, the history is as it was.
    ctl.kill();
    let ctl = rig.start_controller(&v2).await?;
    assert!(ctl.log().contains("resumed"), "{}", ctl.log());
    let after = ctl.status().await?;
    for field in ["run", "release", "stage", "weight_bp", "config_version"] {
        assert_eq!(after[field], before[field], "{field} after the restart");
    }
    assert_eq!(history(&ctl).await?["runs"], view["runs"]);
    let refused = canaryctl_refused(&ctl, &["history", "cart"])?;
    ensure!(refused.contains("no rollout \"cart\""), "{refused}");
    Ok(())
}

/// A rolled-back release stays rolled back when the controller is killed and restarted with
/// the same spec; `canaryctl retry` runs it again from stage 1, and the rolled-back run is
/// in the history with its verdicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_release_runs_again_only_when_retried() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstream_pair(0, 3_000);
    let rig = ControlledRig::start(ROLLOUT, 1, POLL_MS, stable, canary).await?;
    let users = load::canary_users(ROLLOUT, 2_000, 40);
    let spec = "release: v2.0.0\n\
                analysis: {interval: 1s, failure_limit: 2, min_window_requests: 20}\n\
                stages:\n  - {weight_pct: 20, hold: 1h, min_requests: 100}\n  - {weight_pct: 100}\n";
    let mut ctl = rig.start_controller(spec).await?;
    let load = Load::start(rig.bases.clone(), 2_000, 4, 100);
    let rolled_back = wait_status(&ctl, "the rollback", Duration::from_secs(60), |s| {
        s["phase"] == "rolled_back"
    })
    .await;
    load.stop().await;
    rolled_back?;
    rig.wait_for_weight(0, &users, Duration::from_secs(10))
        .await?;
    let refused = canaryctl_refused(&ctl, &["finalize", ROLLOUT])?;
    ensure!(refused.contains("this one is rolled back"), "{refused}");

    // Restarted with the same spec: nothing is re-launched by itself.
    ctl.kill();
    let ctl = rig.start_controller(spec).await?;
    tokio::time::sleep(Duration::from_millis(POLL_MS * 4)).await;
    let status = ctl.status().await?;
    assert_eq!(
        (&status["phase"], &status["weight_bp"], &status["run"]),
        (&"rolled_back".into(), &0.into(), &1.into()),
        "{status}"
    );
    assert!(rig.routes_at(0, &users).await?, "still at weight 0");

    // The canary is fixed; the operator retries the same release.
    rig.canary.set_error_rate_bp(0);
    let refused = canaryctl_refused(&ctl, &["retry", "cart"])?;
    ensure!(refused.contains("no rollout \"cart\""), "{refused}");
    let out = canaryctl(&ctl, &["retry", ROLLOUT])?;
    ensure!(out.contains("release v2.0.0 progressing"), "{out}");
    rig.wait_for_weight(2_000, &users, Duration::from_secs(15))
        .await?;
    let status = ctl.status().await?;
    assert_eq!(
        (&status["run"], &status["stage"], &status["analyses"]),
        (&2.into(), &1.into(), &0.into()),
        "{status}"
    );
    let view = history(&ctl).await?;
    let run = &view["runs"][0];
    assert_eq!(
        (&run["run"], &run["release"], &run["outcome"]),
        (&1.into(), &"v2.0.0".into(), &"rolled_back".into()),
        "{view}"
    );
    let failed = run["verdicts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v["verdict"]["outcome"] == "fail");
    ensure!(failed, "the failing verdicts are kept: {run}");
    ensure!(
        run["stage_totals"][0]["failed"].as_u64() >= Some(1),
        "{run}"
    );
    Ok(())
}

/// A new release in the spec while the last one is promoted but not finalized: the promoted
/// release keeps 100% (the stable subset may still be the old version: dropping to stage 1
/// would send most users back to it). Finalizing it starts the waiting release at stage 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_release_waits_while_the_last_one_holds_100_percent() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstream_pair(0, 0);
    let rig = ControlledRig::start(ROLLOUT, 1, POLL_MS, stable, canary).await?;
    let users = load::canary_users(ROLLOUT, 10_000, 60);
    let mut ctl = rig
        .start_controller(&format!("release: v1\n{HELD}"))
        .await?;
    assert_eq!(ctl.command("promote", Some(TOKEN)).await?, 200);
    rig.wait_for_weight(10_000, &users, Duration::from_secs(15))
        .await?;

    ctl.kill();
    let v2 = format!("release: v2\n{HELD}");
    let ctl = rig.start_controller(&v2).await?;
    tokio::time::sleep(Duration::from_millis(POLL_MS * 4)).await;
    let status = ctl.status().await?;
    assert_eq!(
        (&status["phase"], &status["weight_bp"], &status["release"]),
        (&"promoted".into(), &10_000.into(), &"v1".into()),
        "{status}"
    );
    let waits = status["timeline"]
        .as_array()
        .and_then(|t| t.last())
        .map(|e| e["message"].to_string())
        .unwrap_or_default();
    ensure!(
        waits.contains("v2 waits: v1 is promoted and holds 100%"),
        "{waits}"
    );
    assert!(rig.routes_at(10_000, &users).await?, "still at 100%");

    let out = canaryctl(&ctl, &["finalize", ROLLOUT])?;
    ensure!(out.contains("release v2 progressing"), "{out}");
    rig.wait_for_weight(2_000, &users, Duration::from_secs(15))
        .await?;
    let view = history(&ctl).await?;
    assert_eq!(
        (&view["current"]["release"], &view["runs"][0]["outcome"]),
        (&"v2".into(), &"finalized".into()),
        "{view}"
    );
    Ok(())
}
