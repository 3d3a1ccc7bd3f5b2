//! Waiting for a condition with a deadline, the loop every test of real processes needs: poll,
//! and on timeout fail showing what was last seen rather than a bare "timed out".

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `probe` every [`POLL`] until it gives `Ok`, and returns that. `Err` says what the
/// probe sees instead; after `within` the test fails with the last one.
pub async fn wait_for<T, F>(within: Duration, probe: impl FnMut() -> F) -> T
where
    F: Future<Output = Result<T, String>>,
{
    match poll_until(within, probe).await {
        Ok(value) => value,
        Err(seen) => panic!("not within {within:?}: {seen}"),
    }
}

/// [`wait_for`] that hands the last `Err` back after `within` instead of failing the test.
pub async fn poll_until<T, F>(within: Duration, mut probe: impl FnMut() -> F) -> Result<T, String>
where
    F: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(seen) if tokio::time::Instant::now() >= deadline => return Err(seen),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// [`wait_for`] for tests without a runtime: blocks this thread between polls.
pub fn wait_for_blocking<T>(within: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(seen) => assert!(Instant::now() < deadline, "not within {within:?}: {seen}"),
        }
        std::thread::sleep(POLL);
    }
}

/// `Ok(())` when `done`, else `Err(what)`: the probe of a plain condition.
pub fn check(done: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if done {
        Ok(())
    } else {
        Err(what())
    }
}
