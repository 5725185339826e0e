//! The effective mode, which the store remembers across restarts, and the one place that decides a
//! flip and saves it: at start-up (the file names a different mode than the stored one) and on
//! reload alike.

use crate::config::Config;
use crate::gate::flip as rules;
use crate::store::{ModeChange, Store, StoreError, StoredMode};
use orchestrator_proto::message::OverrideRecord;
use orchestrator_proto::task::Mode;

/// The effective mode, which the store remembers across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeState {
    pub effective: Mode,
    pub since_ms: i64,
    /// Why the effective mode differs from the configured one, when it does.
    pub note: Option<String>,
}

fn change(mode: Mode, since_ms: i64, consume_override: Option<i64>) -> ModeChange {
    ModeChange {
        mode,
        since_ms,
        consume_override,
    }
}

/// What [`apply_flip`] did.
#[derive(Debug)]
pub enum Flip {
    /// The flip rules allow it; the new mode is saved.
    Allowed,
    /// The rules refuse it but a pending override forces it; the new mode is saved and the override
    /// consumed in the same write.
    Overridden(OverrideRecord),
    /// Refused, nothing saved: why.
    Refused(String),
}

/// Flip from `current` (effective since `since`) to `cfg.mode` at `now`: gather the evidence, check
/// the flip rules, fall back on a pending override, and save the new mode. Start-up and reload both
/// come here, so a flip is judged the same way whichever asks.
pub async fn apply_flip(
    store: &Store,
    current: Mode,
    since: i64,
    cfg: &Config,
    now: i64,
) -> Result<Flip, StoreError> {
    let target = cfg.mode;
    let ev = rules::gather(store, current, since, cfg, now).await?;
    let verdict = rules::check(current, target, cfg, &ev);
    let pending = store.pending_override(target).await?;
    let (outcome, consumed) = match (verdict, pending) {
        (Ok(()), _) => (Flip::Allowed, None),
        (Err(_), Some((id, rec))) => (Flip::Overridden(rec), Some(id)),
        (Err(why), None) => return Ok(Flip::Refused(why)),
    };
    store.save_mode(change(target, now, consumed)).await?;
    Ok(outcome)
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
    let target = cfg.mode;
    match apply_flip(store, current, since, cfg, now).await? {
        Flip::Allowed => {
            tracing::info!(from = %current, to = %target, MODE = %target, "mode changed at start");
            Ok(ModeState {
                effective: target,
                since_ms: now,
                note: None,
            })
        }
        Flip::Overridden(rec) => {
            tracing::warn!(from = %current, to = %target, by = %rec.by, reason = %rec.reason, "mode changed at start by override");
            Ok(ModeState {
                effective: target,
                since_ms: now,
                note: None,
            })
        }
        Flip::Refused(why) => {
            tracing::warn!(configured = %target, effective = %current, reason = %why, "configured mode refused at start");
            Ok(ModeState {
                effective: current,
                since_ms: since,
                note: Some(why),
            })
        }
    }
}
