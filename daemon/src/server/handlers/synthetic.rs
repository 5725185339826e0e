//! `synthetic LABEL` and `synthetic-all`: the data-plane gate.

use crate::daemon::Daemon;
use crate::tasks::gate;
use orchestrator_proto::{Response, WireError};

pub async fn handle(d: &Daemon, label: Option<String>) -> Result<Response, WireError> {
    let report = gate::run_synthetic(d, label.as_deref()).await?;
    Ok(Response::Synthetic(report))
}
