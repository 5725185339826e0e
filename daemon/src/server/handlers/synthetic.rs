//! `synthetic LABEL` and `synthetic-all`: the data-plane gate (SPEC §7).

use crate::daemon::Daemon;
use crate::gate::synthetic;
use orchestrator_proto::{Response, WireError};

pub async fn handle(d: &Daemon, label: Option<String>) -> Result<Response, WireError> {
    let report = synthetic::run(d, label.as_deref()).await?;
    Ok(Response::Synthetic(report))
}
