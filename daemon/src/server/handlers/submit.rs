//! `submit`: store a task (see [`crate::tasks::submit`]) and answer with it.

use crate::access::Peer;
use crate::daemon::Daemon;
use crate::tasks::{submit, Actor};
use orchestrator_proto::message::SubmitRequest;
use orchestrator_proto::{Response, WireError};

pub async fn handle(d: &Daemon, peer: &Peer, req: SubmitRequest) -> Result<Response, WireError> {
    let actor = Actor::peer(peer);
    let task = submit::new_task(d, &req, &actor, false)?;
    let task = submit::submit(d, task, &actor, req.wait).await?;
    Ok(Response::Task(Box::new(task)))
}
