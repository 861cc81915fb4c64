//! wasm-canary's proxy-wasm HTTP filter.
//!
//! Per request it picks `stable` or `canary` by a sticky hash of the user key, sets the
//! routing header that Envoy's routes match on, and records per-rollout, per-version stats
//! (except the lean build, feature `lean`, which only routes: docs/lean-mode.md).
//! The logic lives in the plain modules below, tested natively; they import each other
//! and the contract, never `host`. `host` (wasm32 only) only connects them to proxy-wasm:
//! the contexts' callbacks, host calls, and per-request and per-worker state.

// The lean build drops what the LLM build adds to the response path.
#[cfg(all(feature = "lean", feature = "llm"))]
compile_error!("the `lean` feature goes with --no-default-features: lean mode has no LLM signals");

pub mod breaker;
pub mod control;
pub mod cookie;
pub mod copy;
#[cfg(feature = "llm")]
pub mod eval;
#[cfg(feature = "fallback")]
pub mod fallback;
pub mod header_map;
pub mod hold;
pub mod keyed;
#[cfg(feature = "llm")]
pub mod llm;
pub mod metrics;
#[cfg(feature = "llm")]
pub mod ratelimit;
pub mod routing;
#[cfg(feature = "llm")]
pub mod shadow;
pub mod slots;

#[cfg(target_arch = "wasm32")]
mod host;

// Property tests of the plain modules (proptest; native test builds only).
#[cfg(test)]
mod properties;
