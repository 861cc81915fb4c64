//! wasm-canary controller: judges the canary against stable from the filter's stats and moves
//! the rollout through its stages, or rolls it back.
//!
//! Pure parts (tested without sockets): [`spec`] (the rollout spec), [`window`] (stats
//! windows from scrapes), [`judge`] (window in, verdict out), [`machine`] (the rollout state
//! machine). I/O at the edges: stats sources, config publication, HTTP API, state store.

pub mod feedback;
pub mod judge;
pub mod machine;
pub mod server;
pub mod sources;
pub mod spec;
pub mod stats;
pub mod store;
