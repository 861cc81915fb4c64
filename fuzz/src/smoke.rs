//! The smoke run of `make test`: every target over its corpus in `fuzz/corpus/<target>/`,
//! then a fixed number of seeded mutants of it. No coverage feedback, so it finds only
//! shallow bugs; it proves each target, its invariants and its corpus still work, in
//! seconds, on the stable toolchain with no C++ build.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::bound::run_bounded;
use crate::mutate::{mutate, Rng};
use crate::Target;

/// The corpus folder of the project (next to this crate's manifest).
pub fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// The inputs in `fuzz/corpus/<target>/`, in file-name order (so every run is the same).
pub fn corpus(target: &Target) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_root().join(target.name);
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), bytes)
        })
        .collect()
}

pub struct SmokeResult {
    pub corpus: usize,
    pub executions: u64,
    pub elapsed: Duration,
}

/// Runs the corpus, then `mutants` mutants of it; a failing input is written to
/// `failures/` (if given) before the panic goes on.
pub fn smoke(
    target: &Target,
    mutants: u64,
    seed: u64,
    limit: Duration,
    failures: Option<&Path>,
) -> SmokeResult {
    let start = Instant::now();
    let inputs = corpus(target);
    assert!(!inputs.is_empty(), "{}: empty corpus", target.name);
    for (name, bytes) in &inputs {
        run_kept(target, bytes, limit, failures, name);
    }
    let mut rng = Rng::new(seed ^ fnv(target.name));
    let mut pool: Vec<Vec<u8>> = inputs.into_iter().map(|(_, b)| b).collect();
    let corpus_len = pool.len();
    for i in 0..mutants {
        let base = &pool[rng.below(pool.len())];
        let other = &pool[rng.below(pool.len())];
        let mutant = mutate(&mut rng, base, other, target.dict, target.max_len);
        run_kept(target, &mutant, limit, failures, &format!("mutant {i}"));
        // Mutants of mutants reach further than mutants of the seeds alone.
        if pool.len() < corpus_len + 256 {
            pool.push(mutant);
        } else {
            let at = corpus_len + rng.below(256);
            pool[at] = mutant;
        }
    }
    SmokeResult {
        corpus: corpus_len,
        executions: corpus_len as u64 + mutants,
        elapsed: start.elapsed(),
    }
}

fn run_kept(target: &Target, input: &[u8], limit: Duration, failures: Option<&Path>, what: &str) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_bounded(target, input, limit)
    }));
    if let Err(panic) = outcome {
        if let Some(dir) = failures {
            let path = dir.join(format!("{}-{:016x}", target.name, fnv_bytes(input)));
            if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&path, input).is_ok() {
                eprintln!(
                    "{}: {what} failed; input kept in {}",
                    target.name,
                    path.display()
                );
            }
        }
        std::panic::resume_unwind(panic);
    }
}

fn fnv(text: &str) -> u64 {
    fnv_bytes(text.as_bytes())
}

fn fnv_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo test -p canary-fuzz`: every kept input still passes every invariant.
    #[test]
    fn every_corpus_input_passes() {
        for target in crate::TARGETS {
            let r = smoke(target, 0, 0, Duration::from_secs(30), None);
            assert!(r.corpus > 0, "{}", target.name);
        }
    }

    #[test]
    fn the_mutator_is_deterministic_and_within_max_len() {
        let run = || {
            let mut rng = Rng::new(7);
            (0..1_000)
                .map(|_| mutate(&mut rng, b"{\"a\":1}", b"[2]", &["\"b\":"], 12))
                .collect::<Vec<_>>()
        };
        let mutants = run();
        assert_eq!(mutants, run());
        assert!(mutants.iter().all(|m| m.len() <= 12));
    }
}
