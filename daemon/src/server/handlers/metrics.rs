//! `metrics`: Prometheus text exposition of the daemon's counters and task counts.

use crate::daemon::Daemon;
use orchestrator_proto::{Response, WireError};

pub async fn handle(d: &Daemon) -> Result<Response, WireError> {
    Ok(Response::Metrics(d.metrics_text().await))
}
