//! Counting a proxy's instructions with valgrind's callgrind, for the benchmarks: Envoy runs
//! under callgrind with instrumentation off, the benchmark switches it on around the
//! requests it counts, then asks for a dump and reads its total.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::envoy::{Envoy, EnvoyOptions};
use crate::wait::wait_until;

/// Starts an Envoy named `name` on `bootstrap` under callgrind, writing its dumps to `out`.
pub async fn start_envoy(bootstrap: &serde_json::Value, name: String, out: &Path) -> Result<Envoy> {
    Envoy::start(
        bootstrap,
        EnvoyOptions {
            name,
            wrapper: wrapper(out),
            ..Default::default()
        },
    )
    .await
    .context("starting Envoy under valgrind (`make setup` installs it)")
}

/// The `EnvoyOptions::wrapper` that runs Envoy under callgrind, writing to `out`
/// (instrumentation off until [`control`] turns it on).
pub fn wrapper(out: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--instr-atstart=no".into(),
        format!("--callgrind-out-file={}", out.display()),
    ]
}

/// Runs `callgrind_control` with `args` (e.g. `-i on <pid>`, `-d <pid>`).
pub fn control(args: &[&str]) -> Result<()> {
    let output = Command::new("callgrind_control")
        .args(args)
        .output()
        .context("running callgrind_control")?;
    if !output.status.success() {
        bail!(
            "callgrind_control {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The `totals:` line of a callgrind dump, once the file is complete.
pub async fn dumped_total(path: &Path) -> Result<u64> {
    let mut total = None;
    wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        total = std::fs::read_to_string(path).ok().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("totals: "))
                .and_then(|v| v.trim().parse().ok())
        });
        Ok(total.is_some())
    })
    .await
    .with_context(|| format!("no callgrind dump at {}", path.display()))?;
    total.context("unreachable: waited for the total")
}
