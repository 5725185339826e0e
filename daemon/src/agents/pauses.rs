//! Agents that start nothing for now: paused by their provider's limit (a specialist exited 75),
//! or by an operator (`orchctl agent pause`). Held in memory for the executor, which asks before
//! every start, and stored (one metadata key per agent) so that a restart keeps them.
//!
//! It also holds each agent's load as the executor last saw it (running, waiting for a slot), for
//! `orchctl agents`.
//!
//! A provider's pause lasts until the `retryAfter` its specialist gave, or else backs off: 1 min
//! after the first deferral in a row, doubling up to an hour; a run that is not deferred resets it.

use crate::clock::rfc3339;
use crate::store::StoredPause;
use orchestrator_proto::message::AgentPause;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// The first backoff of a provider's pause without `retryAfter`, and its ceiling.
pub const BACKOFF_START: Duration = Duration::from_secs(60);
pub const BACKOFF_CAP: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub struct Pauses {
    inner: Mutex<Inner>,
    changed: Notify,
    /// Held by whoever changes a pause from its check to its store and memory (see
    /// [`Pauses::changing`]).
    changing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Inner {
    by_agent: HashMap<String, StoredPause>,
    /// Deferrals in a row per agent, for the backoff.
    deferrals: HashMap<String, u32>,
    /// (running, waiting) per agent.
    load: HashMap<String, (u32, u32)>,
}

/// The backoff after `n` deferrals in a row (`n` ≥ 1): 1 min, 2 min, 4 min … capped at 1 h.
pub fn backoff(n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
    BACKOFF_START.saturating_mul(factor).min(BACKOFF_CAP)
}

impl StoredPause {
    /// Whether it still holds at `now_ms`.
    pub fn holds(&self, now_ms: i64) -> bool {
        self.until_ms.is_none_or(|u| u > now_ms)
    }

    pub fn to_wire(&self) -> AgentPause {
        AgentPause {
            cause: self.cause,
            until: self.until_ms.map(rfc3339),
            reason: self.reason.clone(),
            by: self.by.clone(),
            at: rfc3339(self.at_ms),
        }
    }
}

impl Pauses {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The pauses a previous run stored.
    pub fn load(&self, stored: Vec<StoredPause>) {
        let mut inner = self.inner();
        for p in stored {
            inner.by_agent.insert(p.agent.clone(), p);
        }
        drop(inner);
        self.changed.notify_one();
    }

    /// One change of a pause at a time: a change checks what is in force, stores, then sets
    /// memory, and two changes interleaved (a provider's limit and an operator's pause, or a lapse
    /// being cleared) could leave memory and the store disagreeing.
    pub async fn changing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changing.lock().await
    }

    /// On a shared store: the pauses as the store holds them now, set or lifted by any node.
    /// Wakes the executor only when they differ from those in force here.
    pub fn replace(&self, stored: Vec<StoredPause>) {
        let now: HashMap<String, StoredPause> =
            stored.into_iter().map(|p| (p.agent.clone(), p)).collect();
        let mut inner = self.inner();
        if inner.by_agent == now {
            return;
        }
        inner.by_agent = now;
        drop(inner);
        self.changed.notify_one();
    }

    pub fn get(&self, agent: &str) -> Option<StoredPause> {
        self.inner().by_agent.get(agent).cloned()
    }

    /// Whether the agent may not start a specialist at `now_ms`.
    pub fn blocks(&self, agent: &str, now_ms: i64) -> bool {
        self.inner()
            .by_agent
            .get(agent)
            .is_some_and(|p| p.holds(now_ms))
    }

    /// The pauses whose time has come at `now_ms`, taken out.
    pub fn take_lapsed(&self, now_ms: i64) -> Vec<StoredPause> {
        let mut inner = self.inner();
        let lapsed: Vec<String> = inner
            .by_agent
            .values()
            .filter(|p| !p.holds(now_ms))
            .map(|p| p.agent.clone())
            .collect();
        lapsed
            .iter()
            .filter_map(|a| inner.by_agent.remove(a))
            .collect()
    }

    /// When the next timed pause ends.
    pub fn next_end(&self) -> Option<i64> {
        self.inner()
            .by_agent
            .values()
            .filter_map(|p| p.until_ms)
            .min()
    }

    /// How long to pause the agent for its next deferral without `retryAfter`; counts it.
    pub fn deferred(&self, agent: &str) -> Duration {
        let mut inner = self.inner();
        let n = inner.deferrals.entry(agent.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }

    /// A run of the agent ended without a deferral: the backoff starts over.
    pub fn ran(&self, agent: &str) {
        self.inner().deferrals.remove(agent);
    }

    pub fn set_load(&self, agent: &str, running: u32, waiting: u32) {
        let mut inner = self.inner();
        match inner.load.get_mut(agent) {
            Some(l) => *l = (running, waiting),
            None => {
                inner.load.insert(agent.to_string(), (running, waiting));
            }
        }
    }

    /// (running, waiting for a slot).
    pub fn load_of(&self, agent: &str) -> (u32, u32) {
        self.inner().load.get(agent).copied().unwrap_or((0, 0))
    }

    /// Resolves after a pause was set or lifted (one waiter: the executor).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Set in memory only; the dispatcher's `pause` stores it first.
    pub fn put(&self, pause: StoredPause) {
        self.inner().by_agent.insert(pause.agent.clone(), pause);
        self.changed.notify_one();
    }

    /// Lift in memory only; the dispatcher's `resume` clears the stored one first.
    pub fn remove(&self, agent: &str) -> Option<StoredPause> {
        let gone = self.inner().by_agent.remove(agent);
        self.changed.notify_one();
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_proto::message::PauseCause;

    fn paused(agent: &str, until_ms: Option<i64>) -> StoredPause {
        StoredPause {
            agent: agent.into(),
            cause: PauseCause::ProviderLimit,
            until_ms,
            reason: "limit".into(),
            by: "dispatcher".into(),
            at_ms: 0,
        }
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_an_hour() {
        let mins: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs() / 60).collect();
        assert_eq!(mins, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn a_run_resets_the_backoff() {
        let p = Pauses::default();
        assert_eq!(p.deferred("a"), Duration::from_secs(60));
        assert_eq!(p.deferred("a"), Duration::from_secs(120));
        assert_eq!(p.deferred("b"), Duration::from_secs(60));
        p.ran("a");
        assert_eq!(p.deferred("a"), Duration::from_secs(60));
    }

    #[test]
    fn a_pause_blocks_until_its_time() {
        let p = Pauses::default();
        p.put(paused("a", Some(1000)));
        p.put(paused("b", None));
        assert!(p.blocks("a", 999));
        assert!(!p.blocks("a", 1000));
        assert!(p.blocks("b", i64::MAX));
        assert!(!p.blocks("c", 0));
        assert_eq!(p.next_end(), Some(1000));
        assert!(p.take_lapsed(999).is_empty());
        let lapsed = p.take_lapsed(1000);
        assert_eq!(lapsed.len(), 1);
        assert_eq!(lapsed[0].agent, "a");
        assert!(p.get("a").is_none());
        assert!(p.get("b").is_some());
    }
}
