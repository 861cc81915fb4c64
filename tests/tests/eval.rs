//! Continuous eval sampling (issue 7) on real Envoy with the LLM build of the filter, the
//! fake LLM services as stable and canary, and a real local evaluator (an HTTP server that
//! scores answers by their text, like an LLM judge): the configured share of each version's
//! calls reaches the evaluator with its answer, the scores become per-version quality
//! signals, a slow or failing evaluator costs samples (counted) and never user answers, and
//! the controller rolls back a canary whose eval scores are more than 10% below stable's.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use canary_contract::{EvalSampling, FilterConfig, LlmSignals, RolloutConfig};
use canary_e2e::client::header_text;
use canary_e2e::controller::{passing_checks, rollback_message, wait_status, ControlledRig};
use canary_e2e::envoy;
use canary_e2e::envoy::Envoy;
use canary_e2e::evaluator::{Evaluator, EvaluatorSpec};
use canary_e2e::fake_llm::LlmBehaviour;
use canary_e2e::load::Load;
use canary_e2e::paths;
use canary_e2e::rig::{CanaryRig, RigOptions};
use canary_e2e::upstream::{UpstreamSpec, SERVED_BY};
use canary_e2e::wait::eventually;
use futures::StreamExt;
use prometheus_parse::Value as PromValue;
use serde_json::Value;

const ROLLOUT: &str = "chat";
const EVALUATOR: &str = "evaluator";
const PATHS: [&str; 2] = ["/v1/chat/completions", "/v1/messages"];

/// Scores of the fake judge: the canary's answers ("Certainly not that.", or "other<i>"
/// tokens when streamed) score 0.6, stable's ("Sure.", "tok<i>") 0.9.
fn judge() -> EvaluatorSpec {
    EvaluatorSpec {
        scores: vec![("Certainly".into(), 0.6), ("other".into(), 0.6)],
        default_score: 0.9,
    }
}

/// A canary whose answers say something else than stable's, in the same shape.
fn different_canary() -> LlmBehaviour {
    LlmBehaviour {
        agreement_bp: 0,
        ..LlmBehaviour::default()
    }
}

async fn eval_rig(weight_bp: u32, eval: EvalSampling, evaluator: &Evaluator) -> Result<CanaryRig> {
    let mut r = RolloutConfig::new(ROLLOUT, weight_bp);
    r.llm = Some(LlmSignals {
        path_prefixes: vec!["/v1/".into()],
        ..LlmSignals::default()
    });
    r.eval = Some(eval);
    let mut stable = UpstreamSpec::new("stable");
    stable.llm = Some(LlmBehaviour::default());
    let mut canary = UpstreamSpec::new("canary");
    canary.llm = Some(different_canary());
    CanaryRig::start(
        &FilterConfig::new(vec![r]),
        RigOptions {
            concurrency: 2,
            stable,
            canary,
            wasm: Some(paths::llm_filter_wasm()?),
            extra_clusters: vec![(EVALUATOR.to_string(), evaluator.addr())],
            ..RigOptions::default()
        },
    )
    .await
}

/// Sends `n` chat calls (users `user-<first>..`, both API shapes, every third streamed),
/// `parallel` at a time; every answer must be a 200 from stable or canary. Returns how
/// many each version answered.
async fn send(base: &str, first: u32, n: u32, parallel: usize) -> Result<BTreeMap<String, u64>> {
    let client = reqwest::Client::new();
    let results = futures::stream::iter(first..first + n)
        .map(|i| {
            let client = client.clone();
            async move {
                let path = PATHS[i as usize % 2];
                let stream = i % 3 == 0;
                let response = client
                    .post(format!("{base}{path}"))
                    .header("x-user-id", format!("user-{i}"))
                    .header("content-type", "application/json")
                    .body(format!(
                        r#"{{"model":"fake","stream":{stream},"messages":[{{"role":"user","content":"hi user-{i}"}}]}}"#
                    ))
                    .send()
                    .await?;
                let status = response.status().as_u16();
                let served_by =
                    header_text(response.headers(), SERVED_BY).unwrap_or_else(|| "-".into());
                let body = response.bytes().await?;
                anyhow::ensure!(
                    status == 200 && !body.is_empty(),
                    "user-{i}: {status} from {served_by}"
                );
                Ok::<_, anyhow::Error>(served_by)
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await;
    let mut by_version = BTreeMap::new();
    for served_by in results {
        *by_version.entry(served_by?).or_insert(0) += 1;
    }
    Ok(by_version)
}

/// The rollout's eval counters and eval quality counters, by (metric, version).
type EvalView = BTreeMap<(String, String), f64>;

async fn eval_view(envoy: &Envoy) -> Result<EvalView> {
    let samples = envoy.prometheus().await?;
    Ok(samples
        .iter()
        .filter(|s| {
            (s.metric.starts_with("canary_eval_") || s.metric.starts_with("canary_quality_eval_"))
                && s.labels.get("rollout") == Some(ROLLOUT)
        })
        .filter_map(|s| match s.value {
            PromValue::Counter(v) | PromValue::Untyped(v) => Some((
                (
                    s.metric.clone(),
                    s.labels.get("version").unwrap_or("-").to_string(),
                ),
                v,
            )),
            _ => None,
        })
        .collect())
}

fn get(view: &EvalView, metric: &str, version: &str) -> f64 {
    view.get(&(metric.to_string(), version.to_string()))
        .copied()
        .unwrap_or(0.0)
}

fn both(view: &EvalView, metric: &str) -> f64 {
    get(view, metric, "stable") + get(view, metric, "canary")
}

/// Every sampled call is settled: scored, failed or dropped.
fn settled(view: &EvalView) -> bool {
    both(view, "canary_eval_sampled")
        == both(view, "canary_eval_scored")
            + both(view, "canary_eval_failed")
            + both(view, "canary_eval_dropped")
}

/// Issue 7: 10,000 calls at a 10% eval share, half of the users on the canary: each
/// version's calls reach the evaluator at 10% ± 1pp, with the user's request and the answer
/// the user got, and the scores are recorded exactly as the evaluator gave them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_reaches_the_evaluator_at_the_configured_share() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let evaluator = Evaluator::start(judge()).await?;
    let eval = EvalSampling {
        sample_bp: 1_000,
        max_in_flight: 10_000,
        ..EvalSampling::new(EVALUATOR)
    };
    let rig = eval_rig(5_000, eval, &evaluator).await?;
    let answered = send(rig.base(), 0, 10_000, 32).await?;
    let view = eventually(
        "every sampled call scored",
        Duration::from_secs(60),
        || eval_view(rig.envoy()),
        |v| {
            both(v, "canary_eval_sampled") > 0.0
                && both(v, "canary_eval_scored") == both(v, "canary_eval_sampled")
        },
    )
    .await?;
    for version in ["stable", "canary"] {
        let calls = answered.get(version).copied().unwrap_or(0) as f64;
        let sampled = get(&view, "canary_eval_sampled", version);
        let received = evaluator.received_for(version) as f64;
        let share = sampled / calls;
        eprintln!(
            "{version}: {calls} calls, {sampled} sampled ({:.2}%), {received} at the evaluator",
            share * 100.0
        );
        assert!(calls > 4_000.0, "{answered:?}");
        assert!((share - 0.10).abs() <= 0.01, "{version}: share {share}");
        assert_eq!(received, sampled, "{version}");
        assert_eq!(get(&view, "canary_eval_sent", version), sampled);
        assert_eq!(get(&view, "canary_eval_failed", version), 0.0);
        assert_eq!(get(&view, "canary_eval_dropped", version), 0.0);
        // The scores as the judge gave them: count, sum (thousandths), sum of squares.
        let score_milli = if version == "canary" { 600.0 } else { 900.0 };
        let count = get(&view, "canary_quality_eval_count", version);
        assert_eq!(count, sampled, "{version}");
        assert_eq!(
            get(&view, "canary_quality_eval_sum_milli", version),
            count * score_milli
        );
        assert_eq!(
            get(&view, "canary_quality_eval_sumsq_micro", version),
            count * score_milli * score_milli
        );
    }
    // Each evaluation carries the user's request and the answer that user got.
    for e in evaluator.received() {
        assert_eq!(e["rollout"], ROLLOUT, "{e}");
        let content = e["request"]["messages"][0]["content"]
            .as_str()
            .unwrap_or("");
        assert!(content.starts_with("hi user-"), "{e}");
        assert_eq!(e["response"]["status"], 200, "{e}");
        let text = e["response"]["text"].as_str().unwrap_or("");
        let expected = match (e["version"].as_str(), e["request"]["stream"].as_bool()) {
            (Some("stable"), Some(false)) => text == "Sure.",
            (Some("stable"), Some(true)) => text.starts_with("tok0 "),
            (Some("canary"), Some(false)) => text == "Certainly not that.",
            (Some("canary"), Some(true)) => text.starts_with("other0 "),
            _ => false,
        };
        assert!(expected, "{e}");
    }
    Ok(())
}

/// Issue 7: a slow evaluator never delays a user: at most `max_in_flight` evaluations per
/// worker are outstanding, the rest are dropped and counted, and the outstanding ones fail
/// at `timeout_ms`; a failing evaluator's answers count as failed; once it scores again,
/// scores come back. Every sampled call is accounted for as scored, failed or dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_failing_evaluator_costs_samples_not_answers() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let evaluator = Evaluator::start(judge()).await?;
    evaluator.set_delay(Duration::from_secs(30));
    let eval = EvalSampling {
        sample_bp: 10_000,
        max_in_flight: 2,
        timeout_ms: 1_000,
        ..EvalSampling::new(EVALUATOR)
    };
    let rig = eval_rig(5_000, eval, &evaluator).await?;
    let envoy = rig.envoy();

    // Slow: the evaluator takes 30 s; 200 user calls all get their answers meanwhile.
    send(rig.base(), 0, 200, 8).await?;
    let view = eventually(
        "slow evaluator: every call sampled and settled",
        Duration::from_secs(30),
        || eval_view(envoy),
        |v| both(v, "canary_eval_sampled") == 200.0 && settled(v),
    )
    .await?;
    let sent = both(&view, "canary_eval_sent");
    eprintln!("slow evaluator: {view:?}");
    assert!(
        (1.0..=4.0).contains(&sent),
        "2 workers × max_in_flight 2: {view:?}"
    );
    assert_eq!(both(&view, "canary_eval_dropped"), 200.0 - sent);
    assert_eq!(both(&view, "canary_eval_failed"), sent, "timed out at 1 s");
    assert_eq!(both(&view, "canary_eval_scored"), 0.0);

    // Failing: 503 without a score.
    evaluator.set_delay(Duration::ZERO);
    evaluator.set_failing(Some(503));
    send(rig.base(), 200, 100, 1).await?;
    let view = eventually(
        "failing evaluator: settled",
        Duration::from_secs(30),
        || eval_view(envoy),
        |v| both(v, "canary_eval_sampled") == 300.0 && settled(v),
    )
    .await?;
    // (A call may still be dropped: an evaluation in flight while the next calls end.)
    let failed = both(&view, "canary_eval_failed") - sent;
    let dropped = both(&view, "canary_eval_dropped") - (200.0 - sent);
    eprintln!("failing evaluator: {failed} failed, {dropped} dropped");
    assert_eq!(both(&view, "canary_eval_scored"), 0.0, "{view:?}");
    assert!(failed > 0.0 && failed + dropped == 100.0, "{view:?}");

    // Healthy again: every evaluation is scored.
    evaluator.set_failing(None);
    send(rig.base(), 300, 100, 1).await?;
    let view = eventually(
        "healthy evaluator: settled",
        Duration::from_secs(30),
        || eval_view(envoy),
        |v| both(v, "canary_eval_sampled") == 400.0 && settled(v),
    )
    .await?;
    let scored = both(&view, "canary_eval_scored");
    let dropped_now = both(&view, "canary_eval_dropped") - (200.0 - sent) - dropped;
    eprintln!("healthy evaluator: {scored} scored, {dropped_now} dropped");
    assert!(scored > 0.0 && scored + dropped_now == 100.0, "{view:?}");
    assert_eq!(both(&view, "canary_eval_failed"), sent + failed, "{view:?}");
    assert_eq!(both(&view, "canary_quality_eval_count"), scored);
    Ok(())
}

const POLL_MS: u64 = 500;

/// Stages of seconds, 1 s windows; eval scores of half the calls, judged with at least 10
/// scores per version (the default check: 10% below stable fails, seed 002).
fn spec(hold: &str) -> String {
    format!(
        "analysis: {{interval: 1s, failure_limit: 2, min_window_requests: 30}}\n\
         stages:\n  - {{weight_pct: 20, hold: {hold}, min_requests: 100}}\n  - {{weight_pct: 50, hold: 2s, min_requests: 100}}\n  - {{weight_pct: 100}}\n\
         checks:\n  llm:\n    eval: {{min_samples: 10}}\n    cost: {{enabled: false}}\n\
         filter:\n  llm: {{}}\n  eval: {{cluster: {EVALUATOR}, sample_bp: 5000}}\n"
    )
}

async fn controlled(canary: LlmBehaviour, hold: &str) -> Result<(Value, Evaluator)> {
    let evaluator = Evaluator::start(judge()).await?;
    let clusters = vec![(EVALUATOR.to_string(), evaluator.addr())];
    let rig = ControlledRig::start_llm_with(
        ROLLOUT,
        1,
        POLL_MS,
        LlmBehaviour::default(),
        canary,
        clusters,
    )
    .await?;
    let ctl = rig.start_controller(&spec(hold)).await?;
    let load = Load::start(rig.bases.clone(), 2_000, 6, 100);
    let status = wait_status(&ctl, "rollout finished", Duration::from_secs(120), |s| {
        s["phase"] == "promoted" || s["phase"] == "rolled_back"
    })
    .await;
    load.stop().await;
    let status = status?;
    if status["phase"] != "promoted" && status["phase"] != "rolled_back" {
        anyhow::bail!("{}", ctl.log());
    }
    Ok((status, evaluator))
}

/// Issue 7 / seed 002: eval scores 0.6 against stable's 0.9 (33% lower) roll the canary
/// back, and the reason names the eval score.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_eval_scores_roll_the_canary_back() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (status, evaluator) = controlled(different_canary(), "1h").await?;
    assert_eq!(status["phase"], "rolled_back", "{status}");
    let message = rollback_message(&status);
    eprintln!("{message}");
    assert!(
        message.contains("eval score canary 0.600") && message.contains("stable 0.900"),
        "{message}"
    );
    assert!(evaluator.received_for("canary") >= 10);
    Ok(())
}

/// The same judge scoring both versions alike: the eval check passes and the canary is
/// promoted through every stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_eval_scores_let_the_canary_through() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (status, _evaluator) = controlled(LlmBehaviour::default(), "2s").await?;
    assert_eq!(status["phase"], "promoted", "{status}");
    let judged = passing_checks(&status)
        .iter()
        .any(|c| c["check"] == "eval_score" && c["outcome"] == "pass");
    assert!(judged, "no passing eval_score check: {status}");
    Ok(())
}
