//! `make bench`, second view: the instructions each proxy of `bench` executes per request,
//! counted by valgrind's callgrind. Requests/s on this machine drift by ±20% from one
//! run to the next; instruction counts repeat to within a fraction of a percent, so they
//! show what a change to the filter costs, and where the cost is:
//! - `wasm_noop` − `native_hash_split`: Envoy entering a wasm VM at all;
//! - `wasm_reads` − `wasm_noop`: reading the user key and `:status`, which no filter with
//!   this job can skip;
//! - `wasm_floor` − `wasm_noop`: the calls into Envoy any filter with this job makes;
//! - `filter` − `wasm_floor`: the filter's own code (matching, hashing, its per-request
//!   state);
//! - `filter_host_path_match` − `filter`: matching on host and path besides the key (three
//!   request headers, read in one call);
//! - `lean` − `native_hash_split`: the lean build, which only routes (stats from the
//!   clusters, no response callbacks);
//! - `native_module` − `native_hash_split`: the same filter as an Envoy Dynamic Module.
//!
//! Each proxy runs under callgrind with instrumentation off until it has served a warm-up,
//! then counts a fixed number of requests sent one at a time. User-space instructions
//! only: the kernel's share (sockets) is the same for every case. Results go to
//! `target/bench/instructions.json`. Knobs: `BENCH_INSTR_REQUESTS` (2000);
//! `BENCH_INSTR_PARALLEL` (1: requests in flight; 32 gives the same differences);
//! `BENCH_INSTR_ONLY` (comma-separated case names: count only those, write no report).

use anyhow::{ensure, Result};
use canary_e2e::bench_cases::{self, USER_HEADER};
use canary_e2e::bootstrap::direct_response_bootstrap;
use canary_e2e::callgrind;
use canary_e2e::envoy::{Envoy, EnvoyOptions};
use canary_e2e::paths;
use futures::StreamExt;
use serde_json::json;

/// Requests before counting starts (`BENCH_INSTR_WARMUP`).
const WARMUP_REQUESTS: usize = 300;
const WARMUP_IN_FLIGHT: usize = 8;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let requests: usize = std::env::var("BENCH_INSTR_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    ensure!(requests > 0, "BENCH_INSTR_REQUESTS must be positive");
    let parallel: usize = std::env::var("BENCH_INSTR_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let warmup: usize = std::env::var("BENCH_INSTR_WARMUP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(WARMUP_REQUESTS);
    let dir = paths::project_root().join("target/bench/callgrind");
    std::fs::create_dir_all(&dir)?;
    let upstream = Envoy::start(
        &direct_response_bootstrap("ok\n"),
        EnvoyOptions {
            name: "bench-upstream".into(),
            ..Default::default()
        },
    )
    .await?;
    let upstream_addr = upstream.listener_addr().await?;
    let client = reqwest::Client::new();

    let only = std::env::var("BENCH_INSTR_ONLY").ok();
    let mut per_request = serde_json::Map::new();
    for case in bench_cases::all()? {
        if only
            .as_deref()
            .is_some_and(|only| !only.split(',').any(|name| name == case.name))
        {
            continue;
        }
        let out = dir.join(format!("{}.out", case.name));
        // A dump left by an earlier run must not pass for this one's.
        let _ = std::fs::remove_file(out.with_extension("out.1"));
        let envoy = callgrind::start_envoy(
            &case.bootstrap(upstream_addr),
            format!("callgrind-{}", case.name),
            &out,
        )
        .await?;
        let url = format!("{}/", envoy.url().await?);
        // Distinct users, the same sequence for every case.
        let warmed: Vec<Result<()>> = futures::stream::iter(0..warmup)
            .map(|i| send(&client, &url, i))
            .buffer_unordered(WARMUP_IN_FLIGHT)
            .collect()
            .await;
        warmed.into_iter().collect::<Result<()>>()?;
        let pid = envoy.pid().to_string();
        callgrind::control(&["-i", "on", &pid])?;
        let results: Vec<Result<()>> = futures::stream::iter(0..requests)
            .map(|i| send(&client, &url, warmup + i))
            .buffer_unordered(parallel)
            .collect()
            .await;
        for result in results {
            result?;
        }
        callgrind::control(&["-d", &pid])?;
        let total = callgrind::dumped_total(&out.with_extension("out.1")).await?;
        let instructions = total as f64 / requests as f64;
        eprintln!(
            "{:>18}: {instructions:>9.0} instructions/request",
            case.name
        );
        per_request.insert(case.name.to_string(), json!(instructions.round()));
        drop(envoy);
    }

    if only.is_some() {
        return Ok(());
    }
    let get = |name: &str| per_request[name].as_f64().unwrap_or(f64::NAN);
    let native = get("native_hash_split");
    let report = json!({
        "settings": {
            "requests_counted": requests, "warmup_requests": warmup,
            "counter": "valgrind --tool=callgrind, user-space instructions of the proxy process",
            "envoy_workers": 1, "requests_in_flight": parallel
        },
        "instructions_per_request": per_request,
        "over_native_hash_split": {
            "filter": get("filter") - native,
            "filter_passthrough": get("filter_passthrough") - native,
            "filter_host_path_match": get("filter_host_path_match") - native,
            "lean": get("lean") - native,
            "native_module": get("native_module") - native,
            "wasm_floor": get("wasm_floor") - native,
            "wasm_reads": get("wasm_reads") - native,
            "wasm_noop": get("wasm_noop") - native,
        },
        "breakdown_of_filter_over_native": {
            "vm_entries": get("wasm_noop") - native,
            "calls_into_envoy": get("wasm_floor") - get("wasm_noop"),
            "of_which_reading_key_and_status": get("wasm_reads") - get("wasm_noop"),
            "filter_own_code": get("filter") - get("wasm_floor"),
        },
        "filter_vs_native_instr": native / get("filter"),
        // The bound: the filter within 2% of the floor (≤ 1.02).
        "filter_vs_wasm_floor_instr": get("filter") / get("wasm_floor"),
        "filter_host_path_match_vs_native_instr": native / get("filter_host_path_match"),
        "lean_vs_native_instr": native / get("lean"),
        "native_module_vs_native_instr": native / get("native_module"),
        "wasm_floor_vs_native_instr": native / get("wasm_floor"),
        "wasm_reads_vs_native_instr": native / get("wasm_reads"),
    });
    let path = paths::project_root().join("target/bench/instructions.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!(
        "instructions/request: native {native:.0}, filter {:.0} (+{:.0}), lean {:.0} ({:.3} of \
         native), native module {:.0} ({:.3} of native), floor of any filter doing its calls {:.0} (+{:.0}); wrote {}",
        get("filter"),
        get("filter") - native,
        get("lean"),
        native / get("lean"),
        get("native_module"),
        native / get("native_module"),
        get("wasm_floor"),
        get("wasm_floor") - native,
        path.display()
    );
    Ok(())
}

async fn send(client: &reqwest::Client, url: &str, i: usize) -> Result<()> {
    let response = client
        .get(url)
        .header(
            USER_HEADER,
            format!("user-{}", i.wrapping_mul(7919) % 1_000_003),
        )
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    response.bytes().await?;
    Ok(())
}
