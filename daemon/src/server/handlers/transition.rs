//! `approve`, `reject` and `cancel`, as the peer.

use crate::access::Peer;
use crate::daemon::Daemon;
use crate::tasks::{transition, Actor};
use orchestrator_proto::task::Task;
use orchestrator_proto::{Response, WireError};

fn reply(task: Task) -> Response {
    Response::Task(Box::new(task))
}

pub async fn approve(d: &Daemon, peer: &Peer, id: &str) -> Result<Response, WireError> {
    transition::approve(d, &Actor::peer(peer), id)
        .await
        .map(reply)
}

pub async fn reject(
    d: &Daemon,
    peer: &Peer,
    id: &str,
    reason: &str,
) -> Result<Response, WireError> {
    transition::reject(d, &Actor::peer(peer), id, reason)
        .await
        .map(reply)
}

pub async fn cancel(d: &Daemon, peer: &Peer, id: &str) -> Result<Response, WireError> {
    transition::cancel(d, &Actor::peer(peer), id)
        .await
        .map(reply)
}
