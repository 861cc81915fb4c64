//! The judge simulation behind `bench_judge`: whole rollouts driven through the
//! controller's real judge and state machine, with simulated windows instead of sockets.
//! What lives here: traffic models ([`traffic`]), schedules and scenarios ([`scenarios`]),
//! and the run loop with its tallies (this file). It imports the controller's pure floors
//! (spec, stats, judge, machine, window) and nothing that does I/O.

pub mod llm;
pub mod scenarios;
pub mod traffic;

use std::sync::Arc;

use canary_controller::judge::{Evidence, Verdict};
use canary_controller::machine::{Input, Phase, RolloutState};
use canary_controller::spec::RolloutSpec;
use canary_controller::stats::window::{Reading, Windower};
use canary_controller::stats::{RolloutStats, VersionStats};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use llm::LlmSim;
use scenarios::{Kind, Scenario, Schedule, BASE_ERROR_RATE};
use traffic::{binomial, drift, version_window, Buckets};

/// The analysis interval every simulated rollout uses.
pub const INTERVAL_S: u64 = 30;

/// The judge under test: the verdict on one window, given the rollout's state before it and
/// the stage's evidence so far (handed over: the verdict brings it back, updated).
pub type Analyst = fn(&RolloutStats, Arc<Evidence>, &RolloutState, &RolloutSpec) -> Verdict;

/// The filter options of a scenario with LLM answers: quality headers for the `helpful`
/// score and task success, and eval sampling ([`llm`]'s signals).
const LLM_FILTER: &str = "filter:\n  llm:\n    quality_headers:\n      \
    - {header: x-helpful, signal: helpful}\n      - {header: x-task-success, signal: task_success}\n  \
    eval: {cluster: evaluator, sample_bp: 100}\n";

/// A spec with the schedule's stages and everything else at its defaults (with `llm` in
/// the filter options for a scenario with LLM answers).
pub fn spec(schedule: &Schedule, scenario: &Scenario) -> RolloutSpec {
    let yaml = format!(
        "name: sim\nsources: {{envoy_admin: [\"http://127.0.0.1:1\"]}}\n\
         analysis: {{interval: {INTERVAL_S}s}}\nstages: {}\n{}",
        schedule.stages_yaml,
        if scenario.llm.is_some() {
            LLM_FILTER
        } else {
            ""
        }
    );
    RolloutSpec::from_yaml(&yaml).expect("the simulation's spec is valid")
}

/// How one simulated rollout ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    RolledBack {
        after_s: u64,
        windows: u64,
        stage: usize,
        by: String,
    },
    Promoted {
        after_s: u64,
    },
    /// Still going at the time limit (twice the schedule).
    Unfinished,
}

/// One rollout of `scenario` at `rate_rps` through `analyst` and the state machine.
pub fn run_one(
    scenario: &Scenario,
    spec: &RolloutSpec,
    rate_rps: f64,
    bounds: &[f64],
    analyst: Analyst,
    seed: u64,
) -> End {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut stable_buckets = Buckets::new(scenario.stable_latency, bounds);
    let mut canary_buckets = Buckets::new(scenario.canary_latency, bounds);
    let mut llm = scenario.llm.map(|l| LlmSim::new(l, bounds));
    let schedule_ms: u64 = spec.stages.iter().map(|s| s.hold.as_millis() as u64).sum();
    let limit_ms = 2 * schedule_ms + 3_600_000;
    let (mut state, _) = RolloutState::start(spec, 0);
    let mut proxies = Proxies::new(scenario.proxies);
    let mut now_ms = 0;
    let mut windows = 0;
    while now_ms < limit_ms {
        now_ms += INTERVAL_S * 1_000;
        windows += 1;
        let weight = f64::from(state.weight_bp) / 10_000.0;
        let window = proxies.window(
            &mut rng,
            scenario,
            rate_rps,
            weight,
            (&mut stable_buckets, &mut canary_buckets),
            llm.as_mut(),
        );
        // The state's evidence goes to the judge and comes back in the verdict: no copy.
        let evidence = std::mem::take(&mut state.evidence);
        let verdict = analyst(window, evidence, &state, spec);
        if state
            .advance(spec, Input::Analysis(verdict), now_ms)
            .is_err()
        {
            return End::Unfinished;
        }
        match state.phase {
            Phase::RolledBack => {
                let by = state
                    .verdicts
                    .back()
                    .map(|r| {
                        r.verdict
                            .checks
                            .iter()
                            .filter(|c| c.outcome == r.verdict.outcome)
                            .map(|c| c.check.as_str())
                            .collect::<Vec<_>>()
                            .join("+")
                    })
                    .unwrap_or_default();
                return End::RolledBack {
                    after_s: now_ms / 1_000,
                    windows,
                    stage: state.stage,
                    by,
                };
            }
            Phase::Promoted => {
                return End::Promoted {
                    after_s: now_ms / 1_000,
                }
            }
            _ => {}
        }
    }
    End::Unfinished
}

/// The Envoys of one simulated rollout: each one's cumulative counters, read once a window
/// through the controller's own windowing (which drops a source whose counters reset).
struct Proxies {
    totals: Vec<RolloutStats>,
    names: Vec<String>,
    windower: Windower,
    /// One Envoy's share of the window as last drawn, and the last window: kept to draw
    /// the next ones into the same allocations.
    drawn: RolloutStats,
    window: RolloutStats,
}

impl Proxies {
    fn new(n: usize) -> Proxies {
        Proxies {
            totals: vec![RolloutStats::default(); n.max(1)],
            names: (0..n.max(1)).map(|i| format!("envoy-{i}")).collect(),
            windower: Windower::default(),
            drawn: RolloutStats::default(),
            window: RolloutStats::default(),
        }
    }

    fn window(
        &mut self,
        rng: &mut SmallRng,
        scenario: &Scenario,
        rate_rps: f64,
        weight: f64,
        (stable_buckets, canary_buckets): (&mut Buckets, &mut Buckets),
        llm: Option<&mut LlmSim>,
    ) -> &RolloutStats {
        let seconds = INTERVAL_S as f64;
        // Shared burst: both versions' rate for the window, 8 s of it at 20%.
        let burst = rng.gen_bool(scenario.burst_chance);
        let mix = |rate: f64| {
            if burst {
                (rate * (seconds - 8.0) + 0.20 * 8.0) / seconds
            } else {
                rate
            }
        };
        let stable_rate = mix(BASE_ERROR_RATE * drift(rng, scenario.drift_sigma));
        let canary_rate = mix(scenario.canary_error_rate * drift(rng, scenario.drift_sigma));
        let n = self.totals.len();
        let mut llm_models = llm.map(|l| {
            let models = l.window(rng);
            (l, models)
        });
        // Each Envoy's share of the window: its requests, errors and durations.
        let mut draw = |rng: &mut SmallRng, w: &mut RolloutStats| {
            let requests = rate_rps * seconds / n as f64;
            let (stable_requests, canary_requests) = (requests * (1.0 - weight), requests * weight);
            version_window(
                rng,
                stable_buckets,
                stable_requests,
                stable_rate,
                &mut w.stable,
            );
            version_window(
                rng,
                canary_buckets,
                canary_requests,
                canary_rate,
                &mut w.canary,
            );
            subset_errors(rng, scenario, w);
            if let Some((sim, models)) = &mut llm_models {
                // Each version's answers, and what they are expected to be.
                let answered = |v: &VersionStats, mean: f64, rate: f64| {
                    (v.rq_2xx, mean * (1.0 - rate.clamp(0.0, 1.0)))
                };
                let answered = (
                    answered(&w.stable, stable_requests, stable_rate),
                    answered(&w.canary, canary_requests, canary_rate),
                );
                sim.draw(
                    rng,
                    models,
                    answered,
                    (&mut w.stable.llm, &mut w.canary.llm),
                );
            }
        };
        if n == 1 {
            draw(rng, &mut self.window);
            return &self.window;
        }
        let restart_chance = scenario.restarts_per_hour * seconds / 3_600.0;
        let mut readings = Vec::with_capacity(n);
        for (total, name) in self.totals.iter_mut().zip(&self.names) {
            let delta = &mut self.drawn;
            draw(rng, delta);
            if rng.gen_bool(restart_chance.min(1.0)) {
                total.clone_from(delta); // restarted: counters from zero
            } else {
                *total += &*delta;
            }
            readings.push(Reading {
                source: name.clone(),
                result: Ok(total.clone()),
            });
        }
        self.window = self.windower.close(readings).stats;
        &self.window
    }
}

/// A user subset's extra canary errors: that share of the canary's requests fails at its
/// own rate instead of the canary's.
fn subset_errors(rng: &mut SmallRng, scenario: &Scenario, w: &mut RolloutStats) {
    let Some((share, rate)) = scenario.canary_user_subset else {
        return;
    };
    let c = &mut w.canary;
    let subset = binomial(rng, c.requests, share);
    let rest_errors = binomial(rng, c.requests - subset, scenario.canary_error_rate);
    let errors = (binomial(rng, subset, rate) + rest_errors).min(c.requests);
    c.rq_5xx = errors;
    c.rq_2xx = c.requests - errors;
}

/// The tally of one figure: one scenario, schedule and rate, many runs.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub scenario: String,
    pub kind: &'static str,
    pub schedule: String,
    pub rate_rps: f64,
    pub runs: usize,
    pub rolled_back: f64,
    pub promoted: f64,
    pub unfinished: f64,
    /// Rolled back within two analysis windows of the start.
    pub within_two_windows: f64,
    pub rollback_median_s: Option<f64>,
    pub rollback_p95_s: Option<f64>,
    /// Stage (1-based) → rollbacks there; check → rollbacks it decided.
    pub rollback_stage: std::collections::BTreeMap<usize, usize>,
    pub decided_by: std::collections::BTreeMap<String, usize>,
}

pub fn tally(scenario: &Scenario, schedule: &Schedule, rate_rps: f64, ends: &[End]) -> Figure {
    let runs = ends.len().max(1);
    let share =
        |f: &dyn Fn(&End) -> bool| ends.iter().filter(|e| f(e)).count() as f64 / runs as f64;
    let mut times: Vec<f64> = ends
        .iter()
        .filter_map(|e| match e {
            End::RolledBack { after_s, .. } => Some(*after_s as f64),
            _ => None,
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        (!times.is_empty()).then(|| times[((times.len() - 1) as f64 * q).round() as usize])
    };
    let mut rollback_stage = std::collections::BTreeMap::new();
    let mut decided_by = std::collections::BTreeMap::new();
    for e in ends {
        if let End::RolledBack { stage, by, .. } = e {
            *rollback_stage.entry(stage + 1).or_insert(0) += 1;
            *decided_by.entry(by.clone()).or_insert(0) += 1;
        }
    }
    Figure {
        scenario: scenario.name.into(),
        kind: match scenario.kind {
            Kind::AA => "aa",
            Kind::Regression => "regression",
            Kind::SparseRegression => "regression_sparse",
        },
        schedule: schedule.name.into(),
        rate_rps,
        runs: ends.len(),
        rolled_back: share(&|e| matches!(e, End::RolledBack { .. })),
        promoted: share(&|e| matches!(e, End::Promoted { .. })),
        unfinished: share(&|e| matches!(e, End::Unfinished)),
        within_two_windows: share(
            &|e| matches!(e, End::RolledBack { windows, .. } if *windows <= 2),
        ),
        rollback_median_s: pick(0.5),
        rollback_p95_s: pick(0.95),
        rollback_stage,
        decided_by,
    }
}
