//! The proxies `make bench` compares, shared by the throughput benchmark (`bench`) and the
//! instruction count (`bench_instructions`): each is an Envoy with one worker in front of
//! the same upstream, routing by the user header one way or another.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use canary_contract::{FilterConfig, RolloutConfig, StatsFrom};
use serde_json::Value;

use crate::bootstrap::{
    CanaryBootstrap, FailurePolicy, Listener, ListenerSource, NativeRoutes, Routing,
};
use crate::paths;

pub const CANARY_WEIGHT_BP: u32 = 1_000;
pub const USER_HEADER: &str = "x-user-id";
pub const ROUTE_HEADER: &str = "x-canary-version";
/// The host the benchmarks' requests go to (loopback).
pub const BENCH_HOST: &str = "127.0.0.1";
/// Longer than one case's counted requests take (Envoy takes at most 5 minutes).
const STATS_FLUSH_MS: u64 = 290_000;

/// One proxy under test.
#[derive(Debug, Clone)]
pub struct BenchCase {
    pub name: &'static str,
    pub routing: Routing,
}

impl BenchCase {
    /// Its Envoy's bootstrap, with both versions' clusters on `upstream`.
    pub fn bootstrap(&self, upstream: SocketAddr) -> Value {
        CanaryBootstrap {
            listener: ListenerSource::Static(Listener {
                port: 0,
                routing: self.routing.clone(),
            }),
            stable: upstream,
            canary: upstream,
            // Envoy's stats flush runs on a timer, not per request: once in a counted run
            // or twice made ±300 instructions a request of noise in `bench_instructions`.
            stats_flush_ms: STATS_FLUSH_MS,
            extra_clusters: Vec::new(),
        }
        .to_json()
    }
}

/// Every case, in report order:
/// - `header_route`: header-matched routes, no filter (routing itself costs nothing);
/// - `native_hash_split`: `weighted_clusters` + `use_hash_policy` on the user header, the
///   zero-wasm alternative a user could pick;
/// - `filter`: canary-filter doing the same 10% split, with its stats;
/// - `filter_passthrough`: the same module with a rollout that matches no request;
/// - `filter_host_path_match`: the same split by a rollout that matches on host and path
///   (three request headers, which the filter reads in one call);
/// - `lean`: the lean build (`canary_filter_lean.wasm`) doing the same split with no stats
///   of its own (each version's come from its cluster's) and no response callbacks;
/// - `native_module`: the same filter built as an Envoy Dynamic Module
///   (`libcanary_filter.so`), the same configuration and stats, routed by the module's
///   cluster specifier as Envoy picks the route;
/// - `native_module_header_routes`: the same module with the wasm build's header-matched
///   routes (the filter sets the header and has Envoy pick the route again);
/// - `wasm_noop`: a hand-written module that does nothing: the fixed price of any wasm
///   filter (Envoy entering the VM three times per request, as it enters canary-filter);
/// - `wasm_reads`: a hand-written module that only reads the two values no sticky split
///   with per-version status stats can do without (the user key, `:status`);
/// - `wasm_floor`: a hand-written module making exactly the calls into Envoy that the
///   filter makes per routed request, and nothing else: the least any proxy-wasm filter
///   with the same job can cost. `filter` − `wasm_floor` is the filter's own code.
pub fn all() -> Result<Vec<BenchCase>> {
    let wasm = paths::filter_wasm()?;
    let filter_config = FilterConfig::new(vec![RolloutConfig::new("bench", CANARY_WEIGHT_BP)]);
    let mut unmatched = RolloutConfig::new("bench", CANARY_WEIGHT_BP);
    unmatched.request_match.path_prefix = Some("/no-such-prefix/".into());
    let passthrough_config = FilterConfig::new(vec![unmatched]);
    // Matching on host and path reads three request headers: all at once.
    let mut matched = RolloutConfig::new("bench", CANARY_WEIGHT_BP);
    matched.request_match.hosts = vec![BENCH_HOST.into()];
    matched.request_match.path_prefix = Some("/".into());
    let matched_config = FilterConfig::new(vec![matched]);
    let mut lean = RolloutConfig::new("bench", CANARY_WEIGHT_BP);
    lean.stats = StatsFrom::Clusters;
    lean.anonymous_cookie.enabled = false;
    let lean_config = FilterConfig::new(vec![lean]);
    let module = |wasm: PathBuf, config: &FilterConfig| Routing::Filter {
        wasm,
        config_json: config.to_json(),
        route_header: ROUTE_HEADER.into(),
        failure_policy: FailurePolicy::FailReload,
    };
    Ok(vec![
        BenchCase {
            name: "header_route",
            routing: Routing::HeaderOnly {
                route_header: ROUTE_HEADER.into(),
            },
        },
        BenchCase {
            name: "native_hash_split",
            routing: Routing::NativeHashSplit {
                user_header: USER_HEADER.into(),
                canary_weight_bp: CANARY_WEIGHT_BP,
            },
        },
        BenchCase {
            name: "filter",
            routing: module(wasm.clone(), &filter_config),
        },
        BenchCase {
            name: "filter_passthrough",
            routing: module(wasm.clone(), &passthrough_config),
        },
        BenchCase {
            name: "filter_host_path_match",
            routing: module(wasm, &matched_config),
        },
        BenchCase {
            name: "lean",
            routing: module(paths::lean_filter_wasm()?, &lean_config),
        },
        BenchCase {
            name: "native_module",
            routing: Routing::NativeFilter {
                module: paths::native_module()?,
                config_json: filter_config.to_json(),
                route_header: ROUTE_HEADER.into(),
                routes: NativeRoutes::Specifier,
            },
        },
        BenchCase {
            name: "native_module_header_routes",
            routing: Routing::NativeFilter {
                module: paths::native_module()?,
                config_json: filter_config.to_json(),
                route_header: ROUTE_HEADER.into(),
                routes: NativeRoutes::Header,
            },
        },
        // The reference modules ignore their configuration.
        BenchCase {
            name: "wasm_noop",
            routing: module(reference_module("noop")?, &filter_config),
        },
        BenchCase {
            name: "wasm_reads",
            routing: module(reference_module("reads")?, &filter_config),
        },
        BenchCase {
            name: "wasm_floor",
            routing: module(reference_module("floor")?, &filter_config),
        },
    ])
}

/// Compiles `tests/fixtures/bench/<name>.wat` to `target/bench/<name>.wasm` with
/// binaryen's `wasm-as` (installed by `make setup` with `wasm-opt`).
fn reference_module(name: &str) -> Result<PathBuf> {
    let root = paths::project_root();
    let source = root
        .join("tests/fixtures/bench")
        .join(format!("{name}.wat"));
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("{name}.wasm"));
    let status = Command::new("wasm-as")
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .status()
        .context("running wasm-as (binaryen; `make setup` installs it)")?;
    if !status.success() {
        bail!("wasm-as failed on {}", source.display());
    }
    Ok(out)
}
