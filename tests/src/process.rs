//! Child processes of the harness (Envoy, canaryctl, Prometheus): killed with the test
//! process, and waited on until their HTTP endpoint answers.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Result};

/// Makes the kernel SIGKILL the child if the test process dies first (e.g. SIGKILL on a CI
/// timeout), before any Drop can run.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Polls `url` until it answers 2xx; fails early if `child` exits, or after `deadline`,
/// with `log()` in the error.
pub async fn wait_http_ok(
    child: &mut Child,
    url: &str,
    deadline: Duration,
    what: &str,
    log: impl Fn() -> String,
) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{what} exited with {status}:\n{}", log());
        }
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > end {
            bail!("{what} not ready in {deadline:?}:\n{}", log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Restricts the command's process to `cpus` (sched_setaffinity in the child, before exec).
pub fn pin_to_cpus(command: &mut Command, cpus: Vec<usize>) {
    // SAFETY: only async-signal-safe libc calls on a stack-allocated cpu_set_t.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in &cpus {
                libc::CPU_SET(cpu, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
