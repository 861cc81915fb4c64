//! gRPC through the filter on real Envoy, with grpcio servers and a grpcio client over
//! HTTP/2: a call that fails with HTTP 200 and a `grpc-status` counts as an error, whether
//! the status comes in a trailers-only answer (response headers) or in trailers; the
//! circuit breaker and the controller's judge see those failures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use canary_contract::grpc::grpc_status_class;
use canary_contract::stats::{stat_name, Metric, ENVOY_WASM_PREFIX};
use canary_contract::{CircuitBreaker, FilterConfig, RolloutConfig, Version};
use canary_e2e::controller::{rollback_message, wait_status};
use canary_e2e::envoy::{self, Envoy};
use canary_e2e::grpc::{
    call_all, Call, GrpcClient, GrpcRig, GrpcServer, Method, Outcome, INVALID_ARGUMENT, OK,
    UNAVAILABLE,
};
use canary_e2e::load;
use canary_e2e::paths;
use canary_e2e::wait::eventually;

const CLASSES: [Metric; 4] = [Metric::Rq2xx, Metric::Rq3xx, Metric::Rq4xx, Metric::Rq5xx];

async fn counter(envoy: &Envoy, rollout: &str, version: Version, metric: Metric) -> Result<u64> {
    let name = format!("{ENVOY_WASM_PREFIX}{}", stat_name(metric, rollout, version));
    Ok(envoy.counter(&name).await?.unwrap_or(0))
}

/// The per-version counters the test checks, in [`CLASSES`] order after the total and the
/// resets.
async fn counts(envoy: &Envoy, rollout: &str, version: Version) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for metric in [Metric::RqTotal, Metric::RqReset]
        .into_iter()
        .chain(CLASSES)
    {
        out.push(counter(envoy, rollout, version, metric).await?);
    }
    Ok(out)
}

/// What user `i` calls, and with which code the echo server must end the call.
fn plan(i: usize) -> (Method, Option<u32>) {
    match i % 8 {
        0 => (Method::Say, None),
        1 => (Method::Stream, None),
        2 => (Method::Say, Some(UNAVAILABLE)),
        3 => (Method::Stream, Some(UNAVAILABLE)),
        4 => (Method::Say, Some(INVALID_ARGUMENT)),
        5 => (Method::Stream, Some(INVALID_ARGUMENT)),
        6 => (Method::Health, None),
        _ => (Method::Say, Some(OK)),
    }
}

/// Issue 15 item 4: exact per-version counts of a known mix of gRPC outcomes: OK (and the
/// health check) as 2xx, UNAVAILABLE as 5xx, INVALID_ARGUMENT as 4xx, trailers-only and with
/// trailers alike; `rq_total` is still the sum of the classes.
async fn grpc_outcomes_are_counted_by_class(wasm: PathBuf) -> Result<()> {
    let _slot = envoy::exclusive().await;
    const ROLLOUT: &str = "rpc";
    let rollout = RolloutConfig::new(ROLLOUT, 5_000);
    let config = FilterConfig::new(vec![rollout.clone()]);
    let stable = GrpcServer::start("stable", 0, UNAVAILABLE).await?;
    let canary = GrpcServer::start("canary", 0, UNAVAILABLE).await?;
    let rig = GrpcRig::start(&config, wasm, stable, canary).await?;

    let users: Vec<String> = (0..320).map(|i| format!("caller-{i}")).collect();
    let calls: Vec<Call> = (users.iter().enumerate())
        .map(|(i, user)| {
            let (method, code) = plan(i);
            Call::new(user, method, code)
        })
        .collect();
    // Per version: total, resets, then 2xx ... 5xx.
    let mut expected: BTreeMap<Version, Vec<u64>> = BTreeMap::new();
    for (i, user) in users.iter().enumerate() {
        let e = (expected.entry(rollout.version_for_key(user))).or_insert_with(|| vec![0; 6]);
        e[0] += 1;
        let class = grpc_status_class(plan(i).1.unwrap_or(OK));
        e[2 + CLASSES.iter().position(|c| *c == class).unwrap_or(0)] += 1;
    }

    let outcomes = call_all(rig.target(), &calls, 8).await?;
    ensure!(outcomes.len() == calls.len(), "{} outcomes", outcomes.len());
    let by_user: BTreeMap<&str, &Outcome> = outcomes.iter().map(|o| (o.user.as_str(), o)).collect();
    for (i, user) in users.iter().enumerate() {
        let (method, code) = plan(i);
        let o = by_user[user.as_str()];
        ensure!(o.code == code.unwrap_or(OK), "{user}: {o:?}");
        if method == Method::Health {
            ensure!(o.health.as_deref() == Some("SERVING"), "{user}: {o:?}");
            continue;
        }
        let version = rollout.version_for_key(user).as_str();
        ensure!(o.served_by.as_deref() == Some(version), "{user}: {o:?}");
        // A failing stream fails after its message: its status comes in trailers.
        let messages = u32::from(method == Method::Stream || code.unwrap_or(OK) == OK);
        ensure!(o.messages == messages, "{user}: {o:?}");
    }

    // Where each failure's status travelled, as Envoy saw it.
    let log = eventually(
        "an access log line per call",
        Duration::from_secs(20),
        || async { Ok(rig.access_log()) },
        |lines| lines.len() >= calls.len(),
    )
    .await?;
    for line in &log {
        let i = users.iter().position(|u| *u == line.user);
        let Some((method, Some(code))) = i.map(plan) else {
            continue;
        };
        // grpcio answers a unary call that fails before any message trailers-only.
        let (headers, trailers) = if method == Method::Say && code != OK {
            (Some(code), None)
        } else {
            (None, Some(code))
        };
        ensure!(
            line.http_status == 200
                && line.header_grpc_status == headers
                && line.trailer_grpc_status == trailers,
            "{line:?} for {method:?} ending with {code}"
        );
    }

    let envoy = rig.envoy();
    for version in Version::ALL {
        let want = expected[&version].clone();
        let got = eventually(
            &format!("{version:?} counts [total, reset, 2xx, 3xx, 4xx, 5xx]"),
            Duration::from_secs(20),
            || counts(envoy, ROLLOUT, version),
            |got| *got == want,
        )
        .await?;
        ensure!(
            got[0] == got[1..].iter().sum::<u64>(),
            "{version:?}: {got:?}"
        );
        eprintln!("{version:?}: [total, reset, 2xx, 3xx, 4xx, 5xx] = {got:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_outcomes_are_counted_by_class_in_the_plain_module() -> Result<()> {
    grpc_outcomes_are_counted_by_class(paths::filter_wasm()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_outcomes_are_counted_by_class_in_the_llm_module() -> Result<()> {
    grpc_outcomes_are_counted_by_class(paths::llm_filter_wasm()?).await
}

/// A canary failing half its calls with UNAVAILABLE on HTTP 200 trips the circuit breaker;
/// its users then go to stable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_failures_trip_the_circuit_breaker() -> Result<()> {
    let _slot = envoy::exclusive().await;
    const ROLLOUT: &str = "cb";
    const WEIGHT_BP: u32 = 5_000;
    let mut rollout = RolloutConfig::new(ROLLOUT, WEIGHT_BP);
    rollout.circuit_breaker = Some(CircuitBreaker {
        error_rate_bp: 2_500,
        window_s: 10,
        min_requests: 40,
        open_s: 60,
    });
    let config = FilterConfig::new(vec![rollout]);
    let stable = GrpcServer::start("stable", 0, UNAVAILABLE).await?;
    let canary = GrpcServer::start("canary", 5_000, UNAVAILABLE).await?;
    let rig = GrpcRig::start(&config, paths::filter_wasm()?, stable, canary).await?;
    let envoy = rig.envoy();
    let canary_users = load::canary_users(ROLLOUT, WEIGHT_BP, 30);
    // Both ways of failing: trailers-only (Say) and after a message (Stream).
    let calls: Vec<Call> = (canary_users.iter().cycle().take(60).enumerate())
        .map(|(i, u)| Call::new(u, [Method::Say, Method::Stream][i % 2], None))
        .collect();

    let first = call_all(rig.target(), &calls, 8).await?;
    let failed = first.iter().filter(|o| o.code == UNAVAILABLE).count();
    let on_canary = (first.iter())
        .filter(|o| o.served_by.as_deref() == Some("canary"))
        .count();
    // Every other canary call fails. The breaker's tick (100 ms) may trip it before the
    // batch ends on a busy machine: the calls after that go to stable, and succeed.
    ensure!(
        on_canary >= 40
            && (failed == on_canary / 2 || failed == on_canary.div_ceil(2))
            && (first.iter()).all(|o| o.code == OK || o.served_by.as_deref() == Some("canary")),
        "before the trip: {failed} failed, {on_canary} on canary, of {first:?}"
    );
    let trips = eventually(
        "the breaker trips",
        Duration::from_secs(20),
        || counter(envoy, ROLLOUT, Version::Canary, Metric::BreakerTrips),
        |&trips| trips >= 1,
    )
    .await?;
    ensure!(trips == 1, "one trip per proxy, got {trips}");
    // Each worker's counts reach Envoy at its own flush.
    eventually(
        "the failures in canary rq_5xx",
        Duration::from_secs(10),
        || counter(envoy, ROLLOUT, Version::Canary, Metric::Rq5xx),
        |&five_xx| five_xx == failed as u64,
    )
    .await?;
    // Open: every worker sends the canary's users to stable (allow a tick for the worker
    // that did not trip it).
    let diverted = eventually(
        "canary users on stable",
        Duration::from_secs(10),
        || call_all(rig.target(), &calls, 8),
        |answers| {
            (answers.iter()).all(|o| o.code == OK && o.served_by.as_deref() == Some("stable"))
        },
    )
    .await?;
    eprintln!(
        "tripped on {failed} UNAVAILABLE of {} canary calls; then {} calls diverted to stable",
        first.len(),
        diverted.len()
    );
    Ok(())
}

/// The controller's judge rolls back a canary whose gRPC calls fail with UNAVAILABLE on
/// HTTP 200 (30% of them; stable fails none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_rolls_back_a_canary_whose_grpc_calls_fail() -> Result<()> {
    let _slot = envoy::exclusive().await;
    const ROLLOUT: &str = "rpc";
    let stable = GrpcServer::start("stable", 0, UNAVAILABLE).await?;
    let canary = GrpcServer::start("canary", 3_000, UNAVAILABLE).await?;
    let rig = GrpcRig::start_controlled(ROLLOUT, 500, stable, canary).await?;
    let ctl = rig
        .start_controller(
            "analysis: {interval: 1s, failure_limit: 2, min_window_requests: 20}\n\
             stages:\n  - {weight_pct: 50, hold: 1h, min_requests: 50}\n  - {weight_pct: 100}\n",
        )
        .await?;
    let users: Vec<String> = (0..200).map(load::user_id).collect();
    let calls: Vec<Call> = (users.iter().enumerate())
        .map(|(i, u)| Call::new(u, [Method::Say, Method::Stream][i % 2], None))
        .collect();
    let traffic = GrpcClient::start(rig.target(), &calls, 4, Some(Duration::from_secs(90)))?;
    let status = wait_status(&ctl, "rollback", Duration::from_secs(90), |s| {
        s["phase"] == "rolled_back" || s["phase"] == "promoted"
    })
    .await;
    let seen = traffic.stop()?;
    let status = status?;
    ensure!(status["phase"] == "rolled_back", "{status}\n{}", ctl.log());
    let canary_failed = (seen.iter())
        .filter(|o| o.code == UNAVAILABLE && o.served_by.as_deref() == Some("canary"))
        .count();
    let http_errors = seen
        .iter()
        .filter(|o| o.code != OK && o.code != UNAVAILABLE);
    ensure!(
        http_errors.count() == 0,
        "only UNAVAILABLE failures expected"
    );
    ensure!(
        canary_failed > 0,
        "no canary failure seen in {} calls",
        seen.len()
    );
    let canary_users = load::canary_users(ROLLOUT, 5_000, 20);
    let back: Vec<Call> = (canary_users.iter())
        .map(|u| Call::new(u, Method::Say, None))
        .collect();
    eventually(
        "the canary's users back on stable",
        Duration::from_secs(10),
        || call_all(rig.target(), &back, 4),
        |answers| (answers.iter()).all(|o| o.served_by.as_deref() == Some("stable")),
    )
    .await?;
    eprintln!(
        "rolled back after {} calls ({canary_failed} canary UNAVAILABLE): {}",
        seen.len(),
        rollback_message(&status)
    );
    Ok(())
}
