//! `make bench`, judge part: whole rollouts simulated through the controller's real judge
//! and state machine (no sockets), written to `target/bench/judge.json`.
//! - A/A scenarios (identical versions): the share of runs rolled back is the false
//!   rollback rate over the full schedule; `aa_false_rollback_max` is the worst of them.
//! - Regressions: the share rolled back before promotion, and the time it took;
//!   `regression_detected_min` is the worst of them.
//!
//! Knobs: `BENCH_JUDGE_RUNS` (runs per figure, default 1000), `BENCH_JUDGE_ONLY` (a
//! comma-separated list of scenario names), `BENCH_JUDGE_SCHEDULES`, `BENCH_JUDGE_RATES`,
//! `BENCH_JUDGE_BUCKETS` (`fine`, the default, or `envoy_default`), `BENCH_JUDGE_OUT`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use canary_controller::judge::{judge_outcomes, Evidence, Verdict};
use canary_controller::machine::RolloutState;
use canary_controller::spec::RolloutSpec;
use canary_controller::stats::RolloutStats;
use canary_e2e::judge_sim::scenarios::{self, RATES, SCHEDULES};
use canary_e2e::judge_sim::traffic::ENVOY_DEFAULT_BUCKETS_MS;
use canary_e2e::judge_sim::{run_one, spec, tally, End, Figure};
use serde_json::json;

/// The real judge, without the checks' reasons: the simulation reads only what they
/// decided (and which checks did), and formatting millions of reasons was a fifth of its
/// time.
fn analyst(
    window: &RolloutStats,
    evidence: Arc<Evidence>,
    _state: &RolloutState,
    spec: &RolloutSpec,
) -> Verdict {
    judge_outcomes(window, evidence, spec)
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

fn main() -> Result<()> {
    let runs: usize = std::env::var("BENCH_JUDGE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let only = env_list("BENCH_JUDGE_ONLY");
    let schedules = env_list("BENCH_JUDGE_SCHEDULES");
    let rates: Vec<f64> = env_list("BENCH_JUDGE_RATES")
        .map(|v| v.iter().filter_map(|r| r.parse().ok()).collect())
        .unwrap_or_else(|| RATES.to_vec());
    let buckets_name = std::env::var("BENCH_JUDGE_BUCKETS").unwrap_or_else(|_| "fine".into());
    let bounds = match buckets_name.as_str() {
        "envoy_default" => ENVOY_DEFAULT_BUCKETS_MS.to_vec(),
        _ => canary_contract::stats::latency_buckets_ms(),
    };
    let out = std::env::var("BENCH_JUDGE_OUT").unwrap_or_else(|_| "target/bench/judge.json".into());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(2);
    let started = Instant::now();
    let mut figures: Vec<Figure> = Vec::new();
    for schedule in SCHEDULES.iter().filter(|s| {
        schedules
            .as_ref()
            .is_none_or(|l| l.iter().any(|n| n == s.name))
    }) {
        for scenario in scenarios::all()
            .iter()
            .filter(|s| only.as_ref().is_none_or(|l| l.iter().any(|n| n == s.name)))
        {
            let spec = spec(schedule, scenario);
            for &rate in &rates {
                let t = Instant::now();
                let ends: Vec<End> = std::thread::scope(|scope| {
                    let handles: Vec<_> = (0..threads)
                        .map(|k| {
                            let (spec, bounds) = (&spec, &bounds);
                            scope.spawn(move || {
                                (k..runs)
                                    .step_by(threads)
                                    .map(|run| {
                                        let seed = seed_of(scenario.name, schedule.name, rate, run);
                                        run_one(scenario, spec, rate, bounds, analyst, seed)
                                    })
                                    .collect::<Vec<_>>()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .flat_map(|h| h.join().unwrap_or_default())
                        .collect()
                });
                let f = tally(scenario, schedule, rate, &ends);
                eprintln!(
                    "{:8} {:26} {:>6} req/s: rolled back {:5.1}%  promoted {:5.1}%  median {:>8}  p95 {:>8}  ({:.1} s) {:?}",
                    f.schedule,
                    f.scenario,
                    f.rate_rps,
                    f.rolled_back * 100.0,
                    f.promoted * 100.0,
                    f.rollback_median_s.map_or("-".into(), |s| format!("{s:.0} s")),
                    f.rollback_p95_s.map_or("-".into(), |s| format!("{s:.0} s")),
                    t.elapsed().as_secs_f64(),
                    f.decided_by,
                );
                figures.push(f);
            }
        }
    }
    let worst = |kind: &str, pick: fn(&Figure) -> f64, max: bool| {
        let values = figures.iter().filter(|f| f.kind == kind).map(pick);
        if max {
            values.fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        } else {
            values.fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))))
        }
    };
    let report = json!({
        "interval_s": canary_e2e::judge_sim::INTERVAL_S,
        "runs_per_figure": runs,
        "buckets": buckets_name,
        "aa_false_rollback_max": worst("aa", |f| f.rolled_back, true),
        "regression_detected_min": worst("regression", |f| f.rolled_back, false),
        "sparse_regression_detected_min": worst("regression_sparse", |f| f.rolled_back, false),
        "seconds": started.elapsed().as_secs_f64(),
        "figures": figures,
    });
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!(
        "{out}: aa_false_rollback_max {} regression_detected_min {} in {:.0} s",
        report["aa_false_rollback_max"],
        report["regression_detected_min"],
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A seed per run that does not depend on the order figures are computed in.
fn seed_of(scenario: &str, schedule: &str, rate: f64, run: usize) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same seeds on every run of the benchmark.
    let mut h = std::hash::DefaultHasher::new();
    (scenario, schedule, rate.to_bits(), run).hash(&mut h);
    h.finish()
}
