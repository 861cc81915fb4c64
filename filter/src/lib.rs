//! wasm-canary's proxy-wasm HTTP filter.
//!
//! Per request it picks `stable` or `canary` by a sticky hash of the user key, sets the
//! routing header that Envoy's routes match on, and records per-rollout, per-version stats.
//! The logic lives in plain modules tested natively; `glue` only connects them to the host.

pub mod breaker;
pub mod control;
pub mod cookie;
pub mod copy;
#[cfg(feature = "llm")]
pub mod eval;
#[cfg(feature = "fallback")]
pub mod fallback;
#[cfg(feature = "llm")]
pub mod llm;
pub mod metrics;
#[cfg(feature = "llm")]
pub mod ratelimit;
pub mod routing;
#[cfg(feature = "llm")]
pub mod shadow;

#[cfg(target_arch = "wasm32")]
mod glue;
#[cfg(all(target_arch = "wasm32", feature = "fallback"))]
mod glue_fallback;

// Property tests of the plain modules (proptest; native test builds only).
#[cfg(test)]
mod properties;
