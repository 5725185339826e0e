//! Start-up, reload and shutdown.
//!
//! There is one reload path ([`reload`]) for SIGHUP and `orchctl reload`: read and validate the whole
//! file, decide the mode change by the gate rules, and apply everything or nothing. The effective mode
//! lives in the store, so a restart with a different `mode` in the file is a flip request too and
//! follows the same rules ([`startup_mode`]).

use crate::clock::{now_ms, rfc3339};
use crate::config::Config;
use crate::daemon::{Daemon, ModeState};
use crate::gate::flip;
use crate::metrics::Metrics;
use crate::store::{queries, Store, StoreError};
use orchestrator_proto::message::{ReloadOutcome, ReloadReport};
use orchestrator_proto::task::Mode;
use orchestrator_proto::{ErrorCode, WireError};
use sd_notify::NotifyState;
use std::sync::Arc;

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

const META_MODE: &str = "mode";
const META_MODE_SINCE: &str = "mode_since";

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

fn save_mode(b: &mut crate::store::Batch<'_>, mode: Mode, since: i64) -> Result<(), StoreError> {
    b.set_meta(META_MODE, mode.as_str())?;
    b.set_meta(META_MODE_SINCE, &since.to_string())
}

/// The effective mode at start: the stored one, moved to the configured one only if the flip rules
/// allow it (a fresh store starts in `synthetic`).
pub fn startup_mode(store: &Store, cfg: &Config) -> Result<ModeState, StoreError> {
    let (stored, since) = store.read_blocking(|c| {
        let mode = queries::get_meta(c, META_MODE)?.and_then(|m| m.parse::<Mode>().ok());
        let since = queries::get_meta(c, META_MODE_SINCE)?.and_then(|s| s.parse::<i64>().ok());
        Ok((mode, since))
    })?;
    let now = now_ms();
    let (current, since) = match stored {
        Some(m) => (m, since.unwrap_or(now)),
        None => {
            store.write_blocking(move |b| save_mode(b, Mode::Synthetic, now))?;
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
    let c = cfg.clone();
    let verdict = store.read_blocking(move |conn| {
        let ev = flip::gather(conn, current, since, &c, now)?;
        let pending = flip::pending_override(conn, c.mode)?;
        Ok((flip::check(current, c.mode, &c, &ev), pending))
    })?;
    let target = cfg.mode;
    match verdict {
        (Ok(()), _) => {
            store.write_blocking(move |b| save_mode(b, target, now))?;
            tracing::info!(from = %current, to = %target, MODE = %target, "mode changed at start");
            Ok(ModeState {
                effective: target,
                since_ms: now,
                note: None,
            })
        }
        (Err(_), Some((id, rec))) => {
            store.write_blocking(move |b| {
                flip::consume(b.conn(), id, now)?;
                save_mode(b, target, now)
            })?;
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
    let at = now_ms();
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
        let (c, from, since) = (new.clone(), mode.effective, mode.since_ms);
        let (verdict, pending) = d
            .store
            .read(move |conn| {
                let ev = flip::gather(conn, from, since, &c, at)?;
                Ok((
                    flip::check(from, c.mode, &c, &ev),
                    flip::pending_override(conn, c.mode)?,
                ))
            })
            .await?;
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
                return Err(WireError::new(ErrorCode::GateRefused, message)
                    .with("from", mode.effective.as_str())
                    .with("to", target.as_str()));
            }
        }
    }
    // Apply: the mode (and a consumed override) durably first, then the config in memory.
    if target != mode.effective {
        let id = consumed.as_ref().map(|(id, _)| *id);
        d.store
            .write(move |b| {
                if let Some(id) = id {
                    flip::consume(b.conn(), id, at)?;
                }
                save_mode(b, target, at)
            })
            .await?;
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
    if consumed.is_some() {
        if let Ok(pending) = d.store.read(flip::pending_overrides).await {
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
        _ => {
            tracing::error!("cannot install signal handlers; stopping");
            d.shutdown.cancel();
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

/// Ping systemd's watchdog at half its interval, while the runtime is healthy enough to do so.
pub async fn watchdog(d: Arc<Daemon>) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = interval / 2;
    loop {
        notify(&[NotifyState::Watchdog, NotifyState::Status(&status_line(&d))]);
        tokio::select! {
            _ = d.shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}
