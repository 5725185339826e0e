//! `shadow-summary`: the live-flip gate's evidence over a window (SPEC §7).

use crate::daemon::Daemon;
use crate::gate::shadow;
use orchestrator_proto::{ErrorCode, Response, WireError};

pub const MAX_WINDOW_HOURS: u32 = 24 * 366;

pub async fn handle(d: &Daemon, window_hours: u32) -> Result<Response, WireError> {
    if window_hours == 0 || window_hours > MAX_WINDOW_HOURS {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!("window must be between 1 and {MAX_WINDOW_HOURS} hours"),
        ));
    }
    let window_ms = i64::from(window_hours) * 3_600_000;
    let summary = shadow::summary(d, window_ms, window_hours).await?;
    Ok(Response::ShadowSummary(summary))
}
