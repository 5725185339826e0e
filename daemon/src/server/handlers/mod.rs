//! One handler per verb. Each decodes the request's fields, checks access where the verb needs it,
//! calls the operation in [`crate::tasks`] (or the daemon's own, for status, reload and metrics),
//! and encodes the answer or a [`WireError`] with a stable code.

mod agents;
mod console_link;
mod gate_override;
mod metrics;
mod nodes;
mod notify;
mod reload;
mod route;
mod shadow_summary;
mod status;
mod submit;
mod sweep;
mod synthetic;
mod tasks;
mod transition;

use crate::access::Peer;
use crate::daemon::Daemon;
use orchestrator_proto::{Request, Response, WireError};
use std::sync::Arc;

/// `minor` is the protocol minor the client announced: a few replies have a richer form for newer
/// clients.
pub async fn handle(
    d: &Arc<Daemon>,
    peer: &Peer,
    minor: u16,
    request: Request,
) -> Result<Response, WireError> {
    match request {
        Request::Status => status::handle(d, minor).await,
        Request::Submit(s) => submit::handle(d, peer, s).await,
        Request::ListTasks(q) => tasks::list(d, q).await,
        Request::ListPage(q) => tasks::page(d, q).await,
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
        Request::Metrics => metrics::handle(d).await,
        Request::ConsoleLink => console_link::handle(d, peer),
        Request::NotifyList => notify::list(d).await,
        Request::NotifyTest { name } => notify::test(d, peer, &name).await,
        Request::NotifyRetry { name } => notify::retry(d, &name).await,
        Request::Agents => agents::list(d).await,
        Request::AgentPause { agent, reason } => agents::pause(d, peer, &agent, &reason).await,
        Request::AgentResume { agent, reason } => agents::resume(d, peer, &agent, &reason).await,
        Request::Nodes => nodes::handle(d).await,
        // Watch streams and is served by the connection itself.
        Request::Watch => Err(WireError::new(
            orchestrator_proto::ErrorCode::MalformedRequest,
            "watch cannot be nested",
        )),
    }
}
