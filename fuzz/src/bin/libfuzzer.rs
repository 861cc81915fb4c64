//! The libFuzzer driver: one binary for every target, chosen by `CANARY_FUZZ_TARGET`
//! (`tools/fuzz.py` sets it), built with coverage instrumentation on the stable toolchain
//! (`-Cpasses=sancov-module`, see the Makefile's `fuzz` target).

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use canary_fuzz::Target;

static CHOSEN: OnceLock<(&'static Target, Duration)> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (target, limit) = CHOSEN.get_or_init(|| {
        let name = std::env::var("CANARY_FUZZ_TARGET").unwrap_or_default();
        let target = canary_fuzz::target(&name).unwrap_or_else(|| {
            let names: Vec<&str> = canary_fuzz::TARGETS.iter().map(|t| t.name).collect();
            panic!("CANARY_FUZZ_TARGET={name:?}: not one of {names:?}")
        });
        (target, canary_fuzz::bound::bound())
    });
    canary_fuzz::bound::run_bounded(target, data, *limit);
});
