//! The sweeper's rules and state: who it acts as, how much one store job handles, the attempts a
//! lapsed lease may use, the approval policy ([`approvals`]), and what `status` shows of it (the last sweep, the next one). The sweep
//! itself, which needs the whole daemon, is `tasks::sweep`.

use crate::config::Config;
use crate::store::{AttemptLimits, Reclaim};
use orchestrator_proto::message::SweepReport;
use std::sync::Mutex;

pub mod approvals;

pub const ACTOR: &str = "sweeper";
/// Tasks handled per store job; between jobs other writers get their turn. At 200 a job holds the
/// writer for about 10 ms (an expiry is ~50 µs); 500 doubled the latency of submits during a sweep
/// without making the sweep faster (daemon/examples/sweep_bench.rs).
pub const BATCH: usize = 200;
/// Expiries per store job. An expiry batch is a few set-based statements (see
/// `store::sqlite::writes`), so a larger batch saves commits rather than statements; a job of
/// 1,000 holds the writer for about 45 ms of CPU at 1,000,000 tasks under load, during which
/// submits wait and `status` does not (docs/BENCHMARKS.md, "The sweep at 1,000,000 tasks").
pub const EXPIRE_BATCH: usize = 1000;

/// The attempts each configured agent allows, for reclaiming lapsed leases.
pub fn attempt_limits(cfg: &Config) -> AttemptLimits {
    AttemptLimits {
        by_agent: cfg
            .agents
            .iter()
            .map(|(id, a)| (id.clone(), a.max_attempts))
            .collect(),
        default: 1,
    }
}

/// Reclaim every lapsed lease (all of them at start, a batch at a time from the timer).
pub fn reclaim(cfg: &Config, now: i64, limit: usize, reason: &str) -> Reclaim {
    Reclaim {
        now,
        limit,
        reason: reason.to_string(),
        actor: ACTOR.to_string(),
        attempts: attempt_limits(cfg),
    }
}

/// One sweep at a time, and what the last one did and when the next is due.
#[derive(Debug, Default)]
pub struct SweeperState {
    /// Held for a whole sweep, whether from the timer or `orchctl sweep`.
    pub lock: tokio::sync::Mutex<()>,
    notes: Mutex<Notes>,
}

#[derive(Debug, Clone, Default)]
struct Notes {
    last: Option<SweepReport>,
    next_ms: Option<i64>,
}

impl SweeperState {
    fn with<R>(&self, f: impl FnOnce(&mut Notes) -> R) -> R {
        match self.notes.lock() {
            Ok(mut n) => f(&mut n),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn last_sweep(&self) -> Option<SweepReport> {
        self.with(|n| n.last.clone())
    }

    pub fn set_last_sweep(&self, report: SweepReport) {
        self.with(|n| n.last = Some(report));
    }

    /// When the next sweep is due (ms on the daemon's clock), once the timer runs.
    pub fn next_sweep_ms(&self) -> Option<i64> {
        self.with(|n| n.next_ms)
    }

    pub fn set_next_sweep_ms(&self, at: i64) {
        self.with(|n| n.next_ms = Some(at));
    }
}
