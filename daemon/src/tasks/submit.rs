//! Submit: validate, store durably, hand to the dispatcher, answer with the task.

use super::Actor;
use crate::clock::duration_ms;
use crate::config::DEFAULT_TTL;
use crate::daemon::Daemon;
use crate::dispatch::synthetic;
use crate::machine::has_control_chars;
use crate::store::{NewTask, StoreError, SubmitPlan};
use orchestrator_proto::message::SubmitRequest;
use orchestrator_proto::task::{Task, TaskKind, TaskState, MAX_GOAL_BYTES};
use orchestrator_proto::{ErrorCode, WireError};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

pub const MAX_CAPABILITIES: usize = 32;
pub const MAX_CAPABILITY_LEN: usize = 64;
pub const MAX_TTL_SECS: u64 = 365 * 86400;
pub const MAX_PATH_LEN: usize = 4096;

/// A goal must be non-empty after trimming, at most 8 KiB, and free of control characters other
/// than line breaks and tabs. Returns the goal as given (trimmed).
pub fn validate_goal(goal: &str) -> Result<&str, WireError> {
    let trimmed = goal.trim();
    if trimmed.is_empty() {
        return Err(WireError::new(
            ErrorCode::MissingGoal,
            "a goal is required (it must not be empty or whitespace)",
        ));
    }
    if goal.len() > MAX_GOAL_BYTES {
        return Err(WireError::new(
            ErrorCode::GoalTooLong,
            format!(
                "the goal is {} bytes; the limit is {MAX_GOAL_BYTES}",
                goal.len()
            ),
        )
        .with("limit", MAX_GOAL_BYTES.to_string()));
    }
    if has_control_chars(goal) {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            "the goal contains control characters",
        ));
    }
    Ok(trimmed)
}

pub fn validate_capabilities(caps: &[String]) -> Result<(), WireError> {
    if caps.len() > MAX_CAPABILITIES {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!(
                "{} capabilities given; the limit is {MAX_CAPABILITIES}",
                caps.len()
            ),
        ));
    }
    for c in caps {
        let ok = !c.is_empty()
            && c.len() <= MAX_CAPABILITY_LEN
            && c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.' | ':'));
        if !ok {
            let shown: String = c.chars().take(MAX_CAPABILITY_LEN).collect();
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!("invalid capability {shown:?}: use 1-{MAX_CAPABILITY_LEN} letters, digits, '-', '_', '.', ':'"),
            ));
        }
    }
    Ok(())
}

fn validate_workspace(dir: &Option<String>) -> Result<(), WireError> {
    if let Some(dir) = dir {
        if dir.len() > MAX_PATH_LEN
            || !dir.starts_with('/')
            || has_control_chars(dir)
            || dir.contains('\n')
        {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                "workspaceDir must be an absolute path",
            ));
        }
    }
    Ok(())
}

fn validate_ttl(ttl: Option<u64>) -> Result<i64, WireError> {
    match ttl {
        None => Ok(duration_ms(DEFAULT_TTL)),
        Some(0) => Err(WireError::new(
            ErrorCode::InvalidArgument,
            "ttl must be at least 1 second",
        )),
        Some(s) if s > MAX_TTL_SECS => Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!(
                "ttl must be at most {} days ({MAX_TTL_SECS} seconds)",
                MAX_TTL_SECS / 86_400
            ),
        )),
        Some(s) => Ok((s * 1000) as i64),
    }
}

/// Build a validated [`NewTask`] of the daemon's current kind.
pub fn new_task(
    d: &Daemon,
    req: &SubmitRequest,
    submitted_by: &Actor,
    harness: bool,
) -> Result<NewTask, WireError> {
    let goal = validate_goal(&req.goal)?;
    validate_capabilities(&req.required_capabilities)?;
    validate_workspace(&req.workspace_dir)?;
    let ttl_ms = validate_ttl(req.ttl_secs)?;
    let mut caps = req.required_capabilities.clone();
    caps.sort();
    caps.dedup();
    let now = d.clock.now_ms();
    Ok(NewTask {
        id: ulid::Ulid::generate().to_string(),
        kind: d.mode().effective,
        goal: goal.to_string(),
        workspace_dir: req.workspace_dir.clone(),
        required_capabilities: caps,
        submitted_by: submitted_by.name.clone(),
        harness,
        created_ms: now,
        expires_ms: now.saturating_add(ttl_ms),
    })
}

/// Store a task that a specialist will run and hand it to the dispatcher. Both run in a task of
/// their own, so that a request dropped while it waits (an HTTP client that hung up) cannot leave
/// a committed task that the dispatcher never hears of. A shadow task also tells the summaries'
/// kept tallies when it was created: one stamped inside the time they keep (a step back of the
/// clock) drops what they kept ([`crate::gate::tallies`]).
async fn submit_and_hand_over(d: &Daemon, plan: SubmitPlan) -> Result<Task, StoreError> {
    let (store, dispatch) = (d.store.clone(), d.dispatch.clone());
    let shadow = (plan.task.kind == TaskKind::Shadow)
        .then(|| (Arc::clone(&d.shadow_tallies), plan.task.created_ms));
    let write = tokio::spawn(async move {
        let stored = store.submit(plan).await;
        if let Some((tallies, created_ms)) = shadow {
            // Whatever the answer: the write may have committed.
            tallies.created(created_ms);
        }
        if let Ok(task) = &stored {
            dispatch.queued(task.clone());
        }
        stored
    });
    match write.await {
        Ok(stored) => stored,
        Err(e) => Err(StoreError::Sql(format!("the submit task failed: {e}"))),
    }
}

/// Store a task durably and hand it to the dispatcher. With `wait`, answer once it rests.
pub async fn submit(
    d: &Daemon,
    task: NewTask,
    actor: &Actor,
    wait: bool,
) -> Result<Task, WireError> {
    // Subscribe before the insert so that no transition can slip past unseen.
    let mut events = wait.then(|| d.store.watch_events());
    let actor = actor.name.clone();
    let task = if task.kind == TaskKind::Synthetic {
        // Synthetic dispatch is deterministic and spawns nothing, so its steps are known now and
        // stored with the task in one write: one commit holds the task and its whole trajectory,
        // and the answer shows where the task came to rest.
        let steps = synthetic::steps(&task, &d.config(), task.created_ms);
        let harness = task.harness;
        let wait_ms = steps
            .iter()
            .find(|s| s.action == crate::machine::Action::Start)
            .map(|s| s.at_ms - task.created_ms);
        let task = d.store.submit(SubmitPlan { task, actor, steps }).await?;
        if let (false, Some(wait_ms)) = (harness, wait_ms) {
            let agent = task.assigned_agent_id.as_deref().unwrap_or_default();
            synthetic::count_dispatch(d, agent, wait_ms);
        }
        task
    } else {
        let plan = SubmitPlan {
            task,
            actor,
            steps: Vec::new(),
        };
        submit_and_hand_over(d, plan).await?
    };
    let Some(events) = events.as_mut() else {
        return Ok(task);
    };
    let resting = |s: TaskState| s == TaskState::AwaitingApproval || s.is_terminal();
    loop {
        tokio::select! {
            _ = d.shutdown.cancelled() => break,
            ev = events.recv() => match ev {
                Ok(ev) if ev.task_id == task.id && resting(ev.to) => break,
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    let now = d.store.get_task(&task.id).await?;
                    if now.is_some_and(|t| resting(t.state)) {
                        break;
                    }
                }
                Err(RecvError::Closed) => break,
            }
        }
    }
    let latest = d.store.get_task(&task.id).await?;
    Ok(latest.unwrap_or(task))
}
