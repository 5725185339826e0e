//! Start-up, reload and shutdown.
//!
//! There is one reload path ([`reload`]) for SIGHUP and `orchctl reload`: read and validate the whole
//! file, decide the mode change by the gate rules, and apply everything or nothing. The effective mode
//! lives in the store, so a restart with a different `mode` in the file is a flip request too and
//! follows the same rules ([`startup_mode`]).

use crate::clock::rfc3339;
use crate::config::Config;
use crate::daemon::{Daemon, ModeState};
use crate::gate::flip;
use crate::metrics::Metrics;
use crate::store::{ModeChange, Store, StoreError, StoredMode};
use orchestrator_proto::message::{ReloadOutcome, ReloadReport};
use orchestrator_proto::task::Mode;
use orchestrator_proto::{ErrorCode, WireError};
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    Sighup,
    Orchctl,
}

impl ReloadTrigger {
    fn name(self) -> &'static str {
        match self {
            ReloadTrigger::Sighup => "sighup",
            ReloadTrigger::Orchctl => "orchctl",
        }
    }
}

/// Tell systemd something; outside systemd this does nothing.
pub fn notify(states: &[NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
}

pub fn status_line(d: &Daemon) -> String {
    let counts = d.store.counts();
    let mode = d.mode().effective;
    let open: u64 = counts
        .entries()
        .iter()
        .filter(|(_, s, _)| !s.is_terminal())
        .map(|(_, _, n)| n)
        .sum();
    format!("mode {mode}; {open} open tasks, {} stored", counts.total())
}

fn change(mode: Mode, since_ms: i64, consume_override: Option<i64>) -> ModeChange {
    ModeChange {
        mode,
        since_ms,
        consume_override,
    }
}

/// The effective mode at start: the stored one, moved to the configured one only if the flip rules
/// allow it (a fresh store starts in `synthetic`).
pub async fn startup_mode(store: &Store, cfg: &Config, now: i64) -> Result<ModeState, StoreError> {
    let stored = store.load_mode().await?;
    let (current, since) = match stored {
        Some(StoredMode { mode, since_ms }) => (mode, since_ms.unwrap_or(now)),
        None => {
            store.save_mode(change(Mode::Synthetic, now, None)).await?;
            (Mode::Synthetic, now)
        }
    };
    if cfg.mode == current {
        return Ok(ModeState {
            effective: current,
            since_ms: since,
            note: None,
        });
    }
    let ev = flip::gather(store, current, since, cfg, now).await?;
    let pending = store.pending_override(cfg.mode).await?;
    let verdict = (flip::check(current, cfg.mode, cfg, &ev), pending);
    let target = cfg.mode;
    match verdict {
        (Ok(()), _) => {
            store.save_mode(change(target, now, None)).await?;
            tracing::info!(from = %current, to = %target, MODE = %target, "mode changed at start");
            Ok(ModeState {
                effective: target,
                since_ms: now,
                note: None,
            })
        }
        (Err(_), Some((id, rec))) => {
            store.save_mode(change(target, now, Some(id))).await?;
            tracing::warn!(from = %current, to = %target, by = %rec.by, reason = %rec.reason, "mode changed at start by override");
            Ok(ModeState {
                effective: target,
                since_ms: now,
                note: None,
            })
        }
        (Err(why), None) => {
            tracing::warn!(configured = %target, effective = %current, reason = %why, "configured mode refused at start");
            Ok(ModeState {
                effective: current,
                since_ms: since,
                note: Some(why),
            })
        }
    }
}

fn describe_changes(old: &Config, new: &Config, mode_from: Mode) -> Vec<String> {
    let mut changes = Vec::new();
    if new.mode != mode_from {
        changes.push(format!("mode {mode_from} → {}", new.mode));
    }
    let (fo, fnew) = (old.routing_fingerprint(), new.routing_fingerprint());
    if fo != fnew {
        changes.push(format!(
            "routing fingerprint {fo} → {fnew} ({} rules)",
            new.routing.rules.len()
        ));
    }
    if old.agents != new.agents {
        changes.push("agents changed".into());
    }
    if old.sweeper != new.sweeper {
        changes.push("sweeper settings changed".into());
    }
    if old.gate.shadow_window != new.gate.shadow_window
        || old.gate.min_shadow_tasks != new.gate.min_shadow_tasks
    {
        changes.push("gate settings changed".into());
    }
    if old.gate.fixtures != new.gate.fixtures {
        changes.push("synthetic fixtures changed".into());
    }
    if old.socket != new.socket {
        changes.push("socket access changed".into());
    }
    if old.delivery != new.delivery {
        changes.push("delivery changed".into());
    }
    if old.http != new.http {
        changes.push("http listener changed (takes effect at the next start)".into());
    }
    if old.socket_path != new.socket_path || old.state_dir != new.state_dir {
        changes.push("paths changed (take effect at the next start)".into());
    }
    changes
}

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
    let r = report.clone();
    d.with_notes(|n| n.last_reload = Some(r));
    report
}

/// Re-read the config file and apply it atomically, or explain why not.
pub async fn reload(d: &Arc<Daemon>, trigger: ReloadTrigger) -> Result<ReloadReport, WireError> {
    let _one_at_a_time = d.reload_lock.lock().await;
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
            d.with_notes(|n| n.config_error = Some(errors.to_string()));
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
        let (from, since) = (mode.effective, mode.since_ms);
        let ev = flip::gather(&d.store, from, since, &new, at).await?;
        let verdict = flip::check(from, new.mode, &new, &ev);
        let pending = d.store.pending_override(new.mode).await?;
        match (verdict, pending) {
            (Ok(()), _) => {}
            (Err(_), Some((id, rec))) => consumed = Some((id, rec)),
            (Err(why), None) => {
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
    }
    // Apply: the mode (and a consumed override) durably first, then the config in memory.
    if target != mode.effective {
        let id = consumed.as_ref().map(|(id, _)| *id);
        d.store.save_mode(change(target, at, id)).await?;
        let fields = serde_json::json!({
            "from": mode.effective.as_str(),
            "to": target.as_str(),
            "override": id.is_some(),
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
    crate::notify::install_rules(&d.store, &d.config());
    if consumed.is_some() {
        if let Ok(pending) = d.store.pending_overrides().await {
            d.with_notes(|n| n.pending_overrides = pending);
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
    if let Some((_, rec)) = &consumed {
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

/// React to SIGHUP (reload), SIGTERM and SIGINT (graceful shutdown) until shutdown.
pub async fn signals(d: Arc<Daemon>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut hup, mut term, mut int) = match (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(h), Ok(t), Ok(i)) => (h, t, i),
        // Ending here is a failure the supervisor stops the daemon for.
        _ => {
            tracing::error!("cannot install signal handlers");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = d.shutdown.cancelled() => return,
            _ = hup.recv() => {
                // The outcome is logged and kept for `orchctl status` by `reload` itself.
                let _ = reload(&d, ReloadTrigger::Sighup).await;
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: shutting down");
                d.shutdown.cancel();
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: shutting down");
                d.shutdown.cancel();
            }
        }
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Feed systemd's watchdog at half its interval, but only while the liveness probe passes: a write
/// that commits through the store's writer, and a ping the dispatcher's loop answers, each within
/// a quarter of the interval. A wedged daemon stops feeding it, and systemd restarts it.
pub async fn watchdog(d: Arc<Daemon>, interval: Duration) {
    let period = interval / 2;
    let bound = interval / 4;
    let mut failing = false;
    loop {
        match liveness(&d, bound).await {
            Ok(()) => {
                if failing {
                    tracing::warn!(
                        "watchdog: the liveness probe passes again; feeding the watchdog"
                    );
                    failing = false;
                }
                notify(&[NotifyState::Watchdog, NotifyState::Status(&status_line(&d))]);
            }
            Err(why) => {
                if !failing {
                    tracing::error!(reason = %why, "watchdog: the liveness probe failed; no longer feeding the watchdog");
                    failing = true;
                }
                notify(&[NotifyState::Status(&format!(
                    "liveness probe failed: {why}"
                ))]);
            }
        }
        tokio::select! {
            _ = d.shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// One round trip through the store's writer and one through the dispatcher, each within `bound`.
async fn liveness(d: &Daemon, bound: Duration) -> Result<(), String> {
    match tokio::time::timeout(bound, d.store.probe()).await {
        Err(_) => return Err(format!("the store writer did not commit within {bound:?}")),
        Ok(Err(e)) => return Err(format!("the store writer failed: {e}")),
        Ok(Ok(())) => {}
    }
    match tokio::time::timeout(bound, d.dispatch.ping()).await {
        Err(_) => Err(format!("the dispatcher did not answer within {bound:?}")),
        Ok(false) => Err("the dispatcher is gone".to_string()),
        Ok(true) => Ok(()),
    }
}
