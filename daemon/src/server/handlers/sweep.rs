//! `sweep`: run the sweeper now and report what it did.

use crate::daemon::Daemon;
use crate::tasks::sweep;
use orchestrator_proto::{Response, WireError};
use std::sync::Arc;

pub async fn handle(d: &Arc<Daemon>) -> Result<Response, WireError> {
    let report = sweep::sweep_now(d).await?;
    Ok(Response::Sweep(report))
}
