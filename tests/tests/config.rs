//! Issue test 8: configuration changes reach a running Envoy through LDS; an invalid one is
//! refused with its field named in Envoy's log, and the last good one keeps serving.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use canary_contract::{FilterConfig, RolloutConfig};
use canary_e2e::bootstrap::FilterBuild;
use canary_e2e::client::{http_client, send_all, Probe};
use canary_e2e::envoy::{self, Envoy};
use canary_e2e::rig::{CanaryRig, RigOptions};
use canary_e2e::wait::eventually;

const DEADLINE: Duration = Duration::from_secs(30);

fn config_json(weight_bp: u32) -> String {
    FilterConfig::new(vec![RolloutConfig::new("cfg", weight_bp)]).to_json()
}

/// Invalid plugin configurations and the field each must be refused for.
const INVALID: [(&str, &str); 7] = [
    (
        r#"{"schema_version":1,"rollouts":[{"name":"cfg","weight_bp":10001}]}"#,
        "rollouts[0].weight_bp",
    ),
    (
        r#"{"schema_version":1,"rollouts":[{"name":"cfg","wieght_bp":5}]}"#,
        "rollouts[0].wieght_bp",
    ),
    (
        r#"{"schema_version":2,"rollouts":[{"name":"cfg","weight_bp":5}]}"#,
        "schema_version",
    ),
    (
        r#"{"schema_version":1,"rollouts":[{"name":"Cfg!","weight_bp":5}]}"#,
        "rollouts[0].name",
    ),
    (
        r#"{"schema_version":1,"rollouts":[{"name":"cfg","weight_bp":5,"key_sources":[{"query":"u"}]}]}"#,
        "rollouts[0].key_sources[0]",
    ),
    (r#"{"schema_version":1,"rollouts":"#, "rollouts"),
    (r#"not json"#, "(root)"),
];

/// The versions that 50 users (on fresh connections, so on the newest listener) get.
async fn versions_served(base: &str) -> Result<BTreeSet<String>> {
    let client = http_client(4)?;
    let probes: Vec<Probe> = (0..50)
        .map(|i| Probe::user(base, "/", &format!("cfg-user-{i}")))
        .collect();
    Ok(send_all(&client, &probes, 4)
        .await?
        .into_iter()
        .map(|a| {
            a.served_by
                .unwrap_or_else(|| format!("status {}", a.status))
        })
        .collect())
}

async fn lds_counter(envoy: &Envoy, name: &str) -> Result<u64> {
    Ok(envoy
        .counter(&format!("listener_manager.lds.{name}"))
        .await?
        .unwrap_or(0))
}

/// Waits for `message` in Envoy's log file, which Envoy writes out in batches: a line may
/// reach the file well after the event (the native build's refusal comes sooner than the
/// wasm VM's, with fewer lines after it to push it out).
async fn logged(envoy: &Envoy, message: &str) -> Result<()> {
    eventually(
        &format!("{message:?} in Envoy's log"),
        DEADLINE,
        || async { Ok(envoy.log().contains(message)) },
        |found| *found,
    )
    .await
    .map(|_| ())
    .with_context(|| envoy.log_tail(30))
}

/// The message the filter logs for `json`: the contract's own error, so the log names
/// the same field the controller would be told about. Up to serde's list of accepted
/// fields, which has `llm` only in the LLM build.
fn refusal(json: &str) -> Result<String> {
    let err = FilterConfig::from_json(json.as_bytes())
        .err()
        .with_context(|| format!("{json} should be invalid"))?
        .to_string();
    let err = err.split(", expected one of").next().unwrap_or(&err);
    Ok(format!("invalid plugin configuration: {err}"))
}

async fn invalid_configs_are_refused_by_field_and_the_last_good_one_keeps_serving(
    build: FilterBuild,
) -> Result<()> {
    let _slot = envoy::exclusive().await;
    let mut rig = CanaryRig::start_with_lds(
        &config_json(10_000),
        "x-canary-version",
        RigOptions::with_build(build),
    )
    .await?;
    let base = rig.base().to_string();
    let all_canary = BTreeSet::from(["canary".to_string()]);
    assert_eq!(versions_served(&base).await?, all_canary);

    for (json, field) in INVALID {
        let envoy = rig.envoy();
        let rejected = lds_counter(envoy, "update_rejected").await?;
        let message = refusal(json)?;
        assert!(message.contains(field), "{message} should name {field}");
        rig.publish(json)?;
        let envoy = rig.envoy();
        eventually(
            &format!("LDS update with an invalid {field} rejected"),
            DEADLINE,
            || lds_counter(envoy, "update_rejected"),
            |n| *n > rejected,
        )
        .await?;
        logged(envoy, &message).await?;
        assert_eq!(
            envoy.url().await?,
            base,
            "the listener must stay where it was"
        );
        assert_eq!(
            versions_served(&base).await?,
            all_canary,
            "after refusing an invalid {field}, the previous configuration must keep serving"
        );
    }

    // A valid change still goes through, on the same port.
    let succeeded = lds_counter(rig.envoy(), "update_success").await?;
    rig.publish(&config_json(0))?;
    let envoy = rig.envoy();
    eventually(
        "valid LDS update accepted",
        DEADLINE,
        || lds_counter(envoy, "update_success"),
        |n| *n > succeeded,
    )
    .await?;
    eventually(
        "all users on stable after the ramp to 0",
        DEADLINE,
        || versions_served(&base),
        |v| *v == BTreeSet::from(["stable".to_string()]),
    )
    .await?;
    assert_eq!(envoy.url().await?, base);
    Ok(())
}

/// With no previous configuration there is nothing to keep: Envoy refuses the listener (no
/// traffic is accepted, rather than traffic routed by a configuration nobody wrote) until a
/// valid configuration arrives.
async fn an_invalid_first_config_means_no_listener_until_a_valid_one_arrives(
    build: FilterBuild,
) -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (json, field) = INVALID[0];
    let mut rig =
        CanaryRig::start_with_lds(json, "x-canary-version", RigOptions::with_build(build)).await?;
    let envoy = rig.envoy();
    assert!(
        envoy.listener_addr().await.is_err(),
        "no listener may come up with an invalid configuration"
    );
    let message = refusal(json)?;
    assert!(message.contains(field));
    logged(envoy, &message).await?;

    rig.publish(&config_json(10_000))?;
    let envoy = rig.envoy();
    let addr = eventually(
        "listener up after a valid configuration",
        DEADLINE,
        || envoy.listener_addr(),
        |_| true,
    )
    .await?;
    assert_eq!(
        versions_served(&format!("http://{addr}")).await?,
        BTreeSet::from(["canary".to_string()])
    );
    Ok(())
}

canary_e2e::for_both_builds!(
    invalid_configs_are_refused_by_field_and_the_last_good_one_keeps_serving,
    an_invalid_first_config_means_no_listener_until_a_valid_one_arrives,
);
