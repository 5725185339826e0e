//! Synthetic dispatch: no process; route → start → complete with a deterministic result, each a
//! transition with its own trajectory event, all in one store write.
//!
//! The steps are a pure function of the task and the routing config, so they are computed here
//! beforehand and handed to the store as a plan: with the task itself at submit
//! ([`steps`]), or for a task already stored (found at start) by [`dispatch`].

use super::{route_step, ACTOR};
use crate::config::Config;
use crate::daemon::Daemon;
use crate::machine::Action;
use crate::metrics;
use crate::routing::Approval;
use crate::store::{NewTask, Patch, Plan, TransitionOp};
use orchestrator_proto::task::{Task, TaskResult, TaskState};

pub fn session_id(id: &str) -> String {
    format!("synthetic-{id}")
}

pub fn result_text(id: &str) -> String {
    format!("synthetic completion for task {id} (mode=synthetic; no specialist spawned)")
}

/// The whole pipeline of a task about to be submitted: route, start, complete.
pub fn steps(task: &NewTask, cfg: &Config, at: i64) -> Vec<TransitionOp> {
    let (route, approval) = route_step(
        &task.id,
        task.kind,
        &task.goal,
        &task.required_capabilities,
        cfg,
        at,
    );
    let mut steps = vec![route];
    steps.extend(run_steps(&task.id, &approval, at));
    steps
}

/// Start and complete, once routed.
fn run_steps(id: &str, approval: &Approval, at: i64) -> [TransitionOp; 2] {
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
    let done = Patch {
        result: Some(TaskResult {
            text: Some(result_text(id)),
            text_path: None,
            artefacts: Vec::new(),
            specialist_session_id: session,
        }),
        ..Patch::default()
    };
    let complete = Action::Complete {
        approval_required: approval.required,
    };
    let mut complete = TransitionOp::new(id, complete, ACTOR, at).patch(done);
    if approval.required {
        // As a specialist's completion records them: the reasons approval.requested carries.
        complete = complete.detail("approval", approval.reasons.join("; "));
    }
    [
        TransitionOp::new(id, Action::Start, ACTOR, at).patch(start),
        complete,
    ]
}

/// The plan that takes a stored task from where it stands (queued or assigned) to where synthetic
/// dispatch ends; `None` for a task in any other state.
pub fn plan(task: &Task, cfg: &Config, at: i64) -> Option<Plan> {
    let (route, approval) = route_step(
        &task.id,
        task.kind,
        &task.goal,
        &task.required_capabilities,
        cfg,
        at,
    );
    let steps = match task.state {
        TaskState::Queued => {
            let mut steps = vec![route];
            steps.extend(run_steps(&task.id, &approval, at));
            steps
        }
        TaskState::Assigned => run_steps(&task.id, &approval, at).to_vec(),
        _ => return None,
    };
    Some(Plan {
        id: task.id.clone(),
        kind: task.kind,
        from: task.state,
        steps,
    })
}

/// Count a synthetic task that was routed and started: a dispatch to its agent, and how long it
/// waited between submit and start (known from its steps; nothing is parsed back from text).
pub fn count_dispatch(d: &Daemon, agent: &str, wait_ms: i64) {
    d.metrics.dispatches.inc(&[agent]);
    d.metrics
        .queue_wait
        .observe(metrics::ms_to_seconds(wait_ms));
}

/// Run stored synthetic tasks to their end, in one store write. A task that moved on meanwhile
/// (cancelled, expired) is skipped without undoing the others.
pub async fn dispatch(d: &Daemon, tasks: Vec<Task>, at: i64) {
    let cfg = d.config();
    let count = tasks.len();
    let (tasks, plans): (Vec<&Task>, Vec<Plan>) = tasks
        .iter()
        .filter_map(|t| Some((t, plan(t, &cfg, at)?)))
        .unzip();
    match d.store.advance(plans).await {
        Ok(outcomes) => {
            for (task, outcome) in tasks.into_iter().zip(outcomes) {
                match outcome {
                    Ok(_) => {
                        let agent = cfg
                            .routing
                            .decide(&task.goal, &task.required_capabilities)
                            .agent;
                        // Found assigned at start: its dispatch was counted before the restart.
                        if task.state == TaskState::Queued {
                            d.metrics.dispatches.inc(&[agent.as_str()]);
                        }
                        if let Some(created) = crate::clock::rfc3339_ms(&task.created_at) {
                            d.metrics
                                .queue_wait
                                .observe(metrics::ms_to_seconds(at - created));
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "synthetic dispatch skipped"),
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, count, at = d.clock.now_ms(), "synthetic dispatch failed; the tasks stay queued, and are dispatched again after the next sweep");
            d.dispatch.lost_some();
        }
    }
}
