//! Issue test 5: the data-plane circuit breaker. A canary answering 50% 5xx trips it within
//! the configured window, without any controller; the canary's users then go to stable on
//! every worker while the other users are untouched; after `open_s` it closes and the
//! canary's users are back on canary.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use canary_contract::stats::{stat_name, Metric, ENVOY_WASM_PREFIX};
use canary_contract::{CircuitBreaker, FilterConfig, RolloutConfig, Version};
use canary_e2e::client::{http_client, send_all, Answer, Probe};
use canary_e2e::controller::{upstream_pair, wait_status, ControlledRig};
use canary_e2e::envoy::{self, Envoy};
use canary_e2e::load::{self, Load};
use canary_e2e::paths;
use canary_e2e::prometheus::Prometheus;
use canary_e2e::rig::{CanaryRig, RigOptions};
use canary_e2e::upstream::UpstreamSpec;
use canary_e2e::wait::eventually;

const ROLLOUT: &str = "cb";
const WEIGHT_BP: u32 = 5_000;
const OPEN_S: u32 = 6;
/// Requests per batch, over this many connections (Envoy spreads them over its workers).
const BATCH: usize = 60;
const CONNECTIONS: usize = 16;

fn breaker() -> CircuitBreaker {
    CircuitBreaker {
        error_rate_bp: 2_500,
        window_s: 5,
        // More than one worker gets of a batch of 60 (they split it about evenly): a trip
        // shows the answers of both workers were counted together.
        min_requests: 50,
        open_s: OPEN_S,
    }
}

async fn stat(envoy: &Envoy, metric: Metric) -> Result<u64> {
    let name = format!(
        "{ENVOY_WASM_PREFIX}{}",
        stat_name(metric, ROLLOUT, Version::Canary)
    );
    Ok(envoy.counter(&name).await?.unwrap_or(0))
}

/// Per-worker connection counts of the listener (`listener.<address>.worker_<n>.
/// downstream_cx_total`): show that the batches reached every worker.
async fn worker_connections(envoy: &Envoy) -> Result<Vec<(String, u64)>> {
    let stats = envoy
        .admin_json("/stats?format=json&filter=worker_[0-9]+\\.downstream_cx_total$")
        .await?;
    let mut counts: Vec<(String, u64)> = stats["stats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["value"].as_u64()?)))
        .filter(|(name, _)| name.starts_with("listener.") && !name.contains("admin"))
        .collect();
    counts.sort();
    Ok(counts)
}

fn served_by(answers: &[Answer]) -> impl Iterator<Item = &str> {
    answers
        .iter()
        .map(|a| a.served_by.as_deref().unwrap_or("-"))
}

/// A batch for `users`, each request on a fresh connection so both workers get some.
async fn batch(base: &str, users: &[String]) -> Result<Vec<Answer>> {
    let client = http_client(0)?;
    let probes: Vec<Probe> = users
        .iter()
        .cycle()
        .take(BATCH)
        .map(|u| Probe::user(base, "/", u).header("connection", "close"))
        .collect();
    send_all(&client, &probes, CONNECTIONS).await
}

async fn trips_diverts_and_closes(wasm: std::path::PathBuf) -> Result<()> {
    let _slot = envoy::exclusive().await;
    let mut rollout = RolloutConfig::new(ROLLOUT, WEIGHT_BP);
    rollout.circuit_breaker = Some(breaker());
    let config = FilterConfig::new(vec![rollout]);
    let mut canary = UpstreamSpec::new("canary");
    canary.error_rate_bp = 5_000;
    let rig = CanaryRig::start(
        &config,
        RigOptions {
            concurrency: 2,
            canary,
            wasm: Some(wasm),
            ..RigOptions::default()
        },
    )
    .await?;
    let envoy = rig.envoy();
    let base = rig.base().to_string();
    let canary_users = load::canary_users(ROLLOUT, WEIGHT_BP, 30);
    let stable_users: Vec<String> = (0..2_000)
        .map(load::user_id)
        .filter(|u| !canary_users.contains(u))
        .filter(|u| RolloutConfig::new(ROLLOUT, WEIGHT_BP).version_for_key(u) == Version::Stable)
        .take(30)
        .collect();

    // Closed: the canary's users reach the failing canary.
    let first = batch(&base, &canary_users).await?;
    ensure!(
        served_by(&first).all(|v| v == "canary"),
        "before the trip: {first:?}"
    );
    let sent_before = first.len();

    // It trips within the window: 30 of those 60 canary answers failed (the minimum is 50,
    // the limit 25%), and nothing more is sent until it has.
    let started = Instant::now();
    let tripped = eventually(
        "the breaker trips",
        Duration::from_secs(20),
        || async { stat(envoy, Metric::BreakerTrips).await },
        |&trips| trips >= 1,
    )
    .await?;
    let tripped_at = Instant::now();
    eprintln!(
        "tripped ({tripped}) {:?} after the first batch of {sent_before} canary requests",
        tripped_at - started
    );
    ensure!(tripped == 1, "one trip per proxy, got {tripped}");
    eventually(
        "open gauge at 1",
        Duration::from_secs(5),
        || async { stat(envoy, Metric::BreakerOpen).await },
        |&open| open == 1,
    )
    .await?;

    // Open: every worker sends the canary's users to stable (allow a sync period for the
    // workers that did not trip it), the stable users are untouched.
    let workers_before = worker_connections(envoy).await?;
    eventually(
        "canary users on stable on every worker",
        Duration::from_secs(5),
        || batch(&base, &canary_users),
        |answers| served_by(answers).all(|v| v == "stable"),
    )
    .await?;
    let diverted_before = stat(envoy, Metric::BreakerDiverted).await?;
    let mut open_batches = 0;
    // Sampled until half of `open_s` after we saw the trip: it must still be open.
    while tripped_at.elapsed() < Duration::from_secs(u64::from(OPEN_S) / 2) {
        let answers = batch(&base, &canary_users).await?;
        let stable = batch(&base, &stable_users).await?;
        if tripped_at.elapsed() >= Duration::from_secs(u64::from(OPEN_S) - 1) {
            break; // a very slow batch may have run into the close: not judged
        }
        ensure!(
            answers
                .iter()
                .all(|a| a.status == 200 && a.served_by.as_deref() == Some("stable")),
            "canary users while open: {answers:?}"
        );
        ensure!(
            stable
                .iter()
                .all(|a| a.status == 200 && a.served_by.as_deref() == Some("stable")),
            "stable users while open: {stable:?}"
        );
        open_batches += 1;
    }
    let workers_after = worker_connections(envoy).await?;
    eprintln!("connections per worker before/after the open batches: {workers_before:?} → {workers_after:?}");
    ensure!(
        workers_after.len() == 2
            && workers_before.len() == 2
            && workers_after
                .iter()
                .zip(&workers_before)
                .all(|(a, b)| a.0 == b.0 && a.1 > b.1),
        "both workers served the open batches: {workers_before:?} → {workers_after:?}"
    );
    // Counters reach Envoy at the next flush of each worker.
    let sent_open = (open_batches * BATCH) as u64;
    let diverted = eventually(
        "every diverted request counted",
        Duration::from_secs(5),
        || async { Ok(stat(envoy, Metric::BreakerDiverted).await? - diverted_before) },
        |&d| d >= sent_open,
    )
    .await?;

    // The canary recovers; after open_s the breaker closes and its users are back.
    rig.canary.set_error_rate_bp(0);
    let back = eventually(
        "canary users back on canary",
        Duration::from_secs(u64::from(OPEN_S) + 20),
        || batch(&base, &canary_users),
        |answers| served_by(answers).all(|v| v == "canary"),
    )
    .await;
    let closed_after = tripped_at.elapsed();
    back?;
    eprintln!(
        "closed {closed_after:?} after the trip was seen (open_s {OPEN_S}); {open_batches} batches diverted ({diverted} requests)"
    );
    // Users return at the stored instant; the gauge follows at the next tick.
    eventually(
        "open gauge back to 0",
        Duration::from_secs(5),
        || async { stat(envoy, Metric::BreakerOpen).await },
        |&open| open == 0,
    )
    .await?;
    let healthy = batch(&base, &canary_users).await?;
    ensure!(healthy
        .iter()
        .all(|a| a.status == 200 && a.served_by.as_deref() == Some("canary")));
    ensure!(
        stat(envoy, Metric::BreakerTrips).await? == 1,
        "a healthy canary does not trip again"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_trips_diverts_canary_users_and_closes_after_open_s() -> Result<()> {
    trips_diverts_and_closes(paths::filter_wasm()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_works_the_same_in_the_llm_module() -> Result<()> {
    trips_diverts_and_closes(paths::llm_filter_wasm()?).await
}

/// The controller sees the trip in the stats and treats it as a failed analysis: here the
/// judge's own checks cannot fail (their minimum traffic is out of reach, so they are
/// inconclusive), so the rollback can only come from the breaker — a trip, then an open
/// breaker, is two failed windows, the failure limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_counts_a_trip_as_a_failed_analysis() -> Result<()> {
    trip_fails_the_analysis(false).await
}

/// The same with the controller reading a real Prometheus server that scrapes the Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_counts_a_trip_as_a_failed_analysis_from_prometheus() -> Result<()> {
    trip_fails_the_analysis(true).await
}

async fn trip_fails_the_analysis(from_prometheus: bool) -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (stable, canary) = upstream_pair(0, 5_000);
    let rig = ControlledRig::start(ROLLOUT, 1, 500, stable, canary).await?;
    let prometheus = if from_prometheus {
        let admins: Vec<_> = rig.envoys.iter().map(|e| e.admin_addr()).collect();
        Some(Prometheus::start(&admins, Duration::from_secs(1)).await?)
    } else {
        None
    };
    let sources = match &prometheus {
        Some(p) => format!(
            "sources: {{prometheus: {{url: \"{}\", lag: 2s}}}}\n",
            p.url()
        ),
        None => rig.sources_yaml(),
    };
    let ctl = rig
        .start_controller_with_sources(
            &sources,
            "analysis: {interval: 1s, failure_limit: 2, min_window_requests: 1000000}\n\
             stages:\n  - {weight_pct: 50, hold: 1h}\n  - {weight_pct: 100}\n\
             filter:\n  circuit_breaker: {error_rate_bp: 2500, window_s: 5, min_requests: 20, open_s: 30}\n",
        )
        .await?;
    // Traffic only once the controller has a baseline, so the trip falls in a window.
    wait_status(&ctl, "a first analysis", Duration::from_secs(30), |s| {
        s["analyses"].as_u64() >= Some(1)
    })
    .await?;
    let load = Load::start(rig.bases.clone(), 200, 4, 50);
    let status = wait_status(&ctl, "rollback", Duration::from_secs(60), |s| {
        s["phase"] == "rolled_back"
    })
    .await;
    let seen = load.stop().await;
    let status = status.map_err(|e| anyhow::anyhow!("{e}\n{}", ctl.log()))?;
    eprintln!(
        "{} requests; status: {}",
        seen.len(),
        serde_json::to_string_pretty(&status)?
    );
    let breaker = &status["circuit_breaker"];
    ensure!(breaker["trips"].as_u64() >= Some(1), "{status}");
    let timeline: Vec<&str> = status["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["message"].as_str())
        .collect();
    let rollback = timeline
        .iter()
        .find(|m| m.starts_with("rolled back"))
        .copied()
        .unwrap_or_default();
    ensure!(
        rollback.contains("2 failed analyses in a row") && rollback.contains("circuit breaker"),
        "{timeline:?}"
    );
    ensure!(
        timeline
            .iter()
            .any(|m| m.starts_with("analysis failed (1 of 2)") && m.contains("circuit breaker")),
        "{timeline:?}"
    );
    let metrics = ctl.metrics().await?;
    ensure!(
        metrics.lines().any(|l| l
            .strip_prefix("canary_controller_breaker_trips_total{rollout=\"cb\"} ")
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= 1.0)),
        "{metrics}"
    );
    let text = ctl.status_text()?;
    ensure!(
        text.lines()
            .any(|l| l.starts_with("circuit breaker: open on 1 Envoy(s); ")),
        "canaryctl status: {text}"
    );
    // Rolled back: weight 0 everywhere, every user on stable.
    let users: Vec<String> = (0..50).map(load::user_id).collect();
    rig.wait_for_weight(0, &users, Duration::from_secs(15))
        .await?;
    Ok(())
}
