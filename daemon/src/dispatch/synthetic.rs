//! Synthetic dispatch (SPEC §6): no process; route → start → complete with a deterministic result,
//! each a transition with its own trajectory event, all in one store job.

use super::{route_in, ACTOR};
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
    let (assigned, approval) = match current.state {
        TaskState::Queued => route_in(b, &current, cfg, at)?,
        TaskState::Assigned => {
            let decision = cfg
                .routing
                .decide(&current.goal, &current.required_capabilities);
            (
                current.clone(),
                cfg.routing.approval(&decision, &cfg.agents),
            )
        }
        // Cancelled or expired in the meantime: nothing to do.
        _ => return Ok(current),
    };
    let session = Some(session_id(&assigned.id));
    let start = Patch {
        result: Some(TaskResult {
            text: None,
            text_path: None,
            artefacts: Vec::new(),
            specialist_session_id: session.clone(),
        }),
        ..Patch::default()
    };
    b.transition(TransitionOp::new(&assigned.id, Action::Start, ACTOR, at).patch(start))?;
    let done = Patch {
        result: Some(TaskResult {
            text: Some(result_text(&assigned.id)),
            text_path: None,
            artefacts: Vec::new(),
            specialist_session_id: session,
        }),
        ..Patch::default()
    };
    let op = TransitionOp::new(
        &assigned.id,
        Action::Complete {
            approval_required: approval.required,
        },
        ACTOR,
        at,
    )
    .patch(done);
    b.transition(op)
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
