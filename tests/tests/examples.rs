//! examples/envoy/ works as shipped (issue 19's quick start): its bootstrap and rollout spec
//! agree with each other and with the contract, and started for real — with only the ports
//! and the module path changed — the controller moves Envoy to the first stage's weight,
//! users are split in proportion and stay put, and the controller counts both versions'
//! requests from this Envoy's stats.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use canary_contract::{FilterConfig, Version};
use canary_controller::spec::RolloutSpec;
use canary_e2e::bootstrap::check_stats_config;
use canary_e2e::canaryctl::{free_port, Canaryctl, CtlOptions};
use canary_e2e::client::{http_client, send_all, Probe};
use canary_e2e::controller::wait_status;
use canary_e2e::envoy::{self, Envoy, EnvoyOptions};
use canary_e2e::load::Load;
use canary_e2e::paths::{filter_wasm, project_root};
use canary_e2e::upstream::{Upstream, UpstreamSpec};
use canary_e2e::wait::eventually;
use serde_json::Value;

/// The ports the example uses, each written once as `port_value: N` in envoy.yaml.
const LISTENER: u16 = 10000;
const ADMIN: u16 = 9901;
const STABLE: u16 = 8081;
const CANARY: u16 = 8082;
const CONTROLLER: u16 = 8080;
/// The module path in envoy.yaml, relative to the checkout root.
const WASM_PATH: &str = "target/wasm/canary_filter.wasm";
/// The stats source in rollout.yaml.
const ADMIN_URL: &str = "http://127.0.0.1:9901";

fn example(file: &str) -> Result<String> {
    let path = project_root().join("examples/envoy").join(file);
    std::fs::read_to_string(&path).with_context(|| path.display().to_string())
}

/// `text` with its one occurrence of `from` replaced; an error if it has none or several,
/// so a changed example fails here, loudly, rather than starting on the wrong ports.
fn replace_once(text: &str, file: &str, from: &str, to: &str) -> Result<String> {
    let n = text.matches(from).count();
    ensure!(n == 1, "{file}: expected `{from}` once, found it {n} times");
    Ok(text.replacen(from, to, 1))
}

/// The filter configuration in the bootstrap (the one Wasm filter's), as the filter loads it.
fn filter_config(bootstrap: &Value) -> Result<FilterConfig> {
    let filters = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"];
    let wasm = (filters.as_array().into_iter().flatten())
        .find(|f| f["name"] == "envoy.filters.http.wasm")
        .context("envoy.yaml: no envoy.filters.http.wasm filter")?;
    let json = wasm["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .context("envoy.yaml: the filter's configuration is not a StringValue")?;
    FilterConfig::from_json(json.as_bytes()).map_err(|e| anyhow::anyhow!("envoy.yaml: {e}"))
}

#[test]
fn the_example_bootstrap_and_spec_agree() -> Result<()> {
    let bootstrap: Value = serde_yaml_ng::from_str(&example("envoy.yaml")?)?;
    let spec = RolloutSpec::from_yaml(&example("rollout.yaml")?)?;
    let config = filter_config(&bootstrap)?;
    let rollout = config.rollouts.first().context("envoy.yaml: no rollout")?;
    assert_eq!(
        rollout.name, spec.name,
        "the filter's rollout is the spec's"
    );
    assert_eq!(
        rollout.weight_bp, 0,
        "until the controller answers, everyone on stable"
    );
    let served = spec
        .rollout_config(0)
        .context("the spec's rollout configuration")?;
    assert_eq!(
        *rollout, served,
        "the initial rollout has the spec's filter options"
    );
    let controller = config
        .controller
        .context("envoy.yaml: no controller block")?;
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array()
        .context("clusters")?;
    let cluster = |name: &str| clusters.iter().find(|c| c["name"] == name);
    let port = |c: &Value| {
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"]["port_value"]
            .as_u64()
    };
    let polled = cluster(&controller.cluster).context("the controller's cluster")?;
    assert_eq!(
        port(polled),
        Some(u64::from(CONTROLLER)),
        "canaryctl's default --listen"
    );
    for name in ["stable", "canary"] {
        assert!(cluster(name).is_some(), "cluster {name}");
    }
    check_stats_config(&bootstrap["stats_config"]).context("envoy.yaml: stats_config")?;
    assert_eq!(
        spec.sources.envoy_admin,
        [ADMIN_URL],
        "the spec reads this Envoy"
    );
    assert_eq!(
        bootstrap["admin"]["address"]["socket_address"]["port_value"],
        ADMIN
    );
    Ok(())
}

/// The example's files with free ports and this checkout's module, and the ports (in the
/// order listener, admin, stable, canary, controller).
struct Substituted {
    envoy_yaml: String,
    rollout_yaml: String,
    ports: [u16; 5],
}

fn substituted() -> Result<Substituted> {
    let mut envoy_yaml = example("envoy.yaml")?;
    let mut ports = [0; 5];
    for (i, from) in [LISTENER, ADMIN, STABLE, CANARY, CONTROLLER]
        .into_iter()
        .enumerate()
    {
        // Five distinct ports: a free port is not reserved until its process binds it.
        ports[i] = loop {
            let port = free_port()?;
            if !ports.contains(&port) {
                break port;
            }
        };
        // The whole number only: `port_value: 8080` is not `port_value: 80800`.
        let pattern = regex::Regex::new(&format!(r"\bport_value: {from}\b"))?;
        let n = pattern.find_iter(&envoy_yaml).count();
        ensure!(
            n == 1,
            "envoy.yaml: expected `port_value: {from}` once, found it {n} times"
        );
        let to = format!("port_value: {}", ports[i]);
        envoy_yaml = pattern.replace(&envoy_yaml, to.as_str()).into_owned();
    }
    let wasm = filter_wasm()?.display().to_string();
    envoy_yaml = replace_once(&envoy_yaml, "envoy.yaml", WASM_PATH, &wasm)?;
    let admin = format!("http://127.0.0.1:{}", ports[1]);
    let rollout_yaml = replace_once(&example("rollout.yaml")?, "rollout.yaml", ADMIN_URL, &admin)?;
    Ok(Substituted {
        envoy_yaml,
        rollout_yaml,
        ports,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_splits_users_at_the_first_stage_and_the_controller_reads_its_stats(
) -> Result<()> {
    let began = Instant::now();
    let _slot = envoy::exclusive().await;
    let files = substituted()?;
    let [listener, _, stable_port, canary_port, controller_port] = files.ports;
    let addr = |port: u16| -> Result<SocketAddr> { Ok(format!("127.0.0.1:{port}").parse()?) };
    let _stable = Upstream::start_on(addr(stable_port)?, UpstreamSpec::new("stable")).await?;
    let _canary = Upstream::start_on(addr(canary_port)?, UpstreamSpec::new("canary")).await?;
    let state = tempfile::Builder::new()
        .prefix("example-state-")
        .tempdir()?;
    let ctl = Canaryctl::start_with(
        &files.rollout_yaml,
        addr(controller_port)?,
        state.path(),
        CtlOptions::default(),
    )
    .await?;
    let options = EnvoyOptions {
        concurrency: 2,
        name: "example".to_string(),
        ..Default::default()
    };
    let envoy = Envoy::start_yaml(&files.envoy_yaml, options).await?;
    let base = format!("http://127.0.0.1:{listener}");

    let spec = RolloutSpec::from_yaml(&files.rollout_yaml)?;
    let weight = spec.stages[0].weight_bp();
    let rollout = spec
        .rollout_config(weight)
        .context("the first stage's rollout")?;
    let users: Vec<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
    let client = http_client(16)?;
    let probes: Vec<Probe> = users.iter().map(|u| Probe::user(&base, "/", u)).collect();
    // The controller's first stage reaches the filter: every user where the contract puts it.
    let answers = eventually(
        "the first stage's weight in Envoy",
        Duration::from_secs(60),
        || send_all(&client, &probes, 16),
        |answers| {
            users
                .iter()
                .zip(answers.iter())
                .all(|(u, a)| a.served_by.as_deref() == Some(rollout.version_for_key(u).as_str()))
        },
    )
    .await?;
    let on_canary = answers
        .iter()
        .filter(|a| a.served_by.as_deref() == Some("canary"))
        .count();
    let share = on_canary as f64 / users.len() as f64;
    let want = f64::from(weight) / 10_000.0;
    assert!(
        (share - want).abs() < 0.03,
        "{on_canary} of {} users on canary, the stage is at {want}",
        users.len()
    );
    // Sticky: the same users, asked again, get the same versions.
    for _ in 0..2 {
        let again = send_all(&client, &probes[..300], 16).await?;
        for ((user, first), later) in users.iter().zip(&answers).zip(&again) {
            assert_eq!(first.served_by, later.served_by, "{user} moved");
        }
    }

    // The controller judges both versions from this Envoy's stats.
    let load = Load::start(vec![base.clone()], 2_000, 4, 50);
    let status = wait_status(
        &ctl,
        "both versions' requests counted",
        Duration::from_secs(90),
        |s| {
            let counted = |v: Version| s["stage_requests"][v.as_str()].as_u64().unwrap_or(0);
            counted(Version::Canary) >= 20 && counted(Version::Stable) >= 100
        },
    )
    .await;
    load.stop().await;
    let status = status?;
    assert_eq!(status["rollout"], spec.name.as_str());
    assert_eq!(status["weight_bp"], weight, "{status}");
    let (canary, stable) = (
        status["stage_requests"]["canary"].as_f64().unwrap_or(0.0),
        status["stage_requests"]["stable"].as_f64().unwrap_or(0.0),
    );
    let counted_share = canary / (canary + stable);
    assert!(
        (0.03..0.25).contains(&counted_share),
        "canary's share of the counted requests is {counted_share}: {}",
        status["stage_requests"]
    );
    let totals = &status["stage_totals"][0];
    assert!(totals["canary_requests"].as_u64() > Some(0), "{totals}");
    assert!(totals["stable_requests"].as_u64() > Some(0), "{totals}");
    let text = ctl.status_text()?;
    let stage_line = format!("stage 1 at {}%: ", f64::from(weight) / 100.0);
    if !text.contains(&format!("rollout {}", spec.name)) || !text.contains(&stage_line) {
        bail!("canaryctl status printed: {text}");
    }
    drop(envoy);
    eprintln!(
        "example: {on_canary}/{} users on canary at {weight} bp; counted {}; {:.1} s",
        users.len(),
        status["stage_requests"],
        began.elapsed().as_secs_f64()
    );
    Ok(())
}
