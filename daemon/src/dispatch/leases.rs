//! Leases (no task can be stuck): an `in_progress` task holds a lease that the process
//! watcher renews while its specialist lives. If the watcher goes away — the daemon crashed, or the
//! watcher itself failed — the lease lapses and the sweeper (or the next start) reclaims the task.
//!
//! Renewal is one store write for every running task at once, every third of `sweeper.lease_ttl`.
//! A renewal that finds a task no longer `in_progress` (reclaimed or cancelled behind the watcher's
//! back) stops that task's specialist: a lease that is not held must not keep a process alive.
//! For the same reason a specialist is stopped when its lease runs out by this daemon's clock
//! without a renewal the store confirmed (the store unreachable for a whole `lease_ttl`): by then
//! the sweeper may have reclaimed the task and another run may have started it. The outcome of a
//! run is written as a compare-and-set on its attempt as well as its state, so a run that ends
//! after its task was started again cannot record its outcome on the later run (see
//! `docs/ARCHITECTURE.md`, "Leases").

use crate::clock::duration_ms;
use crate::daemon::Daemon;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Renewals never come closer together than this, however short the lease.
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// One lease this daemon holds.
struct Held {
    /// The run that holds it (the task's `attempts` once started).
    attempt: u32,
    /// Stops the run's specialist.
    stop: CancellationToken,
    /// Until when the store last confirmed it (milliseconds on the daemon's clock).
    until: i64,
    /// The specialist still runs; once it ended, the lease is only kept until the outcome is
    /// written, and nothing is left to stop.
    running: bool,
}

/// The leases this daemon holds, by task id.
#[derive(Default)]
pub struct Leases {
    held: Mutex<HashMap<String, Held>>,
}

/// A held lease, released when dropped: the run keeps its lease until its outcome is written,
/// whichever way the run ends.
pub struct Hold<'a> {
    leases: &'a Leases,
    id: String,
    attempt: u32,
}

impl Hold<'_> {
    /// The specialist ended: a renewal that finds the task gone has nothing left to stop.
    pub fn ended(&self) {
        self.leases
            .with(&self.id, self.attempt, |h| h.running = false);
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Ok(mut h) = self.leases.held.lock() {
            // A later run of the same task (after a reclaim) holds its own lease: leave it.
            if h.get(&self.id)
                .is_some_and(|held| held.attempt == self.attempt)
            {
                h.remove(&self.id);
            }
        }
    }
}

impl Leases {
    /// Hold the lease of run `attempt` of task `id`, valid until `until`, until the answer drops.
    pub fn hold(&self, id: &str, attempt: u32, until: i64, stop: CancellationToken) -> Hold<'_> {
        if let Ok(mut h) = self.held.lock() {
            h.insert(
                id.to_string(),
                Held {
                    attempt,
                    stop,
                    until,
                    running: true,
                },
            );
        }
        Hold {
            leases: self,
            id: id.to_string(),
            attempt,
        }
    }

    fn with(&self, id: &str, attempt: u32, f: impl FnOnce(&mut Held)) {
        if let Ok(mut h) = self.held.lock() {
            if let Some(held) = h.get_mut(id).filter(|held| held.attempt == attempt) {
                f(held);
            }
        }
    }

    fn ids(&self) -> Vec<String> {
        self.held
            .lock()
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The store confirmed these leases until `until`.
    fn renewed(&self, ids: &[String], until: i64) {
        if let Ok(mut h) = self.held.lock() {
            for id in ids {
                if let Some(held) = h.get_mut(id) {
                    held.until = held.until.max(until);
                }
            }
        }
    }

    /// Stop the specialist of `id` if it still runs; true if one was stopped.
    fn stop(&self, id: &str) -> bool {
        let token = self.held.lock().ok().and_then(|h| {
            h.get(id)
                .filter(|held| held.running)
                .map(|held| held.stop.clone())
        });
        token.map(|t| t.cancel()).is_some()
    }

    /// Stop every specialist still running on a lease that ran out by `now`; answers their tasks.
    fn stop_lapsed(&self, now: i64) -> Vec<String> {
        let Ok(h) = self.held.lock() else {
            return Vec::new();
        };
        let mut stopped = Vec::new();
        for (id, held) in h.iter() {
            if held.running && held.until <= now && !held.stop.is_cancelled() {
                held.stop.cancel();
                stopped.push(id.clone());
            }
        }
        stopped
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
        match d.store.renew_leases(ids.clone(), until).await {
            Ok(lost) => {
                tracing::debug!(count, until, "leases renewed");
                for id in &lost {
                    if leases.stop(id) {
                        tracing::info!(TASK_ID = %id, "task no longer in progress; stopping its specialist");
                    }
                }
                let kept: Vec<String> = ids.into_iter().filter(|id| !lost.contains(id)).collect();
                leases.renewed(&kept, until);
            }
            // The next tick tries again; the lease is longer than the period for that reason.
            Err(e) => tracing::error!(error = %e, count, "cannot renew leases"),
        }
        for id in leases.stop_lapsed(d.clock.now_ms()) {
            tracing::warn!(TASK_ID = %id, "lease ran out before the store could renew it; stopping its specialist (the sweeper reclaims the task)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> CancellationToken {
        CancellationToken::new()
    }

    #[test]
    fn a_lease_not_renewed_in_time_stops_its_specialist_and_a_renewed_one_does_not() {
        let leases = Leases::default();
        let (a, b) = (token(), token());
        let _ha = leases.hold("a", 1, 1_000, a.clone());
        let _hb = leases.hold("b", 1, 1_000, b.clone());
        leases.renewed(&["b".to_string()], 2_000);
        assert!(leases.stop_lapsed(999).is_empty());
        assert_eq!(leases.stop_lapsed(1_000), vec!["a".to_string()]);
        assert!(a.is_cancelled());
        assert!(!b.is_cancelled());
        // Stopped once, not again at every tick.
        assert!(leases.stop_lapsed(1_500).is_empty());
        assert_eq!(leases.stop_lapsed(2_000), vec!["b".to_string()]);
        assert!(b.is_cancelled());
    }

    #[test]
    fn an_ended_run_keeps_its_lease_but_has_nothing_to_stop() {
        let leases = Leases::default();
        let stop = token();
        let hold = leases.hold("a", 1, 1_000, stop.clone());
        hold.ended();
        assert_eq!(leases.ids(), vec!["a".to_string()]);
        assert!(!leases.stop("a"));
        assert!(leases.stop_lapsed(5_000).is_empty());
        assert!(!stop.is_cancelled());
        drop(hold);
        assert!(leases.ids().is_empty());
    }

    #[test]
    fn an_earlier_run_letting_go_leaves_the_later_runs_lease() {
        let leases = Leases::default();
        let first = leases.hold("a", 1, 1_000, token());
        let second = token();
        let _later = leases.hold("a", 2, 3_000, second.clone());
        drop(first);
        assert_eq!(leases.ids(), vec!["a".to_string()]);
        assert!(leases.stop("a"));
        assert!(second.is_cancelled());
    }
}
