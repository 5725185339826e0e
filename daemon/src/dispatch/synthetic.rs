//! Synthetic dispatch (SPEC §6): no process; route → start → complete with a deterministic result,
//! each a transition with its own trajectory event, all in one store job.

use super::{route_op, ACTOR};
use crate::clock::now_ms;
use crate::daemon::Daemon;
use crate::machine::Action;
use crate::store::{Batch, Patch, StoreError, TransitionOp};
use orchestrator_proto::task::{Task, TaskResult, TaskState};

pub fn session_id(id: &str) -> String {
    format!("synthetic-{id}")
}

pub fn result_text(id: &str) -> String {
    format!("synthetic completion for task {id} (mode=synthetic; no specialist spawned)")
}

/// Take one task from wherever it stands (queued or assigned) to where synthetic dispatch ends.
pub fn run_one(
    b: &mut Batch<'_>,
    task: &Task,
    cfg: &crate::config::Config,
    at: i64,
) -> Result<Task, StoreError> {
    let current = b
        .get_task(&task.id)?
        .ok_or_else(|| StoreError::NotFound(task.id.clone()))?;
    run_from(b, current, cfg, at)
}

/// Take a task whose current state the caller knows — read in this job, or just inserted by it —
/// to where synthetic dispatch ends. Each step is still a compare-and-set with its own event; only
/// the final state is read back.
pub fn run_from(
    b: &mut Batch<'_>,
    current: Task,
    cfg: &crate::config::Config,
    at: i64,
) -> Result<Task, StoreError> {
    let approval = match current.state {
        TaskState::Queued => {
            let (op, approval) = route_op(&current, cfg, at);
            b.apply_from(op, current.kind, TaskState::Queued)?;
            approval
        }
        TaskState::Assigned => {
            let decision = cfg
                .routing
                .decide(&current.goal, &current.required_capabilities);
            cfg.routing.approval(&decision, &cfg.agents)
        }
        // Cancelled or expired in the meantime: nothing to do.
        _ => return Ok(current),
    };
    let id = current.id.as_str();
    let session = Some(session_id(id));
    let start = Patch {
        result: Some(TaskResult {
            text: None,
            text_path: None,
            artefacts: Vec::new(),
            specialist_session_id: session.clone(),
        }),
        ..Patch::default()
    };
    let op = TransitionOp::new(id, Action::Start, ACTOR, at).patch(start);
    b.apply_from(op, current.kind, TaskState::Assigned)?;
    let done = Patch {
        result: Some(TaskResult {
            text: Some(result_text(id)),
            text_path: None,
            artefacts: Vec::new(),
            specialist_session_id: session,
        }),
        ..Patch::default()
    };
    let op = TransitionOp::new(
        id,
        Action::Complete {
            approval_required: approval.required,
        },
        ACTOR,
        at,
    )
    .patch(done);
    b.apply_from(op, current.kind, TaskState::InProgress)?;
    b.get_task(id)?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))
}

pub async fn dispatch(d: &Daemon, tasks: Vec<Task>, at: i64) {
    let cfg = d.config();
    let count = tasks.len();
    let result = d
        .store
        .write(move |b| {
            for task in &tasks {
                // One task's refusal (it was cancelled meanwhile) must not undo the others.
                if let Err(e) = b.nested(|b| run_one(b, task, &cfg, at)) {
                    match e {
                        StoreError::Refused { .. } | StoreError::NotFound(_) => {
                            tracing::debug!(task = %task.id, error = %e, "synthetic dispatch skipped");
                        }
                        other => return Err(other),
                    }
                }
            }
            Ok(())
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, count, at = now_ms(), "synthetic dispatch failed; the tasks stay queued until the next start");
    }
}
