//! `notify list`, `notify test NAME`, `notify retry NAME`: the notification sinks.

use crate::access::Peer;
use crate::daemon::Daemon;
use crate::tasks::notify;
use orchestrator_proto::{Response, WireError};
use std::sync::Arc;

pub async fn list(d: &Arc<Daemon>) -> Result<Response, WireError> {
    Ok(Response::NotifySinks(notify::list(d).await?))
}

pub async fn test(d: &Arc<Daemon>, peer: &Peer, name: &str) -> Result<Response, WireError> {
    let event_id = notify::test(d, name, peer.user()).await?;
    Ok(Response::NotifyTested { event_id })
}

pub async fn retry(d: &Arc<Daemon>, name: &str) -> Result<Response, WireError> {
    let count = notify::retry(d, name).await?;
    Ok(Response::NotifyRetried { count })
}
