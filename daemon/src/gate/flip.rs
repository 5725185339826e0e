//! Mode flips, enforced by the daemon: synthetic → shadow needs a passed synthetic gate for
//! the current routing fingerprint; shadow → live needs shadow mode to have run for the whole
//! `gate.shadow_window` and the shadow gate to pass over it now; synthetic → live needs both. Going
//! back is always allowed. A recorded one-time override lets the next flip to its mode through.

use crate::clock::duration_ms;
use crate::config::Config;
use crate::gate::shadow;
use crate::store::{Store, StoreError};
use orchestrator_proto::task::Mode;

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

/// Gather the evidence for a flip from `from` (in force since `since_ms`) under `cfg`.
pub async fn gather(
    store: &Store,
    from: Mode,
    since_ms: i64,
    cfg: &Config,
    now: i64,
) -> Result<Evidence, StoreError> {
    let synthetic_gate_passed = store.gate_passed_for(&cfg.routing_fingerprint()).await?;
    let shadow_active_ms = (from == Mode::Shadow).then_some(now.saturating_sub(since_ms));
    let window = duration_ms(cfg.gate.shadow_window);
    let tally = store.shadow_tally_since(now.saturating_sub(window)).await?;
    let hours = shadow::gate_window_hours(cfg);
    let s = shadow::summarize(tally, hours, cfg.gate.min_shadow_tasks);
    Ok(Evidence {
        synthetic_gate_passed,
        shadow_active_ms,
        shadow_gate: Some((s.passed, s.verdict)),
    })
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
