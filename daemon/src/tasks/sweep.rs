//! Sweep now (`orchctl sweep`).

use crate::daemon::Daemon;
use crate::sweeper;
use orchestrator_proto::message::SweepReport;
use orchestrator_proto::WireError;
use std::sync::Arc;

/// Run a sweep now; if one is under way, wait for it and run a fresh one, so the report covers
/// everything due at the moment of the request.
pub async fn sweep_now(d: &Arc<Daemon>) -> Result<SweepReport, WireError> {
    sweeper::run_now(d).await
}
