//! Gate operations: synthetic gate runs, the shadow summary, one-time gate overrides.

use super::Actor;
use crate::clock::rfc3339;
use crate::daemon::Daemon;
use crate::gate::{shadow, synthetic};
use crate::machine::validate_reason;
use crate::store::NewOverride;
use orchestrator_proto::message::{GateRunReport, OverrideRecord, ShadowSummary};
use orchestrator_proto::task::Mode;
use orchestrator_proto::{ErrorCode, WireError};

/// The longest shadow-summary window, in hours.
pub const MAX_WINDOW_HOURS: u32 = 24 * 366;

/// Run one fixture (`label`) or all of them (`synthetic-all`) through the synthetic harness, and
/// record the run.
pub async fn run_synthetic(d: &Daemon, label: Option<&str>) -> Result<GateRunReport, WireError> {
    let report = synthetic::run(d, label).await?;
    if label.is_none() {
        let fields = serde_json::json!({
            "passed": report.passed,
            "total": report.total,
            "ok": report.passed == report.total,
            "fingerprint": report.fingerprint,
        });
        crate::notify::announce(d, "gate.synthetic", fields).await;
    }
    Ok(report)
}

/// What shadow mode did over the last `window_hours`, and whether the shadow gate passes on it.
pub async fn shadow_summary(d: &Daemon, window_hours: u32) -> Result<ShadowSummary, WireError> {
    if window_hours == 0 || window_hours > MAX_WINDOW_HOURS {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!("window must be between 1 and {MAX_WINDOW_HOURS} hours"),
        ));
    }
    let window_ms = i64::from(window_hours) * 3_600_000;
    let summary = shadow::summary(d, window_ms, window_hours).await?;
    let fields = serde_json::json!({
        "passed": summary.passed,
        "verdict": summary.verdict,
        "total": summary.total,
        "windowHours": summary.window_hours,
    });
    crate::notify::announce(d, "gate.shadow", fields).await;
    Ok(summary)
}

/// Record a one-time override that the next flip to `mode` consumes.
pub async fn record_override(
    d: &Daemon,
    actor: &Actor,
    mode: Mode,
    reason: &str,
) -> Result<OverrideRecord, WireError> {
    let reason = validate_reason(reason)
        .map_err(|m| WireError::new(ErrorCode::InvalidReason, m))?
        .to_string();
    let at = d.clock.now_ms();
    let rec = OverrideRecord {
        mode,
        reason: reason.clone(),
        by: actor.name.clone(),
        uid: actor.uid.unwrap_or_default(),
        at: rfc3339(at),
        consumed_at: None,
    };
    d.store
        .insert_override(NewOverride {
            mode,
            reason,
            by: rec.by.clone(),
            uid: rec.uid,
            at_ms: at,
        })
        .await?;
    let pending = d.store.pending_overrides().await?;
    d.with_notes(|n| n.pending_overrides = pending);
    tracing::warn!(mode = %mode, by = %rec.by, uid = rec.uid, reason = %rec.reason, "gate override recorded");
    Ok(rec)
}
