//! The time bound per input. A target whose cost grows faster than its input (the issue's
//! quadratic SSE reader took seconds for 256 KiB) breaks it on inputs the fuzzer builds.
//!
//! Wall time, so never flaky by design: the bound is generous (the inputs here take micro-
//! to milliseconds), and an input over it is run again and fails only if it is over twice
//! (a machine that stalls once does not fail a run).

use std::time::{Duration, Instant};

use crate::Target;

/// Per input. `CANARY_FUZZ_BOUND_MS` overrides it (e.g. for an unoptimised build).
pub fn bound() -> Duration {
    std::env::var("CANARY_FUZZ_BOUND_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis)
}

/// Runs `input` through `target`; panics if it takes longer than `limit` twice in a row.
pub fn run_bounded(target: &Target, input: &[u8], limit: Duration) {
    let start = Instant::now();
    (target.run)(input);
    if start.elapsed() <= limit {
        return;
    }
    let again = Instant::now();
    (target.run)(input);
    let took = again.elapsed();
    assert!(
        took <= limit,
        "{}: an input of {} bytes took {took:?}, twice over the bound of {limit:?}: \
         a cost that grows faster than the input?",
        target.name,
        input.len()
    );
}
