//! The contract between the wasm-canary controller and its proxy-wasm filter.
//!
//! Everything that crosses the process boundary lives here, once: the filter's JSON
//! configuration (typed, versioned, validated on load), the sticky bucketing function
//! both sides use to agree on which version a user gets, and the names of the stats the
//! filter emits and the controller reads.
//!
//! What lives where, and what may import what (one way, no cycles): [`Version`] here and
//! `validate` (errors, `Validator`, name predicates), `bucket` and `stats` (stat names) are
//! leaves, and so is `controller_source` (where a filter polls); `grpc` (how gRPC answers
//! count in the response classes) imports `stats`; `keys` (allow and deny lists as key
//! hashes) imports `bucket`; the configuration's parts (`breaker`, `lean`, `llm`, `ratelimit`,
//! `shadow`; then `fallback` on `breaker`, `eval` on `llm` and `shadow`) import those;
//! `config` imports the parts; `native_route` (the native build's route-time
//! routing) imports `validate`. The crate may import only std, serde, serde_json,
//! serde_path_to_error, fnv and thiserror: never the filter or the controller, nothing that
//! does not build for wasm32-wasip1.

pub mod breaker;
pub mod bucket;
pub mod config;
pub mod controller_source;
#[cfg(feature = "llm")]
pub mod eval;
#[cfg(feature = "fallback")]
pub mod fallback;
pub mod grpc;
pub mod keys;
pub mod lean;
#[cfg(feature = "llm")]
pub mod llm;
pub mod native_route;
#[cfg(feature = "llm")]
pub mod ratelimit;
#[cfg(feature = "llm")]
pub mod shadow;
pub mod stats;
pub mod validate;

pub use breaker::CircuitBreaker;
pub use bucket::{bucket, bucket_of_hash, key_hash, version_for_bucket, SaltedHasher, BUCKETS};
pub use config::{
    AnonymousCookie, Assignment, ControllerSource, FilterConfig, KeySource, RequestMatch,
    RolloutConfig, SameSite, StatsFrom, SCHEMA_VERSION,
};
#[cfg(feature = "llm")]
pub use eval::{EvalMetric, EvalSampling};
pub use keys::{KeyHash, KeyLists};
#[cfg(feature = "llm")]
pub use llm::{LlmSignals, QualityHeader, TokenPrice, VersionPrices};
#[cfg(feature = "llm")]
pub use ratelimit::{Priority, RateLimit};
#[cfg(feature = "llm")]
pub use shadow::{Shadow, ShadowMetric, TextNormalisation};
pub use validate::{ConfigError, FieldError, MAX_WEIGHT_BP};

use serde::{Deserialize, Serialize};

/// The two versions a rollout splits traffic between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    Stable,
    Canary,
}

impl Version {
    pub const ALL: [Version; 2] = [Version::Stable, Version::Canary];

    /// The value of the routing header and of the `version` stat tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Stable => "stable",
            Version::Canary => "canary",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// Property tests of the contract's invariants (native only: proptest is not built for wasm).
#[cfg(all(test, not(target_arch = "wasm32")))]
mod properties;
