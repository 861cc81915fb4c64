//! The controller closing the loop on real Envoys: ramps, rollbacks, crashes, bad input.
//! Timings are compressed (seconds per stage) so the suite stays fast.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use canary_contract::Version;
use canary_e2e::bootstrap::FilterBuild;
use canary_e2e::controller::{upstream_pair, wait_status, ControlledRig, TOKEN};
use canary_e2e::envoy;
use canary_e2e::load::{self, user_id, Load};
use canary_e2e::paths;
use canary_e2e::upstream::UpstreamSpec;
use canary_e2e::wait::eventually;
use canary_e2e::webhook::WebhookReceiver;

const ROLLOUT: &str = "shop";
const POLL_MS: u64 = 500;

fn upstreams(stable_error_bp: u32, canary_error_bp: u32) -> (UpstreamSpec, UpstreamSpec) {
    upstream_pair(stable_error_bp, canary_error_bp)
}

fn canary_users(weight_bp: u32, n: usize) -> Vec<String> {
    load::canary_users(ROLLOUT, weight_bp, n)
}

fn sample_users(n: u32) -> Vec<String> {
    (0..n).map(user_id).collect()
}

/// Issue tests 1 and 8: a healthy canary goes through every stage to 100% with no rollback,
/// and no user ever goes back from canary to stable on any Envoy during the ramp.
async fn healthy_canary_is_promoted_and_users_stay_put(build: FilterBuild) -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstreams(50, 50);
    let rig = ControlledRig::start_build(build, ROLLOUT, 2, POLL_MS, stable, canary).await?;
    let ctl = rig
        .start_controller(
            "analysis: {interval: 500ms, failure_limit: 3, min_window_requests: 30}\n\
             stages:\n  - {weight_pct: 10, hold: 2s, min_requests: 100}\n  - {weight_pct: 50, hold: 2s, min_requests: 100}\n  - {weight_pct: 100}\n",
        )
        .await?;
    let load = Load::start(rig.bases.clone(), 2_000, 8, 100);
    let status = wait_status(&ctl, "promotion", Duration::from_secs(120), |s| {
        s["phase"] == "promoted" || s["phase"] == "rolled_back"
    })
    .await;
    let seen = load.stop().await;
    let status = status?;
    assert_eq!(status["phase"], "promoted", "{}", ctl.log());
    assert_eq!(status["weight_bp"], 10_000);
    let advanced = status["timeline"].as_array().map_or(0, |t| {
        t.iter().filter(|e| e["kind"] == "stage_advanced").count()
    });
    assert_eq!(advanced, 1, "10% → 50% then promoted: {status}");

    assert!(seen.len() > 1_000, "only {} requests observed", seen.len());
    let (back, pairs) = moves_back_to_stable(&seen);
    assert_eq!(
        back, 0,
        "{back} canary → stable moves during a healthy ramp"
    );
    let users = sample_users(200);
    rig.wait_for_weight(10_000, &users, Duration::from_secs(10))
        .await?;
    eprintln!(
        "promoted after {} requests; {pairs} users x envoys observed",
        seen.len(),
    );
    Ok(())
}

/// How often a user went from canary back to stable on the same Envoy (weights only go up,
/// so never), and how many (user, Envoy) pairs were observed.
fn moves_back_to_stable(seen: &[load::Observation]) -> (usize, usize) {
    // Requests on different connections overlap, and one sent first may reach Envoy last
    // (on a busy machine, by tens of milliseconds): a stable answer is a move back only if
    // its request was sent after a canary answer for the same user had come back.
    let mut canary_done: BTreeMap<(u32, usize), tokio::time::Instant> = BTreeMap::new();
    let mut users = BTreeSet::new();
    let mut back = 0;
    for o in seen {
        let Some(v) = o.version else { continue };
        let key = (o.user, o.envoy);
        users.insert(key);
        match v {
            Version::Canary => {
                let done = canary_done.entry(key).or_insert(o.done);
                *done = (*done).min(o.done);
            }
            Version::Stable => {
                if canary_done.get(&key).is_some_and(|done| o.at > *done) {
                    back += 1;
                }
            }
        }
    }
    (back, users.len())
}

/// A raise reaches each worker's root context at its own tick; it must still take effect on
/// every worker at once, or a user whose requests land on two workers is sent to canary by
/// one and back to stable by the other. Few users, many connections (spread over both
/// workers), many quick raises: each user is seen on both workers around every raise.
async fn raises_take_effect_on_every_worker_at_once(build: FilterBuild) -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstreams(0, 0);
    let rig = ControlledRig::start_build(build, ROLLOUT, 1, POLL_MS, stable, canary).await?;
    let stages: String = (1..10)
        .map(|w| format!("  - {{weight_pct: {}, hold: 1h}}\n", w * 10))
        .collect();
    let ctl = rig
        .start_controller(&format!("stages:\n{stages}  - {{weight_pct: 100}}\n"))
        .await?;
    let users = sample_users(100);
    rig.wait_for_weight(1_000, &users, Duration::from_secs(15))
        .await?;
    let load = Load::start(rig.bases.clone(), 100, 16, 1_000);
    for weight_bp in (2..=10).map(|w| w * 1_000) {
        assert_eq!(ctl.command("promote", Some(TOKEN)).await?, 200);
        rig.wait_for_weight(weight_bp, &users, Duration::from_secs(15))
            .await?;
    }
    let seen = load.stop().await;
    let (back, _) = moves_back_to_stable(&seen);
    eprintln!(
        "9 raises under {} requests from 100 users: {back} moves back to stable",
        seen.len()
    );
    assert!(seen.len() > 2_000, "only {} requests observed", seen.len());
    assert_eq!(back, 0, "{back} canary → stable moves while raising");
    Ok(())
}

/// Issue test 2: canary 10% 5xx against stable 0.5%: weight 0 on every Envoy within
/// (analysis interval × failure limit + one poll interval), plus one interval because the
/// fault starts part-way through a window.
async fn error_spike_rolls_back_on_every_envoy_within_the_bound(build: FilterBuild) -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstreams(50, 0);
    let rig = ControlledRig::start_build(build, ROLLOUT, 2, POLL_MS, stable, canary).await?;
    let interval = Duration::from_secs(1);
    let failure_limit = 3;
    let hooks = WebhookReceiver::start().await?;
    let ctl = rig
        .start_controller(&format!(
            "analysis: {{interval: 1s, failure_limit: {failure_limit}, min_window_requests: 30}}\n\
             webhooks: [{{url: \"{}\"}}]\n\
             stages:\n  - {{weight_pct: 20, hold: 1h, min_requests: 100}}\n  - {{weight_pct: 100}}\n",
            hooks.url()
        ))
        .await?;
    let load = Load::start(rig.bases.clone(), 5_000, 8, 100);
    let watched = canary_users(2_000, 20);
    rig.wait_for_weight(2_000, &watched, Duration::from_secs(30))
        .await?;
    wait_status(&ctl, "a passing analysis", Duration::from_secs(30), |s| {
        s["verdicts"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["verdict"]["outcome"] == "pass"))
    })
    .await?;

    rig.canary.set_error_rate_bp(1_000);
    let fault = Instant::now();
    let bound = interval * failure_limit + Duration::from_millis(POLL_MS) + interval;
    let result = rig
        .wait_for_weight(0, &watched, bound + Duration::from_secs(10))
        .await;
    let elapsed = fault.elapsed();
    load.stop().await;
    result?;
    let status = ctl.status().await?;
    eprintln!(
        "rollback: fault to weight 0 on both Envoys in {:.2}s (bound {:.2}s): {}",
        elapsed.as_secs_f64(),
        bound.as_secs_f64(),
        status["timeline"]
            .as_array()
            .and_then(|t| t.last())
            .map(|e| e["message"].to_string())
            .unwrap_or_default()
    );
    assert_eq!(status["phase"], "rolled_back");
    assert!(
        elapsed <= bound,
        "rollback took {elapsed:?}, bound {bound:?}"
    );
    // The webhook heard about the start and the rollback, with the numbers.
    let received = eventually(
        "rollback webhook",
        Duration::from_secs(5),
        || async { Ok(hooks.received()) },
        |r| r.iter().any(|h| h["event"] == "rolled_back"),
    )
    .await?;
    assert_eq!(received[0]["event"], "started", "{received:?}");
    let rollback = received.iter().find(|h| h["event"] == "rolled_back");
    assert!(
        rollback.is_some_and(|h| h["weight_bp"] == 0
            && h["rollout"] == ROLLOUT
            && h["message"]
                .as_str()
                .is_some_and(|m| m.contains("error rate"))),
        "{received:?}"
    );
    Ok(())
}

/// Issue test 6: SIGKILL the controller mid-rollout: the Envoys keep their weight while it is
/// down; the restarted controller resumes the same stage with no weight jump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_crash_keeps_weights_and_resumes_the_stage() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstreams(0, 0);
    let rig = ControlledRig::start(ROLLOUT, 2, POLL_MS, stable, canary).await?;
    let spec = "analysis: {interval: 500ms, min_window_requests: 20}\n\
                stages:\n  - {weight_pct: 10, hold: 1s, min_requests: 50}\n  - {weight_pct: 50, hold: 1h, min_requests: 50}\n  - {weight_pct: 100}\n";
    let mut ctl = rig.start_controller(spec).await?;
    let load = Load::start(rig.bases.clone(), 2_000, 6, 100);
    let before = wait_status(&ctl, "stage 2", Duration::from_secs(60), |s| {
        s["stage"] == 2
    })
    .await;
    load.stop().await;
    let before = before?;
    let users = sample_users(300);
    rig.wait_for_weight(5_000, &users, Duration::from_secs(10))
        .await?;

    ctl.kill();
    // Several poll intervals with the controller gone: nothing moves.
    let down_until = Instant::now() + Duration::from_millis(POLL_MS * 6);
    while Instant::now() < down_until {
        assert!(
            rig.routes_at(5_000, &users).await?,
            "an Envoy changed its weight while the controller was down"
        );
    }

    let ctl = rig.start_controller(spec).await?;
    let after = ctl.status().await?;
    for field in ["stage", "weight_bp", "config_version", "phase"] {
        assert_eq!(after[field], before[field], "{field} after restart");
    }
    assert!(ctl.log().contains("resumed"), "{}", ctl.log());
    assert!(rig.routes_at(5_000, &users).await?);
    Ok(())
}

/// Issue test 7: a bad spec exits non-zero naming the field, with nothing started; a
/// mutation without the token gets 401 and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_spec_and_unauthenticated_calls_are_refused() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let dir = tempfile::tempdir()?;
    let spec = dir.path().join("bad.yaml");
    std::fs::write(
        &spec,
        "name: shop\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\nstages: [{weight_pct: 150}]\n",
    )?;
    let port = canary_e2e::controller::free_port()?;
    let out = Command::new(paths::canaryctl_bin()?)
        .args(["serve", "--spec"])
        .arg(&spec)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(dir.path().join("state"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bad spec accepted: {stderr}");
    assert!(stderr.contains("stages[0].weight_pct"), "{stderr}");
    assert!(
        !dir.path().join("state").exists(),
        "state written for a bad spec"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    let (stable, canary) = upstreams(0, 0);
    let rig = ControlledRig::start(ROLLOUT, 1, POLL_MS, stable, canary).await?;
    let ctl = rig.start_controller("").await?;
    for token in [None, Some("wrong")] {
        for command in ["pause", "promote", "abort"] {
            assert_eq!(
                ctl.command(command, token).await?,
                401,
                "{command} with {token:?}"
            );
        }
    }
    let status = ctl.status().await?;
    assert_eq!(status["phase"], "progressing");
    assert_eq!(status["stage"], 1);
    assert_eq!(ctl.command("pause", Some(TOKEN)).await?, 200);
    assert_eq!(ctl.status().await?["phase"], "paused");
    assert_eq!(ctl.command("pause", Some(TOKEN)).await?, 409);
    Ok(())
}

/// Issue 17: the real binary refuses to start with a spec whose served configuration every
/// filter would refuse (naming the spec's field), and with a saved state that does not fit
/// the spec (naming the state's fields, the file left as it was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_config_the_filters_refuse_and_a_state_off_the_spec_stop_the_start() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let serve = |spec: &std::path::Path| -> Result<(bool, String)> {
        let port = canary_e2e::controller::free_port()?;
        let out = Command::new(paths::canaryctl_bin()?)
            .args(["serve", "--spec"])
            .arg(spec)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
            .arg(dir.path().join("state"))
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let base = "name: shop\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\n";
    let quota = dir.path().join("quota.yaml");
    std::fs::write(
        &quota,
        format!("{base}filter: {{llm: {{}}}}\nquota: {{tokens_per_minute: 100, per_user: {{tokens_per_minute: 2000000000000}}}}\n"),
    )?;
    let (ok, stderr) = serve(&quota)?;
    assert!(!ok, "accepted: {stderr}");
    assert!(
        stderr.contains("quota.per_user.tokens_per_minute"),
        "{stderr}"
    );

    let spec = dir.path().join("spec.yaml");
    std::fs::write(&spec, base)?;
    let state = dir.path().join("state/shop.state.json");
    std::fs::create_dir_all(dir.path().join("state"))?;
    let saved = serde_json::json!({
        "rollout": "shop", "phase": "progressing", "stage": 8, "weight_bp": 20000,
        "stage_started_ms": 0, "stage_canary_requests": 0, "stage_stable_requests": 0,
        "consecutive_failures": 0, "config_version": 7, "verdicts": [], "timeline": [],
    })
    .to_string();
    std::fs::write(&state, &saved)?;
    let (ok, stderr) = serve(&spec)?;
    assert!(!ok, "started with a state off the spec: {stderr}");
    assert!(stderr.contains("stage: is 8 (stage 9)"), "{stderr}");
    assert!(stderr.contains("weight_bp: is 20000"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&state)?,
        saved,
        "the state file is untouched"
    );
    Ok(())
}

/// Issue test 3: canary p99 twice stable's with equal errors: rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doubled_latency_rolls_back() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (mut stable, mut canary) = upstreams(0, 0);
    stable.delay = Duration::from_millis(20);
    canary.delay = Duration::from_millis(40);
    let rig = ControlledRig::start(ROLLOUT, 2, POLL_MS, stable, canary).await?;
    let ctl = rig
        .start_controller(
            "analysis: {interval: 1s, failure_limit: 2, min_window_requests: 30}\n\
             stages:\n  - {weight_pct: 30, hold: 1h, min_requests: 100}\n  - {weight_pct: 100}\n",
        )
        .await?;
    let load = Load::start(rig.bases.clone(), 3_000, 12, 40);
    let status = wait_status(&ctl, "rollback", Duration::from_secs(60), |s| {
        s["phase"] != "progressing"
    })
    .await;
    load.stop().await;
    let status = status?;
    assert_eq!(status["phase"], "rolled_back", "{status}");
    let reason = status["timeline"]
        .as_array()
        .and_then(|t| t.last())
        .map(|e| e["message"].to_string())
        .unwrap_or_default();
    assert!(reason.contains("latency_p"), "{reason}");
    eprintln!("latency rollback: {reason}");
    Ok(())
}

/// Issue test 4: canary identical to stable, with realistic noise (0.5% errors on both):
/// no rollback over 30 analysis windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_versions_are_never_rolled_back() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstreams(50, 50);
    let rig = ControlledRig::start(ROLLOUT, 2, POLL_MS, stable, canary).await?;
    let ctl = rig
        .start_controller(
            "analysis: {interval: 400ms, failure_limit: 3, min_window_requests: 30}\n\
             stages:\n  - {weight_pct: 30, hold: 1h, min_requests: 100}\n  - {weight_pct: 100}\n",
        )
        .await?;
    let load = Load::start(rig.bases.clone(), 3_000, 8, 100);
    let status = wait_status(&ctl, "30 analysis windows", Duration::from_secs(90), |s| {
        s["phase"] != "progressing" || judged(s) >= 30
    })
    .await;
    load.stop().await;
    let status = status?;
    assert_eq!(status["phase"], "progressing", "A/A rolled back: {status}");
    let metrics = ctl.metrics().await?;
    eprintln!(
        "A/A: {} windows judged\n{}",
        judged(&status),
        metrics
            .lines()
            .filter(|l| l.contains("verdicts_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// Windows judged so far, from the controller's `/status`.
fn judged(status: &serde_json::Value) -> u64 {
    status["analyses"].as_u64().unwrap_or(0)
}

/// Issue test 5: traffic below the minimum: the stage holds, verdicts are inconclusive, and
/// nothing is promoted on no data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_never_promotes() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstreams(0, 0);
    let rig = ControlledRig::start(ROLLOUT, 1, POLL_MS, stable, canary).await?;
    let ctl = rig
        .start_controller(
            "analysis: {interval: 300ms, min_window_requests: 100}\n\
             stages:\n  - {weight_pct: 10, hold: 0s, min_requests: 100}\n  - {weight_pct: 100}\n",
        )
        .await?;
    // About 10 requests a second: never 100 per version in a window.
    let load = Load::start(rig.bases.clone(), 500, 1, 10);
    let status = wait_status(
        &ctl,
        "10 inconclusive windows",
        Duration::from_secs(30),
        |s| judged(s) >= 10,
    )
    .await;
    load.stop().await;
    let status = status?;
    assert_eq!(status["phase"], "progressing");
    assert_eq!(status["stage"], 1);
    let verdicts = status["verdicts"].as_array().cloned().unwrap_or_default();
    assert!(!verdicts.is_empty());
    for v in &verdicts {
        assert_eq!(v["verdict"]["outcome"], "inconclusive", "{v}");
    }
    Ok(())
}

/// The filter keeps its last good configuration when the controller goes away and something
/// else answers its polls with garbage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_controller_address_keeps_the_last_good_config() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstreams(0, 0);
    let rig = ControlledRig::start(ROLLOUT, 1, POLL_MS, stable, canary).await?;
    let mut ctl = rig
        .start_controller("stages:\n  - {weight_pct: 50, hold: 1h}\n  - {weight_pct: 100}\n")
        .await?;
    let users = sample_users(200);
    rig.wait_for_weight(5_000, &users, Duration::from_secs(15))
        .await?;
    ctl.kill();
    // An HTTP server that answers every poll with 200 and a body that is not a configuration.
    let _impostor =
        canary_e2e::upstream::Upstream::start_on(rig.controller_addr, UpstreamSpec::new("garbage"))
            .await?;
    let envoy = &rig.envoys[0];
    eventually(
        "the filter noticing the garbage",
        Duration::from_secs(15),
        || async { Ok(envoy.log()) },
        |log| log.contains("invalid configuration from the controller"),
    )
    .await?;
    for _ in 0..4 {
        assert!(
            rig.routes_at(5_000, &users).await?,
            "weight changed on garbage"
        );
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    let warnings = envoy
        .log()
        .matches("invalid configuration from the controller")
        .count();
    // Once per root context that polled (main thread and two workers), not once per poll.
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} warnings: a failing controller must be logged, but not on every poll"
    );
    Ok(())
}

/// With `fail_safe_after_s`, a filter that cannot reach the controller for that long sends
/// everyone to stable, and returns to the controller's weight when it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_sends_everyone_to_stable_while_the_controller_is_away() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstreams(0, 0);
    let rig =
        ControlledRig::start_with_fail_safe(ROLLOUT, 1, POLL_MS, Some(2), stable, canary).await?;
    let spec = "stages:\n  - {weight_pct: 50, hold: 1h}\n  - {weight_pct: 100}\n";
    let mut ctl = rig.start_controller(spec).await?;
    let users = sample_users(200);
    rig.wait_for_weight(5_000, &users, Duration::from_secs(15))
        .await?;
    ctl.kill();
    let down = Instant::now();
    // Still 50% within the grace period...
    assert!(rig.routes_at(5_000, &users).await?);
    // ...then everyone on stable.
    rig.wait_for_weight(0, &users, Duration::from_secs(15))
        .await?;
    let after = down.elapsed();
    // The grace runs from the last good poll, up to one poll interval before the kill.
    let earliest = Duration::from_secs(2) - Duration::from_millis(POLL_MS);
    assert!(
        after >= earliest,
        "fail-safe after {after:?}, before the 2 s grace"
    );
    // The controller comes back (same state): the filter follows it again.
    let _ctl = rig.start_controller(spec).await?;
    rig.wait_for_weight(5_000, &users, Duration::from_secs(15))
        .await?;
    eprintln!(
        "fail-safe engaged {:.2}s after the controller died",
        after.as_secs_f64()
    );
    Ok(())
}

canary_e2e::for_both_builds!(
    healthy_canary_is_promoted_and_users_stay_put,
    raises_take_effect_on_every_worker_at_once,
    error_spike_rolls_back_on_every_envoy_within_the_bound,
);
