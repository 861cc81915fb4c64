//! The controller reading the filter's stats through a real Prometheus server (Debian's
//! `prometheus`) scraping two Envoys, as in a mesh where admin ports are not reachable.

use std::time::{Duration, Instant};

use anyhow::Result;
use canary_controller::judge::{judge, Evidence};
use canary_controller::spec::RolloutSpec;
use canary_controller::stats::{
    parse_envoy_prometheus, parse_prometheus_query, prometheus_selector,
};
use canary_e2e::controller::{upstream_pair, wait_status, ControlledRig};
use canary_e2e::envoy;
use canary_e2e::load::{self, Load};
use canary_e2e::prometheus::Prometheus;
use canary_e2e::wait::eventually;

const ROLLOUT: &str = "shop";
const POLL_MS: u64 = 500;
const SCRAPE: Duration = Duration::from_secs(1);

async fn rig_with_prometheus(
    stable_error_bp: u32,
    canary_error_bp: u32,
) -> Result<(ControlledRig, Prometheus)> {
    let (stable, canary) = upstream_pair(stable_error_bp, canary_error_bp);
    let rig = ControlledRig::start(ROLLOUT, 2, POLL_MS, stable, canary).await?;
    let admins: Vec<_> = rig.envoys.iter().map(|e| e.admin_addr()).collect();
    let prometheus = Prometheus::start(&admins, SCRAPE).await?;
    Ok((rig, prometheus))
}

fn sources(prometheus: &Prometheus) -> String {
    format!(
        "sources: {{prometheus: {{url: \"{}\", lag: 2s}}}}\n",
        prometheus.url()
    )
}

/// The rollback scenario, judged from Prometheus instead of the admin endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_source_rolls_back_an_error_spike() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (rig, prometheus) = rig_with_prometheus(50, 0).await?;
    let spec = "analysis: {interval: 1s, failure_limit: 3, min_window_requests: 30}\n\
                stages:\n  - {weight_pct: 20, hold: 1h, min_requests: 100}\n  - {weight_pct: 100}\n";
    let ctl = rig
        .start_controller_with_sources(&sources(&prometheus), spec)
        .await?;
    let load = Load::start(rig.bases.clone(), 5_000, 8, 100);
    let watched = load::canary_users(ROLLOUT, 2_000, 20);
    let passed = wait_status(
        &ctl,
        "a passing analysis from Prometheus data",
        Duration::from_secs(40),
        |s| {
            s["verdicts"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v["verdict"]["outcome"] == "pass"))
        },
    )
    .await;
    let Ok(_) = passed else {
        load.stop().await;
        return passed.map(|_| ());
    };
    rig.canary.set_error_rate_bp(1_000);
    let fault = Instant::now();
    let result = rig
        .wait_for_weight(0, &watched, Duration::from_secs(30))
        .await;
    load.stop().await;
    result?;
    let status = ctl.status().await?;
    assert_eq!(status["phase"], "rolled_back", "{status}");
    eprintln!(
        "prometheus source: fault to weight 0 on both Envoys in {:.2}s (scrape 1s, lag 2s, interval 1s)",
        fault.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The promotion scenario, judged from Prometheus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_source_promotes_a_healthy_canary() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (rig, prometheus) = rig_with_prometheus(50, 50).await?;
    let spec = "analysis: {interval: 1s, failure_limit: 3, min_window_requests: 30}\n\
                stages:\n  - {weight_pct: 10, hold: 2s, min_requests: 100}\n  - {weight_pct: 50, hold: 2s, min_requests: 100}\n  - {weight_pct: 100}\n";
    let ctl = rig
        .start_controller_with_sources(&sources(&prometheus), spec)
        .await?;
    let load = Load::start(rig.bases.clone(), 3_000, 8, 100);
    let status = wait_status(&ctl, "promotion", Duration::from_secs(120), |s| {
        s["phase"] == "promoted" || s["phase"] == "rolled_back"
    })
    .await;
    load.stop().await;
    let status = status?;
    assert_eq!(status["phase"], "promoted", "{status}\n{}", ctl.log());
    Ok(())
}

/// On the same traffic, Prometheus and the admin endpoints give the same counts per Envoy,
/// and so the same verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_and_admin_sources_agree() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (rig, prometheus) = rig_with_prometheus(100, 300).await?;
    let ctl = rig
        .start_controller("stages:\n  - {weight_pct: 30, hold: 1h}\n  - {weight_pct: 100}\n")
        .await?;
    let users = load::canary_users(ROLLOUT, 3_000, 20);
    rig.wait_for_weight(3_000, &users, Duration::from_secs(15))
        .await?;
    let load = Load::start(rig.bases.clone(), 3_000, 8, 100);
    tokio::time::sleep(Duration::from_secs(4)).await;
    load.stop().await;
    drop(ctl);

    let http = reqwest::Client::new();
    let read_admin = || async {
        let mut per_envoy = std::collections::BTreeMap::new();
        for e in &rig.envoys {
            let text = e.admin_text("/stats/prometheus").await?;
            per_envoy.insert(
                e.admin_addr().to_string(),
                parse_envoy_prometheus(&text, ROLLOUT)?,
            );
        }
        anyhow::Ok(per_envoy)
    };
    let read_prometheus = || async {
        let body = http
            .get(format!("{}/api/v1/query", prometheus.url()))
            .query(&[("query", prometheus_selector(ROLLOUT))])
            .send()
            .await?
            .bytes()
            .await?;
        anyhow::Ok(parse_prometheus_query(&body, ROLLOUT)?)
    };
    // Quiet now: wait until the admin side is flushed and Prometheus has scraped it. The
    // latency buckets are flushed with the other counters, every 250 ms by each worker: a
    // reading whose counts agree may still miss a worker's last flush, so it must also stay
    // the same over two flushes.
    let read_admin_twice = || async {
        let first = read_admin().await?;
        tokio::time::sleep(Duration::from_millis(600)).await;
        anyhow::Ok((first, read_admin().await?))
    };
    let (admin, _) = eventually(
        "admin counters flushed",
        Duration::from_secs(10),
        read_admin_twice,
        |(first, again)| {
            first == again
                && first.values().all(|s| {
                    s.canary.duration.count == s.canary.requests
                        && s.stable.duration.count == s.stable.requests
                })
        },
    )
    .await?;
    let from_prometheus = eventually(
        "Prometheus caught up with the admin endpoints",
        Duration::from_secs(20),
        read_prometheus,
        |m| *m == admin,
    )
    .await?;
    let total: u64 = admin
        .values()
        .map(|s| s.canary.requests + s.stable.requests)
        .sum();
    assert!(total > 1_000, "only {total} requests");
    let sum = |m: &std::collections::BTreeMap<String, canary_controller::stats::RolloutStats>| {
        m.values().fold(
            Default::default(),
            |acc: canary_controller::stats::RolloutStats, s| acc.plus(s),
        )
    };
    let spec =
        RolloutSpec::from_yaml("name: shop\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\n")?;
    let v_admin = judge(&sum(&admin), &Evidence::default(), &spec);
    let v_prometheus = judge(&sum(&from_prometheus), &Evidence::default(), &spec);
    assert_eq!(v_admin, v_prometheus);
    eprintln!("{total} requests: both sources say {}", v_admin.summary());
    Ok(())
}
