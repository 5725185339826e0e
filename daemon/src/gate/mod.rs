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
/// reads the store.
#[derive(Debug, Default)]
pub struct GateNotes(Mutex<Notes>);

#[derive(Debug, Clone, Default)]
struct Notes {
    latest_run: Option<GateRunSummary>,
    pending_overrides: Vec<OverrideRecord>,
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
}
