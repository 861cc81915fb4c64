//! Fuzz targets for wasm-canary (the contract, the filter's plain modules, the controller),
//! and what runs them.
//!
//! Each target is a plain `fn(&[u8])` that decodes its input, calls the code under test and
//! asserts the target's invariants: a broken invariant is a panic. Two drivers run the same
//! targets: libFuzzer (`src/bin/libfuzzer.rs`, coverage-guided, `make fuzz`) and the smoke
//! (`smoke`, a seeded mutation loop over the corpus kept in `fuzz/corpus/`, `make test`).
//!
//! What lives where, and what may import what (one way): `input` (decoding helpers) and
//! `bound` (the time bound) are leaves; `targets` import them and the crates under test;
//! `mutate` is a leaf; `smoke` imports `mutate`, `bound` and the registry here. Adding a
//! target: a module under `targets/`, one line in [`TARGETS`], a folder under
//! `fuzz/corpus/` with a few seeds.

pub mod bound;
pub mod input;
pub mod mutate;
pub mod smoke;
pub mod targets;

/// One fuzz target.
pub struct Target {
    /// Also the name of its corpus folder, `fuzz/corpus/<name>/`.
    pub name: &'static str,
    /// What it feeds and what it asserts, in one line (`canary-fuzz list`).
    pub about: &'static str,
    /// Runs one input; panics when an invariant does not hold.
    pub run: fn(&[u8]),
    /// Longest input generated (libFuzzer's `-max_len`, the smoke's mutator).
    pub max_len: usize,
    /// Tokens worth inserting (libFuzzer's `-dict`, the smoke's mutator).
    pub dict: &'static [&'static str],
}

/// Every target, in the order `make fuzz` runs them.
pub const TARGETS: &[Target] = &[
    targets::config::TARGET,
    targets::control::TARGET,
    targets::body::TARGET,
    targets::cookie::TARGET,
    targets::routing::TARGET,
    targets::shadow::TARGET,
    targets::spec::TARGET,
    targets::stats::TARGET,
    targets::state::TARGET,
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The dictionary of `target` in libFuzzer's format: one quoted, escaped token a line.
pub fn libfuzzer_dict(target: &Target) -> String {
    let mut out = String::new();
    for token in target.dict {
        out.push('"');
        for b in token.bytes() {
            match b {
                b'"' | b'\\' => {
                    out.push('\\');
                    out.push(b as char);
                }
                0x20..=0x7e => out.push(b as char),
                _ => out.push_str(&format!("\\x{b:02x}")),
            }
        }
        out.push_str("\"\n");
    }
    out
}
