//! wasm-canary controller: judges the canary against stable from the filter's stats and moves
//! the rollout through its stages, or rolls it back.
//!
//! Floors that point one way (a lower floor never imports a higher one):
//! [`spec`] (the rollout spec, every section of it, and the filter configuration it serves)
//! ← [`stats`] (the filter's stats per version, parsing, PromQL, windows)
//! ← [`judge`] (window in, verdict out; statistical tests, LLM checks)
//! ← [`machine`] (the rollout state machine and its strategies; the quota sentinel)
//! ← [`server`] (the running controller: analysis loop, HTTP API, `/metrics`, publication).
//! Beside them, at the edges: [`sources`] (the `StatsSource` trait: Envoy admin, Prometheus;
//! imports spec and stats), [`feedback`] (user ratings attributed to versions; spec and
//! stats), [`store`] (durable rollout state; machine). Only `server` imports those three.
//!
//! Everything below `server` except `sources` is pure and tested without sockets.

pub mod feedback;
pub mod judge;
pub mod machine;
pub mod server;
pub mod sources;
pub mod spec;
pub mod stats;
pub mod store;
