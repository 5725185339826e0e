//! The store's integrity check: once after every start, once the daemon is ready, then every
//! `[store] integrity_check_interval` (`"off"`: at start only).
//!
//! The check reads every page, which takes seconds on a large archive, so it never holds up READY;
//! it runs on a read connection while writes go on. What it finds is kept by the store
//! ([`crate::store::Health`]): `status` and the metrics show it, and a store found damaged refuses
//! writes with `store_damaged` from then on.

use crate::daemon::Daemon;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the timer looks at the configured interval while it waits, so that a reload that
/// changes it takes effect within this long.
const INTERVAL_RECHECK: Duration = Duration::from_secs(1);

/// Run one check now and log its outcome.
pub async fn check(d: &Daemon) {
    let started = Instant::now();
    let elapsed_ms = || started.elapsed().as_millis() as u64;
    match d.store.check_integrity().await {
        Ok(found) if found == "ok" => {
            tracing::info!(duration_ms = elapsed_ms(), "store: integrity check ok");
        }
        Ok(found) => {
            tracing::error!(
                duration_ms = elapsed_ms(),
                found = %found,
                "store: integrity check failed; the store is damaged and refuses writes (store_damaged)"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "store: the integrity check could not run; it runs again at the next interval");
        }
    }
}

/// The timer: a check at once, then one every interval after the previous one ended.
pub async fn run(d: Arc<Daemon>) {
    loop {
        tokio::select! {
            _ = d.shutdown.cancelled() => return,
            _ = check(&d) => {}
        }
        let ended = Instant::now();
        loop {
            let Some(interval) = d.config().store.integrity_check_interval else {
                // Off: wait for a reload that turns it on.
                tokio::select! {
                    _ = d.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(INTERVAL_RECHECK) => continue,
                }
            };
            let left = interval.saturating_sub(ended.elapsed());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = d.shutdown.cancelled() => return,
                _ = tokio::time::sleep(left.min(INTERVAL_RECHECK)) => {}
            }
        }
    }
}
