//! `shadow-summary`: the live-flip gate's evidence over a window.

use crate::daemon::Daemon;
use crate::tasks::gate;
use orchestrator_proto::{Response, WireError};

pub async fn handle(d: &Daemon, window_hours: u32) -> Result<Response, WireError> {
    let summary = gate::shadow_summary(d, window_hours).await?;
    Ok(Response::ShadowSummary(summary))
}
