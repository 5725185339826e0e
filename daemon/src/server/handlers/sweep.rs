//! `sweep`: run the sweeper now and report what it did (SPEC §8).

use crate::daemon::Daemon;
use crate::sweeper;
use orchestrator_proto::{Response, WireError};
use std::sync::Arc;

pub async fn handle(d: &Arc<Daemon>) -> Result<Response, WireError> {
    let report = sweeper::run_now(d).await?;
    Ok(Response::Sweep(report))
}
