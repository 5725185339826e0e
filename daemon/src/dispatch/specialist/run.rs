//! One task from its slot to its outcome: start it (`in_progress`, with a lease), prepare its
//! directory, spawn the specialist, watch it to its end, and record the outcome.

use super::outcome::{outcome, spawn_failed};
use super::{runnable, Shared, ARTEFACT_DIR, RESULT_FILE, SHUTDOWN_GRACE, TEXT_CAP};
use crate::config::AgentConfig;
use crate::dispatch::leases;
use crate::dispatch::process::{self, Capture, Ended, Ending, Launch, Limits};
use crate::dispatch::{artefacts, ACTOR};
use crate::machine::Action;
use crate::store::{Patch, StoreError, TransitionOp};
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
        let start = TransitionOp::new(&task.id, Action::Start, ACTOR, at)
            .patch(Patch {
                lease_until: Some(leases::until(d)),
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
                tracing::error!(TASK_ID = %task.id, error = %e, "cannot start the task; it is dispatched again at the next start");
                return;
            }
        };
        if let Some(created) = crate::metrics::rfc3339_ms(&started.created_at) {
            let wait = crate::metrics::ms_to_seconds(at - created);
            d.metrics.queue_wait.observe(wait);
        }
        self.leases.hold(&started.id, stop.clone());
        let limits = Limits {
            timeout: agent.timeout,
            kill_grace: agent.kill_grace,
            shutdown_grace: agent.kill_grace.min(SHUTDOWN_GRACE),
        };
        let ran = self.execute(&started, &agent, &limits, stop).await;
        self.leases.release(&started.id);
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
                let dir = d.paths.task_dir(&started.id).join(ARTEFACT_DIR);
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
                outcome(&started, &cfg, &limits, ended, listed, at)
            }
        };
        let Some(op) = op else {
            return;
        };
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
        match d.store.transition(op).await {
            Ok(t) => tracing::debug!(TASK_ID = %t.id, TO = %t.state, "outcome recorded"),
            Err(StoreError::Refused { from, .. }) => {
                tracing::debug!(TASK_ID = %started.id, FROM = %from, "outcome not recorded: the task moved on")
            }
            // The lease lapses and the sweeper reclaims the task: it is not stuck.
            Err(e) => {
                tracing::error!(TASK_ID = %started.id, error = %e, "cannot record the outcome")
            }
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
        let env = process::child_env(task, &agent.env, Some(&artefact_dir));
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
