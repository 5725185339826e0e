//! The gates of the rollout (see the README), as rules: the synthetic gate's verdicts, the shadow
//! evidence gate, the flip rules that the daemon enforces when the mode changes, and what `status`
//! shows of the gates ([`GateNotes`]).

pub mod flip;
pub mod shadow;
pub mod synthetic;
pub mod tallies;

use orchestrator_proto::message::{GateRunSummary, OverrideRecord};
use std::sync::Mutex;

/// The latest synthetic gate run and the pending overrides, kept in memory so that `status` never
/// reads the store; and the shadow gate's verdict last announced.
#[derive(Debug, Default)]
pub struct GateNotes(Mutex<Notes>);

#[derive(Debug, Clone, Default)]
struct Notes {
    latest_run: Option<GateRunSummary>,
    pending_overrides: Vec<OverrideRecord>,
    /// The window (hours) and verdict of the last `gate.shadow` announced.
    shadow_announced: Option<(u32, bool)>,
}

impl GateNotes {
    fn with<R>(&self, f: impl FnOnce(&mut Notes) -> R) -> R {
        match self.0.lock() {
            Ok(mut n) => f(&mut n),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn latest_run(&self) -> Option<GateRunSummary> {
        self.with(|n| n.latest_run.clone())
    }

    pub fn set_latest_run(&self, run: Option<GateRunSummary>) {
        self.with(|n| n.latest_run = run);
    }

    pub fn pending_overrides(&self) -> Vec<OverrideRecord> {
        self.with(|n| n.pending_overrides.clone())
    }

    pub fn set_pending_overrides(&self, pending: Vec<OverrideRecord>) {
        self.with(|n| n.pending_overrides = pending);
    }

    /// Whether a shadow summary's verdict (`passed`, over the gate's window of `window_hours`) is
    /// news: the first since the start, or another than the last announced, which it becomes.
    /// Summaries are read often (the console's rollout page, scripts, read-only users) and the
    /// verdict seldom moves; `gate.shadow` tells of the moves.
    pub fn shadow_verdict_is_news(&self, window_hours: u32, passed: bool) -> bool {
        self.with(|n| {
            let now = Some((window_hours, passed));
            let news = n.shadow_announced != now;
            n.shadow_announced = now;
            news
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shadow_verdict_is_news_once_until_it_or_the_window_changes() {
        let notes = GateNotes::default();
        assert!(notes.shadow_verdict_is_news(24, false));
        assert!(!notes.shadow_verdict_is_news(24, false));
        assert!(notes.shadow_verdict_is_news(24, true));
        assert!(!notes.shadow_verdict_is_news(24, true));
        assert!(notes.shadow_verdict_is_news(48, true));
        assert!(notes.shadow_verdict_is_news(48, false));
    }
}
