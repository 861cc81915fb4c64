//! LLM-aware canaries (issue 5, test 3) end to end: real Envoy with the LLM build of the
//! filter, fake LLM services as stable and canary, and the real controller judging cost,
//! refusals, quality, TTFT and user feedback. Stages are seconds long so the file stays fast.

use std::time::Duration;

use anyhow::Result;
use canary_contract::{RolloutConfig, Version};
use canary_e2e::controller::{
    passing_checks, rollback_message, wait_status, Canaryctl, ControlledRig, TOKEN,
};
use canary_e2e::envoy;
use canary_e2e::fake_llm::LlmBehaviour;
use canary_e2e::load::Load;
use serde_json::{json, Value};

const ROLLOUT: &str = "chat";
const POLL_MS: u64 = 500;

/// The rollout's filter options: LLM signals on every request, the same prices for both
/// versions (so a cost difference is a token difference), the fake's quality headers.
const FILTER: &str = "filter:\n  llm:\n    prices:\n      stable: {input_nano_usd_per_token: 1000, output_nano_usd_per_token: 4000}\n      canary: {input_nano_usd_per_token: 1000, output_nano_usd_per_token: 4000}\n    quality_headers:\n      - {header: x-task-success, signal: task_success}\n      - {header: x-quality-score, signal: quality_score}\n";

/// A spec with 1 s analysis windows; `hold` is the first stage's hold.
fn spec(hold: &str, failure_limit: u32) -> String {
    format!(
        "analysis: {{interval: 1s, failure_limit: {failure_limit}, min_window_requests: 30}}\n\
         stages:\n  - {{weight_pct: 20, hold: {hold}, min_requests: 100}}\n  - {{weight_pct: 50, hold: 2s, min_requests: 100}}\n  - {{weight_pct: 100}}\n\
         checks:\n  llm:\n    cost: {{min_samples: 30}}\n    refusals: {{min_samples: 30}}\n    ttft: {{min_samples: 30}}\n{FILTER}"
    )
}

async fn start(
    stable: LlmBehaviour,
    canary: LlmBehaviour,
    spec_body: &str,
) -> Result<(ControlledRig, Canaryctl)> {
    let rig = ControlledRig::start_llm(ROLLOUT, 1, POLL_MS, stable, canary).await?;
    let ctl = rig.start_controller(spec_body).await?;
    Ok((rig, ctl))
}

async fn run_until_done(rig: &ControlledRig, ctl: &Canaryctl, deadline: Duration) -> Result<Value> {
    let load = Load::start(rig.bases.clone(), 2_000, 6, 100);
    let status = wait_status(ctl, "rollout finished", deadline, |s| {
        s["phase"] == "promoted" || s["phase"] == "rolled_back"
    })
    .await;
    let seen = load.stop().await;
    eprintln!("{} requests sent", seen.len());
    status
}

/// Issue test 3a: a canary answering with twice the completion tokens (≈1.9× the cost per
/// response at equal prices) is rolled back, and the reason names the cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costlier_canary_is_rolled_back_for_cost() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let stable = LlmBehaviour::default();
    let canary = LlmBehaviour {
        completion_tokens: 2 * stable.completion_tokens,
        ..LlmBehaviour::default()
    };
    let (rig, ctl) = start(stable, canary, &spec("1h", 2)).await?;
    let status = run_until_done(&rig, &ctl, Duration::from_secs(90)).await?;
    assert_eq!(status["phase"], "rolled_back", "{}", ctl.log());
    assert_eq!(status["weight_bp"], 0);
    let message = rollback_message(&status);
    eprintln!("{message}");
    assert!(
        message.contains("cost per response") && message.contains("worse than stable"),
        "{message}"
    );
    // 40 + 240 tokens against 40 + 120: $0.001000 vs $0.000520 per answer, exactly.
    assert!(
        message.contains("canary $0.001000") && message.contains("stable $0.000520"),
        "{message}"
    );
    // The judged values are on /metrics too.
    let metrics = ctl.metrics().await?;
    assert!(
        metrics.contains(
            "canary_controller_check_value{rollout=\"chat\",check=\"cost_per_response\",version=\"canary\"} 1000000"
        ),
        "{metrics}"
    );
    Ok(())
}

/// Issue test 3b: a canary refusing 20% of answers against stable's 1% is rolled back for
/// its refusal rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_canary_is_rolled_back_for_refusals() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let stable = LlmBehaviour {
        refusal_rate_bp: 100,
        ..LlmBehaviour::default()
    };
    let canary = LlmBehaviour {
        refusal_rate_bp: 2_000,
        ..LlmBehaviour::default()
    };
    let (rig, ctl) = start(stable, canary, &spec("1h", 2)).await?;
    let status = run_until_done(&rig, &ctl, Duration::from_secs(90)).await?;
    assert_eq!(status["phase"], "rolled_back", "{}", ctl.log());
    let message = rollback_message(&status);
    eprintln!("{message}");
    assert!(
        message.contains("refusal rate canary") && message.contains("worse than stable"),
        "{message}"
    );
    assert!(!message.contains("cost per response canary"), "{message}");
    Ok(())
}

/// The score checks on real Envoy: a canary whose quality header says 0.6 against stable's
/// 0.9 is rolled back by the sequential mean test (its first window already shows it), and
/// the reason names the quality score with both stage means; one succeeding at 70% of tasks
/// against the 90% minimum is rolled back for task success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_scores_roll_the_canary_back() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let lower_quality = LlmBehaviour {
        quality_score_milli: 600,
        ..LlmBehaviour::default()
    };
    let failing_tasks = LlmBehaviour {
        task_success_bp: 7_000,
        ..LlmBehaviour::default()
    };
    let cases: [(LlmBehaviour, &[&str]); 2] = [
        (
            lower_quality,
            &[
                "quality quality_score canary 0.600",
                "vs stable 0.900",
                "worse than stable beyond the limit",
            ],
        ),
        (
            failing_tasks,
            &["task success (task_success) canary", "below the minimum"],
        ),
    ];
    for (canary, expected) in cases {
        let (rig, ctl) = start(LlmBehaviour::default(), canary, &spec("1h", 2)).await?;
        let status = run_until_done(&rig, &ctl, Duration::from_secs(90)).await?;
        assert_eq!(status["phase"], "rolled_back", "{}", ctl.log());
        let message = rollback_message(&status);
        eprintln!("{message}");
        for part in expected {
            assert!(message.contains(part), "{part:?} not in {message}");
        }
    }
    Ok(())
}

/// Issue test 3c: equal LLM signals pass every check and the canary is promoted through
/// every stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_with_equal_signals_is_promoted() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (rig, ctl) = start(
        LlmBehaviour::default(),
        LlmBehaviour::default(),
        &spec("2s", 3),
    )
    .await?;
    let status = run_until_done(&rig, &ctl, Duration::from_secs(120)).await?;
    assert_eq!(status["phase"], "promoted", "{}", ctl.log());
    assert_eq!(status["weight_bp"], 10_000);
    // The passing verdicts did judge the LLM signals, not just the requests.
    let judged: Vec<String> = passing_checks(&status)
        .iter()
        .filter_map(|c| c["check"].as_str().map(str::to_string))
        .collect();
    for check in [
        "cost_per_response",
        "refusal_rate",
        "quality_quality_score",
        "task_success_rate",
        "ttft_p95",
    ] {
        assert!(
            judged.iter().any(|c| c == check),
            "{check} not judged: {judged:?}"
        );
    }
    Ok(())
}

/// Issue 5's late feedback: thumbs up/down posted for users are attributed to the version
/// the filter's hash gave them (checked against the contract, and per-version counts
/// against the controller's), and a canary whose users give many more thumbs-down than
/// stable's is rolled back for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbs_down_feedback_is_attributed_and_rolls_back() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let (rig, ctl) = start(
        LlmBehaviour::default(),
        LlmBehaviour::default(),
        &spec("1h", 2),
    )
    .await?;
    // Bad bodies and missing tokens change nothing.
    let (code, answer) = ctl
        .feedback(&json!({"user": "u1", "rating": "meh"}), Some(TOKEN))
        .await?;
    assert_eq!(code, 400);
    assert_eq!(answer["field"], "rating", "{answer}");
    let (code, answer) = ctl.feedback(&json!({"rating": "up"}), Some(TOKEN)).await?;
    assert_eq!((code, answer["field"].as_str()), (400, Some("user")));
    let (code, _) = ctl
        .feedback(&json!({"user": "u1", "rating": "up"}), None)
        .await?;
    assert_eq!(code, 401);

    let load = Load::start(rig.bases.clone(), 2_000, 4, 50);
    let contract = RolloutConfig::new(ROLLOUT, 2_000);
    let mut sent = [[0u64; 2]; 2]; // [version][up, down]
    let mut i = 0u64;
    let status = loop {
        // Canary users say thumbs-down half the time, stable users one time in twenty.
        for _ in 0..100 {
            i += 1;
            let user = format!("feedback-user-{i}");
            let version = contract.version_for_key(&user);
            let down = match version {
                Version::Canary => i % 2 == 0,
                Version::Stable => i % 20 == 0,
            };
            let (code, answer) = ctl
                .feedback(
                    &json!({"user": user, "rating": if down { "down" } else { "up" }, "rollout": ROLLOUT}),
                    Some(TOKEN),
                )
                .await?;
            assert_eq!(code, 200, "{answer}");
            // Attributed as the contract assigns the user at the weight in force (20%, or 0
            // once rolled back).
            let weight_bp = answer["weight_bp"].as_u64().unwrap_or(u64::MAX) as u32;
            let expected = RolloutConfig::new(ROLLOUT, weight_bp).version_for_key(&user);
            assert_eq!(answer["version"], expected.as_str(), "{user}: {answer}");
            sent[expected.index()][usize::from(down)] += 1;
        }
        let status = ctl.status().await?;
        if status["phase"] == "rolled_back" || i > 200_000 {
            break status;
        }
    };
    load.stop().await;
    assert_eq!(status["phase"], "rolled_back", "{}", ctl.log());
    let message = rollback_message(&status);
    eprintln!("{message}");
    assert!(message.contains("thumbs-down rate canary"), "{message}");
    // The controller counted every rating we sent for the version we computed.
    let f = &status["feedback"];
    let counted = |v: &str, r: &str| f[v][r].as_u64().unwrap_or(u64::MAX);
    assert_eq!(
        counted("canary", "up"),
        sent[Version::Canary.index()][0],
        "{f}"
    );
    assert_eq!(
        counted("canary", "down"),
        sent[Version::Canary.index()][1],
        "{f}"
    );
    assert_eq!(
        counted("stable", "up"),
        sent[Version::Stable.index()][0],
        "{f}"
    );
    assert_eq!(
        counted("stable", "down"),
        sent[Version::Stable.index()][1],
        "{f}"
    );
    eprintln!("feedback counted: {f}");
    Ok(())
}

/// The cost rollback judged from a real Prometheus server scraping the Envoy (the mesh set-up),
/// not the admin endpoint: the LLM series come through the query too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_source_rolls_back_a_costlier_canary() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let stable = LlmBehaviour::default();
    let canary = LlmBehaviour {
        completion_tokens: 2 * stable.completion_tokens,
        ..LlmBehaviour::default()
    };
    let rig = ControlledRig::start_llm(ROLLOUT, 1, POLL_MS, stable, canary).await?;
    let admins: Vec<_> = rig.envoys.iter().map(|e| e.admin_addr()).collect();
    let prometheus =
        canary_e2e::prometheus::Prometheus::start(&admins, Duration::from_secs(1)).await?;
    let sources = format!(
        "sources: {{prometheus: {{url: \"{}\", lag: 2s}}}}\n",
        prometheus.url()
    );
    let ctl = rig
        .start_controller_with_sources(&sources, &spec("1h", 2))
        .await?;
    let status = run_until_done(&rig, &ctl, Duration::from_secs(90)).await?;
    assert_eq!(
        status["phase"],
        "rolled_back",
        "{}\n{}",
        ctl.log(),
        prometheus.log()
    );
    let message = rollback_message(&status);
    eprintln!("prometheus source: {message}");
    assert!(
        message.contains("cost per response canary $0.001000")
            && message.contains("stable $0.000520"),
        "{message}"
    );
    Ok(())
}
