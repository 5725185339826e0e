//! Agents as operators see them (`orchctl agents`, `status`): paused or not, their load, and what
//! their tasks cost today and this month; and pausing or resuming one by hand.

use super::Actor;
use crate::daemon::Daemon;
use crate::dispatch::pauses;
use crate::machine::validate_reason;
use crate::store::StoredPause;
use orchestrator_proto::message::{AgentStatus, PauseCause};
use orchestrator_proto::{ErrorCode, WireError};

/// Every configured agent with a command, in id order.
pub async fn list(d: &Daemon) -> Result<Vec<AgentStatus>, WireError> {
    Ok(in_memory(d))
}

/// Every configured agent with a command, from memory (`status` asks too).
pub fn in_memory(d: &Daemon) -> Vec<AgentStatus> {
    let cfg = d.config();
    let now = d.clock.now_ms();
    let periods = cfg.timezone.periods(now);
    cfg.agents_with_command()
        .map(|id| {
            let (running, queued) = d.pauses.load_of(id);
            let (today, month) = d.spending.spent(id, &periods);
            let budget = cfg.agent(id).map(|a| a.budget).unwrap_or_default();
            AgentStatus {
                agent: id.clone(),
                paused: d
                    .pauses
                    .get(id)
                    .filter(|p| p.holds(now))
                    .map(|p| p.to_wire()),
                running,
                queued,
                cost_today_usd: today,
                cost_month_usd: month,
                budget_daily_usd: budget.daily_usd,
                budget_monthly_usd: budget.monthly_usd,
            }
        })
        .collect()
}

fn check(d: &Daemon, agent: &str, reason: &str) -> Result<String, WireError> {
    let cfg = d.config();
    if !cfg.configured_agents.contains(agent) {
        let known: Vec<&str> = cfg.configured_agents.iter().map(String::as_str).collect();
        return Err(WireError::new(
            ErrorCode::NotFound,
            format!(
                "no agent {agent:?} in the config; configured: {}",
                known.join(", ")
            ),
        )
        .with("agent", agent));
    }
    Ok(validate_reason(reason)
        .map_err(|m| WireError::new(ErrorCode::InvalidReason, m))?
        .to_string())
}

/// Pause the agent until resumed: it starts nothing; running specialists finish.
pub async fn pause(
    d: &Daemon,
    actor: &Actor,
    agent: &str,
    reason: &str,
) -> Result<Vec<AgentStatus>, WireError> {
    let reason = check(d, agent, reason)?;
    let p = StoredPause {
        agent: agent.to_string(),
        cause: PauseCause::Operator,
        until_ms: None,
        reason,
        by: actor.name.clone(),
        at_ms: d.clock.now_ms(),
    };
    if let Err(e) = pauses::pause(d, p).await {
        // Obeyed all the same (see `dispatch::pauses::pause`): say so.
        let e = WireError::from(e);
        return Err(WireError::new(
            e.code,
            format!(
                "{}; the pause holds until the daemon stops, but a restart will not keep it",
                e.message
            ),
        ));
    }
    list(d).await
}

/// Lift the agent's pause, whatever paused it.
pub async fn resume(
    d: &Daemon,
    actor: &Actor,
    agent: &str,
    reason: &str,
) -> Result<Vec<AgentStatus>, WireError> {
    let reason = check(d, agent, reason)?;
    let lifted = pauses::resume(d, agent).await?;
    if lifted
        .as_ref()
        .is_some_and(|p| p.cause == PauseCause::Budget)
    {
        let periods = d.config().timezone.periods(d.clock.now_ms());
        let lift = d.spending.lift(agent, &periods);
        if let Err(e) = d.store.set_budget_lift(lift).await {
            // Obeyed all the same, as a pause that cannot be stored is.
            tracing::error!(AGENT = %agent, error = %e, "cannot store the lift of the agent's budget pause; it holds until the daemon stops");
        }
    }
    tracing::warn!(AGENT = %agent, by = %actor.name, reason = %reason, lifted = ?lifted.map(|p| p.reason), "agent resumed by an operator");
    list(d).await
}
