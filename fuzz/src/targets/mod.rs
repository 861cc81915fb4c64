//! One module per fuzz target; each exports `TARGET` for the registry in `lib.rs`.
//! Targets may import `crate::input` and `crate::Target`, and the crates under test;
//! `published` is not a target: the controller targets' shared publication invariant.

pub mod body;
pub mod config;
pub mod control;
pub mod cookie;
pub mod published;
pub mod routing;
pub mod shadow;
pub mod spec;
pub mod state;
pub mod stats;
