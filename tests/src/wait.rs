//! Waiting on conditions with deadlines, never fixed sleeps: a busy 2-core machine makes
//! every "should be enough" sleep flaky.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::time::Instant;

/// Polls a synchronous check every `interval` until it returns `Ok(true)`, fails, or
/// `deadline` passes.
pub async fn wait_until(
    deadline: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let end = Instant::now() + deadline;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("condition not met within {deadline:?}");
        }
        tokio::time::sleep(interval).await;
    }
}

/// Polls an async probe until `done(&value)` holds; on timeout the error shows the last value
/// seen, so a failing test says what it saw instead of just "timed out".
pub async fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut probe: F,
    done: impl Fn(&T) -> bool,
) -> Result<T>
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        let last = match probe().await {
            Ok(value) if done(&value) => return Ok(value),
            Ok(value) => format!("{value:?}"),
            Err(e) => format!("error: {e:#}"),
        };
        if Instant::now() > end {
            bail!("{what}: not reached within {deadline:?}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
