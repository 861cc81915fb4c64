//! `make bench`, LLM part: what reading LLM answers in the filter costs a streaming client.
//!
//! One fake LLM service (first token after `FIRST_TOKEN_MS`, then paced SSE chunks) behind
//! three paths, measured interleaved, one request at a time:
//! - `direct`: the client talks to the service (no proxy);
//! - `envoy_no_filter`: an Envoy with header-matched routes and no filter;
//! - `envoy_llm_filter`: the same Envoy set-up with the LLM build of the filter reading every
//!   answer (tokens, cost, refusals, time to first token, quality headers);
//! - `envoy_llm_filter_eval`: as `envoy_llm_filter`, with continuous eval sampling of every
//!   call (100%, the worst case; the default is 1%) to a local fake evaluator.
//!
//! `ttft_overhead_ms` = median time to first token through the filter − the same without the
//! filter, both through Envoy, in this run. `eval_overhead_ms` = median time to the end of
//! the answer with eval sampling − the same without, both with the LLM filter. Results:
//! `target/bench/llm.json`. Knobs: `BENCH_LLM_REQUESTS` (300 per path).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use canary_contract::{EvalSampling, FilterConfig, LlmSignals, QualityHeader, RolloutConfig};
use canary_e2e::bootstrap::{CanaryBootstrap, FailurePolicy, Listener, ListenerSource, Routing};
use canary_e2e::envoy::{Envoy, EnvoyOptions};
use canary_e2e::evaluator::{Evaluator, EvaluatorSpec};
use canary_e2e::fake_llm::LlmBehaviour;
use canary_e2e::measure::median;
use canary_e2e::paths;
use canary_e2e::prom;
use canary_e2e::upstream::{Upstream, UpstreamSpec};
use canary_e2e::wait::eventually;
use serde_json::json;

const FIRST_TOKEN_MS: u64 = 20;
const CHUNK_MS: u64 = 5;
const ROUTE_HEADER: &str = "x-canary-version";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Time to the first body chunk and to the end of one streamed chat answer.
async fn streamed_chat(client: &reqwest::Client, url: &str, user: u64) -> Result<(f64, f64)> {
    let started = Instant::now();
    let mut response = client
        .post(url)
        .header("x-user-id", format!("bench-user-{user}"))
        .header("content-type", "application/json")
        .body(r#"{"model":"fake","stream":true,"messages":[]}"#)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    let mut first = None;
    while let Some(_chunk) = response.chunk().await? {
        first.get_or_insert_with(|| started.elapsed());
    }
    let first = first.context("an answer without body")?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok((ms(first), ms(started.elapsed())))
}

fn percentile(mut values: Vec<f64>, q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64 - 1.0) * q).round() as usize;
    values.get(rank).copied().unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let requests = env_or("BENCH_LLM_REQUESTS", 300).max(20);
    let mut spec = UpstreamSpec::new("llm");
    spec.llm = Some(LlmBehaviour {
        first_token_delay: Duration::from_millis(FIRST_TOKEN_MS),
        chunk_delay: Duration::from_millis(CHUNK_MS),
        stream_chunks: 8,
        ..LlmBehaviour::default()
    });
    let service = Upstream::start(spec).await?;
    let evaluator = Evaluator::start(EvaluatorSpec::default()).await?;

    let mut rollout = RolloutConfig::new("bench", 5_000);
    rollout.llm = Some(LlmSignals {
        path_prefixes: vec!["/v1/".into()],
        quality_headers: vec![QualityHeader {
            header: "x-quality-score".into(),
            signal: "quality_score".into(),
        }],
        ..LlmSignals::default()
    });
    let mut evaluated = rollout.clone();
    evaluated.eval = Some(EvalSampling {
        sample_bp: 10_000,
        ..EvalSampling::new("evaluator")
    });
    let cases = [
        (
            "envoy_no_filter",
            Routing::HeaderOnly {
                route_header: ROUTE_HEADER.into(),
            },
        ),
        (
            "envoy_llm_filter",
            Routing::Filter {
                wasm: paths::llm_filter_wasm()?,
                config_json: FilterConfig::new(vec![rollout]).to_json(),
                route_header: ROUTE_HEADER.into(),
                failure_policy: FailurePolicy::FailReload,
            },
        ),
        (
            "envoy_llm_filter_eval",
            Routing::Filter {
                wasm: paths::llm_filter_wasm()?,
                config_json: FilterConfig::new(vec![evaluated]).to_json(),
                route_header: ROUTE_HEADER.into(),
                failure_policy: FailurePolicy::FailReload,
            },
        ),
    ];
    let mut targets = vec![(
        "direct".to_string(),
        None,
        format!("http://{}/v1/chat/completions", service.addr()),
    )];
    for (name, routing) in cases {
        let bootstrap = CanaryBootstrap {
            listener: ListenerSource::Static(Listener { port: 0, routing }),
            stable: service.addr(),
            canary: service.addr(),
            stats_flush_ms: 5_000,
            extra_clusters: vec![("evaluator".to_string(), evaluator.addr())],
        }
        .to_json();
        let envoy = Envoy::start(
            &bootstrap,
            EnvoyOptions {
                concurrency: 1,
                name: format!("bench-{name}"),
                ..Default::default()
            },
        )
        .await?;
        let url = format!("{}/v1/chat/completions", envoy.url().await?);
        targets.push((name.to_string(), Some(envoy), url));
    }

    let client = reqwest::Client::new();
    // Warm-up: connections open, V8 tiers up.
    for (_, _, url) in &targets {
        for user in 0..20 {
            streamed_chat(&client, url, user).await?;
        }
    }
    // Interleaved, one request at a time, so every path sees the same machine moments.
    let mut ttft: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut total: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for n in 0..requests {
        for k in 0..targets.len() {
            let i = (n as usize + k) % targets.len();
            let (first, all) = streamed_chat(&client, &targets[i].2, n).await?;
            ttft[i].push(first);
            total[i].push(all);
        }
    }

    // The filter must really have read every answer, or the figure means nothing. (The last
    // answer is counted when its stream ends in Envoy, just after the client saw it.)
    let sent = (20 + requests) as f64;
    for envoy in targets.iter().skip(2).filter_map(|t| t.1.as_ref()) {
        let read_answers = || async {
            let samples = envoy.prometheus().await?;
            Ok(["stable", "canary"]
                .iter()
                .filter_map(|v| {
                    prom::value(
                        &samples,
                        "canary_llm_responses",
                        &[("rollout", "bench"), ("version", v)],
                    )
                })
                .sum::<f64>())
        };
        eventually(
            "the filter read every answer",
            Duration::from_secs(10),
            read_answers,
            |read| *read == sent,
        )
        .await?;
    }
    // And every call of the eval case reached the evaluator.
    eventually(
        "every call evaluated",
        Duration::from_secs(10),
        || async { Ok(evaluator.received().len()) },
        |n| *n as f64 == sent,
    )
    .await?;

    let mut cases = serde_json::Map::new();
    let mut medians = Vec::new();
    let mut total_medians = Vec::new();
    for (i, (name, _, _)) in targets.iter().enumerate() {
        let ttft_median = median(ttft[i].clone());
        medians.push(ttft_median);
        total_medians.push(median(total[i].clone()));
        cases.insert(
            name.clone(),
            json!({
                "ttft_median_ms": ttft_median,
                "ttft_p95_ms": percentile(ttft[i].clone(), 0.95),
                "stream_median_ms": median(total[i].clone()),
            }),
        );
    }
    let overhead = medians[2] - medians[1];
    // The same difference per interleaved request pair, to show the spread.
    let paired: Vec<f64> = ttft[2].iter().zip(&ttft[1]).map(|(f, n)| f - n).collect();
    let eval_overhead = total_medians[3] - total_medians[2];
    let eval_paired: Vec<f64> = total[3].iter().zip(&total[2]).map(|(e, f)| e - f).collect();
    let report = json!({
        "settings": {
            "requests_per_path": requests, "first_token_delay_ms": FIRST_TOKEN_MS,
            "chunk_delay_ms": CHUNK_MS, "stream_chunks": 8, "envoy_workers": 1,
            "sequential": true,
        },
        "cases": cases,
        "ttft_overhead_ms": overhead,
        "ttft_overhead_paired_median_ms": median(paired.clone()),
        "ttft_overhead_paired_p95_ms": percentile(paired, 0.95),
        "ttft_envoy_vs_direct_ms": medians[1] - medians[0],
        "eval_sample_pct": 100,
        "eval_overhead_ms": eval_overhead,
        "eval_overhead_paired_median_ms": median(eval_paired.clone()),
        "eval_overhead_paired_p95_ms": percentile(eval_paired, 0.95),
        "eval_ttft_overhead_ms": medians[3] - medians[2],
    });
    let dir = paths::project_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("llm.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    println!(
        "ttft_overhead_ms = {overhead:.3} (filter {:.2} ms vs no filter {:.2} ms vs direct {:.2} ms, medians); wrote {}",
        medians[2],
        medians[1],
        medians[0],
        out.display()
    );
    println!(
        "eval_overhead_ms = {eval_overhead:.3} (every call evaluated {:.2} ms vs none {:.2} ms, medians to the end of the answer)",
        total_medians[3], total_medians[2]
    );
    Ok(())
}
