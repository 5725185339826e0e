//! Mode flips, enforced by the daemon (SPEC §7): synthetic → shadow needs a passed synthetic gate for
//! the current routing fingerprint; shadow → live needs shadow mode to have run for the whole
//! `gate.shadow_window` and the shadow gate to pass over it now; synthetic → live needs both. Going
//! back is always allowed. A recorded one-time override lets the next flip to its mode through.

use crate::access::Peer;
use crate::clock::{duration_ms, now_ms, rfc3339};
use crate::config::Config;
use crate::daemon::Daemon;
use crate::gate::{shadow, synthetic};
use crate::machine::validate_reason;
use crate::store::StoreError;
use orchestrator_proto::message::OverrideRecord;
use orchestrator_proto::task::Mode;
use orchestrator_proto::{ErrorCode, WireError};
use rusqlite::{params, Connection, OptionalExtension};

fn rank(m: Mode) -> u8 {
    match m {
        Mode::Synthetic => 0,
        Mode::Shadow => 1,
        Mode::Live => 2,
    }
}

/// What a flip needs, gathered from the store, so that [`check`] can stay pure.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub synthetic_gate_passed: bool,
    /// How long the daemon has been in shadow mode, if it is in it now.
    pub shadow_active_ms: Option<i64>,
    pub shadow_gate: Option<(bool, String)>,
}

/// Whether `from → to` may happen on this evidence; `Err` says why not.
pub fn check(from: Mode, to: Mode, cfg: &Config, ev: &Evidence) -> Result<(), String> {
    if rank(to) <= rank(from) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if from == Mode::Synthetic && !ev.synthetic_gate_passed {
        missing.push(format!(
            "the synthetic gate has not passed for routing fingerprint {} (run `orchctl synthetic-all`)",
            cfg.routing_fingerprint()
        ));
    }
    if to == Mode::Live {
        let window = duration_ms(cfg.gate.shadow_window);
        match ev.shadow_active_ms {
            Some(active) if active >= window => {}
            Some(active) => missing.push(format!(
                "shadow mode has run for {} of the required gate.shadow_window {}",
                humantime::format_duration(std::time::Duration::from_secs(
                    (active / 1000).max(0) as u64
                )),
                humantime::format_duration(cfg.gate.shadow_window)
            )),
            None => missing.push(format!(
                "shadow mode must run for gate.shadow_window ({}) before live",
                humantime::format_duration(cfg.gate.shadow_window)
            )),
        }
        if let Some((passed, verdict)) = &ev.shadow_gate {
            if !passed {
                missing.push(format!("the shadow gate does not pass: {verdict}"));
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "flip {from} → {to} refused: {}",
            missing.join("; ")
        ))
    }
}

pub fn gather(
    conn: &Connection,
    from: Mode,
    since_ms: i64,
    cfg: &Config,
    now: i64,
) -> Result<Evidence, StoreError> {
    let synthetic_gate_passed = synthetic::passed_for(conn, &cfg.routing_fingerprint())?;
    let shadow_active_ms = (from == Mode::Shadow).then_some(now - since_ms);
    let window = duration_ms(cfg.gate.shadow_window);
    let rows = shadow::rows_since(conn, now - window)?;
    let hours = (cfg.gate.shadow_window.as_secs() / 3600).max(1) as u32;
    let s = shadow::summarize(&rows, hours, cfg.gate.min_shadow_tasks);
    Ok(Evidence {
        synthetic_gate_passed,
        shadow_active_ms,
        shadow_gate: Some((s.passed, s.verdict)),
    })
}

/// Oldest unconsumed override for `mode`, if any.
pub fn pending_override(
    conn: &Connection,
    mode: Mode,
) -> Result<Option<(i64, OverrideRecord)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, mode, reason, by_user, uid, at FROM overrides WHERE mode = ?1 AND consumed_at IS NULL \
             ORDER BY id LIMIT 1",
            [mode.as_str()],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    OverrideRecord {
                        mode,
                        reason: r.get(2)?,
                        by: r.get(3)?,
                        uid: r.get::<_, i64>(4)?.max(0) as u32,
                        at: rfc3339(r.get(5)?),
                        consumed_at: None,
                    },
                ))
            },
        )
        .optional()?)
}

pub fn pending_overrides(conn: &Connection) -> Result<Vec<OverrideRecord>, StoreError> {
    let mut out = Vec::new();
    for m in Mode::ALL {
        if let Some((_, rec)) = pending_override(conn, m)? {
            out.push(rec);
        }
    }
    Ok(out)
}

pub async fn record_override(
    d: &Daemon,
    peer: &Peer,
    mode: Mode,
    reason: &str,
) -> Result<OverrideRecord, WireError> {
    let reason = validate_reason(reason)
        .map_err(|m| WireError::new(ErrorCode::InvalidReason, m))?
        .to_string();
    let at = now_ms();
    let rec = OverrideRecord {
        mode,
        reason: reason.clone(),
        by: peer.user.clone(),
        uid: peer.uid,
        at: rfc3339(at),
        consumed_at: None,
    };
    let (user, uid) = (peer.user.clone(), peer.uid);
    d.store
        .write(move |b| {
            b.conn()
                .prepare_cached("INSERT INTO overrides (mode, reason, by_user, uid, at) VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![mode.as_str(), reason, user, uid, at])?;
            Ok(())
        })
        .await?;
    let pending = d.store.read(pending_overrides).await?;
    d.with_notes(|n| n.pending_overrides = pending);
    tracing::warn!(mode = %mode, by = %rec.by, uid = rec.uid, reason = %rec.reason, "gate override recorded");
    Ok(rec)
}

/// Mark an override consumed (inside the reload's write).
pub fn consume(conn: &Connection, id: i64, at: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE overrides SET consumed_at = ?2 WHERE id = ?1",
        params![id, at],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(window: &str, min: u64) -> Config {
        Config::from_toml(
            &format!("[gate]\nshadow_window = \"{window}\"\nmin_shadow_tasks = {min}\n"),
            None,
        )
        .unwrap()
    }

    fn ev(gate: bool, active: Option<i64>, shadow_ok: bool) -> Evidence {
        Evidence {
            synthetic_gate_passed: gate,
            shadow_active_ms: active,
            shadow_gate: Some((shadow_ok, "v".into())),
        }
    }

    #[test]
    fn going_back_is_always_allowed() {
        let c = cfg("24h", 1);
        let none = ev(false, None, false);
        assert!(check(Mode::Live, Mode::Synthetic, &c, &none).is_ok());
        assert!(check(Mode::Live, Mode::Shadow, &c, &none).is_ok());
        assert!(check(Mode::Shadow, Mode::Synthetic, &c, &none).is_ok());
        assert!(check(Mode::Shadow, Mode::Shadow, &c, &none).is_ok());
    }

    #[test]
    fn synthetic_to_shadow_needs_the_synthetic_gate() {
        let c = cfg("24h", 1);
        let e = check(Mode::Synthetic, Mode::Shadow, &c, &ev(false, None, true)).unwrap_err();
        assert!(e.contains("synthetic gate"), "{e}");
        assert!(check(Mode::Synthetic, Mode::Shadow, &c, &ev(true, None, false)).is_ok());
    }

    #[test]
    fn shadow_to_live_needs_window_and_passing_shadow_gate() {
        let c = cfg("2s", 1);
        assert!(check(Mode::Shadow, Mode::Live, &c, &ev(false, Some(1_000), true)).is_err());
        assert!(check(Mode::Shadow, Mode::Live, &c, &ev(false, Some(2_000), false)).is_err());
        assert!(check(Mode::Shadow, Mode::Live, &c, &ev(false, Some(2_000), true)).is_ok());
    }

    #[test]
    fn synthetic_to_live_needs_both() {
        let c = cfg("2s", 1);
        let e = check(Mode::Synthetic, Mode::Live, &c, &ev(true, None, true)).unwrap_err();
        assert!(e.contains("shadow mode must run"), "{e}");
    }
}
