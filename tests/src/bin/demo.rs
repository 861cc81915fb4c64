//! `make demo`: real Envoy with the canary filter in front of two upstreams, a few thousand
//! simulated users at a 10% canary weight, live progress, then the observed split and the
//! per-version stats as Envoy reports them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use canary_contract::{FilterConfig, RolloutConfig, Version};
use canary_e2e::client::{http_client, send_all, Probe};
use canary_e2e::prom;
use canary_e2e::rig::{CanaryRig, RigOptions};
use canary_e2e::upstream::UpstreamSpec;
use canary_e2e::wait::eventually;

const USERS: usize = 3_000;
const REQUESTS_PER_USER: usize = 5;
const WEIGHT_BP: u32 = 1_000;
const BATCH: usize = 1_500;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rollout = RolloutConfig::new("checkout", WEIGHT_BP);
    let config = FilterConfig::new(vec![rollout.clone()]);
    // The canary is a little worse than stable, as a canary often is.
    let mut canary = UpstreamSpec::new("canary");
    canary.error_rate_bp = 300;
    canary.delay = Duration::from_millis(3);
    let rig = CanaryRig::start(
        &config,
        RigOptions {
            concurrency: 2,
            canary,
            ..RigOptions::default()
        },
    )
    .await?;
    let envoy = rig.envoy();
    println!("wasm-canary demo");
    println!(
        "  Envoy listener {}   admin http://{}  (try /stats?filter=canary_ and /stats/prometheus)",
        rig.base(),
        envoy.admin_addr()
    );
    println!(
        "  rollout `checkout`: canary weight {}% by FNV-1a hash of x-user-id; {} users x {} requests\n",
        f64::from(WEIGHT_BP) / 100.0,
        USERS,
        REQUESTS_PER_USER
    );

    let users: Vec<String> = (0..USERS).map(|i| format!("demo-user-{i:04}")).collect();
    let probes: Vec<Probe> = (0..REQUESTS_PER_USER)
        .flat_map(|_| {
            users
                .iter()
                .map(|u| Probe::user(rig.base(), "/checkout", u))
        })
        .collect();
    let client = http_client(32)?;
    let started = Instant::now();
    let mut versions_by_user: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut by_version: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (batch_index, batch) in probes.chunks(BATCH).enumerate() {
        let answers = send_all(&client, batch, 32).await?;
        for (k, answer) in answers.iter().enumerate() {
            let user = users[(batch_index * BATCH + k) % USERS].as_str();
            let version = answer.served_by.clone().unwrap_or_else(|| "none".into());
            let entry = by_version.entry(version.clone()).or_default();
            entry.0 += 1;
            if answer.status >= 500 {
                entry.1 += 1;
            }
            versions_by_user.entry(user).or_default().insert(version);
        }
        let sent = ((batch_index + 1) * BATCH).min(probes.len());
        let canary = by_version.get("canary").map_or(0, |v| v.0);
        println!(
            "  [{:>5.1}s] {sent:>6}/{} requests   canary share so far {:.2}%",
            started.elapsed().as_secs_f64(),
            probes.len(),
            100.0 * canary as f64 / sent as f64
        );
    }

    let canary_users = versions_by_user
        .values()
        .filter(|v| v.contains("canary"))
        .count();
    let flapping = versions_by_user.values().filter(|v| v.len() > 1).count();
    let predicted = users
        .iter()
        .filter(|u| rollout.version_for_key(u) == Version::Canary)
        .count();
    println!("\nObserved by the simulated users");
    println!(
        "  users on canary: {canary_users} of {USERS} ({:.2}%), contract predicts {predicted}",
        100.0 * canary_users as f64 / USERS as f64
    );
    println!("  users who saw both versions: {flapping}");
    for (version, (requests, errors)) in &by_version {
        println!("  {version:>6}: {requests:>6} requests, {errors:>4} 5xx");
    }

    // Counters arrive on the filter's flush timer, histograms at Envoy's stats flush.
    let total = probes.len() as f64;
    let labels = |v: Version| [("rollout", "checkout"), ("version", v.as_str())];
    let samples = eventually(
        "stats at the admin endpoint",
        Duration::from_secs(20),
        || envoy.prometheus(),
        |s| {
            Version::ALL
                .iter()
                .map(|v| prom::value(s, "canary_rq_time_ms_count", &labels(*v)).unwrap_or(0.0))
                .sum::<f64>()
                >= total
        },
    )
    .await?;
    println!("\nReported by Envoy (/stats/prometheus, labels from the bootstrap's tag extraction)");
    println!(
        "  {:>7} {:>8} {:>7} {:>5} {:>5} {:>6} {:>12}",
        "version", "requests", "2xx", "4xx", "5xx", "reset", "mean ms"
    );
    for version in Version::ALL {
        let get = |m: &str| prom::value(&samples, m, &labels(version)).unwrap_or(0.0);
        let count = get("canary_rq_time_ms_count");
        let mean = if count > 0.0 {
            get("canary_rq_time_ms_sum") / count
        } else {
            0.0
        };
        println!(
            "  {:>7} {:>8} {:>7} {:>5} {:>5} {:>6} {:>12.2}",
            version.as_str(),
            get("canary_rq_total"),
            get("canary_rq_2xx"),
            get("canary_rq_4xx"),
            get("canary_rq_5xx"),
            get("canary_rq_reset"),
            mean
        );
    }
    println!("\nThe controller (next issue) turns this into a rollout: ramp, judge, roll back.");
    Ok(())
}
