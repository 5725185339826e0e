//! Reload (SIGHUP and `orchctl reload`), the one reload path: read and validate the whole file,
//! decide the mode change by the gate rules ([`apply_flip`]), and apply everything or nothing.

use crate::clock::rfc3339;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::lifecycle::mode::{apply_flip, Flip};
use crate::lifecycle::{describe_changes, notify, ModeState, ReloadTrigger};
use crate::metrics::Metrics;
use crate::tasks::status::status_line;
use orchestrator_proto::message::{ReloadOutcome, ReloadReport};
use orchestrator_proto::{ErrorCode, WireError};
use sd_notify::NotifyState;
use std::sync::Arc;

fn finish(d: &Daemon, report: ReloadReport) -> ReloadReport {
    match report.outcome {
        ReloadOutcome::Applied | ReloadOutcome::Unchanged => {
            Metrics::inc(&d.metrics.reloads_ok);
            tracing::info!(trigger = report.trigger, MODE = %report.mode, changes = ?report.changes, "{}", report.message);
        }
        ReloadOutcome::Refused | ReloadOutcome::Invalid => {
            Metrics::inc(&d.metrics.reloads_failed);
            tracing::error!(trigger = report.trigger, MODE = %report.mode, "{}", report.message);
        }
    }
    d.reload.set_last_reload(report.clone());
    report
}

/// Re-read the config file and apply it atomically, or explain why not.
pub async fn reload(d: &Arc<Daemon>, trigger: ReloadTrigger) -> Result<ReloadReport, WireError> {
    let _one_at_a_time = d.reload.lock.lock().await;
    if let Ok(mono) = NotifyState::monotonic_usec_now() {
        notify(&[NotifyState::Reloading, mono]);
    }
    let result = reload_locked(d, trigger).await;
    notify(&[NotifyState::Ready, NotifyState::Status(&status_line(d))]);
    result
}

async fn reload_locked(d: &Arc<Daemon>, trigger: ReloadTrigger) -> Result<ReloadReport, WireError> {
    let mode = d.mode();
    let at = d.clock.now_ms();
    let base = ReloadReport {
        at: rfc3339(at),
        trigger: trigger.name().to_string(),
        outcome: ReloadOutcome::Invalid,
        previous_mode: mode.effective,
        mode: mode.effective,
        changes: Vec::new(),
        message: String::new(),
    };
    let path = d.paths.config.clone();
    let loaded = tokio::task::spawn_blocking(move || match path {
        Some(p) => Config::load(&p),
        None => Ok(Config::builtin()),
    })
    .await
    .map_err(|e| WireError::new(ErrorCode::Internal, format!("reload task failed: {e}")))?;
    let new = match loaded {
        Ok(cfg) => cfg,
        Err(errors) => {
            let message = format!("config invalid, the previous config keeps running: {errors}");
            d.reload.config_refused(errors.to_string());
            finish(
                d,
                ReloadReport {
                    message: message.clone(),
                    ..base
                },
            );
            let mut err = WireError::new(ErrorCode::ConfigInvalid, message);
            for (i, e) in errors.errors.iter().enumerate() {
                err = err.with(&format!("error{}", i + 1), e.to_string());
            }
            return Err(err);
        }
    };
    let old = d.config();
    let changes = describe_changes(&old, &new, mode.effective);
    let target = new.mode;
    let mut consumed = None;
    if target != mode.effective {
        // The mode (and a consumed override) is saved durably first, then the config in memory.
        let flip = match apply_flip(&d.store, mode.effective, mode.since_ms, &new, at).await {
            Ok(flip) => flip,
            Err(e) => {
                // Recorded like any reload that applied nothing, so that status and the
                // metrics show it.
                finish(
                    d,
                    ReloadReport {
                        outcome: ReloadOutcome::Refused,
                        changes,
                        message: format!(
                            "cannot record the mode change ({e}); nothing was applied"
                        ),
                        ..base
                    },
                );
                return Err(e.into());
            }
        };
        match flip {
            Flip::Allowed => {}
            Flip::Overridden(rec) => consumed = Some(rec),
            Flip::Refused(why) => {
                let message = format!("{why}; nothing was applied (record `orchctl gate override {target} --reason ...` to force)");
                d.set_mode(ModeState {
                    note: Some(why.clone()),
                    ..mode.clone()
                });
                finish(
                    d,
                    ReloadReport {
                        outcome: ReloadOutcome::Refused,
                        changes,
                        message: message.clone(),
                        ..base
                    },
                );
                let fields = serde_json::json!({
                    "from": mode.effective.as_str(),
                    "to": target.as_str(),
                    "reason": why,
                });
                crate::notify::announce(d, "mode.refused", fields).await;
                return Err(WireError::new(ErrorCode::GateRefused, message)
                    .with("from", mode.effective.as_str())
                    .with("to", target.as_str()));
            }
        }
        let fields = serde_json::json!({
            "from": mode.effective.as_str(),
            "to": target.as_str(),
            "override": consumed.is_some(),
        });
        crate::notify::announce(d, "mode.changed", fields).await;
        d.set_mode(ModeState {
            effective: target,
            since_ms: at,
            note: None,
        });
    } else {
        d.set_mode(ModeState {
            note: None,
            ..mode.clone()
        });
    }
    d.install_config(new);
    crate::notify::install_rules(
        &d.store,
        &d.config(),
        d.http_listen.get().map(String::as_str),
    );
    if consumed.is_some() {
        if let Ok(pending) = d.store.pending_overrides().await {
            d.gate.set_pending_overrides(pending);
        }
    }
    let outcome = if changes.is_empty() {
        ReloadOutcome::Unchanged
    } else {
        ReloadOutcome::Applied
    };
    let mut message = match outcome {
        ReloadOutcome::Unchanged => "config reloaded; nothing changed".to_string(),
        _ => format!("config reloaded: {}", changes.join("; ")),
    };
    if let Some(rec) = &consumed {
        message.push_str(&format!(
            " (gate override by {} consumed: {})",
            rec.by, rec.reason
        ));
    }
    Ok(finish(
        d,
        ReloadReport {
            outcome,
            mode: target,
            changes,
            message,
            ..base
        },
    ))
}
