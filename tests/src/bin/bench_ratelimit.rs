//! `make bench`, rate-limit part: the LLM module's instructions per request when every
//! request brings a new anonymous user into a full table of 100k users whose buckets are
//! still refilling (what used to make each new key scan the whole table), against a small
//! table. Every answer is an event stream delivered in 16-byte chunks, each a body callback
//! of its own in the filter (see `canary_e2e::sse_upstream`).
//!
//! One Envoy (one worker) per case under callgrind, instrumentation off until the counted
//! requests; the same rollout (tokens per period, anonymous cookie on, no user header) in
//! every case, only the table's size and who sends the requests differ:
//! - `small_table`: 100 returning anonymous users (they send their `canary_uid` cookie back),
//!   all in a table that never fills;
//! - `small_table_full`: `max_users` 100; each request a new anonymous user (no cookie, so
//!   the filter issues a fresh id), so each one forgets the least recently seen user;
//! - `full_table`: `max_users` 100k, first filled (uninstrumented, in parallel) by 100k new
//!   anonymous users whose answers report `FILL_TOKENS` tokens, so every bucket is in debt
//!   for hours; then new anonymous users as in `small_table_full`.
//!
//! Results: `target/bench/ratelimit.json`. The ratio to `small_table` is a figure, not a
//! test: the program fails only when a request, a check or the counter fails. Knobs:
//! `BENCH_RATELIMIT_REQUESTS` (200 counted per case), `BENCH_RATELIMIT_FILL` (100000).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use canary_contract::{FilterConfig, LlmSignals, RateLimit, RolloutConfig};
use canary_e2e::bootstrap::{CanaryBootstrap, FailurePolicy, Listener, ListenerSource, Routing};
use canary_e2e::callgrind;
use canary_e2e::paths;
use canary_e2e::prom;
use canary_e2e::sse_upstream::{self, SseUpstream, CHUNK_BYTES};
use canary_e2e::wait::eventually;
use futures::StreamExt;
use serde_json::json;

const ROLLOUT: &str = "bench";
const COOKIE: &str = "canary_uid";
const RETURNING_USERS: usize = 100;
const FULL_TABLE_USERS: u32 = 100_000;
const SMALL_TABLE_USERS: u32 = 100;
/// A user's allowance per period (an hour, the longest allowed): a fill answer's
/// `FILL_TOKENS` puts the bucket ten periods in debt, so no filled user is full again.
const TOKENS_PER_PERIOD: u64 = 100_000;
const PERIOD_MS: u64 = 3_600_000;
/// Streamed requests before counting, uninstrumented: V8 tiers the body path up.
const STREAM_WARMUP: usize = 200;
const FILL_PARALLEL: usize = 32;
/// Filled users asked again after the fill: each must be refused (tracked, in debt).
const PROBES: usize = 20;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Case {
    name: &'static str,
    max_users: u32,
    /// Returning anonymous users cycled through, or `None`: a new one per request.
    returning: Option<usize>,
    fill: usize,
}

fn filter_config(max_users: u32) -> String {
    let mut rollout = RolloutConfig::new(ROLLOUT, 5_000);
    rollout.llm = Some(LlmSignals {
        path_prefixes: vec!["/v1/".into()],
        ..LlmSignals::default()
    });
    rollout.rate_limit = Some(RateLimit {
        tokens_per_minute: Some(TOKENS_PER_PERIOD),
        refill_period_ms: PERIOD_MS,
        max_users,
        ..RateLimit::default()
    });
    FilterConfig::new(vec![rollout]).to_json()
}

/// The anonymous id the filter set in `response`, if any.
fn issued_id(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{COOKIE}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
}

fn chat(client: &reqwest::Client, url: &str, cookie: Option<&str>) -> reqwest::RequestBuilder {
    let request = client
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"model":"bench","stream":true,"messages":[]}"#);
    match cookie {
        Some(id) => request.header("cookie", format!("{COOKIE}={id}")),
        None => request,
    }
}

/// One fill request from a new anonymous user: the id the filter gave them.
async fn fill_one(client: &reqwest::Client, url: &str) -> Result<String> {
    let response = chat(client, url, None)
        .header("x-bench-fill", "1")
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "fill answered {}",
        response.status()
    );
    let id = issued_id(&response).context("a fill answer without an anonymous id")?;
    response.bytes().await?;
    Ok(id)
}

/// One streamed call in lockstep with the upstream: the body chunks the client received.
async fn streamed(
    client: &reqwest::Client,
    url: &str,
    upstream: &SseUpstream,
    cookie: Option<&str>,
) -> Result<usize> {
    let (id, acks) = upstream.expect();
    let mut response = chat(client, url, cookie)
        .header("x-bench-id", id.to_string())
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    // A new user must have been given a fresh id; a returning one keeps theirs.
    ensure!(
        issued_id(&response).is_some() == cookie.is_none(),
        "anonymous cookie set: {}, user sent one: {}",
        issued_id(&response).is_some(),
        cookie.is_some()
    );
    let (mut received, mut chunks) = (0, 0);
    while let Some(chunk) = response.chunk().await? {
        received += chunk.len();
        chunks += 1;
        let _ = acks.send(received);
    }
    let expected = sse_upstream::stream_body().len();
    ensure!(
        received == expected,
        "received {received} of {expected} body bytes"
    );
    Ok(chunks)
}

fn summed(samples: &[prom::Sample], metric: &str) -> f64 {
    ["stable", "canary"]
        .iter()
        .filter_map(|v| prom::value(samples, metric, &[("rollout", ROLLOUT), ("version", v)]))
        .sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let counted = env_or("BENCH_RATELIMIT_REQUESTS", 200).max(1);
    let fill = env_or("BENCH_RATELIMIT_FILL", FULL_TABLE_USERS as usize);
    let cases = [
        Case {
            name: "small_table",
            max_users: FULL_TABLE_USERS,
            returning: Some(RETURNING_USERS),
            fill: 0,
        },
        Case {
            name: "small_table_full",
            max_users: SMALL_TABLE_USERS,
            returning: None,
            fill: 0,
        },
        Case {
            name: "full_table",
            max_users: FULL_TABLE_USERS,
            returning: None,
            fill,
        },
    ];
    let dir = paths::project_root().join("target/bench/callgrind");
    std::fs::create_dir_all(&dir)?;
    let upstream = SseUpstream::start().await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let frames = sse_upstream::stream_body().len().div_ceil(CHUNK_BYTES);
    let mut results = serde_json::Map::new();
    let mut per_request = Vec::new();
    for case in &cases {
        let started = Instant::now();
        let out = dir.join(format!("ratelimit-{}.out", case.name));
        let _ = std::fs::remove_file(out.with_extension("out.1"));
        let bootstrap = CanaryBootstrap {
            listener: ListenerSource::Static(Listener {
                port: 0,
                routing: Routing::Filter {
                    wasm: paths::llm_filter_wasm()?,
                    config_json: filter_config(case.max_users),
                    route_header: "x-canary-version".into(),
                    failure_policy: FailurePolicy::FailReload,
                },
            }),
            stable: upstream.addr(),
            canary: upstream.addr(),
            stats_flush_ms: 5_000,
            extra_clusters: Vec::new(),
        }
        .to_json();
        let envoy = callgrind::start_envoy(
            &bootstrap,
            format!("callgrind-ratelimit-{}", case.name),
            &out,
        )
        .await?;
        let url = format!("{}/v1/chat/completions", envoy.url().await?);

        // The fill: new anonymous users in parallel, each left in debt.
        let fill_started = Instant::now();
        let ids: Vec<Result<String>> = futures::stream::iter(0..case.fill)
            .map(|_| fill_one(&client, &url))
            .buffer_unordered(FILL_PARALLEL)
            .collect()
            .await;
        let ids = ids.into_iter().collect::<Result<Vec<_>>>()?;
        let fill_s = fill_started.elapsed().as_secs_f64();
        let distinct = ids.iter().collect::<HashSet<_>>().len();
        ensure!(
            distinct == case.fill,
            "{distinct} distinct anonymous ids of {}",
            case.fill
        );
        // Nobody was forgotten yet (exactly `max_users` users): every filled user asked
        // again is tracked and refused for their debt.
        let probes: Vec<&String> = ids.iter().step_by((ids.len() / PROBES).max(1)).collect();
        for id in &probes {
            let status = chat(&client, &url, Some(id)).send().await?.status();
            ensure!(status == 429, "filled user {id} answered {status}, not 429");
        }

        let returning: Vec<String> = (1..=case.returning.unwrap_or(0))
            .map(|i| format!("{i:032x}"))
            .collect();
        let user =
            |i: usize| (!returning.is_empty()).then(|| returning[i % returning.len()].as_str());
        for i in 0..STREAM_WARMUP {
            streamed(&client, &url, &upstream, user(i)).await?;
        }
        let pid = envoy.pid().to_string();
        callgrind::control(&["-i", "on", &pid])?;
        let mut chunks = 0;
        for i in 0..counted {
            chunks += streamed(&client, &url, &upstream, user(STREAM_WARMUP + i)).await?;
        }
        callgrind::control(&["-d", &pid])?;
        callgrind::control(&["-i", "off", &pid])?;
        let total = callgrind::dumped_total(&out.with_extension("out.1")).await?;
        let instructions = total as f64 / counted as f64;

        // Every answer read by the filter, parsed, and nobody refused but the probes.
        let answers = (case.fill + STREAM_WARMUP + counted) as f64;
        let samples = eventually(
            "the filter read every answer",
            Duration::from_secs(30),
            || envoy.prometheus(),
            |s| summed(s, "canary_llm_responses") == answers,
        )
        .await?;
        let unparsed = summed(&samples, "canary_llm_unparsed");
        ensure!(unparsed == 0.0, "{unparsed} answers unparsed");
        let refused = summed(&samples, "canary_ratelimit_rejected_tokens");
        ensure!(
            refused == probes.len() as f64,
            "{refused} refused for tokens, {} probes",
            probes.len()
        );
        ensure!(
            upstream.ack_timeouts() == 0,
            "{} frames left without lockstep",
            upstream.ack_timeouts()
        );
        let case_s = started.elapsed().as_secs_f64();
        eprintln!(
            "{:>17}: {instructions:>9.0} instructions/request ({:.0} body chunks per answer; \
             fill {fill_s:.0} s; case {case_s:.0} s)",
            case.name,
            chunks as f64 / counted as f64
        );
        per_request.push(instructions);
        results.insert(
            case.name.to_string(),
            json!({
                "instructions_per_request": instructions.round(),
                "max_users": case.max_users,
                "returning_users": case.returning,
                "new_anonymous_user_per_request": case.returning.is_none(),
                "filled_users": case.fill,
                "fill_seconds": fill_s,
                "fill_requests_per_s": if case.fill > 0 { case.fill as f64 / fill_s } else { 0.0 },
                "body_chunks_per_answer_at_client": chunks as f64 / counted as f64,
                "case_seconds": case_s,
            }),
        );
        drop(envoy);
    }

    let ratio = per_request[2] / per_request[0];
    let ratio_small_full = per_request[2] / per_request[1];
    let report = json!({
        "settings": {
            "requests_counted_per_case": counted, "stream_warmup_requests": STREAM_WARMUP,
            "fill_parallel": FILL_PARALLEL, "probes_refused_after_fill": PROBES,
            "counter": "valgrind --tool=callgrind, user-space instructions of the proxy process",
            "envoy_workers": 1, "requests_in_flight": 1,
            "tokens_per_period": TOKENS_PER_PERIOD, "refill_period_ms": PERIOD_MS,
            "fill_answer_tokens": sse_upstream::FILL_TOKENS,
            "answer_tokens": sse_upstream::PROMPT_TOKENS + sse_upstream::COMPLETION_TOKENS,
            "chunk_bytes": CHUNK_BYTES, "answer_bytes": sse_upstream::stream_body().len(),
            "frames_per_answer": frames,
            "delivery": "lockstep: each 16-byte frame is written once the client received the one before, so none is coalesced",
        },
        "cases": results,
        "full_table_vs_small_table": ratio,
        "full_table_within_10_percent": ratio <= 1.10,
        "full_table_vs_small_table_full": ratio_small_full,
    });
    let path = paths::project_root().join("target/bench/ratelimit.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!(
        "instructions/request: small table {:.0}, small full table {:.0}, full table of {} \
         {:.0} (x{ratio:.3} of small: {}); wrote {}",
        per_request[0],
        per_request[1],
        cases[2].fill,
        per_request[2],
        if ratio <= 1.10 {
            "within 10%"
        } else {
            "NOT within 10%"
        },
        path.display()
    );
    Ok(())
}
