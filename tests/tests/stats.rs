//! Issue test 7: after a known load, the per-version stats at Envoy's admin endpoint equal
//! what the test sent, exactly, with `rollout` and `version` as Prometheus labels.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use canary_contract::stats::{stat_name, Metric, ENVOY_WASM_PREFIX};
use canary_contract::{FilterConfig, RolloutConfig, Version};
use canary_e2e::bootstrap::FilterBuild;
use canary_e2e::client::{http_client, send_all, Probe};
use canary_e2e::envoy;
use canary_e2e::prom;
use canary_e2e::rig::{CanaryRig, RigOptions};
use canary_e2e::upstream::UpstreamSpec;
use canary_e2e::wait::eventually;

const USERS: usize = 1_200;
const CANARY_ERROR_RATE_BP: u32 = 2_000;
const SLOW_MS: u64 = 25;

/// What one request asks the upstream to do, by user index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Default,
    NotFound,
    Redirect,
    Reset,
    Slow,
}

fn plan(i: usize, version: Version) -> Plan {
    match (i % 10, version) {
        (3, _) => Plan::NotFound,
        (4, _) => Plan::Redirect,
        (5, Version::Canary) => Plan::Reset,
        (6, _) => Plan::Slow,
        _ => Plan::Default,
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Expected {
    total: u64,
    by_metric: BTreeMap<&'static str, u64>,
    slow: u64,
}

async fn per_version_stats_equal_the_load_sent(build: FilterBuild) -> Result<()> {
    let _slot = envoy::exclusive().await;
    let rollout = RolloutConfig::new("shop", 3_000);
    let config = FilterConfig::new(vec![rollout.clone()]);
    let mut canary = UpstreamSpec::new("canary");
    canary.error_rate_bp = CANARY_ERROR_RATE_BP;
    let rig = CanaryRig::start(
        &config,
        RigOptions {
            concurrency: 2,
            canary,
            ..RigOptions::with_build(build)
        },
    )
    .await?;

    let users: Vec<String> = (0..USERS).map(|i| format!("shopper-{i}")).collect();
    let mut expected: BTreeMap<Version, Expected> = BTreeMap::new();
    let mut canary_default = 0u64;
    let probes: Vec<Probe> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let version = rollout.version_for_key(user);
            let e = expected.entry(version).or_default();
            e.total += 1;
            let probe = Probe::user(rig.base(), "/cart", user);
            let (probe, class) = match plan(i, version) {
                Plan::NotFound => (probe.header("x-upstream-status", "404"), Metric::Rq4xx),
                Plan::Redirect => (probe.header("x-upstream-status", "302"), Metric::Rq3xx),
                Plan::Reset => {
                    // Envoy answers a reset before response headers with its own 503.
                    *e.by_metric.entry(Metric::RqReset.name()).or_default() += 1;
                    (probe.header("x-upstream-reset", "1"), Metric::Rq5xx)
                }
                Plan::Slow => {
                    e.slow += 1;
                    if version == Version::Canary {
                        canary_default += 1;
                    }
                    let probe = probe.header("x-upstream-delay-ms", SLOW_MS.to_string());
                    (probe, Metric::Rq2xx)
                }
                Plan::Default => {
                    if version == Version::Canary {
                        canary_default += 1;
                    }
                    (probe, Metric::Rq2xx)
                }
            };
            *e.by_metric.entry(class.name()).or_default() += 1;
            probe
        })
        .collect();
    // The canary upstream fails exactly this many of the requests it answers by default;
    // which ones depends on arrival order, so move them from 2xx to 5xx in bulk.
    let canary_5xx = canary_default * u64::from(CANARY_ERROR_RATE_BP) / 10_000;
    {
        let e = expected.entry(Version::Canary).or_default();
        *e.by_metric.entry(Metric::Rq2xx.name()).or_default() -= canary_5xx;
        *e.by_metric.entry(Metric::Rq5xx.name()).or_default() += canary_5xx;
    }

    let client = http_client(16)?;
    let answers = send_all(&client, &probes, 16).await?;
    // What the client saw agrees with the plan (so the plan, not luck, made the numbers).
    let mut seen: BTreeMap<(Version, u16), u64> = BTreeMap::new();
    for (user, answer) in users.iter().zip(&answers) {
        *seen
            .entry((rollout.version_for_key(user), answer.status / 100))
            .or_default() += 1;
    }
    for version in Version::ALL {
        let e = &expected[&version];
        for (class, metric) in [
            (2, Metric::Rq2xx),
            (3, Metric::Rq3xx),
            (4, Metric::Rq4xx),
            (5, Metric::Rq5xx),
        ] {
            let want = e.by_metric.get(metric.name()).copied().unwrap_or(0);
            let got = seen.get(&(version, class)).copied().unwrap_or(0);
            assert_eq!(
                got, want,
                "client saw {got} {class}xx from {version:?}, planned {want}"
            );
        }
    }

    // Counters reach Envoy on the filter's flush timer and histograms at Envoy's stats
    // flush, both after the responses: wait until the totals are in, then check everything.
    let envoy = rig.envoy();
    let labels = |version: Version| [("rollout", "shop"), ("version", version.as_str())];
    let samples = eventually(
        "totals at /stats/prometheus",
        Duration::from_secs(30),
        || envoy.prometheus(),
        |samples| {
            Version::ALL.iter().all(|v| {
                let total = Some(expected[v].total as f64);
                ["canary_rq_total", "canary_rq_time_ms_count"]
                    .iter()
                    .all(|metric| prom::value(samples, metric, &labels(*v)) == total)
            })
        },
    )
    .await?;
    // Give a late flush the chance to show double counting.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let samples = {
        let again = envoy.prometheus().await?;
        assert_eq!(
            prom::value(&again, "canary_rq_total", &labels(Version::Canary)),
            prom::value(&samples, "canary_rq_total", &labels(Version::Canary)),
        );
        again
    };
    for version in Version::ALL {
        let e = &expected[&version];
        let value = |metric: &str| prom::value(&samples, metric, &labels(version));
        assert_eq!(
            value("canary_rq_total"),
            Some(e.total as f64),
            "{version:?} total"
        );
        for metric in [
            Metric::Rq2xx,
            Metric::Rq3xx,
            Metric::Rq4xx,
            Metric::Rq5xx,
            Metric::RqReset,
        ] {
            let want = e.by_metric.get(metric.name()).copied().unwrap_or(0) as f64;
            assert_eq!(
                value(metric.name()),
                Some(want),
                "{version:?} {}",
                metric.name()
            );
        }
        // Every request got response headers (a reset gets Envoy's local 503).
        for histogram in ["canary_rq_time_ms_count", "canary_rq_header_time_ms_count"] {
            assert_eq!(
                value(histogram),
                Some(e.total as f64),
                "{version:?} {histogram}"
            );
        }
        // Durations are in milliseconds: the slow requests alone add SLOW_MS each.
        let sum = value("canary_rq_time_ms_sum").unwrap_or(0.0);
        let floor = (e.slow * SLOW_MS) as f64;
        assert!(
            sum >= floor,
            "{version:?}: rq_time_ms_sum {sum} < {floor} (slow requests)"
        );
        assert!(
            sum < floor + 50.0 * e.total as f64,
            "{version:?}: rq_time_ms_sum {sum} too big"
        );
        // The same counter under its Envoy name at /stats.
        let name = format!(
            "{ENVOY_WASM_PREFIX}{}",
            stat_name(Metric::RqTotal, "shop", version)
        );
        assert_eq!(envoy.counter(&name).await?, Some(e.total), "{name}");
    }
    eprintln!("expected per version: {expected:?}");
    Ok(())
}

canary_e2e::for_both_builds!(per_version_stats_equal_the_load_sent,);
