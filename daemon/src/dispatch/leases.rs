//! Leases (no task can be stuck): an `in_progress` task holds a lease that the process
//! watcher renews while its specialist lives. If the watcher goes away — the daemon crashed, or the
//! watcher itself failed — the lease lapses and the sweeper (or the next start) reclaims the task.
//!
//! Renewal is one store write for every running task at once, every third of `sweeper.lease_ttl`.
//! A renewal that finds a task no longer `in_progress` (reclaimed or cancelled behind the watcher's
//! back) stops that task's specialist: a lease that is not held must not keep a process alive.

use crate::clock::duration_ms;
use crate::daemon::Daemon;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Renewals never come closer together than this, however short the lease.
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// The leases this daemon holds: task id → the token that stops its specialist.
#[derive(Default)]
pub struct Leases {
    held: Mutex<HashMap<String, CancellationToken>>,
}

impl Leases {
    pub fn hold(&self, id: &str, stop: CancellationToken) {
        if let Ok(mut h) = self.held.lock() {
            h.insert(id.to_string(), stop);
        }
    }

    pub fn release(&self, id: &str) {
        if let Ok(mut h) = self.held.lock() {
            h.remove(id);
        }
    }

    fn ids(&self) -> Vec<String> {
        self.held
            .lock()
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn stop(&self, id: &str) -> bool {
        let token = self.held.lock().ok().and_then(|h| h.get(id).cloned());
        token.map(|t| t.cancel()).is_some()
    }
}

/// The lease expiry for a lease taken or renewed now.
pub fn until(d: &Daemon) -> i64 {
    d.clock
        .now_ms()
        .saturating_add(duration_ms(d.config().sweeper.lease_ttl))
}

/// The supervisor's name for [`renew`].
pub const TASK: &str = "lease-renewal";

/// Renew until shutdown.
pub async fn renew(d: Arc<Daemon>, leases: Arc<Leases>) {
    let mut moves = d.clock.moves();
    loop {
        let period = (d.config().sweeper.lease_ttl / 3).max(MIN_PERIOD);
        tokio::select! {
            _ = d.shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
            // A test clock jumped (see `crate::clock`): renew at once, as the wall clock would
            // have renewed all along the way.
            _ = moves.moved() => {}
        }
        let ids = leases.ids();
        if ids.is_empty() {
            continue;
        }
        let until = until(&d);
        let count = ids.len();
        match d.store.renew_leases(ids, until).await {
            Ok(lost) => {
                tracing::debug!(count, until, "leases renewed");
                for id in lost {
                    if leases.stop(&id) {
                        tracing::info!(TASK_ID = %id, "task no longer in progress; stopping its specialist");
                    }
                }
            }
            // The next tick tries again; the lease is longer than the period for that reason.
            Err(e) => tracing::error!(error = %e, count, "cannot renew leases"),
        }
    }
}
