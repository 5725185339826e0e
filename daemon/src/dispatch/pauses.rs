//! Pausing and resuming agents: stored first, then obeyed (the state is [`crate::agents::pauses`]).

use crate::clock::rfc3339;
use crate::daemon::Daemon;
use crate::store::{StoreError, StoredPause};
use orchestrator_proto::message::PauseCause;

pub use crate::agents::pauses::{backoff, Pauses, BACKOFF_CAP, BACKOFF_START};

/// Who a budget's pause is recorded as set by.
pub const PAUSED_BY_BUDGET: &str = "budget";

/// Pause an agent: stored first, so that what the executor obeys is what a restart finds. A pause
/// never shortens one in force (an operator's pause outlasts a provider's limit).
pub async fn pause(d: &Daemon, pause: StoredPause) -> Result<(), StoreError> {
    let _one_at_a_time = d.pauses.changing().await;
    let now = d.clock.now_ms();
    if let Some(current) = d.pauses.get(&pause.agent).filter(|p| p.holds(now)) {
        let outlasts = match (current.until_ms, pause.until_ms) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a >= b,
        };
        if outlasts && pause.cause != PauseCause::Operator {
            return Ok(());
        }
    }
    // Obeyed even when it cannot be stored (the error says so): it then holds until the daemon
    // stops.
    let stored = d
        .store
        .set_agent_pause(pause.agent.clone(), Some(pause.clone()))
        .await;
    tracing::warn!(AGENT = %pause.agent, cause = ?pause.cause, until = ?pause.until_ms.map(rfc3339), reason = %pause.reason, by = %pause.by, "agent paused");
    d.pauses.put(pause);
    stored
}

/// Lift an agent's pause; answers the pause that was lifted, if there was one.
pub async fn resume(d: &Daemon, agent: &str) -> Result<Option<StoredPause>, StoreError> {
    let _one_at_a_time = d.pauses.changing().await;
    d.store.set_agent_pause(agent.to_string(), None).await?;
    Ok(d.pauses.remove(agent))
}
