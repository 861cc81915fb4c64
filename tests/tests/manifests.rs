//! The manifests say what the code expects: the WasmPlugin's `pluginConfig` passes the
//! filter's own validation and points at the controller's Service, the ConfigMap's rollout
//! spec passes the controller's, the routing example matches on the header the filter sets,
//! the stats bootstrap carries the contract's tag rules, and the controller keeps its state on
//! a claim of a single writer. (Schemas: tools/validate-manifests.py.)

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use canary_controller::spec::RolloutSpec;
use canary_e2e::bootstrap::check_stats_config;
use canary_e2e::manifests;
use serde_json::Value;

fn docs(relative: &str) -> Result<Vec<Value>> {
    manifests::documents(&manifests::manifest_text(relative)?)
        .map_err(|e| anyhow!("{}: {e}", Path::new(relative).display()))
}

fn one(relative: &str, kind: &str) -> Result<Value> {
    docs(relative)?
        .into_iter()
        .find(|d| d["kind"] == kind)
        .ok_or_else(|| anyhow!("no {kind} in {relative}"))
}

#[test]
fn plugin_config_is_valid_and_polls_the_controller_service() -> Result<()> {
    let plugin = one("base/wasmplugin.yaml", "WasmPlugin")?;
    let config = manifests::plugin_config(&plugin)?;
    let controller = config.controller.context("pluginConfig.controller")?;

    let service = one("base/controller-service.yaml", "Service")?;
    let port = service["spec"]["ports"][0]["port"]
        .as_u64()
        .context("service port")?;
    let host = format!(
        "{}.{}.svc.cluster.local",
        service["metadata"]["name"]
            .as_str()
            .context("service name")?,
        service["metadata"]["namespace"]
            .as_str()
            .context("service namespace")?
    );
    // Istio's name for the outbound cluster of a Service port.
    assert_eq!(controller.cluster, format!("outbound|{port}||{host}"));
    assert_eq!(controller.authority, host);

    let routing = docs("examples/checkout-routing.yaml")?;
    let vs = routing
        .iter()
        .find(|d| d["kind"] == "VirtualService")
        .context("VirtualService")?;
    let header = &config.rollouts[0].route_header;
    assert_eq!(
        vs["spec"]["http"][0]["match"][0]["headers"][header]["exact"], "canary",
        "the VirtualService must match the filter's {header}"
    );
    Ok(())
}

#[test]
fn rollout_specs_in_the_configmap_are_valid_and_match_the_plugin() -> Result<()> {
    let map = one("base/controller-configmap.yaml", "ConfigMap")?;
    let data = map["data"].as_object().context("data")?;
    let plugin = one("base/wasmplugin.yaml", "WasmPlugin")?;
    let in_plugin: Vec<&str> = (plugin["spec"]["pluginConfig"]["rollouts"].as_array())
        .context("pluginConfig.rollouts")?
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(!data.is_empty());
    for (key, yaml) in data {
        assert!(
            key.ends_with(".yaml"),
            "--spec-dir reads *.yaml keys only: {key}"
        );
        let yaml = yaml.as_str().with_context(|| format!("data.{key}"))?;
        let spec = RolloutSpec::from_yaml(yaml).map_err(|e| anyhow!("data.{key}: {e}"))?;
        assert!(
            in_plugin.contains(&spec.name.as_str()),
            "the plugin's initial rollouts must include {:?}, which the controller drives",
            spec.name
        );
    }
    // The checkout spec's releases are the ones the example's subsets select
    // (docs/operations.md).
    let checkout = data.get("checkout.yaml").and_then(|y| y.as_str());
    let spec = RolloutSpec::from_yaml(checkout.context("data.checkout.yaml")?)
        .map_err(|e| anyhow!("{e}"))?;
    let routing = docs("examples/checkout-routing.yaml")?;
    let rule = routing
        .iter()
        .find(|d| d["kind"] == "DestinationRule")
        .context("DestinationRule")?;
    let subset_release = |name: &str| {
        rule["spec"]["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == name)
            .and_then(|s| s["labels"]["release"].as_str())
            .map(String::from)
    };
    assert_eq!(subset_release("canary"), spec.release, "canary subset");
    assert_eq!(
        subset_release("stable"),
        spec.stable_release,
        "stable subset"
    );
    Ok(())
}

/// One writer whose state survives a rescheduled pod: a single-replica StatefulSet whose
/// `--state-dir` is a mounted PersistentVolumeClaim (not an emptyDir), and whose `--spec-dir`
/// is the rollout ConfigMap, mounted read-only.
#[test]
fn controller_state_lives_on_a_claim_of_a_single_writer() -> Result<()> {
    let set = one("base/controller-statefulset.yaml", "StatefulSet")?;
    let spec = &set["spec"];
    assert_eq!(spec["replicas"], 1, "one writer");
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = (container["args"].as_array().context("args")?.iter())
        .filter_map(Value::as_str)
        .collect();
    let arg = |flag: &str| {
        let at = args.iter().position(|a| *a == flag);
        at.and_then(|i| args.get(i + 1).copied())
            .ok_or_else(|| anyhow!("{flag} in {args:?}"))
    };
    let mounts = container["volumeMounts"]
        .as_array()
        .context("volumeMounts")?;
    let mounted = |path: &str| {
        mounts
            .iter()
            .find(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("\0")))
            .map(|m| (m["name"].clone(), m["readOnly"].as_bool().unwrap_or(false)))
            .ok_or_else(|| anyhow!("{path} is not on a mounted volume"))
    };
    let (state, state_read_only) = mounted(arg("--state-dir")?)?;
    assert!(!state_read_only, "the state volume must be writable");
    let claims = spec["volumeClaimTemplates"].as_array().context("claims")?;
    let claim = (claims.iter())
        .find(|c| c["metadata"]["name"] == state)
        .ok_or_else(|| anyhow!("--state-dir is on {state}, which is not a claim"))?;
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");
    let volumes = pod["volumes"].as_array().context("volumes")?;
    assert!(
        !volumes.iter().any(|v| v["name"] == state),
        "the claim must not be shadowed by a pod volume (an emptyDir loses the stage)"
    );
    let spec_dir = arg("--spec-dir")?;
    let (spec_volume, spec_read_only) = mounted(spec_dir)?;
    assert!(spec_read_only);
    let config_map = (volumes.iter())
        .find(|v| v["name"] == spec_volume)
        .and_then(|v| v["configMap"]["name"].as_str())
        .context("the spec volume is a ConfigMap")?;
    let map = one("base/controller-configmap.yaml", "ConfigMap")?;
    assert_eq!(map["metadata"]["name"], config_map);
    let mount = mounts
        .iter()
        .find(|m| m["name"] == spec_volume)
        .and_then(|m| m["mountPath"].as_str());
    assert_eq!(
        mount,
        Some(spec_dir),
        "--spec-dir is the map's mount itself"
    );
    Ok(())
}

/// The bootstrap override of the stats ConfigMap, as Envoy reads it.
fn stats_bootstrap() -> Result<Value> {
    let map = one("base/envoy-stats-bootstrap.yaml", "ConfigMap")?;
    Ok(serde_json::from_str(
        map["data"]["custom_bootstrap.json"]
            .as_str()
            .context("custom_bootstrap.json")?,
    )?)
}

/// The contract's tag rules (`rollout`, `version`, `tier` labels) and the fine buckets for the
/// filter's histograms, as the test bootstraps carry them.
#[test]
fn stats_bootstrap_carries_the_contract_stats_config() -> Result<()> {
    let bootstrap = stats_bootstrap()?;
    check_stats_config(&bootstrap["stats_config"])?;
    check_stats_config(&canary_e2e::bootstrap::stats_config())
}

#[test]
fn traffic_extension_alternative_carries_the_same_plugin_config() -> Result<()> {
    let plugin = one("base/wasmplugin.yaml", "WasmPlugin")?;
    let extension = one("alternatives/trafficextension.yaml", "TrafficExtension")?;
    assert_eq!(
        extension["spec"]["wasm"]["pluginConfig"], plugin["spec"]["pluginConfig"],
        "the two ways of attaching the filter must configure it the same"
    );
    assert_eq!(
        extension["spec"]["wasm"]["failStrategy"],
        plugin["spec"]["failStrategy"]
    );
    Ok(())
}

#[test]
fn mesh_config_keeps_the_filter_stats() -> Result<()> {
    let map = one("examples/mesh-config-stats.yaml", "ConfigMap")?;
    let mesh: Value = serde_yaml_ng::from_str(map["data"]["mesh"].as_str().context("data.mesh")?)?;
    let prefixes = &mesh["defaultConfig"]["proxyStatsMatcher"]["inclusionPrefixes"];
    // Every stat the filter defines starts with this prefix (the contract's stat names).
    let prefix = prefixes[0].as_str().context("inclusionPrefixes[0]")?;
    let name = format!(
        "{}{}",
        canary_contract::stats::ENVOY_WASM_PREFIX,
        canary_contract::stats::stat_name(
            canary_contract::stats::Metric::RqTotal,
            "checkout",
            canary_contract::Version::Canary
        )
    );
    assert!(name.starts_with(prefix), "{name} is not kept by {prefix}");
    Ok(())
}
