//! `nodes`: the daemons that share this daemon's store.

use crate::daemon::Daemon;
use orchestrator_proto::{Response, WireError};

pub async fn handle(d: &Daemon) -> Result<Response, WireError> {
    Ok(Response::Nodes(crate::cluster::report(d).await?))
}
