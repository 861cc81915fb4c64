//! `make bench`, controller part: how fast the loop closes on real Envoys, written to
//! `target/bench/rollout.json`.
//! - `rollback_seconds`: canary starts answering 10% 5xx (stable 0.5%), with ~500 canary
//!   requests/s (32 load workers) → weight 0 observed
//!   on both Envoys; analysis interval 1 s, failure limit 3, filters poll every 1 s.
//! - `converge_seconds`: an operator's promote → the new weight observed on both Envoys.
//! - `flip_seconds`: blue-green, the controller's flip decision → every user on the new
//!   version on both Envoys; `flip_back_seconds`: `rollback` → every user back on the old one.
//! - `controller_rss_kb`: the controller's peak RSS while judging two Envoys.
//! - `fleet_*`: the judge loop at scale: one controller (pinned to one core) running
//!   `FLEET_ROLLOUTS` rollouts (100) from a spec directory, each reading `FLEET_PROXIES`
//!   stand-in proxies (50) every 10 s: CPU seconds per analysis round, and the share of a core
//!   that is at the default 30 s interval.

use std::time::Duration;

use anyhow::{bail, Result};
use canary_contract::Version;
use canary_e2e::controller::{
    free_port, upstream_pair, Canaryctl, ControlledRig, CtlOptions, TOKEN,
};
use canary_e2e::fleet_load::{cpu_seconds, FakeAdmins};
use canary_e2e::load::{self, user_id, Load};
use canary_e2e::measure::median;
use canary_e2e::paths;
use canary_e2e::process::pin_to_cpus;
use canary_e2e::upstream::UpstreamSpec;
use serde_json::json;

const ROLLOUT: &str = "bench";
const POLL_MS: u64 = 1_000;
const RUNS: usize = 3;

fn canary_users(weight_bp: u32, n: usize) -> Vec<String> {
    load::canary_users(ROLLOUT, weight_bp, n)
}

fn upstreams() -> (UpstreamSpec, UpstreamSpec) {
    upstream_pair(50, 50)
}

/// Requests/s wrk gets from `url` in 5 s (1 thread, 32 connections, on CPU 1).
fn wrk_rps(url: &str, if_none_match: Option<&str>) -> Result<f64> {
    let mut command = std::process::Command::new(paths::wrk_bin()?);
    pin_to_cpus(&mut command, vec![1]);
    command.args(["-t", "1", "-c", "32", "-d", "5s"]);
    if let Some(etag) = if_none_match {
        command.args(["-H", &format!("If-None-Match: {etag}")]);
    }
    let out = command.arg(url).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok());
    match rps {
        Some(rps) if !text.contains("Non-2xx") => Ok(rps),
        _ => bail!("wrk against {url}:\n{text}"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // `BENCH_ROLLOUT_ONLY=fleet`: the fleet figure alone, printed, nothing written.
    if std::env::var("BENCH_ROLLOUT_ONLY").as_deref() == Ok("fleet") {
        println!("{:#}", fleet_round().await?);
        return Ok(());
    }
    let mut rollback = Vec::new();
    let mut rollback_canary_rps = Vec::new();
    let mut rss = Vec::new();
    for run in 0..RUNS {
        let (stable, canary) = upstreams();
        let rig = ControlledRig::start(ROLLOUT, 2, POLL_MS, stable, canary).await?;
        let ctl = rig
            .start_controller(
                "analysis: {interval: 1s, failure_limit: 3, min_window_requests: 30}\n\
                 stages:\n  - {weight_pct: 20, hold: 1h, min_requests: 100}\n  - {weight_pct: 100}\n",
            )
            .await?;
        let load = Load::start(rig.bases.clone(), 5_000, 32, 100);
        let watched = canary_users(2_000, 20);
        rig.wait_for_weight(2_000, &watched, Duration::from_secs(30))
            .await?;
        // A few healthy windows first, as in production.
        tokio::time::sleep(Duration::from_secs(3)).await;
        rig.canary.set_error_rate_bp(1_000);
        let took = rig
            .wait_for_weight(0, &watched, Duration::from_secs(30))
            .await;
        let seen = load.stop().await;
        let took = took?.as_secs_f64();
        // The canary's traffic before the fault: what the judge had to decide on.
        let canary_rps = match (seen.first(), seen.last()) {
            (Some(first), Some(last)) if last.at > first.at => {
                let canary = seen
                    .iter()
                    .filter(|o| o.version == Some(Version::Canary))
                    .count();
                canary as f64 / (last.at - first.at).as_secs_f64()
            }
            _ => 0.0,
        };
        eprintln!(
            "rollback run {}: {took:.2}s ({canary_rps:.0} canary requests/s)",
            run + 1
        );
        rollback.push(took);
        rollback_canary_rps.push(canary_rps);
        rss.push(ctl.peak_rss_kb()?);
    }

    // Convergence: promote through 10% → 20% → ... and time each weight change.
    let (stable, canary) = upstreams();
    let rig = ControlledRig::start(ROLLOUT, 2, POLL_MS, stable, canary).await?;
    let ctl = rig
        .start_controller(&format!(
            "stages:\n{}  - {{weight_pct: 100}}\n",
            [10, 20, 30, 40, 50]
                .iter()
                .map(|w| format!("  - {{weight_pct: {w}, hold: 1h}}\n"))
                .collect::<String>()
        ))
        .await?;
    let users: Vec<String> = (0..300).map(user_id).collect();
    rig.wait_for_weight(1_000, &users, Duration::from_secs(30))
        .await?;
    let mut converge = Vec::new();
    for weight_bp in [2_000, 3_000, 4_000, 5_000] {
        // Start measuring when the controller has accepted the change.
        if ctl.command("promote", Some(TOKEN)).await? != 200 {
            bail!("promote refused");
        }
        let took = rig
            .wait_for_weight(weight_bp, &users, Duration::from_secs(30))
            .await?
            .as_secs_f64();
        eprintln!("converge to {}%: {took:.2}s", weight_bp / 100);
        converge.push(took);
    }
    rss.push(ctl.peak_rss_kb()?);
    drop(ctl);
    drop(rig);

    // Blue-green: the flip and the flip back, timed from the controller's decision.
    let mut flip = Vec::new();
    let mut flip_back = Vec::new();
    let users: Vec<String> = (0..300).map(user_id).collect();
    for run in 0..RUNS {
        let (stable, canary) = upstreams();
        let rig = ControlledRig::start(ROLLOUT, 2, POLL_MS, stable, canary).await?;
        let ctl = rig
            .start_controller(
                "strategy: blue_green\nblue_green: {verify_min_requests: 0, keep_old_for: 1h}\n\
                 analysis: {interval: 1h}\n",
            )
            .await?;
        rig.wait_for_weight(0, &users, Duration::from_secs(30))
            .await?;
        // Verification passed (the operator's promote takes the same path as the gate).
        for (command, weight_bp, runs) in [
            ("promote", 10_000, &mut flip),
            ("rollback", 0, &mut flip_back),
        ] {
            if ctl.command(command, Some(TOKEN)).await? != 200 {
                bail!("{command} refused");
            }
            let decided_ms = ctl.status().await?["timeline"]
                .as_array()
                .and_then(|t| t.last())
                .and_then(|e| e["at_ms"].as_u64())
                .unwrap_or(0);
            rig.wait_for_weight(weight_bp, &users, Duration::from_secs(30))
                .await?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as u64;
            let took = now_ms.saturating_sub(decided_ms) as f64 / 1000.0;
            eprintln!("blue-green run {}: {command} took {took:.2}s", run + 1);
            runs.push(took);
        }
    }

    // Polls one controller core answers: wrk (on CPU 1) against /filter-config of a
    // controller pinned to CPU 0, conditional (304, the steady state) and full (200).
    let state = tempfile::tempdir()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let poll_ctl = Canaryctl::start_on_cpus(
        "name: bench\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\nanalysis: {interval: 1h}\n",
        addr,
        state.path(),
        TOKEN,
        Some(vec![0]),
    )
    .await?;
    let url = format!("{}/filter-config", poll_ctl.url());
    // The ETag is a hash of the served bytes: ask for it, as a filter holds it.
    let etag = reqwest::get(&url)
        .await?
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let polls_304 = wrk_rps(&url, Some(&etag))?;
    let polls_200 = wrk_rps(&url, None)?;
    eprintln!("controller polls/s on one core: {polls_304:.0} conditional (304), {polls_200:.0} full (200)");

    drop(poll_ctl);
    let fleet = fleet_round().await?;

    let report = json!({
        "settings": {
            "envoys": 2, "envoy_workers": 2, "filter_poll_interval_s": POLL_MS as f64 / 1000.0,
            "analysis_interval_s": 1.0, "failure_limit": 3,
            "fault": "canary 10% 5xx vs stable 0.5%"
        },
        "rollback_seconds": median(rollback.clone()),
        "rollback_seconds_runs": rollback,
        "rollback_canary_rps_runs": rollback_canary_rps,
        "converge_seconds": median(converge.clone()),
        "converge_seconds_runs": converge,
        "flip_seconds": median(flip.clone()),
        "flip_seconds_runs": flip,
        "flip_back_seconds": median(flip_back.clone()),
        "flip_back_seconds_runs": flip_back,
        "controller_rss_kb": rss.iter().max().copied().unwrap_or(0),
        "controller_polls_per_core_304": polls_304,
        "controller_polls_per_core_200": polls_200,
        "fleet": fleet,
        "fleet_cpu_seconds_per_round": fleet["cpu_seconds_per_round"],
        "fleet_core_share_at_30s": fleet["core_share_at_30s"],
    });
    let dir = paths::project_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("rollout.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    println!(
        "rollback_seconds = {:.2}, converge_seconds = {:.2}, flip_seconds = {:.2}, flip_back_seconds = {:.2}, controller_rss_kb = {}; wrote {}",
        report["rollback_seconds"].as_f64().unwrap_or(0.0),
        report["converge_seconds"].as_f64().unwrap_or(0.0),
        report["flip_seconds"].as_f64().unwrap_or(0.0),
        report["flip_back_seconds"].as_f64().unwrap_or(0.0),
        report["controller_rss_kb"],
        out.display()
    );
    Ok(())
}

/// The judge loop with many rollouts (see the module's comment).
async fn fleet_round() -> Result<serde_json::Value> {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rollouts, proxies) = (env("FLEET_ROLLOUTS", 100), env("FLEET_PROXIES", 50));
    const INTERVAL_S: f64 = 10.0;
    const ROUNDS: u64 = 4;
    let admins = FakeAdmins::start().await?;
    let specs = tempfile::tempdir()?;
    let sources = admins.sources_yaml(proxies);
    for i in 0..rollouts {
        let spec = format!(
            "name: svc-{i:03}\n{sources}analysis: {{interval: {INTERVAL_S}s, failure_limit: 3, min_window_requests: 10}}\n\
             stages:\n  - {{weight_pct: 10, hold: 1h}}\n  - {{weight_pct: 100}}\n"
        );
        std::fs::write(specs.path().join(format!("svc-{i:03}.yaml")), spec)?;
    }
    let state = tempfile::tempdir()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let options = CtlOptions {
        cpus: Some(vec![0]),
        ..CtlOptions::token(TOKEN)
    };
    let ctl = Canaryctl::start_dir(specs.path(), addr, state.path(), options).await?;
    // Every rollout judged at least `from` windows (analyses counts judged windows).
    let judged_at_least = |list: &serde_json::Value| -> u64 {
        let all = list["rollouts"].as_array().cloned().unwrap_or_default();
        if all.len() < rollouts {
            return 0;
        }
        all.iter()
            .map(|r| r["analyses"].as_u64().unwrap_or(0))
            .min()
            .unwrap_or(0)
    };
    let deadline = Duration::from_secs_f64(INTERVAL_S * (ROUNDS as f64 + 6.0) * 3.0);
    let started = std::time::Instant::now();
    let mut first = None;
    let mut done = None;
    while started.elapsed() < deadline {
        let judged = judged_at_least(&ctl.get_json("/rollouts").await?);
        let now = (std::time::Instant::now(), cpu_seconds(ctl.pid())?, judged);
        match first {
            None if judged >= 1 => first = Some(now),
            Some((_, _, from)) if judged >= from + ROUNDS => {
                done = Some(now);
                break;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (Some((t0, cpu0, from)), Some((t1, cpu1, to))) = (first, done) else {
        bail!(
            "the fleet's rollouts did not all judge {ROUNDS} more windows in {deadline:?}:\n{}",
            ctl.log()
        );
    };
    let rounds = (to - from) as f64;
    let per_round = (cpu1 - cpu0) / rounds;
    let wall_per_round = t1.duration_since(t0).as_secs_f64() / rounds;
    eprintln!(
        "fleet: {rollouts} rollouts x {proxies} proxies: {per_round:.2} CPU s per round \
         ({wall_per_round:.1} s apart; interval {INTERVAL_S} s)"
    );
    Ok(json!({
        "rollouts": rollouts,
        "proxies_per_rollout": proxies,
        "analysis_interval_s": INTERVAL_S,
        "rounds": rounds,
        "cpu_seconds_per_round": per_round,
        "wall_seconds_per_round": wall_per_round,
        "core_share_at_30s": per_round / 30.0,
    }))
}
