//! `canary-fuzz`: the fuzz targets without libFuzzer.
//!
//! - `list`: the targets, one JSON object a line (name, max_len, about);
//! - `dict TARGET`: the target's libFuzzer dictionary;
//! - `smoke [--mutants N] [--seed S] [TARGET...]`: the corpus and N seeded mutants per
//!   target (what `make fuzz-smoke` runs); a table of executions per target;
//! - `run TARGET FILE...`: runs inputs (a crash libFuzzer found, say) with a backtrace.

use std::path::Path;
use std::process::ExitCode;

use canary_fuzz::bound::{bound, run_bounded};
use canary_fuzz::smoke::smoke;
use canary_fuzz::{libfuzzer_dict, target, Target, TARGETS};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") => {
            for t in TARGETS {
                let line =
                    serde_json::json!({"name": t.name, "max_len": t.max_len, "about": t.about});
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Some("dict") => match args.get(1).and_then(|n| target(n)) {
            Some(t) => {
                print!("{}", libfuzzer_dict(t));
                ExitCode::SUCCESS
            }
            None => usage("dict: which target?"),
        },
        Some("smoke") => run_smoke(&args[1..]),
        Some("run") => {
            let Some(t) = args.get(1).and_then(|n| target(n)) else {
                return usage("run: which target?");
            };
            for file in &args[2..] {
                let input = match std::fs::read(file) {
                    Ok(bytes) => bytes,
                    Err(e) => return usage(&format!("{file}: {e}")),
                };
                run_bounded(t, &input, bound());
                println!("{file}: ok");
            }
            ExitCode::SUCCESS
        }
        _ => usage("a command: list, dict, smoke or run"),
    }
}

fn run_smoke(args: &[String]) -> ExitCode {
    let mut mutants = 2_000u64;
    let mut seed = 0x5eed_u64;
    let mut chosen: Vec<&'static Target> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut number = |what: &str| {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(what.to_string())
        };
        match arg.as_str() {
            "--mutants" => match number("--mutants N") {
                Ok(n) => mutants = n,
                Err(e) => return usage(&e),
            },
            "--seed" => match number("--seed S") {
                Ok(s) => seed = s,
                Err(e) => return usage(&e),
            },
            name => match target(name) {
                Some(t) => chosen.push(t),
                None => return usage(&format!("no target {name:?}")),
            },
        }
    }
    if chosen.is_empty() {
        chosen = TARGETS.iter().collect();
    }
    let failures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz/smoke-failures");
    println!(
        "{:<10} {:>7} {:>11} {:>9}",
        "target", "corpus", "executions", "seconds"
    );
    let mut total = 0.0;
    for t in chosen {
        let r = smoke(t, mutants, seed, bound(), Some(&failures));
        let secs = r.elapsed.as_secs_f64();
        total += secs;
        println!(
            "{:<10} {:>7} {:>11} {:>9.2}",
            t.name, r.corpus, r.executions, secs
        );
    }
    println!("fuzz smoke: all targets passed in {total:.1} s");
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("canary-fuzz: {problem}\nusage: canary-fuzz list | dict TARGET | smoke [--mutants N] [--seed S] [TARGET...] | run TARGET FILE...");
    ExitCode::from(2)
}
