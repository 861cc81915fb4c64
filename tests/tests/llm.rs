//! LLM signals (issue 5, tests 1, 2 and 6) on real Envoy with the LLM build of the filter and
//! the fake LLM service: the counters equal what the service sent, streams pass through
//! unchanged and unbuffered, broken bodies are counted as unparsed and reach the client as
//! they were sent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use canary_contract::{
    FilterConfig, LlmSignals, QualityHeader, RolloutConfig, TokenPrice, Version,
};
use canary_e2e::client::header_text;
use canary_e2e::envoy;
use canary_e2e::fake_llm::LlmBehaviour;
use canary_e2e::paths;
use canary_e2e::prom;
use canary_e2e::rig::{CanaryRig, RigOptions};
use canary_e2e::upstream::{UpstreamSpec, SERVED_BY};
use canary_e2e::wait::eventually;
use futures::StreamExt;

const ROLLOUT: &str = "chat";
const PATHS: [&str; 2] = ["/v1/chat/completions", "/v1/messages"];

fn signals() -> LlmSignals {
    let price = |input, output| TokenPrice {
        input_nano_usd_per_token: input,
        output_nano_usd_per_token: output,
    };
    let mut s = LlmSignals {
        path_prefixes: vec!["/v1/".into()],
        max_body_bytes: 64 * 1024,
        quality_headers: vec![
            QualityHeader {
                header: "x-task-success".into(),
                signal: "task_success".into(),
            },
            QualityHeader {
                header: "x-quality-score".into(),
                signal: "quality_score".into(),
            },
        ],
        ..LlmSignals::default()
    };
    s.prices.stable = price(1_000, 2_000);
    s.prices.canary = price(1_000, 4_000);
    s
}

fn rollout(weight_bp: u32) -> RolloutConfig {
    let mut r = RolloutConfig::new(ROLLOUT, weight_bp);
    r.llm = Some(signals());
    r
}

async fn llm_rig(weight_bp: u32, stable: LlmBehaviour, canary: LlmBehaviour) -> Result<CanaryRig> {
    let mut stable_spec = UpstreamSpec::new("stable");
    stable_spec.llm = Some(stable);
    let mut canary_spec = UpstreamSpec::new("canary");
    canary_spec.llm = Some(canary);
    CanaryRig::start(
        &FilterConfig::new(vec![rollout(weight_bp)]),
        RigOptions {
            concurrency: 2,
            stable: stable_spec,
            canary: canary_spec,
            wasm: Some(paths::llm_filter_wasm()?),
            ..RigOptions::default()
        },
    )
    .await
}

/// One chat request; returns who answered and the body, chunk by chunk with arrival times.
async fn chat(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    user: &str,
    stream: bool,
    broken: Option<&str>,
) -> Result<(String, Vec<(Duration, bytes::Bytes)>)> {
    let started = Instant::now();
    let mut request = client
        .post(format!("{base}{path}"))
        .header("x-user-id", user)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model":"fake","stream":{stream},"messages":[]}}"#
        ));
    if let Some(broken) = broken {
        request = request.header("x-llm-broken", broken);
    }
    let response = request.send().await?;
    let served_by = header_text(response.headers(), SERVED_BY).unwrap_or_else(|| "-".into());
    let mut response = response;
    let mut chunks = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        chunks.push((started.elapsed(), chunk));
    }
    Ok((served_by, chunks))
}

fn concat(chunks: &[(Duration, bytes::Bytes)]) -> Vec<u8> {
    chunks.iter().flat_map(|(_, c)| c.to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_counters_equal_what_the_service_sent() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let stable = LlmBehaviour::default();
    let canary = LlmBehaviour {
        completion_tokens: 240,
        refusal_rate_bp: 2_000,
        task_success_bp: 8_000,
        quality_score_milli: 700,
        ..LlmBehaviour::default()
    };
    let rig = llm_rig(5_000, stable.clone(), canary.clone()).await?;
    let client = reqwest::Client::new();
    let mut answered: BTreeMap<Version, u64> = BTreeMap::new();
    // 50 users × (OpenAI, Anthropic) × (JSON, stream), 8 at a time.
    let requests: Vec<(String, &str, bool)> = (0..50)
        .flat_map(|u| {
            PATHS
                .into_iter()
                .flat_map(move |p| [false, true].map(|s| (format!("chatter-{u}"), p, s)))
        })
        .collect();
    let results = futures::stream::iter(
        requests
            .iter()
            .map(|(user, path, stream)| chat(&client, rig.base(), path, user, *stream, None)),
    )
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    for result in results {
        let (served_by, _) = result?;
        let version = match served_by.as_str() {
            "stable" => Version::Stable,
            "canary" => Version::Canary,
            other => anyhow::bail!("answered by {other}"),
        };
        *answered.entry(version).or_default() += 1;
    }
    // A non-LLM path of the same rollout is routed but not read.
    chat(&client, rig.base(), "/healthz", "chatter-0", false, None).await?;

    let config = rollout(5_000);
    let llm = config.llm.as_ref().context("llm")?;
    let envoy = rig.envoy();
    let labels = |v: Version| [("rollout", ROLLOUT), ("version", v.as_str())];
    let samples = eventually(
        "LLM counters and histograms at /stats/prometheus",
        Duration::from_secs(30),
        || envoy.prometheus(),
        |s| {
            Version::ALL.iter().all(|v| {
                let n = answered.get(v).copied().unwrap_or(0) as f64;
                prom::value(s, "canary_llm_responses", &labels(*v)) == Some(n)
                    && prom::value(s, "canary_llm_ttft_ms_count", &labels(*v)) == Some(n)
            })
        },
    )
    .await?;
    for (version, behaviour) in [(Version::Stable, &stable), (Version::Canary, &canary)] {
        let n = answered.get(&version).copied().unwrap_or(0);
        assert!(n > 20, "{n} answers from {version}");
        let value = |metric: &str| prom::value(&samples, metric, &labels(version)).unwrap_or(-1.0);
        let price = llm.prices.of(version);
        let refusals = n * u64::from(behaviour.refusal_rate_bp) / 10_000;
        let successes = n * u64::from(behaviour.task_success_bp) / 10_000;
        let expected = [
            ("canary_llm_responses", n),
            ("canary_llm_unparsed", 0),
            ("canary_llm_input_tokens", n * behaviour.prompt_tokens),
            ("canary_llm_output_tokens", n * behaviour.completion_tokens),
            (
                "canary_llm_cost_nanousd",
                n * price.cost_nano_usd(behaviour.prompt_tokens, behaviour.completion_tokens),
            ),
            ("canary_llm_refusals", refusals),
            ("canary_quality_task_success_count", n),
            ("canary_quality_task_success_sum_milli", successes * 1_000),
            (
                "canary_quality_task_success_sumsq_micro",
                successes * 1_000_000,
            ),
            ("canary_quality_quality_score_count", n),
            (
                "canary_quality_quality_score_sum_milli",
                n * u64::from(behaviour.quality_score_milli),
            ),
            ("canary_llm_stream_ms_count", n),
        ];
        for (metric, want) in expected {
            assert_eq!(value(metric), want as f64, "{version} {metric}");
        }
        // Every request counted by the routing stats, the /healthz one included.
        assert!(value("canary_rq_total") >= n as f64);
    }
    eprintln!("LLM counters exact for {answered:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pass_through_unchanged_and_unbuffered() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let paced = LlmBehaviour {
        first_token_delay: Duration::from_millis(200),
        chunk_delay: Duration::from_millis(100),
        stream_chunks: 5,
        ..LlmBehaviour::default()
    };
    // Weight 0: everyone on stable, whose answers are deterministic (no refusals).
    let rig = llm_rig(0, paced.clone(), paced).await?;
    let client = reqwest::Client::new();
    let direct = format!("http://{}", rig.stable.addr());
    for path in PATHS {
        let (_, through) = chat(&client, rig.base(), path, "streamer", true, None).await?;
        let (_, original) = chat(&client, &direct, path, "streamer", true, None).await?;
        assert_eq!(concat(&through), concat(&original), "{path}: bytes changed");
        // 7 frames, 200 ms then 100 ms apart: they must reach the client as they are sent,
        // not all at the end.
        let first = through.first().context("no body")?.0;
        let last = through.last().context("no body")?.0;
        assert!(through.len() >= 4, "{path}: {} chunks", through.len());
        assert!(
            last - first >= Duration::from_millis(400),
            "{path}: first chunk at {first:?}, last at {last:?}: buffered"
        );
    }
    let envoy = rig.envoy();
    let labels = [("rollout", ROLLOUT), ("version", "stable")];
    let samples = eventually(
        "time to first token recorded",
        Duration::from_secs(30),
        || envoy.prometheus(),
        |s| prom::value(s, "canary_llm_ttft_ms_count", &labels) == Some(2.0),
    )
    .await?;
    let ttft_sum = prom::value(&samples, "canary_llm_ttft_ms_sum", &labels).unwrap_or(0.0);
    let stream_sum = prom::value(&samples, "canary_llm_stream_ms_sum", &labels).unwrap_or(0.0);
    assert!(
        (400.0..1_000.0).contains(&ttft_sum),
        "two answers 200 ms to first token: sum {ttft_sum}"
    );
    assert!(
        stream_sum >= 2.0 * 500.0,
        "two streams of 500+ ms: sum {stream_sum}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_are_unparsed_and_reach_the_client_unchanged() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let rig = llm_rig(0, LlmBehaviour::default(), LlmBehaviour::default()).await?;
    let client = reqwest::Client::new();
    let direct = format!("http://{}", rig.stable.addr());
    let mut sent = 0;
    for broken in ["truncated", "garbage", "oversized"] {
        for path in PATHS {
            for stream in [false, true] {
                let (by, through) =
                    chat(&client, rig.base(), path, "breaker", stream, Some(broken)).await?;
                let (_, original) =
                    chat(&client, &direct, path, "breaker", stream, Some(broken)).await?;
                assert_eq!(by, "stable");
                assert_eq!(
                    concat(&through),
                    concat(&original),
                    "{broken} {path} stream={stream}: body changed"
                );
                sent += 1;
            }
        }
    }
    // The filter survived all of it and still reads good answers.
    chat(&client, rig.base(), PATHS[0], "breaker", true, None).await?;
    let envoy = rig.envoy();
    let labels = [("rollout", ROLLOUT), ("version", "stable")];
    let samples = eventually(
        "unparsed counted",
        Duration::from_secs(30),
        || envoy.prometheus(),
        |s| prom::value(s, "canary_llm_unparsed", &labels) == Some(f64::from(sent)),
    )
    .await?;
    assert_eq!(
        prom::value(&samples, "canary_llm_responses", &labels),
        Some(1.0)
    );
    assert!(!envoy.log().contains("panicked"), "{}", envoy.log_tail(30));
    Ok(())
}
