//! One module per fuzz target; each exports `TARGET` for the registry in `lib.rs`.
//! Targets may import `crate::input` and `crate::Target`, and the crates under test.

pub mod body;
pub mod config;
pub mod control;
pub mod cookie;
pub mod routing;
pub mod shadow;
