//! The judge's tests: windows in, verdicts out, with the stage's evidence carried from one
//! window to the next as the state machine carries it.

use super::test_support::{all_at, all_at_over, default_spec};
use super::*;
use crate::stats::Histogram;
use canary_contract::stats::latency_buckets_ms;

fn version(n: u64, errors: u64, ms: f64) -> VersionStats {
    VersionStats {
        requests: n,
        rq_2xx: n - errors,
        rq_5xx: errors,
        duration: all_at(ms, n),
        ..VersionStats::default()
    }
}

fn window(canary: VersionStats, stable: VersionStats) -> RolloutStats {
    RolloutStats {
        stable,
        canary,
        ..RolloutStats::default()
    }
}

fn verdict(w: &RolloutStats) -> Verdict {
    judge(w, &Evidence::default(), &default_spec())
}

/// The verdicts of `windows` judged one after the other within one stage.
fn stage(windows: impl IntoIterator<Item = RolloutStats>) -> Vec<Verdict> {
    let spec = default_spec();
    let mut evidence = Evidence::default();
    windows
        .into_iter()
        .map(|w| {
            let v = judge(&w, &evidence, &spec);
            evidence = Evidence::clone(&v.evidence);
            v
        })
        .collect()
}

fn check<'a>(v: &'a Verdict, name: &str) -> &'a CheckResult {
    v.checks
        .iter()
        .find(|c| c.check == name)
        .unwrap_or_else(|| panic!("no {name} in {}", v.summary()))
}

/// A small deterministic PRNG (xorshift), so statistical tests repeat exactly.
fn uniform(seed: u64) -> impl FnMut() -> f64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn one_error_in_fifty_does_not_fail() {
    // The first windows of a stage place the latency bounds (inconclusive until then).
    let verdicts = stage((0..3).map(|_| window(version(50, 1, 20.0), version(950, 0, 20.0))));
    let v = verdicts.last().expect("three verdicts");
    assert_eq!(v.outcome, Outcome::Pass, "{}", v.summary());
    assert!(!v.critical);
}

#[test]
fn ten_percent_errors_against_half_a_percent_are_decided_in_one_window() {
    // 20 canary requests/s over 30 s at 5%.
    let v = verdict(&window(version(600, 60, 20.0), version(11_400, 57, 20.0)));
    assert_eq!(v.outcome, Outcome::Fail, "{}", v.summary());
    assert!(v.critical, "decisive: roll back now: {}", v.summary());
    let e = check(&v, "error_rate");
    let test = e.sequential.as_ref().expect("a sequential test");
    assert!(test.e_value >= test.threshold, "{test:?}");
    // The reason names the test, its statistic, the threshold and the data behind it.
    assert!(e.reason.contains("sequential test"), "{}", e.reason);
    assert!(
        e.reason.contains("60/600") && e.reason.contains("57/11400"),
        "{}",
        e.reason
    );
    assert!(e.reason.contains("1/α"), "{}", e.reason);
}

#[test]
fn twice_stable_s_errors_are_caught_as_evidence_accumulates() {
    // 1% vs 0.5%, 150 canary requests a window: no single window says much.
    let windows = (0..400).map(|i| {
        let extra = u64::from(i % 2 == 0);
        window(version(1_500, 15, 20.0), version(28_500, 142 + extra, 20.0))
    });
    let verdicts = stage(windows);
    let first_fail = verdicts.iter().position(|v| v.outcome == Outcome::Fail);
    assert!(
        matches!(first_fail, Some(i) if i > 0 && i < 100),
        "{first_fail:?}"
    );
}

#[test]
fn a_canary_at_most_halfway_to_the_threshold_passes_at_any_traffic() {
    // 1.1× stable's rate, 300,000 requests a window, for a day of 30 s windows.
    let windows =
        (0..2_880).map(|_| window(version(15_000, 83, 20.0), version(285_000, 1_425, 20.0)));
    let verdicts = stage(windows);
    let bad = verdicts[1..].iter().find(|v| v.outcome != Outcome::Pass);
    assert!(
        bad.is_none(),
        "{}",
        bad.map(|v| v.summary()).unwrap_or_default()
    );
}

#[test]
fn a_burst_on_both_versions_is_not_the_canary_s_doing() {
    // Both at 6%, past the absolute 5% limit: the canary holds its share of the errors.
    let burst = window(version(1_500, 90, 20.0), version(28_500, 1_710, 20.0));
    let v = &stage([burst.clone(), burst])[1];
    assert_eq!(v.outcome, Outcome::Pass, "{}", v.summary());
    let absolute = check(v, "error_rate_absolute");
    assert!(
        absolute.reason.contains("stable is past it too"),
        "{}",
        absolute.reason
    );
}

#[test]
fn the_canary_alone_past_the_absolute_limit_fails() {
    // 5.6% vs 4.5%: only 1.24× stable (passes the relative test), but alone past 5%.
    let windows =
        (0..200).map(|_| window(version(10_000, 560, 20.0), version(100_000, 4_500, 20.0)));
    let verdicts = stage(windows);
    let failed = verdicts
        .iter()
        .find(|v| v.outcome == Outcome::Fail)
        .expect("rolled back");
    assert_eq!(check(failed, "error_rate").outcome, Outcome::Pass);
    assert_eq!(check(failed, "error_rate_absolute").outcome, Outcome::Fail);
}

#[test]
fn too_little_traffic_is_inconclusive_never_pass() {
    let v = verdict(&window(version(0, 0, 20.0), version(900, 0, 20.0)));
    assert_eq!(v.outcome, Outcome::Inconclusive);
    let v = verdict(&RolloutStats::default());
    assert_eq!(v.outcome, Outcome::Inconclusive);
}

fn fine(n: u64, errors: u64, ms: f64) -> VersionStats {
    VersionStats {
        duration: all_at_over(ms, n, &latency_buckets_ms()),
        ..version(n, errors, ms)
    }
}

#[test]
fn doubled_latency_fails_once_stable_has_placed_the_bound() {
    let verdicts = stage((0..3).map(|_| window(fine(500, 0, 40.0), fine(4_500, 0, 20.0))));
    // The first window places the bounds from stable's durations; the next one is judged.
    assert_eq!(
        check(&verdicts[0], "latency_p99").outcome,
        Outcome::Inconclusive
    );
    let v = &verdicts[1];
    assert_eq!(v.outcome, Outcome::Fail, "{}", v.summary());
    assert_eq!(check(v, "latency_p99").outcome, Outcome::Fail);
}

#[test]
fn same_latency_passes() {
    let verdicts = stage((0..10).map(|_| window(fine(500, 1, 20.0), fine(4_500, 9, 20.0))));
    let v = verdicts.last().expect("ten verdicts");
    assert_eq!(v.outcome, Outcome::Pass, "{}", v.summary());
    let names: Vec<&str> = v.checks.iter().map(|c| c.check.as_str()).collect();
    assert_eq!(
        names,
        [
            "error_rate",
            "error_rate_absolute",
            "latency_p99",
            "latency_p95"
        ]
    );
}

/// `n` requests log-normally distributed (median `median_ms`, log-sd `sigma`), spread over
/// `bounds` by their expected share (no sampling noise).
fn log_normal(n: u64, median_ms: f64, sigma: f64, bounds: &[f64]) -> Histogram {
    let cdf = |x: f64| {
        let z = (x / median_ms).ln() / sigma;
        0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2))
    };
    let mut buckets: Vec<(f64, u64)> = bounds
        .iter()
        .map(|&b| (b, (cdf(b) * n as f64).round() as u64))
        .collect();
    buckets.push((f64::INFINITY, n));
    Histogram {
        buckets,
        count: n,
        sum_ms: median_ms * n as f64,
    }
}

/// Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7): enough to shape a test histogram.
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    y.copysign(x)
}

#[test]
fn a_p99_regression_inside_one_default_bucket_is_caught_with_fine_buckets() {
    // p99 151 → 227 ms: both inside Envoy's default bucket (100, 250].
    let bounds = latency_buckets_ms();
    let w = |bounds: &[f64]| {
        let mut w = window(version(1_500, 7, 120.0), version(28_500, 142, 120.0));
        w.canary.duration = log_normal(1_500, 120.0, 0.2733, bounds);
        w.stable.duration = log_normal(28_500, 120.0, 0.1, bounds);
        w
    };
    let verdicts = stage((0..10).map(|_| w(&bounds)));
    assert!(
        verdicts
            .iter()
            .any(|v| check(v, "latency_p99").outcome == Outcome::Fail),
        "{}",
        verdicts[9].summary()
    );
    // With Envoy's default buckets the check says it cannot see inside them.
    let v = verdict(&w(&super::test_support::BOUNDS));
    assert!(
        check(&v, "latency_p99").reason.contains("coarse buckets"),
        "{}",
        check(&v, "latency_p99").reason
    );
}

#[test]
fn clearly_better_canary_is_flagged() {
    let verdicts =
        stage((0..5).map(|_| window(version(2_000, 0, 20.0), version(18_000, 360, 20.0))));
    let v = verdicts.last().expect("verdicts");
    assert_eq!(v.outcome, Outcome::Pass, "{}", v.summary());
    assert!(v.clearly_better);
    let v = verdict(&window(version(2_000, 0, 20.0), version(18_000, 9, 20.0)));
    assert!(!v.clearly_better, "{}", v.summary());
}

#[test]
fn a_breaker_trip_or_open_breaker_fails_the_window() {
    // Open all window long: the canary had no traffic, which alone is inconclusive.
    let mut idle = window(version(0, 0, 20.0), version(900, 0, 20.0));
    idle.canary.breaker_open = 1;
    idle.canary.breaker_diverted = 95;
    let v = verdict(&idle);
    assert_eq!(v.outcome, Outcome::Fail, "{}", v.summary());
    assert!(!v.critical, "counts toward the failure limit");
    assert_eq!(v.checks[0].check, "circuit_breaker");
    assert!(
        v.summary().contains("open on 1 Envoy(s)"),
        "{}",
        v.summary()
    );
    // A trip in an otherwise passing window.
    let mut tripped = window(version(500, 1, 20.0), version(4_500, 9, 20.0));
    tripped.canary.breaker_trips = 1;
    let v = verdict(&tripped);
    assert_eq!(v.outcome, Outcome::Fail, "{}", v.summary());
    assert!(!v.clearly_better);
    assert_eq!(v.checks.len(), 5);
    // Closed and no trip: no breaker check at all.
    let v = verdict(&window(version(500, 1, 20.0), version(4_500, 9, 20.0)));
    assert!(v.checks.iter().all(|c| c.check != "circuit_breaker"));
}

/// A/A: identical versions with binomial noise, window after window for a long stage,
/// never rolled back (the simulation in `bench_judge` measures the rate over thousands of
/// whole rollouts; this is one long stage, deterministic).
#[test]
fn identical_versions_are_not_rolled_back_over_a_long_stage() {
    let mut next = uniform(0x9e37_79b9_7f4a_7c15);
    let mut errors = |n: u64| (0..n).filter(|_| next() < 0.01).count() as u64;
    let windows: Vec<RolloutStats> = (0..600)
        .map(|_| {
            let (ec, es) = (errors(500), errors(4_500));
            window(version(500, ec, 20.0), version(4_500, es, 20.0))
        })
        .collect();
    let verdicts = stage(windows);
    let failed = verdicts
        .iter()
        .filter(|v| v.outcome == Outcome::Fail)
        .count();
    assert_eq!(failed, 0, "{failed} of 600 A/A windows failed");
}

/// Found by the `stats` fuzz target: thumbs up and down near 2^64 overflowed their sum.
#[test]
fn feedback_counts_near_2_64_do_not_overflow() {
    let mut w = window(version(1_000, 0, 10.0), version(1_000, 0, 10.0));
    w.canary.llm.feedback_up = u64::MAX;
    w.canary.llm.feedback_down = 1;
    w.stable.llm.feedback_up = u64::MAX - 1;
    w.stable.llm.feedback_down = 2;
    let v = verdict(&w);
    assert!(v.checks.iter().any(|c| c.check == "thumbs_down_rate"));
}

#[test]
fn each_check_splits_its_share_between_the_stage_and_the_rollout() {
    // Default: three judged stages; error rate, absolute limit, two latency checks and the
    // thumbs-down rate at α = 0.01: a check's share is 1 / 500, halved for each side.
    let bars = evidence::e_thresholds(&default_spec());
    assert!((bars.rollout - 1_000.0).abs() < 1e-9, "{bars:?}");
    assert!((bars.stage - 3_000.0).abs() < 1e-9, "{bars:?}");
    // One judged stage: both tests see the same windows, so they are one test.
    let one = RolloutSpec::from_yaml(
        "name: t\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\n\
         stages: [{weight_pct: 10, hold: 1h}, {weight_pct: 100}]\n",
    )
    .expect("a valid spec");
    let bars = evidence::e_thresholds(&one);
    assert!((bars.rollout - 500.0).abs() < 1e-9 && bars.stage == bars.rollout);
}

#[test]
fn the_reason_names_the_rollout_s_test_when_it_decides() {
    // 1% vs 0.5% at 150 canary requests a window over three stages: each stage alone
    // stays below its threshold, the rollout's test decides.
    let spec = default_spec();
    let mut evidence = Evidence::default();
    let mut decided = None;
    'stages: for stage in 0..3 {
        for i in 0..120u64 {
            let (c, s) = (
                u64::from(i % 2 == 0) + u64::from(i % 5 == 0),
                u64::from(i % 3 == 0),
            );
            let v = judge(
                &window(version(150, c, 20.0), version(150, s, 20.0)),
                &evidence,
                &spec,
            );
            if v.outcome == Outcome::Fail {
                decided = Some((stage, v));
                break 'stages;
            }
            evidence = Evidence::clone(&v.evidence);
        }
        evidence = evidence.next_stage();
    }
    let (stage, v) = decided.expect("rolled back");
    assert!(stage > 0, "not in the first stage");
    let e = check(&v, "error_rate");
    let test = e.sequential.as_ref().expect("a sequential test");
    assert_eq!(test.scope, Scope::Rollout, "{test:?}");
    assert!(test.e_value >= test.threshold, "{test:?}");
    assert!(e.reason.contains("over the rollout"), "{}", e.reason);
    assert!(
        e.p_value.is_some_and(|p| p <= 1.0 / test.threshold),
        "{e:?}"
    );
}

/// Verdicts without reasons are the same verdicts: every field but the reasons, window
/// after window, across a stage change (a canary with a slow window in seven).
#[test]
fn skipping_the_reasons_changes_nothing_else() {
    let spec = default_spec();
    let (mut written, mut skipped) = (Evidence::default(), Evidence::default());
    for i in 0..60u64 {
        if i == 30 {
            (written, skipped) = (written.next_stage(), skipped.next_stage());
        }
        let slow = if i % 7 == 0 { 300.0 } else { 20.0 };
        let w = window(version(150, i % 3, slow), version(1_350, i % 4, 20.0));
        let a = judge_owned(&w, written.clone().into(), &spec);
        let mut b = judge_outcomes(&w, skipped.clone().into(), &spec);
        assert!(a.checks.iter().all(|c| !c.reason.is_empty()));
        for (c, with) in b.checks.iter_mut().zip(&a.checks) {
            if !matches!(c.check.as_str(), "traffic" | "circuit_breaker") {
                assert!(c.reason.is_empty(), "{}: {}", c.check, c.reason);
            }
            c.reason.clone_from(&with.reason);
            if let (Some(t), Some(with)) = (&mut c.sequential, &with.sequential) {
                assert!(t.null.is_empty(), "{}: {}", c.check, t.null);
                t.null.clone_from(&with.null);
            }
        }
        assert_eq!(a, b, "window {i}");
        (written, skipped) = (Evidence::clone(&a.evidence), Evidence::clone(&b.evidence));
    }
}
