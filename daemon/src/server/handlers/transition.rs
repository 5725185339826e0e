//! `approve`, `reject` and `cancel`: operator transitions, recorded with the peer's identity.

use super::check_id;
use crate::access::Peer;
use crate::clock::{now_ms, rfc3339};
use crate::daemon::Daemon;
use crate::machine::{validate_reason, Action};
use crate::store::{Patch, TransitionOp};
use orchestrator_proto::task::{task_error, Rejection, TaskError, TaskState};
use orchestrator_proto::{ErrorCode, Response, WireError};

async fn apply(d: &Daemon, op: TransitionOp) -> Result<Response, WireError> {
    let task = d.store.write(move |b| b.transition(op)).await?;
    Ok(Response::Task(Box::new(task)))
}

pub async fn approve(d: &Daemon, peer: &Peer, id: &str) -> Result<Response, WireError> {
    check_id(id)?;
    apply(
        d,
        TransitionOp::new(id, Action::Approve, &peer.user, now_ms()),
    )
    .await
}

pub async fn reject(
    d: &Daemon,
    peer: &Peer,
    id: &str,
    reason: &str,
) -> Result<Response, WireError> {
    check_id(id)?;
    let reason =
        validate_reason(reason).map_err(|m| WireError::new(ErrorCode::InvalidReason, m))?;
    let at = now_ms();
    let patch = Patch {
        rejection: Some(Rejection {
            by: peer.user.clone(),
            reason: reason.to_string(),
            at: rfc3339(at),
        }),
        error: Some(TaskError {
            code: task_error::REJECTED.to_string(),
            message: format!("rejected by {}: {reason}", peer.user),
            details: None,
        }),
        ..Patch::default()
    };
    apply(
        d,
        TransitionOp::new(id, Action::Reject, &peer.user, at)
            .patch(patch)
            .detail("reason", reason),
    )
    .await
}

pub async fn cancel(d: &Daemon, peer: &Peer, id: &str) -> Result<Response, WireError> {
    check_id(id)?;
    let at = now_ms();
    let patch = Patch {
        rejection: Some(Rejection {
            by: peer.user.clone(),
            reason: "cancelled".to_string(),
            at: rfc3339(at),
        }),
        ..Patch::default()
    };
    let response = apply(
        d,
        TransitionOp::new(id, Action::Cancel, &peer.user, at).patch(patch),
    )
    .await?;
    // The store has said cancelled; now make sure no specialist keeps working on it.
    if let Response::Task(task) = &response {
        if task.state == TaskState::Cancelled {
            d.dispatch.cancelled(id);
        }
    }
    Ok(response)
}
