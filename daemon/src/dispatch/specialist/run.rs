//! One task from its slot to its outcome: start it (`in_progress`, with a lease), prepare its
//! directory, spawn the specialist, watch it to its end, and record the outcome.

use super::meta::{self, Meta, META_FILE};
use super::outcome::{outcome, retry, retry_delay, spawn_failed, EXIT_TEMPFAIL};
use super::{runnable, Shared, ARTEFACT_DIR, RESULT_FILE, SHUTDOWN_GRACE, TEXT_CAP};
use crate::config::AgentConfig;
use crate::dispatch::leases;
use crate::dispatch::process::{self, Capture, Ended, Ending, Launch, Limits};
use crate::dispatch::{artefacts, ACTOR};
use crate::dispatch::{budget, pauses};
use crate::machine::Action;
use crate::store::{Patch, StoreError, StoredPause, TransitionOp};
use orchestrator_proto::message::PauseCause;
use orchestrator_proto::task::{task_error, Task, TaskError, TaskResult, TaskState};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

impl Shared {
    /// One task from its slot to its outcome.
    pub(super) async fn run(&self, task: Task, stop: &CancellationToken) {
        let d = &self.d;
        let cfg = d.config();
        let agent_id = task.assigned_agent_id.clone().unwrap_or_default();
        let Some(agent) = runnable(&cfg, &agent_id).cloned() else {
            // A reload took the agent's command away while the task waited.
            self.fail_no_agent(vec![task]).await;
            return;
        };
        if stop.is_cancelled() {
            return;
        }
        let at = d.clock.now_ms();
        let attempt = task.attempts + 1;
        // Claimed on a shared store: started by the claim already.
        let claimed = task.state == TaskState::InProgress;
        // For a claimed task, a little later than the claim's own lease: the first renewal comes
        // within a third of the lease anyway.
        let lease_until = leases::until(d);
        let start = TransitionOp::new(&task.id, Action::Start, ACTOR, at)
            .patch(Patch {
                lease_until: Some(lease_until),
                result: Some(TaskResult {
                    text: None,
                    text_path: None,
                    artefacts: Vec::new(),
                    specialist_session_id: Some(format!("{agent_id}-{}-{attempt}", task.id)),
                }),
                ..Patch::default()
            })
            .detail("agent", agent_id.clone())
            .detail("attempt", attempt.to_string());
        let started = if claimed {
            Ok(task.clone())
        } else {
            d.store.transition(start).await
        };
        let started = match started {
            Ok(t) => t,
            Err(StoreError::Refused { .. } | StoreError::NotFound(_)) => {
                tracing::debug!(TASK_ID = %task.id, "not started: the task moved on while it waited");
                return;
            }
            Err(e) => {
                tracing::error!(TASK_ID = %task.id, error = %e, "cannot start the task; it is dispatched again after the next sweep");
                d.dispatch.lost_some();
                return;
            }
        };
        if let Some(created) = crate::clock::rfc3339_ms(&started.created_at) {
            let wait = crate::metrics::ms_to_seconds(at - created);
            d.metrics.queue_wait.observe(wait);
        }
        // Held until the outcome is written (or given up on): the task must not be reclaimed while
        // its result is being read and recorded.
        let lease = self
            .leases
            .hold(&started.id, started.attempts, lease_until, stop.clone());
        let limits = Limits {
            timeout: agent.timeout,
            kill_grace: agent.kill_grace,
            shutdown_grace: agent.kill_grace.min(SHUTDOWN_GRACE),
        };
        let ran = self.execute(&started, &agent, &limits, stop).await;
        lease.ended();
        let at = self.d.clock.now_ms();
        let op = match ran {
            Err(error) => {
                tracing::warn!(TASK_ID = %started.id, AGENT = %agent_id, error = %error.message, "specialist could not start");
                Some(
                    TransitionOp::new(&started.id, Action::Fail, ACTOR, at).patch(Patch {
                        error: Some(error),
                        ..Patch::default()
                    }),
                )
            }
            Ok(ended) => {
                let how = ended.how;
                d.metrics
                    .specialist_run
                    .observe(ended.elapsed.as_secs_f64());
                tracing::info!(TASK_ID = %started.id, AGENT = %agent_id, ending = ?how, elapsed_ms = ended.elapsed.as_millis() as u64, "specialist ended");
                let task_dir = d.paths.task_dir(&started.id);
                let dir = task_dir.join(ARTEFACT_DIR);
                let listed = if matches!(how, Ending::Exited(_)) {
                    tokio::task::spawn_blocking(move || artefacts::list(&dir))
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                        .unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "cannot list artefacts");
                            Vec::new()
                        })
                } else {
                    Vec::new()
                };
                let meta = if matches!(how, Ending::Stopped) {
                    Meta::default()
                } else {
                    let path = task_dir.join(META_FILE);
                    tokio::task::spawn_blocking(move || meta::read(&path, at))
                        .await
                        .unwrap_or_default()
                };
                if let Some(w) = &meta.warning {
                    tracing::warn!(TASK_ID = %started.id, AGENT = %agent_id, warning = %w, "meta file ignored");
                }
                self.defer_pause(&agent_id, &meta, how, at).await;
                if let Some(used) = &meta.usage {
                    count_usage(&d.metrics, &agent_id, used);
                }
                if let Some(cost) = meta.usage.as_ref().and_then(|u| u.cost_usd) {
                    budget::charge(d, &agent_id, cost, at).await;
                }
                outcome(&started, &cfg, &limits, ended, listed, &meta, at)
            }
        };
        // The outcome is this run's: it lands only while the task is still in this attempt.
        let Some(mut op) = op.map(|op| retry(op, &started, &agent).of_attempt(started.attempts))
        else {
            return;
        };
        // A retry waits out its backoff in `queued`; the store keeps the time, for a restart and
        // for the other nodes of a shared store.
        let retry_at = (op.action == Action::Retry).then(|| {
            let delay = retry_delay(agent.retry_backoff, started.attempts, jitter());
            at.saturating_add(crate::clock::duration_ms(delay))
        });
        op.patch.not_before = retry_at;
        if let Some(at) = retry_at {
            // Said in the retry's event too, so that whoever looks knows when it runs again.
            op = op.detail("retryAt", crate::clock::rfc3339(at));
        }
        if op.action != Action::Defer {
            d.pauses.ran(&agent_id);
        }
        if let Some(error) = op
            .patch
            .error
            .as_ref()
            .filter(|_| op.action == Action::Fail)
        {
            let failures = &d.metrics.specialist_failures;
            failures.inc(&[agent_id.as_str(), error.code.as_str()]);
            if error.code == task_error::SPECIALIST_TIMEOUT {
                d.metrics.specialist_timeouts.inc(&[agent_id.as_str()]);
            }
        }
        let action = op.action;
        match d.store.transition(op).await {
            Ok(t) if action == Action::Defer => {
                // Back in the queue; its agent is paused, so it waits there.
                tracing::info!(TASK_ID = %t.id, AGENT = %agent_id, "task deferred");
                d.dispatch.queued(t);
            }
            Ok(t) if action == Action::Retry => {
                let until = retry_at.unwrap_or(at);
                tracing::info!(TASK_ID = %t.id, AGENT = %agent_id, attempt = started.attempts, delay_ms = until.saturating_sub(at), "task retried after a failure");
                crate::dispatch::queue_at(d, t, until);
            }
            Ok(t) => tracing::debug!(TASK_ID = %t.id, TO = %t.state, "outcome recorded"),
            Err(StoreError::Refused { from, .. }) => {
                tracing::info!(TASK_ID = %started.id, FROM = %from, attempt = started.attempts, "outcome not recorded: the task moved on (cancelled, reclaimed or started again)")
            }
            // The lease lapses and the sweeper reclaims the task: it is not stuck.
            Err(e) => {
                tracing::error!(TASK_ID = %started.id, error = %e, "cannot record the outcome")
            }
        }
    }

    /// A specialist that exited 75 pauses its agent until its `retryAfter`, or for the backoff.
    /// The pause is in force before the slot frees, so that nothing else of the agent starts.
    async fn defer_pause(&self, agent: &str, meta: &Meta, how: Ending, at: i64) {
        let Ending::Exited(status) = how else {
            return;
        };
        if status.code() != Some(EXIT_TEMPFAIL) {
            return;
        }
        let until = meta.retry_after_ms.unwrap_or_else(|| {
            at.saturating_add(crate::clock::duration_ms(self.d.pauses.deferred(agent)))
        });
        let pause = StoredPause {
            agent: agent.to_string(),
            cause: PauseCause::ProviderLimit,
            until_ms: Some(until),
            reason: meta
                .reason
                .clone()
                .unwrap_or_else(|| format!("the specialist exited {EXIT_TEMPFAIL}")),
            by: ACTOR.to_string(),
            at_ms: at,
        };
        if let Err(e) = pauses::pause(&self.d, pause).await {
            tracing::error!(AGENT = %agent, error = %e, "cannot store the agent's pause; it holds until the daemon stops");
        }
    }

    /// Prepare the task's directory, spawn the specialist and watch it to its end.
    async fn execute(
        &self,
        task: &Task,
        agent: &AgentConfig,
        limits: &Limits,
        stop: &CancellationToken,
    ) -> Result<Ended, TaskError> {
        let dir = self.d.paths.task_dir(&task.id);
        let artefact_dir = dir.join(ARTEFACT_DIR);
        prepare(&dir, &artefact_dir).await.map_err(|e| {
            spawn_failed(
                format!("cannot prepare {}: {e}", artefact_dir.display()),
                Vec::new(),
            )
        })?;
        let cwd: PathBuf = task
            .workspace_dir
            .as_ref()
            .map(PathBuf::from)
            .or_else(|| agent.working_dir.clone())
            .unwrap_or_else(|| dir.clone());
        let mut env = process::child_env(task, &agent.env, Some(&artefact_dir));
        env.push((
            "ORCH_META_FILE".into(),
            dir.join(META_FILE).to_string_lossy().into_owned(),
        ));
        let stdin = serde_json::to_vec(task)
            .map_err(|e| spawn_failed(format!("cannot encode the task: {e}"), Vec::new()))?;
        let child = process::spawn(Launch {
            argv: &agent.command,
            env,
            cwd: &cwd,
            stdin,
            stdout: Capture {
                cap: TEXT_CAP,
                spill: Some(dir.join(RESULT_FILE)),
            },
        })
        .map_err(|e| {
            let program = agent.command.first().cloned().unwrap_or_default();
            spawn_failed(
                format!("cannot start {program:?} in {}: {e}", cwd.display()),
                vec![
                    ("command", program.clone()),
                    ("cwd", cwd.to_string_lossy().into_owned()),
                    ("error", e.to_string()),
                ],
            )
        })?;
        let agent_id = task.assigned_agent_id.as_deref().unwrap_or_default();
        self.d.metrics.specialist_spawns.inc(&[agent_id]);
        let (id, pgid) = (task.id.clone(), child.pgid());
        tracing::info!(TASK_ID = %id, AGENT = ?task.assigned_agent_id, pgid, "specialist started");
        if let Err(e) = self.d.store.set_specialist_pid(&id, pgid).await {
            // Not fatal: a restart still finds the specialist by its environment.
            tracing::warn!(TASK_ID = %task.id, error = %e, "cannot record the specialist's process group");
        }
        Ok(child.watch(*limits, stop, &self.d.shutdown).await)
    }
}

/// A fresh task directory with an empty artefact directory (a retry starts clean).
async fn prepare(dir: &Path, artefact_dir: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(artefact_dir)
        .await
}

/// Counters of cost and of tokens kept per usage family; the models specialists name beyond them
/// are counted as `other` (see [`crate::metrics::Labelled::add_folding`]).
const USAGE_SERIES: usize = 1024;

/// A run's reported usage, into the cost and token counters.
fn count_usage(m: &crate::metrics::Metrics, agent: &str, u: &orchestrator_proto::task::Usage) {
    let model = u.model.as_deref().unwrap_or("");
    if let Some(cost) = u.cost_usd {
        m.cost_micro_usd.add_folding(
            &[agent, model],
            (cost * 1e6).round().max(0.0) as u64,
            USAGE_SERIES,
            1,
        );
    }
    for (kind, n) in [
        ("input", u.input_tokens),
        ("output", u.output_tokens),
        ("cache_read", u.cache_read_tokens),
        ("cache_write", u.cache_write_tokens),
    ] {
        if let Some(n) = n {
            m.tokens
                .add_folding(&[agent, model, kind], n, USAGE_SERIES, 1);
        }
    }
}

/// A number in [0, 1) for spreading retries; the middle when the system has no randomness.
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    match getrandom::fill(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}
