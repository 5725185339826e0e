//! Shadow and live dispatch: real specialist processes.
//!
//! Each agent has a FIFO queue and at most `max_concurrent` specialists alive. A task is routed
//! (`assigned`), waits for a slot, starts (`in_progress`, with a lease), and ends by its outcome:
//!
//! - exit 0 → `complete` (live: approval by the routing rules; shadow: never, what live would have
//!   done is recorded at routing), stdout as `result.text` (capped; all of it in `textPath`
//!   beyond the cap), the files left in the artefact directory as `artefacts`;
//! - non-zero exit or a signal → `fail` `specialist_aborted`, with the exit status and stderr's tail;
//! - exit 75 (`EX_TEMPFAIL`, "not now") → `defer`: back to `queued` without counting an attempt, and
//!   the agent paused (see [`crate::dispatch::pauses`]);
//! - cannot spawn → `fail` `spawn_failed`; past the timeout → stopped, `fail` `specialist_timeout`;
//! - a failure whose code the agent's `retry_on` lists, attempts left → `retry`: back to `queued`
//!   after a doubling, jittered backoff;
//! - cancelled, or the daemon stopping → the specialist is stopped and no outcome is written (the
//!   task is already `cancelled`, or is reclaimed at the next start).
//!
//! What the specialist wrote to `$ORCH_META_FILE` (`meta`) goes with the outcome: its usage is
//! added to the task's, and a file that cannot be used is a `metaWarning` on the transition.
//!
//! `slots` holds the per-agent queues and slots, `run` takes one task from its slot to its
//! outcome, and `outcome` turns an ended process into a transition.

pub mod meta;
mod outcome;
mod run;
mod slots;
#[cfg(test)]
mod tests;

pub use outcome::{approval_of, outcome};

use super::leases::{self, Leases};
use super::MAX_BURST;
use crate::config::{AgentConfig, Config};
use crate::daemon::Daemon;
use crate::supervisor::Supervisor;
use orchestrator_proto::task::Task;
use slots::Slots;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// Most of stdout kept in `result.text`; the rest is in the file named by `textPath`.
pub const TEXT_CAP: usize = 64 * 1024;
/// Inside a task's directory: the whole stdout when it outgrew the cap, and the artefact directory.
pub const RESULT_FILE: &str = "result.txt";
pub const ARTEFACT_DIR: &str = "artefacts";
/// When the daemon stops, specialists get at most this long between SIGTERM and SIGKILL.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The supervisor's name for the executor's intake loop.
pub const INTAKE_TASK: &str = "specialist-executor";
/// The supervisor's name for the loop that lifts lapsed pauses and starts what they held.
pub const PAUSES_TASK: &str = "agent-pauses";

pub struct Executor {
    shared: Arc<Shared>,
    intake: mpsc::UnboundedSender<Task>,
}

struct Shared {
    d: Arc<Daemon>,
    slots: Mutex<Slots>,
    leases: Arc<Leases>,
    tracker: TaskTracker,
}

impl Executor {
    /// The intake and the lease renewal run as supervised tasks; the specialists' runs are
    /// tracked here, for [`Executor::shutdown`].
    pub fn new(d: Arc<Daemon>, sup: &Supervisor) -> Executor {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            d,
            slots: Mutex::default(),
            leases: Arc::default(),
            tracker: TaskTracker::new(),
        });
        sup.spawn(INTAKE_TASK, intake(Arc::clone(&shared), rx));
        sup.spawn(PAUSES_TASK, watch_pauses(Arc::clone(&shared)));
        sup.spawn(
            leases::TASK,
            leases::renew(Arc::clone(&shared.d), Arc::clone(&shared.leases)),
        );
        Executor { shared, intake: tx }
    }

    /// Route the task (if it is still `queued`) and queue it for its agent. Tasks are taken in the
    /// order they are handed over.
    pub fn enqueue(&self, task: Task) {
        // The intake only stops at shutdown; a task handed over then is picked up at the next start.
        let _ = self.intake.send(task);
    }

    /// On a shared store: claim tasks for every agent this node runs while it has free slots.
    pub fn poll(&self) {
        self.shared.pump();
    }

    /// The task was cancelled in the store: stop its specialist, or drop it from its queue.
    pub fn cancel(&self, id: &str) {
        self.shared.cancel(id);
    }

    /// Wait until every specialist has been stopped (the daemon's shutdown token stops them).
    pub async fn shutdown(&self) {
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

async fn intake(s: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Task>) {
    let mut buf = Vec::with_capacity(MAX_BURST);
    loop {
        let n = tokio::select! {
            _ = s.d.shutdown.cancelled() => return,
            n = rx.recv_many(&mut buf, MAX_BURST) => n,
        };
        if n == 0 {
            // The executor is gone, so its owner, the dispatcher, ended; the supervisor reports
            // the dispatcher by name. Ending here too would race that report with a second
            // failure, and the log could name this loop instead of the cause.
            s.d.shutdown.cancelled().await;
            return;
        }
        let tasks = std::mem::take(&mut buf);
        s.admit(tasks).await;
    }
}

/// Lift pauses as their time comes, and start what waited whenever a pause is set or lifted.
async fn watch_pauses(s: Arc<Shared>) {
    let d = Arc::clone(&s.d);
    let mut moves = d.clock.moves();
    loop {
        let now = d.clock.now_ms();
        {
            let _one_at_a_time = d.pauses.changing().await;
            for p in d.pauses.take_lapsed(now) {
                tracing::info!(AGENT = %p.agent, reason = %p.reason, "agent resumed: its pause ended");
                if let Err(e) = d.store.set_agent_pause(p.agent.clone(), None).await {
                    tracing::warn!(AGENT = %p.agent, error = %e, "cannot clear the agent's ended pause; it is cleared at the next start");
                }
            }
        }
        s.pump();
        // Without a timed pause, wake up now and then all the same: cheap, and a safety net.
        let wait = d
            .pauses
            .next_end()
            .map(|end| end.saturating_sub(now).clamp(0, 60_000))
            .unwrap_or(60_000);
        tokio::select! {
            _ = d.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
            _ = moves.moved() => {}
            _ = d.pauses.changed() => {}
        }
    }
}

/// Whether the agent can run a specialist: it has an `[agents.<id>]` entry with a command.
pub(super) fn runnable<'c>(cfg: &'c Config, agent: &str) -> Option<&'c AgentConfig> {
    if !cfg.configured_agents.contains(agent) {
        return None;
    }
    cfg.agent(agent).filter(|a| !a.command.is_empty())
}
