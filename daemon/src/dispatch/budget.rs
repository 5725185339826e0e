//! Charging a run's cost: raise the budget events it crosses and pause what it exhausted (the
//! sums are [`crate::agents::spending`]).

use crate::agents::spending::Period;
use crate::daemon::Daemon;
use crate::dispatch::pauses::{self, PAUSED_BY_BUDGET};
use crate::store::{Notice, StoredPause};
use orchestrator_proto::message::PauseCause;

/// Charge a run's cost to its agent; raise what it crossed and pause what it exhausted.
pub async fn charge(d: &Daemon, agent: &str, cost: f64, at: i64) {
    let cfg = d.config();
    let p = cfg.timezone.periods(at);
    for c in d.spending.charge(&cfg, agent, cost, &p) {
        let scope = c.agent.clone().unwrap_or_else(|| "all agents".into());
        let event = if c.exhausted {
            "budget.exhausted"
        } else {
            "budget.warning"
        };
        tracing::warn!(event, scope = %scope, period = c.period.as_str(), spent_usd = c.spent, cap_usd = c.cap, "budget {event}");
        // To the notification sinks that ask for it (see README, "Notifications").
        let notice = Notice::new(event, at)
            .field("agent", c.agent.clone())
            .field("period", c.period.as_str())
            .field("spentUsd", c.spent)
            .field("capUsd", c.cap)
            .field("periodEnds", crate::clock::rfc3339(c.ends));
        if let Err(e) = d.store.enqueue_notice(notice).await {
            tracing::warn!(event, error = %e, "notify: cannot queue the event");
        }
        if !c.exhausted {
            continue;
        }
        let start = match c.period {
            Period::Day => p.day_start,
            Period::Month => p.month_start,
        };
        let agents: Vec<String> = match &c.agent {
            Some(a) => vec![a.clone()],
            None => cfg
                .configured_agents
                .iter()
                .filter(|a| cfg.agent(a).is_some_and(|a| !a.command.is_empty()))
                .cloned()
                .collect(),
        };
        for a in agents.into_iter().filter(|a| !d.spending.lifted(a, start)) {
            let pause = StoredPause {
                agent: a.clone(),
                cause: PauseCause::Budget,
                until_ms: Some(c.ends),
                reason: format!(
                    "{} {} budget spent: ${:.2} of ${:.2}",
                    scope,
                    c.period.as_str(),
                    c.spent,
                    c.cap
                ),
                by: PAUSED_BY_BUDGET.into(),
                at_ms: at,
            };
            if let Err(e) = pauses::pause(d, pause).await {
                tracing::error!(AGENT = %a, error = %e, "cannot store the agent's budget pause; it holds until the daemon stops");
            }
        }
    }
}
