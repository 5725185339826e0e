//! `gate override MODE --reason TEXT`: a one-time override the next reload to MODE consumes.

use crate::access::Peer;
use crate::daemon::Daemon;
use crate::tasks::{gate, Actor};
use orchestrator_proto::task::Mode;
use orchestrator_proto::{Response, WireError};

pub async fn handle(
    d: &Daemon,
    peer: &Peer,
    mode: Mode,
    reason: &str,
) -> Result<Response, WireError> {
    let record = gate::record_override(d, &Actor::peer(peer), mode, reason).await?;
    Ok(Response::GateOverride(record))
}
