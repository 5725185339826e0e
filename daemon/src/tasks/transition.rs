//! `approve`, `reject` and `cancel`: operator transitions, recorded with the operator's identity
//! (the control socket's peer user name, or the HTTP API's `http:<token id>`) and the front end
//! they acted through (the `via` detail of the trajectory event).

use super::{check_id, Actor};
use crate::clock::rfc3339;
use crate::daemon::Daemon;
use crate::machine::{validate_reason, Action};
use crate::store::{Patch, TransitionOp};
use orchestrator_proto::task::{task_error, Rejection, Task, TaskError, TaskState};
use orchestrator_proto::{ErrorCode, WireError};

/// Apply `op`, recording the front end the operator acted through.
async fn apply(d: &Daemon, who: &Actor, op: TransitionOp) -> Result<Task, WireError> {
    let op = match who.via {
        Some(channel) => op.detail("via", channel),
        None => op,
    };
    Ok(d.store.transition(op).await?)
}

pub async fn approve(d: &Daemon, who: &Actor, id: &str) -> Result<Task, WireError> {
    let actor = who.as_str();
    check_id(id)?;
    apply(
        d,
        who,
        TransitionOp::new(id, Action::Approve, actor, d.clock.now_ms()),
    )
    .await
}

pub async fn reject(d: &Daemon, who: &Actor, id: &str, reason: &str) -> Result<Task, WireError> {
    let actor = who.as_str();
    check_id(id)?;
    let reason =
        validate_reason(reason).map_err(|m| WireError::new(ErrorCode::InvalidReason, m))?;
    let at = d.clock.now_ms();
    let patch = Patch {
        rejection: Some(Rejection {
            by: actor.to_string(),
            reason: reason.to_string(),
            at: rfc3339(at),
        }),
        error: Some(TaskError {
            code: task_error::REJECTED.to_string(),
            message: format!("rejected by {actor}: {reason}"),
            details: None,
        }),
        ..Patch::default()
    };
    apply(
        d,
        who,
        TransitionOp::new(id, Action::Reject, actor, at)
            .patch(patch)
            .detail("reason", reason),
    )
    .await
}

pub async fn cancel(d: &Daemon, who: &Actor, id: &str) -> Result<Task, WireError> {
    let actor = who.as_str();
    check_id(id)?;
    let at = d.clock.now_ms();
    let patch = Patch {
        rejection: Some(Rejection {
            by: actor.to_string(),
            reason: "cancelled".to_string(),
            at: rfc3339(at),
        }),
        ..Patch::default()
    };
    let task = apply(
        d,
        who,
        TransitionOp::new(id, Action::Cancel, actor, at).patch(patch),
    )
    .await?;
    // The store has said cancelled; now make sure no specialist keeps working on it.
    if task.state == TaskState::Cancelled {
        d.dispatch.cancelled(id);
    }
    Ok(task)
}
