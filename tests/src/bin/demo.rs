//! `make demo`: a whole canary rollout on real Envoy, driven by the real controller.
//!
//! Two Envoys (two workers each) run the filter in front of a stable and a canary upstream;
//! `canaryctl serve` reads their stats, judges canary against stable every second and
//! publishes the weight the filters poll. Simulated users send traffic throughout.
//! 1. A healthy canary is promoted stage by stage to 100%.
//! 2. A canary that starts failing (10% 5xx) at 25% is rolled back by itself.
//! 3. An LLM service (the LLM build of the filter, fake LLM upstreams): the canary model
//!    answers with twice the output tokens, and is rolled back for its cost per answer.
//! 4. Continuous eval sampling: a judge (a local HTTP server) scores a share of each
//!    version's answers; the canary's score lower, and it is rolled back for it.

use std::time::{Duration, Instant};

use anyhow::Result;
use canary_e2e::controller::{Canaryctl, ControlledRig};
use canary_e2e::evaluator::{Evaluator, EvaluatorSpec};
use canary_e2e::fake_llm::LlmBehaviour;
use canary_e2e::load::Load;
use canary_e2e::upstream::UpstreamSpec;
use serde_json::Value;

const SPEC: &str = "analysis: {interval: 1s, failure_limit: 3, min_window_requests: 30}\n\
stages:\n\
  - {weight_pct: 5, hold: 4s, min_requests: 100}\n\
  - {weight_pct: 25, hold: 4s, min_requests: 100}\n\
  - {weight_pct: 50, hold: 4s, min_requests: 100}\n\
  - {weight_pct: 100}\n";

fn upstreams() -> (UpstreamSpec, UpstreamSpec) {
    let mut stable = UpstreamSpec::new("stable");
    stable.error_rate_bp = 50;
    stable.delay = Duration::from_millis(2);
    let mut canary = UpstreamSpec::new("canary");
    canary.error_rate_bp = 50;
    canary.delay = Duration::from_millis(2);
    (stable, canary)
}

fn check<'a>(verdict: &'a Value, name: &str) -> Option<&'a Value> {
    verdict["checks"]
        .as_array()?
        .iter()
        .find(|c| c["check"] == name)
}

fn fmt_pct(v: &Value) -> String {
    v.as_f64()
        .map_or("    -".into(), |x| format!("{:5.2}%", x * 100.0))
}

fn fmt_ms(v: &Value) -> String {
    v.as_f64().map_or("    -".into(), |x| format!("{x:5.1}"))
}

/// One line per analysis: stage, weight, the window's numbers and the verdict.
fn progress_line(status: &Value, started: Instant) -> String {
    let verdict = status["verdicts"]
        .as_array()
        .and_then(|v| v.last())
        .map(|v| &v["verdict"]);
    let (outcome, nc, ns, ec, es, pc, ps) = match verdict {
        Some(v) => {
            let e = check(v, "error_rate");
            let l = check(v, "latency_p99");
            (
                v["outcome"].as_str().unwrap_or("?").to_string(),
                v["canary_requests"].as_u64().unwrap_or(0),
                v["stable_requests"].as_u64().unwrap_or(0),
                e.map_or("    -".into(), |e| fmt_pct(&e["canary"])),
                e.map_or("    -".into(), |e| fmt_pct(&e["stable"])),
                l.map_or("    -".into(), |l| fmt_ms(&l["canary"])),
                l.map_or("    -".into(), |l| fmt_ms(&l["stable"])),
            )
        }
        None => (
            "-".into(),
            0,
            0,
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ),
    };
    format!(
        "  {:>5.1}s  stage {}/{}  weight {:>5}  window: canary {:>4} req {} err p99 {} ms | stable {:>4} req {} err p99 {} ms  → {}",
        started.elapsed().as_secs_f64(),
        status["stage"],
        status["stages"],
        format!("{}%", status["weight_bp"].as_f64().unwrap_or(0.0) / 100.0),
        nc,
        ec,
        pc,
        ns,
        es,
        ps,
        outcome
    )
}

/// What has been printed of one controller's rollout so far.
#[derive(Default)]
struct Printed {
    events: usize,
    analyses: u64,
}

/// Prints progress until `done(status)`; also prints timeline events as they appear.
async fn follow(
    ctl: &Canaryctl,
    printed: &mut Printed,
    started: Instant,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    loop {
        let status = ctl.status().await?;
        let analyses = status["analyses"].as_u64().unwrap_or(0);
        if analyses != printed.analyses {
            printed.analyses = analyses;
            println!("{}", progress_line(&status, started));
        }
        let events = status["timeline"].as_array().cloned().unwrap_or_default();
        for e in events.iter().skip(printed.events) {
            println!("  ── {}", e["message"].as_str().unwrap_or(""));
        }
        printed.events = events.len();
        if done(&status) {
            return Ok(status);
        }
        if started.elapsed() > limit {
            anyhow::bail!("the rollout did not finish in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    println!("wasm-canary demo: 2 Envoys with the filter, 1 controller, simulated users\n");

    println!(
        "1. A healthy canary (same 0.5% errors and latency as stable): ramp 5% → 25% → 50% → 100%"
    );
    let (stable, canary) = upstreams();
    let rig = ControlledRig::start("checkout", 2, 500, stable, canary).await?;
    let ctl = rig.start_controller(SPEC).await?;
    println!(
        "   controller {}  (try: canaryctl status --controller {}, curl {}/metrics)",
        ctl.url(),
        ctl.url(),
        ctl.url()
    );
    let load = Load::start(rig.bases.clone(), 5_000, 8, 100);
    let started = Instant::now();
    let status = follow(
        &ctl,
        &mut Printed::default(),
        started,
        Duration::from_secs(90),
        |s| s["phase"] != "progressing",
    )
    .await;
    let seen = load.stop().await;
    let status = status?;
    println!(
        "   → {} in {:.1}s, {} requests served\n",
        status["phase"].as_str().unwrap_or("?"),
        started.elapsed().as_secs_f64(),
        seen.len()
    );
    drop(ctl);
    drop(rig);

    println!("2. The canary starts failing (10% 5xx) once it reaches 25%: automatic rollback");
    let (stable, canary) = upstreams();
    let rig = ControlledRig::start("checkout", 2, 500, stable, canary).await?;
    let ctl = rig.start_controller(SPEC).await?;
    let load = Load::start(rig.bases.clone(), 5_000, 8, 100);
    let started = Instant::now();
    let mut printed = Printed::default();
    follow(&ctl, &mut printed, started, Duration::from_secs(60), |s| {
        s["stage"] == 2
    })
    .await?;
    rig.canary.set_error_rate_bp(1_000);
    let fault = Instant::now();
    println!("  ── fault injected: canary now answers 10% of requests with 503");
    let status = follow(&ctl, &mut printed, started, Duration::from_secs(90), |s| {
        s["phase"] != "progressing"
    })
    .await;
    load.stop().await;
    let status = status?;
    println!(
        "   → {} {:.1}s after the fault started; weight {}%",
        status["phase"].as_str().unwrap_or("?"),
        fault.elapsed().as_secs_f64(),
        status["weight_bp"].as_f64().unwrap_or(0.0) / 100.0
    );
    if let Some(reason) = status["timeline"].as_array().and_then(|t| t.last()) {
        println!("   reason: {}", reason["message"].as_str().unwrap_or(""));
    }

    llm_scenarios().await?;

    println!("\nLook closer: `canaryctl status --controller <url>` (add --output json), the controller's /metrics,");
    println!("and each Envoy's /stats/prometheus (canary_rq_*, canary_llm_*, canary_eval_*{{rollout,version}}).");
    Ok(())
}

const LLM_SPEC: &str = r#"analysis: {interval: 1s, failure_limit: 3, min_window_requests: 30}
stages:
  - {weight_pct: 10, hold: 4s, min_requests: 100}
  - {weight_pct: 50, hold: 4s, min_requests: 100}
  - {weight_pct: 100}
checks: {llm: {cost: {min_samples: 30}, refusals: {min_samples: 30}}}
filter:
  llm:
    prices:
      stable: {input_nano_usd_per_token: 3000, output_nano_usd_per_token: 15000}
      canary: {input_nano_usd_per_token: 3000, output_nano_usd_per_token: 15000}
    quality_headers: [{header: x-quality-score, signal: quality_score}]
"#;

const EVAL_SPEC: &str = r#"analysis: {interval: 1s, failure_limit: 3, min_window_requests: 30}
stages:
  - {weight_pct: 10, hold: 4s, min_requests: 100}
  - {weight_pct: 50, hold: 4s, min_requests: 100}
  - {weight_pct: 100}
checks: {llm: {eval: {min_samples: 10}}}
filter:
  llm: {}
  eval: {cluster: evaluator, sample_bp: 2000}
"#;

/// One LLM rollout of the demo, followed one line per analysis by the check it is about.
struct LlmScenario {
    title: &'static str,
    spec: &'static str,
    stable: LlmBehaviour,
    canary: LlmBehaviour,
    /// The check shown on each line, how it is labelled and how its values print.
    check: &'static str,
    label: &'static str,
    unit: &'static str,
    format: fn(f64) -> String,
    /// Runs an evaluator (an LLM judge scoring answers by their text) as cluster `evaluator`.
    evaluator: Option<EvaluatorSpec>,
}

/// One line per analysis: the scenario's check for each version, and the verdict.
fn llm_line(scenario: &LlmScenario, status: &Value, started: Instant) -> String {
    let verdict = status["verdicts"]
        .as_array()
        .and_then(|v| v.last())
        .map(|v| &v["verdict"]);
    let found = verdict.and_then(|v| check(v, scenario.check));
    let value = |version: &str| {
        found
            .and_then(|c| c[version].as_f64())
            .map_or("        -".into(), scenario.format)
    };
    let n = |version: &str| {
        found
            .and_then(|c| c[&format!("{version}_n")].as_u64())
            .unwrap_or(0)
    };
    format!(
        "  {:>5.1}s  stage {}/{}  weight {:>5}  {}: canary {} ({:>4} {}) | stable {} ({:>4})  → {}",
        started.elapsed().as_secs_f64(),
        status["stage"],
        status["stages"],
        format!("{}%", status["weight_bp"].as_f64().unwrap_or(0.0) / 100.0),
        scenario.label,
        value("canary"),
        n("canary"),
        scenario.unit,
        value("stable"),
        n("stable"),
        verdict.and_then(|v| v["outcome"].as_str()).unwrap_or("-")
    )
}

async fn llm_scenarios() -> Result<()> {
    let stable = LlmBehaviour {
        prompt_tokens: 200,
        completion_tokens: 300,
        ..LlmBehaviour::default()
    };
    let cost = LlmScenario {
        title:
            "3. An LLM service: the canary model answers with twice the output tokens (same prices)",
        spec: LLM_SPEC,
        canary: LlmBehaviour {
            completion_tokens: 600,
            ..stable.clone()
        },
        stable: stable.clone(),
        check: "cost_per_response",
        label: "cost/answer",
        unit: "answers",
        format: |nano| format!("${:.6}", nano / 1e9),
        evaluator: None,
    };
    llm_scenario(cost).await?;
    let eval = LlmScenario {
        title: "4. Continuous eval sampling: an LLM judge scores 20% of each version's answers; the canary's score lower",
        spec: EVAL_SPEC,
        canary: LlmBehaviour {
            agreement_bp: 0, // "Certainly not that." instead of stable's "Sure."
            ..stable.clone()
        },
        stable,
        check: "eval_score",
        label: "eval score",
        unit: "scores",
        format: |score| format!("{score:>9.3}"),
        evaluator: Some(EvaluatorSpec {
            scores: vec![("Certainly".into(), 0.62)],
            default_score: 0.9,
        }),
    };
    llm_scenario(eval).await
}

async fn llm_scenario(scenario: LlmScenario) -> Result<()> {
    println!("\n{}", scenario.title);
    let evaluator = match scenario.evaluator.clone() {
        Some(spec) => Some(Evaluator::start(spec).await?),
        None => None,
    };
    let clusters = evaluator
        .iter()
        .map(|e| ("evaluator".to_string(), e.addr()))
        .collect();
    let (stable, canary) = (scenario.stable.clone(), scenario.canary.clone());
    let rig = ControlledRig::start_llm_with("chat", 2, 500, stable, canary, clusters).await?;
    let ctl = rig.start_controller(scenario.spec).await?;
    let load = Load::start(rig.bases.clone(), 5_000, 8, 100);
    let started = Instant::now();
    let mut analyses = 0;
    let mut events = 0;
    let status = loop {
        let status = ctl.status().await?;
        let now = status["analyses"].as_u64().unwrap_or(0);
        if now != analyses {
            analyses = now;
            println!("{}", llm_line(&scenario, &status, started));
        }
        let timeline = status["timeline"].as_array().cloned().unwrap_or_default();
        for e in timeline.iter().skip(events) {
            println!("  ── {}", e["message"].as_str().unwrap_or(""));
        }
        events = timeline.len();
        if status["phase"] != "progressing" || started.elapsed() > Duration::from_secs(60) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    load.stop().await;
    println!(
        "   → {} after {:.1}s; weight {}%",
        status["phase"].as_str().unwrap_or("?"),
        started.elapsed().as_secs_f64(),
        status["weight_bp"].as_f64().unwrap_or(0.0) / 100.0
    );
    if let Some(reason) = status["timeline"].as_array().and_then(|t| t.last()) {
        println!("   reason: {}", reason["message"].as_str().unwrap_or(""));
    }
    if let Some(e) = &evaluator {
        println!(
            "   the judge scored {} stable and {} canary answers",
            e.received_for("stable"),
            e.received_for("canary")
        );
    }
    Ok(())
}
