//! Blue-green (seed 002 §4) on two real Envoys with the real controller: the candidate is
//! verified at 0% user traffic by synthetic checks (force header), then every user flips to
//! it at once, and `canaryctl rollback` flips everyone back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use canary_contract::Version;
use canary_e2e::client::{http_client, send, Probe};
use canary_e2e::controller::{upstream_pair, wait_status, ControlledRig, TOKEN};
use canary_e2e::envoy;
use canary_e2e::load::{user_id, Load, Observation};
use canary_e2e::paths;
use canary_e2e::wait::eventually;

const ROLLOUT: &str = "shop";
const POLL_MS: u64 = 500;
/// Forced checks in a row, each on its own connection, that show every worker of an Envoy
/// forces them (a worker left out would be missed by all of them with chance 2^-20).
const FRESH_CHECKS: usize = 20;

/// Synthetic checks: requests forced to the candidate on every Envoy, as an operator's
/// smoke tests would be; returns (sent, answered by the old version).
fn synthetic_checks(
    bases: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let Ok(client) = http_client(1) else {
            return (0, 0);
        };
        let (mut sent, mut stable) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            for base in &bases {
                let probe = Probe::user(base, "/", &format!("synthetic-{sent}"))
                    .header("x-canary-user", "always");
                sent += 1;
                if let Ok(answer) = send(&client, &probe).await {
                    stable += u64::from(answer.served_by.as_deref() == Some("stable"));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (sent, stable)
    })
}

/// The `Instant` of a controller timestamp (ms since the epoch).
fn instant_of(at_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Instant::now() - Duration::from_millis(now_ms.saturating_sub(at_ms))
}

fn count(seen: &[Observation], version: Version) -> usize {
    seen.iter().filter(|o| o.version == Some(version)).count()
}

/// User load for `for_how_long` on both Envoys; every answer it got.
async fn load_for(rig: &ControlledRig, for_how_long: Duration) -> Vec<Observation> {
    let load = Load::start(rig.bases.clone(), 2_000, 4, 100);
    tokio::time::sleep(for_how_long).await;
    load.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_at_zero_flips_everyone_at_once_and_rolls_back_as_fast() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstream_pair(50, 50);
    let rig = ControlledRig::start(ROLLOUT, 2, POLL_MS, stable, canary).await?;
    let ctl = rig
        .start_controller(
            "strategy: blue_green\n\
             blue_green: {verify_hold: 2s, verify_min_requests: 100, keep_old_for: 1h}\n\
             analysis: {interval: 500ms, failure_limit: 3, min_window_requests: 30}\n\
             filter: {force_header: x-canary-user}\n",
        )
        .await?;

    // The controller's configuration (with the force header) is in place on every worker
    // of both Envoys. Each worker applies it at its own tick and a connection stays on one
    // worker: a row of checks, each on a fresh connection, must all reach the candidate.
    for base in &rig.bases {
        eventually(
            "forced checks reach the candidate",
            Duration::from_secs(30),
            || async {
                let probe = Probe::user(base, "/", "synthetic").header("x-canary-user", "always");
                let mut on_candidate = 0;
                for _ in 0..FRESH_CHECKS {
                    let answer = send(&http_client(1)?, &probe).await?;
                    on_candidate += usize::from(answer.served_by.as_deref() == Some("canary"));
                }
                Ok(on_candidate)
            },
            |n| *n == FRESH_CHECKS,
        )
        .await?;
    }

    // Verification: users all on stable, the candidate judged on synthetic checks only.
    let load = Load::start(rig.bases.clone(), 2_000, 4, 100);
    let stop = Arc::new(AtomicBool::new(false));
    let checks = synthetic_checks(rig.bases.clone(), stop.clone());
    let status = wait_status(&ctl, "the flip", Duration::from_secs(120), |s| {
        s["blue_green"]["flipped_ms"].is_u64() || s["phase"] != "progressing"
    })
    .await;
    let seen = load.stop().await;
    stop.store(true, Ordering::Relaxed);
    let (sent, on_stable) = checks.await?;
    let status = status?;
    assert_eq!(status["phase"], "progressing", "{status}\n{}", ctl.log());
    let Some(flipped_ms) = status["blue_green"]["flipped_ms"].as_u64() else {
        bail!("no flip: {status}");
    };
    assert_eq!(status["weight_bp"], 10_000);
    assert!(sent >= 100, "only {sent} synthetic checks");
    assert_eq!(on_stable, 0, "a synthetic check missed the candidate");
    // Requests that started before the flip decision (less a margin for clock reading and
    // a request in flight) were all served by the old version.
    let flip = instant_of(flipped_ms);
    let before: Vec<Observation> = seen
        .into_iter()
        .filter(|o| o.at + Duration::from_millis(200) < flip.into())
        .collect();
    assert!(
        before.len() > 200,
        "only {} user requests before the flip",
        before.len()
    );
    assert_eq!(
        count(&before, Version::Canary),
        0,
        "a user reached the candidate during verification"
    );
    assert!(
        status["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("flipped to 100%")))),
        "{status}"
    );

    // The flip: every user on the new version on both Envoys, then nobody on the old one.
    let users: Vec<String> = (0..300).map(user_id).collect();
    let took = rig
        .wait_for_weight(10_000, &users, Duration::from_secs(30))
        .await?;
    let after = load_for(&rig, Duration::from_secs(2)).await;
    assert!(
        after.len() > 100,
        "only {} requests after the flip",
        after.len()
    );
    assert_eq!(
        (
            count(&after, Version::Stable),
            count(&after, Version::Canary)
        ),
        (0, after.len()),
        "after the flip every request goes to the new version"
    );
    assert_eq!(
        ctl.status().await?["phase"],
        "progressing",
        "old version still kept"
    );
    eprintln!(
        "verified on {sent} synthetic checks; all 300 users flipped on both Envoys {:.2}s after the check saw the flip",
        took.as_secs_f64()
    );

    // Rollback: one command, everyone back on the old version on both Envoys.
    let out = std::process::Command::new(paths::canaryctl_bin()?)
        .args(["rollback", "--controller", &ctl.url()])
        .env("CANARY_TOKEN", TOKEN)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    rig.wait_for_weight(0, &users, Duration::from_secs(30))
        .await?;
    let back = started.elapsed();
    let after = load_for(&rig, Duration::from_secs(2)).await;
    assert!(
        after.len() > 100,
        "only {} requests after the rollback",
        after.len()
    );
    assert_eq!(
        count(&after, Version::Canary),
        0,
        "after the rollback nobody reaches the new version"
    );
    let status = ctl.status().await?;
    assert_eq!(
        (status["phase"].as_str(), status["weight_bp"].as_u64()),
        (Some("aborted"), Some(0))
    );
    assert!(
        status
            .to_string()
            .contains("flipped back to the old version"),
        "{status}"
    );
    eprintln!("flipped back on both Envoys in {:.2}s", back.as_secs_f64());
    Ok(())
}

/// After `keep_old_for` the rollout completes and says the old version may go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completes_after_keeping_the_old_version() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstream_pair(50, 50);
    let rig = ControlledRig::start(ROLLOUT, 2, POLL_MS, stable, canary).await?;
    let ctl = rig
        .start_controller(
            "strategy: blue_green\n\
             blue_green: {verify_min_requests: 0, keep_old_for: 3s}\n\
             analysis: {interval: 500ms, failure_limit: 3, min_window_requests: 30}\n",
        )
        .await?;
    // No verification traffic needed at min 0: the first conclusive pass flips; promote
    // does it now.
    if ctl.command("promote", Some(TOKEN)).await? != 200 {
        bail!("promote refused");
    }
    let flipped = ctl.status().await?;
    assert_eq!(
        (flipped["phase"].as_str(), flipped["weight_bp"].as_u64()),
        (Some("progressing"), Some(10_000))
    );
    let status = wait_status(&ctl, "completion", Duration::from_secs(60), |s| {
        s["phase"] != "progressing"
    })
    .await?;
    assert_eq!(status["phase"], "promoted", "{status}");
    let waited = status["timeline"]
        .as_array()
        .and_then(|t| t.last())
        .and_then(|e| e["at_ms"].as_u64())
        .unwrap_or(0)
        .saturating_sub(
            flipped["blue_green"]["flipped_ms"]
                .as_u64()
                .unwrap_or(u64::MAX),
        );
    assert!(waited >= 3_000, "completed {waited} ms after the flip");
    assert!(status.to_string().contains("may be retired"), "{status}");
    assert_eq!(status["blue_green"]["old_version_retirable"], true);
    let users: Vec<String> = (0..100).map(user_id).collect();
    rig.wait_for_weight(10_000, &users, Duration::from_secs(30))
        .await?;
    Ok(())
}
