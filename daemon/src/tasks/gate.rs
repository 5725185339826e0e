//! Gate operations: synthetic gate runs, the shadow summary, one-time gate overrides.

use super::submit::{new_task, submit};
use super::Actor;
use crate::clock::rfc3339;
use crate::daemon::Daemon;
use crate::fixtures::Fixture;
use crate::gate::shadow::{self, gate_window_hours};
use crate::gate::synthetic::{judge, summary_of, HARNESS};
use crate::machine::validate_reason;
use crate::store::{GateRunRecord, NewOverride};
use orchestrator_proto::message::{
    GateRunReport, GateRunSummary, OverrideRecord, ShadowSummary, SubmitRequest,
};
use orchestrator_proto::task::{Mode, TaskKind, TaskState};
use orchestrator_proto::{ErrorCode, WireError};

/// The longest shadow-summary window, in hours.
pub const MAX_WINDOW_HOURS: u32 = 24 * 366;

/// Run one fixture (`label`) or all of them (`synthetic-all`) through the synthetic harness, and
/// record the run.
pub async fn run_synthetic(d: &Daemon, label: Option<&str>) -> Result<GateRunReport, WireError> {
    // Every fixture is routed by the config whose fingerprint the run records: a reload waits
    // for the run (a few milliseconds), and the run for a reload under way.
    let _config_held = d.reload.lock.lock().await;
    let cfg = d.config();
    let fixtures: Vec<Fixture> = match label {
        None => cfg.gate.fixtures.fixtures.clone(),
        Some(l) => match cfg.gate.fixtures.get(l) {
            Some(f) => vec![f.clone()],
            None => {
                let labels = cfg.gate.fixtures.labels().join(", ");
                return Err(WireError::new(
                    ErrorCode::UnknownFixture,
                    format!("no fixture labelled {l:?}; available: {labels}"),
                )
                .with("available", labels));
            }
        },
    };
    let fingerprint = cfg.routing_fingerprint();
    let at = d.clock.now_ms();
    let mut outcomes = Vec::with_capacity(fixtures.len());
    let mut awaiting = Vec::new();
    let harness = Actor::named(HARNESS);
    for f in &fixtures {
        let req = SubmitRequest {
            goal: f.goal.clone(),
            required_capabilities: f.required_capabilities.clone(),
            workspace_dir: None,
            ttl_secs: None,
            wait: true,
        };
        let mut task = new_task(d, &req, &harness, true)?;
        task.kind = TaskKind::Synthetic;
        let task = submit(d, task, &harness, true).await?;
        outcomes.push(judge(f, &task));
        if task.state == TaskState::AwaitingApproval {
            awaiting.push(task.id);
        }
    }
    // Judged: a harness task that stopped for approval is evidence, not a request to anyone.
    // Cancelled, it leaves the approval queue and its count.
    for id in awaiting {
        if let Err(e) = super::transition::cancel(d, &harness, &id).await {
            tracing::warn!(task = %id, error = %e.message, "synthetic gate: cannot cancel a harness task left awaiting approval");
        }
    }
    let passed = outcomes.iter().filter(|o| o.ok).count() as u32;
    let report = GateRunReport {
        at: rfc3339(at),
        fingerprint: fingerprint.clone(),
        label: label.map(str::to_string),
        passed,
        total: outcomes.len() as u32,
        fixtures: outcomes,
    };
    let json = serde_json::to_string(&report)
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
    d.store
        .record_gate_run(GateRunRecord {
            at_ms: at,
            label: report.label.clone(),
            fingerprint: fingerprint.clone(),
            passed,
            total: report.total,
            report: json,
        })
        .await?;
    let summary = summary_of(&report, &fingerprint);
    d.gate.set_latest_run(Some(summary));
    tracing::info!(passed, total = report.total, fingerprint = %fingerprint, "synthetic gate run recorded");
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

/// The newest `limit` gate runs, newest first, each marked whether it ran on the routing in force.
pub async fn gate_runs(d: &Daemon, limit: usize) -> Result<Vec<GateRunSummary>, WireError> {
    let (_, current) = d.config_and_fingerprint();
    let mut runs = d.store.gate_runs(limit).await?;
    for run in &mut runs {
        run.matches_current = *run.fingerprint == *current;
    }
    Ok(runs)
}

/// What shadow mode did over the last `window_hours`, and whether the shadow gate passes on it.
pub async fn shadow_summary(d: &Daemon, window_hours: u32) -> Result<ShadowSummary, WireError> {
    if window_hours == 0 || window_hours > MAX_WINDOW_HOURS {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!("window must be between 1 and {MAX_WINDOW_HOURS} hours"),
        ));
    }
    let now = d.clock.now_ms();
    let since = now - i64::from(window_hours) * 3_600_000;
    let tally = d.shadow_tallies.since(&d.store, since, now).await?;
    let mut summary = shadow::summarize(tally, window_hours, d.config().gate.min_shadow_tasks);
    // Usage by when each task's latest run started, within the same window.
    let used = d.store.usage_since(since).await?;
    (summary.usage_by_agent, summary.usage_by_model) = shadow::usage_totals(&used);
    // Announced when a summary over the gate's own window finds its verdict moved (README,
    // "Notifications"): looking again, or over another window, tells nobody anything.
    if window_hours == gate_window_hours(&d.config())
        && d.gate.shadow_verdict_is_news(window_hours, summary.passed)
    {
        let fields = serde_json::json!({
            "passed": summary.passed,
            "verdict": summary.verdict,
            "total": summary.total,
            "windowHours": summary.window_hours,
        });
        crate::notify::announce(d, "gate.shadow", fields).await;
    }
    Ok(summary)
}

/// After a start: read the gate's window once, so that its settled time is kept
/// ([`crate::gate::tallies`]) and the first summary asked for reads only the rest, as every later
/// one does, instead of the whole window (100,000 tasks: 20–40 ms against about 1 ms). Run in
/// the background after READY; nothing is kept on a shared store, so nothing is read there, and
/// a store without shadow tasks has nothing to read (the read would only map code and pages an
/// idle daemon does not need: 1.7 MiB). A failure only leaves the first summary to read it all.
pub async fn keep_settled_time(d: &Daemon) {
    if d.store.cluster().is_some() || d.store.counts().of_kind(TaskKind::Shadow) == 0 {
        return;
    }
    let started = std::time::Instant::now();
    let now = d.clock.now_ms();
    let hours = gate_window_hours(&d.config());
    let since = now - i64::from(hours) * 3_600_000;
    match d.shadow_tallies.since(&d.store, since, now).await {
        Ok(tally) => tracing::info!(
            window_hours = hours,
            tasks = tally.total,
            kept_buckets = d.shadow_tallies.kept_buckets(),
            duration_ms = started.elapsed().as_millis() as u64,
            "shadow summary: the window's settled time read after the start"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "shadow summary: cannot read the window after the start; the first summary reads it"
        ),
    }
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
    d.gate.set_pending_overrides(pending);
    tracing::warn!(mode = %mode, by = %rec.by, uid = rec.uid, reason = %rec.reason, "gate override recorded");
    Ok(rec)
}
