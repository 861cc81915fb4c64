//! What Envoy does with traffic after the filter's VM has died, under each `failure_policy`.
//! The shipped filter is written never to panic; these tests use a test-only build
//! (`fault-injection` feature) that panics on `x-canary-fault: panic`, to pin down what a
//! user gets if it ever did.

use std::time::Duration;

use anyhow::Result;
use canary_contract::{FilterConfig, RolloutConfig};
use canary_e2e::bootstrap::FailurePolicy;
use canary_e2e::client::{http_client, send, Answer, Probe};
use canary_e2e::envoy;
use canary_e2e::paths;
use canary_e2e::rig::{CanaryRig, RigOptions};
use canary_e2e::wait::eventually;

// The recommended policy (and the harness default) is FAIL_RELOAD: only the request that
// crashed the VM fails, the next one gets a fresh VM that routes and strips headers again.

/// Everyone on canary, so "the filter routed this" is visible in every answer.
async fn rig(policy: FailurePolicy) -> Result<CanaryRig> {
    let config = FilterConfig::new(vec![RolloutConfig::new("fault", 10_000)]);
    CanaryRig::start(
        &config,
        RigOptions {
            failure_policy: policy,
            wasm: Some(paths::fault_injection_wasm()?),
            ..RigOptions::default()
        },
    )
    .await
}

/// Panics the VM and returns the answer to the request that did it.
async fn crash(client: &reqwest::Client, base: &str) -> Result<Answer> {
    send(
        client,
        &Probe::user(base, "/", "crasher").header("x-canary-fault", "panic"),
    )
    .await
}

async fn normal(client: &reqwest::Client, base: &str) -> Result<Answer> {
    send(client, &Probe::user(base, "/", "someone")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_503_after_a_crash() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let rig = rig(FailurePolicy::FailClosed).await?;
    let client = http_client(1)?;
    assert_eq!(
        normal(&client, rig.base()).await?.served_by.as_deref(),
        Some("canary")
    );
    let crashed = crash(&client, rig.base()).await?;
    eprintln!("fail closed, crashing request: {crashed:?}");
    for _ in 0..5 {
        let answer = normal(&client, rig.base()).await?;
        assert_eq!(answer.status, 503, "{answer:?}");
        assert_eq!(answer.served_by, None, "{answer:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_sends_everyone_to_stable_after_a_crash() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let rig = rig(FailurePolicy::FailOpen).await?;
    let client = http_client(1)?;
    assert_eq!(
        normal(&client, rig.base()).await?.served_by.as_deref(),
        Some("canary")
    );
    let crashed = crash(&client, rig.base()).await?;
    eprintln!("fail open, crashing request: {crashed:?}");
    for _ in 0..5 {
        let answer = normal(&client, rig.base()).await?;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.served_by.as_deref(), Some("stable"), "{answer:?}");
    }
    // The cost of failing open: nothing strips a client's routing header any more.
    let spoofed = send(
        &client,
        &Probe::user(rig.base(), "/", "someone").header("x-canary-version", "canary"),
    )
    .await?;
    assert_eq!(spoofed.served_by.as_deref(), Some("canary"), "{spoofed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_reload_routes_by_the_hash_again_after_a_crash() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let rig = rig(FailurePolicy::FailReload).await?;
    let client = http_client(1)?;
    assert_eq!(
        normal(&client, rig.base()).await?.served_by.as_deref(),
        Some("canary")
    );
    let crashed = crash(&client, rig.base()).await?;
    eprintln!("fail reload, crashing request: {crashed:?}");
    assert_eq!(crashed.status, 503, "{crashed:?}");
    let base = rig.base().to_string();
    let client = &client;
    eventually(
        "routing restored by a reloaded VM",
        Duration::from_secs(30),
        || normal(client, &base),
        |a| a.served_by.as_deref() == Some("canary"),
    )
    .await?;
    for _ in 0..5 {
        let answer = normal(client, &base).await?;
        assert_eq!(answer.served_by.as_deref(), Some("canary"), "{answer:?}");
    }
    Ok(())
}
