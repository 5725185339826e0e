//! One handler per verb. Each takes the daemon, the peer and the request's fields, and returns a
//! response or a [`WireError`] with a stable code.

mod gate_override;
mod metrics;
mod reload;
pub mod route;
mod shadow_summary;
mod status;
pub mod submit;
mod sweep;
mod synthetic;
pub mod tasks;
pub mod transition;

use crate::access::Peer;
use crate::daemon::Daemon;
use orchestrator_proto::{Request, Response, WireError};
use std::sync::Arc;

pub async fn handle(d: &Arc<Daemon>, peer: &Peer, request: Request) -> Result<Response, WireError> {
    match request {
        Request::Status => status::handle(d).await,
        Request::Submit(s) => submit::handle(d, peer, s).await,
        Request::ListTasks(q) => tasks::list(d, q).await,
        Request::ShowTask { id } => tasks::show(d, &id).await,
        Request::Approve { id } => transition::approve(d, peer, &id).await,
        Request::Reject { id, reason } => transition::reject(d, peer, &id, &reason).await,
        Request::Cancel { id } => transition::cancel(d, peer, &id).await,
        Request::Route { goal, capabilities } => route::handle(d, &goal, &capabilities),
        Request::Synthetic { label } => synthetic::handle(d, label).await,
        Request::ShadowSummary { window_hours } => shadow_summary::handle(d, window_hours).await,
        Request::Sweep => sweep::handle(d).await,
        Request::Reload => reload::handle(d).await,
        Request::GateOverride { mode, reason } => {
            gate_override::handle(d, peer, mode, &reason).await
        }
        Request::Metrics => metrics::handle(d),
        // Watch streams and is served by the connection itself.
        Request::Watch => Err(WireError::new(
            orchestrator_proto::ErrorCode::MalformedRequest,
            "watch cannot be nested",
        )),
    }
}

/// Task ids are ULIDs: 26 Crockford base32 characters. Checking first gives a clear error instead of
/// a `not_found` for what is plainly not an id. The id must be canonical (the form the daemon hands
/// out): the decoder alone would accept values past the 128-bit range by dropping their top bits.
pub fn check_id(id: &str) -> Result<(), WireError> {
    let canonical = ulid::Ulid::from_string(id).is_ok_and(|u| u.to_string() == id);
    if !canonical {
        let shown: String = id.chars().take(40).collect();
        return Err(WireError::new(
            orchestrator_proto::ErrorCode::InvalidId,
            format!("{shown:?} is not a task id (expected a 26-character ULID)"),
        ));
    }
    Ok(())
}
