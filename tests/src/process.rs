//! Child processes of the harness (Envoy, canaryctl, Prometheus): killed with the test
//! process, and waited on until their HTTP endpoint answers.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

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

/// The last `lines` lines of a log file (empty if it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Spawns `command` with its output in `log_path`, no input, and [`die_with_parent`].
pub fn spawn_logged(command: &mut Command, log_path: &Path, what: &str) -> Result<Child> {
    let log = std::fs::File::create(log_path)?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    die_with_parent(command);
    command.spawn().with_context(|| format!("starting {what}"))
}

/// Polls `url` until it answers 2xx; fails early if `child` exits, or after `deadline`,
/// with the end of its log (`log_path`) in the error.
pub async fn wait_http_ok(
    child: &mut Child,
    url: &str,
    deadline: Duration,
    what: &str,
    log_path: &Path,
) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{what} exited with {status}:\n{}", log_tail(log_path, 40));
        }
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > end {
            bail!(
                "{what} not ready in {deadline:?}:\n{}",
                log_tail(log_path, 40)
            );
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
