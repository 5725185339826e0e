//! Shadow and live dispatch: real specialist processes.
//!
//! Each agent has a FIFO queue and at most `max_concurrent` specialists alive. A task is routed
//! (`assigned`), waits for a slot, starts (`in_progress`, with a lease), and ends by its outcome:
//!
//! - exit 0 → `complete` (live: approval by the routing rules; shadow: never, what live would have
//!   done is recorded at routing), stdout as `result.text` (capped; all of it in `textPath`
//!   beyond the cap), the files left in the artefact directory as `artefacts`;
//! - non-zero exit or a signal → `fail` `specialist_aborted`, with the exit status and stderr's tail;
//! - cannot spawn → `fail` `spawn_failed`; past the timeout → stopped, `fail` `specialist_timeout`;
//! - cancelled, or the daemon stopping → the specialist is stopped and no outcome is written (the
//!   task is already `cancelled`, or is reclaimed at the next start).

use super::leases::{self, Leases};
use super::process::{self, Capture, Ended, Ending, Launch, Limits};
use super::{artefacts, route_op, ACTOR, MAX_BURST};
use crate::config::{AgentConfig, Config};
use crate::daemon::Daemon;
use crate::machine::Action;
use crate::routing::{Approval, Decision};
use crate::store::{Patch, StoreError, TransitionOp};
use crate::supervisor::Supervisor;
use orchestrator_proto::task::{
    task_error, Artefact, Task, TaskError, TaskKind, TaskResult, TaskState,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
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

#[derive(Default)]
struct Slots {
    agents: HashMap<String, AgentSlots>,
    /// Tasks taken from a queue whose specialist has not ended yet, and what stops each.
    running: HashMap<String, CancellationToken>,
}

#[derive(Default)]
struct AgentSlots {
    waiting: VecDeque<Task>,
    alive: u32,
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
            return;
        }
        let tasks = std::mem::take(&mut buf);
        s.admit(tasks).await;
    }
}

/// Whether the agent can run a specialist: it has an `[agents.<id>]` entry with a command.
fn runnable<'c>(cfg: &'c Config, agent: &str) -> Option<&'c AgentConfig> {
    if !cfg.configured_agents.contains(agent) {
        return None;
    }
    cfg.agent(agent).filter(|a| !a.command.is_empty())
}

/// Approval for a live task, from the routing it recorded and the rules in force now.
pub fn approval_of(task: &Task, cfg: &Config) -> Approval {
    let decision = match &task.routing {
        Some(r) => Decision {
            matched_rule_id: r.matched_rule_id.clone(),
            agent: r.assigned_agent_id.clone(),
            capability_matches: r.capability_matches.clone(),
            fallback_used: r.fallback_used,
            shadowed_rule_ids: Vec::new(),
        },
        None => cfg.routing.decide(&task.goal, &task.required_capabilities),
    };
    cfg.routing.approval(&decision, &cfg.agents)
}

/// The specialist's environment: `base`, then the agent's `env`, then the contract's variables.
pub fn specialist_env(
    base: Vec<(String, String)>,
    task: &Task,
    agent_env: &BTreeMap<String, String>,
    artefact_dir: &Path,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = base.into_iter().collect();
    for (k, v) in agent_env {
        if !process::is_reserved(k) {
            env.insert(k.clone(), v.clone());
        }
    }
    let agent = task.assigned_agent_id.clone().unwrap_or_default();
    env.insert("ORCH_TASK_ID".into(), task.id.clone());
    env.insert("ORCH_TASK_KIND".into(), task.kind.as_str().into());
    env.insert("ORCH_AGENT_ID".into(), agent);
    env.insert(
        "ORCH_ARTEFACT_DIR".into(),
        artefact_dir.to_string_lossy().into_owned(),
    );
    env.into_iter().collect()
}

fn details(pairs: Vec<(&str, String)>) -> Option<BTreeMap<String, String>> {
    let map: BTreeMap<String, String> = pairs
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    (!map.is_empty()).then_some(map)
}

fn spawn_failed(message: String, pairs: Vec<(&str, String)>) -> TaskError {
    TaskError {
        code: task_error::SPAWN_FAILED.into(),
        message,
        details: details(pairs),
    }
}

/// The transition that records how a specialist ended; `None` when it was stopped from outside.
pub fn outcome(
    task: &Task,
    cfg: &Config,
    limits: &Limits,
    ended: Ended,
    artefacts: Vec<Artefact>,
    at: i64,
) -> Option<TransitionOp> {
    let session = task
        .result
        .as_ref()
        .and_then(|r| r.specialist_session_id.clone());
    let elapsed = ended.elapsed.as_millis().to_string();
    let result = TaskResult {
        text: Some(ended.stdout.text),
        text_path: ended
            .stdout
            .spilled
            .map(|p| p.to_string_lossy().into_owned()),
        artefacts,
        specialist_session_id: session,
    };
    let stdout_error = ended.stdout.error.unwrap_or_default();
    let fail = |error: TaskError| {
        TransitionOp::new(&task.id, Action::Fail, ACTOR, at)
            .patch(Patch {
                result: Some(result.clone()),
                error: Some(error),
                ..Patch::default()
            })
            .detail("elapsedMs", elapsed.clone())
    };
    match ended.how {
        Ending::Stopped => None,
        Ending::Exited(status) if status.success() => {
            let approval = if task.kind == TaskKind::Live {
                approval_of(task, cfg)
            } else {
                // Shadow never asks; what live would have done was recorded at routing.
                Approval {
                    required: false,
                    reasons: Vec::new(),
                }
            };
            let mut op = TransitionOp::new(
                &task.id,
                Action::Complete {
                    approval_required: approval.required,
                },
                ACTOR,
                at,
            )
            .patch(Patch {
                result: Some(result),
                ..Patch::default()
            })
            .detail("exitStatus", "0")
            .detail("elapsedMs", elapsed);
            if approval.required {
                op = op.detail("approval", approval.reasons.join("; "));
            }
            if !stdout_error.is_empty() {
                op = op.detail("stdoutError", stdout_error);
            }
            Some(op)
        }
        Ending::Exited(status) => {
            let (mut pairs, message) = process::describe_exit(status);
            pairs.push(("stderrTail", ended.stderr_tail));
            pairs.push(("stdoutError", stdout_error));
            Some(fail(TaskError {
                code: task_error::SPECIALIST_ABORTED.into(),
                message,
                details: details(pairs),
            }))
        }
        Ending::TimedOut => {
            let timeout = humantime::format_duration(limits.timeout).to_string();
            let grace = humantime::format_duration(limits.kill_grace).to_string();
            Some(fail(TaskError {
                code: task_error::SPECIALIST_TIMEOUT.into(),
                message: format!(
                    "the specialist ran past its timeout of {timeout} and was stopped (SIGTERM, SIGKILL after {grace})"
                ),
                details: details(vec![
                    ("timeout", timeout),
                    ("killGrace", grace),
                    ("stderrTail", ended.stderr_tail),
                    ("stdoutError", stdout_error),
                ]),
            }))
        }
    }
}

/// Frees the slot when a run ends, however it ends (a panic included), and lets the next one in.
struct SlotGuard {
    s: Arc<Shared>,
    agent: String,
    id: String,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        {
            let mut slots = self.s.slots();
            if let Some(q) = slots.agents.get_mut(&self.agent) {
                q.alive = q.alive.saturating_sub(1);
            }
            slots.running.remove(&self.id);
        }
        self.s.pump(&self.agent);
    }
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn cancel(&self, id: &str) {
        let mut slots = self.slots();
        if let Some(stop) = slots.running.get(id) {
            stop.cancel();
            return;
        }
        for q in slots.agents.values_mut() {
            q.waiting.retain(|t| t.id != id);
        }
    }

    /// Route a burst of tasks in one store job, then queue each for its agent, in order.
    async fn admit(self: &Arc<Self>, tasks: Vec<Task>) {
        let cfg = self.d.config();
        let at = self.d.clock.now_ms();
        let c = Arc::clone(&cfg);
        let count = tasks.len();
        let routes: Vec<TransitionOp> = tasks
            .iter()
            .filter(|t| t.state == TaskState::Queued)
            .map(|t| route_op(t, &c, at).0)
            .collect();
        let routed = self.d.store.transitions(routes).await;
        let routed = match routed {
            Ok(outcomes) => {
                let mut out = Vec::with_capacity(tasks.len());
                let mut outcomes = outcomes.into_iter();
                for task in tasks {
                    if task.state == TaskState::Queued {
                        match outcomes.next() {
                            Some(Ok(t)) => {
                                let agent = t.assigned_agent_id.as_deref().unwrap_or_default();
                                self.d.metrics.dispatches.inc(&[agent]);
                                out.push(t)
                            }
                            // Routed before (found assigned at start): taken as it stands now.
                            Some(Err(StoreError::Refused {
                                from: TaskState::Assigned,
                                ..
                            })) => out.extend(self.current(&task.id, TaskState::Assigned).await),
                            // Cancelled or expired meanwhile: not ours to run.
                            _ => {}
                        }
                    } else {
                        out.extend(self.current(&task.id, TaskState::Assigned).await);
                    }
                }
                Ok(out)
            }
            Err(e) => Err(e),
        };
        let routed = match routed {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, count, "cannot route tasks; they stay queued until the next start");
                return;
            }
        };
        let mut no_agent = Vec::new();
        let mut touched = BTreeSet::new();
        {
            let mut slots = self.slots();
            for task in routed {
                let agent = task.assigned_agent_id.clone().unwrap_or_default();
                if runnable(&cfg, &agent).is_some() {
                    slots
                        .agents
                        .entry(agent.clone())
                        .or_default()
                        .waiting
                        .push_back(task);
                    touched.insert(agent);
                } else {
                    no_agent.push(task);
                }
            }
        }
        if !no_agent.is_empty() {
            self.fail_no_agent(no_agent).await;
        }
        for agent in touched {
            self.pump(&agent);
        }
    }

    /// The task as stored now, if it is in `state`.
    async fn current(&self, id: &str, state: TaskState) -> Option<Task> {
        match self.d.store.get_task(id).await {
            Ok(t) => t.filter(|t| t.state == state),
            Err(e) => {
                tracing::error!(TASK_ID = %id, error = %e, "cannot read a task to dispatch it; it is dispatched at the next start");
                None
            }
        }
    }

    async fn fail_no_agent(&self, tasks: Vec<Task>) {
        let at = self.d.clock.now_ms();
        let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        let ops: Vec<TransitionOp> = tasks
            .iter()
            .map(|task| {
                let agent = task.assigned_agent_id.clone().unwrap_or_default();
                let error = TaskError {
                    code: task_error::RULE_LOADED_NO_AGENT.into(),
                    message: format!(
                        "the task was routed to agent {agent:?}, which has no [agents.{agent}] command to run"
                    ),
                    details: details(vec![("agent", agent.clone())]),
                };
                TransitionOp::new(&task.id, Action::Fail, ACTOR, at).patch(Patch {
                    error: Some(error),
                    ..Patch::default()
                })
            })
            .collect();
        // One task's refusal (cancelled meanwhile) is its own answer and undoes nothing else.
        let result = self.d.store.transitions(ops).await.map(|outcomes| {
            for t in outcomes.iter().flatten() {
                let agent = t.assigned_agent_id.as_deref().unwrap_or_default();
                let failures = &self.d.metrics.specialist_failures;
                failures.inc(&[agent, task_error::RULE_LOADED_NO_AGENT]);
            }
        });
        match result {
            Ok(()) => {
                tracing::warn!(tasks = ?ids, "tasks routed to agents without a command failed")
            }
            Err(e) => {
                tracing::error!(error = %e, tasks = ?ids, "cannot fail tasks routed to agents without a command")
            }
        }
    }

    /// Start the agent's waiting tasks while it has free slots.
    fn pump(self: &Arc<Self>, agent: &str) {
        if self.d.shutdown.is_cancelled() {
            return;
        }
        let max = self
            .d
            .config()
            .agent(agent)
            .map(|a| a.max_concurrent.max(1))
            .unwrap_or(1);
        let mut starts = Vec::new();
        {
            let mut guard = self.slots();
            let slots = &mut *guard;
            let q = slots.agents.entry(agent.to_string()).or_default();
            while q.alive < max {
                let Some(task) = q.waiting.pop_front() else {
                    break;
                };
                q.alive += 1;
                let stop = CancellationToken::new();
                slots.running.insert(task.id.clone(), stop.clone());
                starts.push((task, stop));
            }
        }
        for (task, stop) in starts {
            let guard = SlotGuard {
                s: Arc::clone(self),
                agent: agent.to_string(),
                id: task.id.clone(),
            };
            self.tracker.spawn(async move {
                guard.s.run(task, &stop).await;
                drop(guard);
            });
        }
    }

    /// One task from its slot to its outcome.
    async fn run(&self, task: Task, stop: &CancellationToken) {
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
        let started = match d.store.transition(start).await {
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
        let env = specialist_env(
            process::base_env(|k| std::env::var(k).ok()),
            task,
            &agent.env,
            &artefact_dir,
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_proto::task::Routing;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn cfg() -> Config {
        Config::from_toml(
            "[agents.coder]\ncommand = [\"true\"]\n[agents.researcher]\ncommand = [\"true\"]\n",
            None,
        )
        .unwrap()
    }

    fn task(kind: TaskKind, agent: &str) -> Task {
        Task {
            schema_version: 1,
            id: "01TESTTASK0000000000000000".into(),
            kind,
            state: TaskState::InProgress,
            goal: "g".into(),
            workspace_dir: None,
            required_capabilities: Vec::new(),
            routing: Some(Routing {
                matched_rule_id: Some("r".into()),
                assigned_agent_id: agent.into(),
                capability_matches: Vec::new(),
                fallback_used: false,
                decided_at: "t".into(),
            }),
            assigned_agent_id: Some(agent.into()),
            result: Some(TaskResult {
                text: None,
                text_path: None,
                artefacts: Vec::new(),
                specialist_session_id: Some("s-1".into()),
            }),
            rejection: None,
            error: None,
            submitted_by: "u".into(),
            would_require_approval: false,
            created_at: "t".into(),
            assigned_at: None,
            started_at: None,
            completed_at: None,
            expires_at: "t".into(),
            attempts: 1,
        }
    }

    fn ended(how: Ending) -> Ended {
        Ended {
            how,
            stdout: process::Captured {
                text: "out".into(),
                bytes: 3,
                spilled: None,
                error: None,
            },
            stderr_tail: "boom".into(),
            elapsed: Duration::from_millis(5),
        }
    }

    const LIMITS: Limits = Limits {
        timeout: Duration::from_secs(2),
        kill_grace: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(1),
    };

    #[test]
    fn success_completes_with_approval_by_the_rules_in_live_only() {
        let c = cfg();
        let ok = Ending::Exited(ExitStatus::from_raw(0));
        let live = outcome(
            &task(TaskKind::Live, "coder"),
            &c,
            &LIMITS,
            ended(ok),
            vec![],
            1,
        )
        .unwrap();
        assert_eq!(
            live.action,
            Action::Complete {
                approval_required: true
            }
        );
        let r = live.patch.result.unwrap();
        assert_eq!(r.text.as_deref(), Some("out"));
        assert_eq!(r.specialist_session_id.as_deref(), Some("s-1"));
        let shadow = outcome(
            &task(TaskKind::Shadow, "coder"),
            &c,
            &LIMITS,
            ended(ok),
            vec![],
            1,
        )
        .unwrap();
        assert_eq!(
            shadow.action,
            Action::Complete {
                approval_required: false
            }
        );
        let research = outcome(
            &task(TaskKind::Live, "researcher"),
            &c,
            &LIMITS,
            ended(ok),
            vec![],
            1,
        )
        .unwrap();
        assert_eq!(
            research.action,
            Action::Complete {
                approval_required: false
            }
        );
    }

    #[test]
    fn a_non_zero_exit_or_a_signal_aborts_with_the_status_and_stderr() {
        let c = cfg();
        let t = task(TaskKind::Live, "researcher");
        let op = outcome(
            &t,
            &c,
            &LIMITS,
            ended(Ending::Exited(ExitStatus::from_raw(3 << 8))),
            vec![],
            1,
        )
        .unwrap();
        let e = op.patch.error.unwrap();
        assert_eq!(e.code, task_error::SPECIALIST_ABORTED);
        let d = e.details.unwrap();
        assert_eq!(d["exitStatus"], "3");
        assert_eq!(d["stderrTail"], "boom");
        let op = outcome(
            &t,
            &c,
            &LIMITS,
            ended(Ending::Exited(ExitStatus::from_raw(9))),
            vec![],
            1,
        )
        .unwrap();
        assert_eq!(
            op.patch.error.unwrap().details.unwrap()["signal"],
            "SIGKILL"
        );
    }

    #[test]
    fn a_timeout_fails_and_a_stop_writes_nothing() {
        let c = cfg();
        let t = task(TaskKind::Shadow, "researcher");
        let op = outcome(&t, &c, &LIMITS, ended(Ending::TimedOut), vec![], 1).unwrap();
        let e = op.patch.error.unwrap();
        assert_eq!(e.code, task_error::SPECIALIST_TIMEOUT);
        assert_eq!(e.details.unwrap()["timeout"], "2s");
        assert!(outcome(&t, &c, &LIMITS, ended(Ending::Stopped), vec![], 1).is_none());
    }

    #[test]
    fn the_contract_variables_win_over_the_agent_env() {
        let t = task(TaskKind::Live, "coder");
        let agent_env = BTreeMap::from([
            ("API_KEY".to_string(), "k".to_string()),
            ("ORCH_TASK_ID".to_string(), "forged".to_string()),
            ("NOTIFY_SOCKET".to_string(), "/run/x".to_string()),
        ]);
        let env: BTreeMap<String, String> = specialist_env(
            vec![("PATH".into(), "/bin".into())],
            &t,
            &agent_env,
            Path::new("/a"),
        )
        .into_iter()
        .collect();
        assert_eq!(env["ORCH_TASK_ID"], t.id);
        assert_eq!(env["ORCH_TASK_KIND"], "live");
        assert_eq!(env["ORCH_AGENT_ID"], "coder");
        assert_eq!(env["ORCH_ARTEFACT_DIR"], "/a");
        assert_eq!(env["API_KEY"], "k");
        assert_eq!(env["PATH"], "/bin");
        assert!(!env.contains_key("NOTIFY_SOCKET"));
    }
}
