//! Issue test 7: after a known load, the per-version stats at Envoy's admin endpoint equal
//! what the test sent, exactly, with `rollout` and `version` (and a latency bucket's
//! `upper_us`) as Prometheus labels.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use canary_contract::stats::{
    bucket_stat_name, bucket_upper_ms, latency_buckets_us, stat_name, Metric, BUCKET_LABEL,
    BUCKET_OVERFLOW, ENVOY_WASM_PREFIX,
};
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

    // Counters and latency buckets reach Envoy on the filter's flush timer, after the
    // responses: wait until the totals are in, then check everything.
    let envoy = rig.envoy();
    let labels = |version: Version| [("rollout", "shop"), ("version", version.as_str())];
    let samples = eventually(
        "totals at /stats/prometheus",
        Duration::from_secs(30),
        || envoy.prometheus(),
        |samples| {
            Version::ALL.iter().all(|v| {
                let total = Some(expected[v].total as f64);
                prom::value(samples, "canary_rq_total", &labels(*v)) == total
                    && Some(latency(samples, &labels(*v)).1) == total
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
        // Every request's duration is counted once, in one bucket: the buckets are exactly
        // the contract's bounds and the overflow, and the slow requests are in buckets at or
        // above SLOW_MS.
        let (buckets, count) = latency(&samples, &labels(version));
        assert_eq!(count, e.total as f64, "{version:?} latency samples");
        let bounds_us: Vec<String> = (latency_buckets_us().iter().map(u64::to_string))
            .chain([BUCKET_OVERFLOW.to_string()])
            .collect();
        assert_eq!(
            buckets.iter().map(|(us, _)| us.clone()).collect::<Vec<_>>(),
            bounds_us,
            "{version:?}: one series per bucket"
        );
        let slow_or_more: f64 = (buckets.iter())
            .filter(|(us, _)| bucket_upper_ms(us).is_some_and(|ms| ms >= SLOW_MS as f64))
            .map(|(_, n)| n)
            .sum();
        assert!(
            slow_or_more >= e.slow as f64,
            "{version:?}: {slow_or_more} samples ≥ {SLOW_MS} ms, {} slow requests",
            e.slow
        );
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
        // A bucket under its Envoy name at /stats.
        let name = format!(
            "{ENVOY_WASM_PREFIX}{}",
            bucket_stat_name(Metric::RqTimeMs, "shop", version, Some(550))
        );
        let at_550 = buckets
            .iter()
            .find(|(us, _)| us == "550")
            .map(|(_, n)| *n as u64);
        assert_eq!(envoy.counter(&name).await?, at_550, "{name}");
        // The same counter under its Envoy name at /stats.
        let name = format!(
            "{ENVOY_WASM_PREFIX}{}",
            stat_name(Metric::RqTotal, "shop", version)
        );
        assert_eq!(envoy.counter(&name).await?, Some(e.total), "{name}");
    }
    // The header-time histogram is gone, and no tag is left in a filter series' name.
    for sample in &samples {
        let name = canary_contract::stats::prometheus_metric_name(&sample.metric);
        assert!(
            !name.starts_with("canary_rq_header_time") && !name.contains("upper_us"),
            "{}",
            sample.metric
        );
    }
    eprintln!("expected per version: {expected:?}");
    Ok(())
}

/// One version's latency bucket counters (`labels`: rollout and version), by ascending bound
/// (`upper_us` label, count), and their total. Each series carries exactly the three labels.
fn latency(samples: &[prom::Sample], labels: &[(&str, &str); 2]) -> (Vec<(String, f64)>, f64) {
    let metric = Metric::RqTimeMs.in_bucket_name().unwrap_or_default();
    let mut buckets: Vec<(String, f64)> = prom::series(samples, metric, labels)
        .map(|s| {
            let keys: Vec<&String> = s.labels.keys().collect();
            assert_eq!(keys.len(), 3, "{}: labels {keys:?}", s.metric);
            let upper_us = s.labels.get(BUCKET_LABEL).unwrap_or_default().to_string();
            (upper_us, prom::scalar(s).unwrap_or(f64::NAN))
        })
        .collect();
    buckets.sort_by(|a, b| {
        let bound = |us: &str| bucket_upper_ms(us).unwrap_or(f64::NAN);
        bound(&a.0).total_cmp(&bound(&b.0))
    });
    let total = buckets.iter().map(|(_, n)| n).sum();
    (buckets, total)
}

canary_e2e::for_both_builds!(per_version_stats_equal_the_load_sent,);
