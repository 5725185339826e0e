//! `agents`, `agent pause AGENT --reason TEXT`, `agent resume AGENT --reason TEXT`.

use crate::access::Peer;
use crate::daemon::Daemon;
use crate::tasks::{agents, Actor};
use orchestrator_proto::{Response, WireError};

pub async fn list(d: &Daemon) -> Result<Response, WireError> {
    Ok(Response::Agents(agents::list(d).await?))
}

pub async fn pause(
    d: &Daemon,
    peer: &Peer,
    agent: &str,
    reason: &str,
) -> Result<Response, WireError> {
    Ok(Response::Agents(
        agents::pause(d, &Actor::peer(peer), agent, reason).await?,
    ))
}

pub async fn resume(
    d: &Daemon,
    peer: &Peer,
    agent: &str,
    reason: &str,
) -> Result<Response, WireError> {
    Ok(Response::Agents(
        agents::resume(d, &Actor::peer(peer), agent, reason).await?,
    ))
}
