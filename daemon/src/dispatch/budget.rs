//! Charging a run's cost: raise the budget events it crosses and pause what it exhausted (the
//! sums are [`crate::agents::spending`]).

use crate::agents::spending::{Crossing, Period};
use crate::daemon::Daemon;
use crate::dispatch::pauses::{self, PAUSED_BY_BUDGET};
use crate::store::cluster::Cluster;
use crate::store::{Notice, StoredPause};
use orchestrator_proto::message::PauseCause;

/// Charge a run's cost to its agent; raise what it crossed and pause what it exhausted. On a
/// shared store the sums are the store's, taken at each heartbeat, which raises what they cross
/// ([`follow`]): the run's cost counts there once its outcome is written.
pub async fn charge(d: &Daemon, agent: &str, cost: f64, at: i64) {
    if d.store.cluster().is_some() {
        return;
    }
    let cfg = d.config();
    let p = cfg.timezone.periods(at);
    let crossed = d.spending.charge(&cfg, agent, cost, &p);
    raise(d, crossed, at, &[]).await;
}

/// On a shared store, at each heartbeat: take what every node's runs cost from the store, and
/// raise each threshold the sums crossed on the one node that claims it first; the others only
/// note it. A global budget's pause covers the agents of every node.
pub async fn follow(d: &Daemon, cluster: &dyn Cluster) {
    let cfg = d.config();
    let at = d.clock.now_ms();
    let p = cfg.timezone.periods(at);
    let read = async {
        Ok::<_, crate::store::StoreError>((
            cluster.spending(p.day_start, p.month_start).await?,
            d.store.budget_lifts().await?,
        ))
    };
    let (spent, lifts) = match read.await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the shared spending; budgets are checked at the next heartbeat");
            return;
        }
    };
    let mut ours = Vec::new();
    for c in d.spending.refresh(&cfg, &spent, &lifts, &p) {
        match cluster.claim_crossing(&c.key(), c.ends, at).await {
            Ok(true) => ours.push(c),
            Ok(false) => {}
            Err(e) => {
                // Found again at the next heartbeat, and claimed then by this node or another.
                tracing::warn!(error = %e, key = %c.key(), "cannot claim the announcement of a budget threshold; trying again at the next heartbeat");
                d.spending.forget(&c, &p);
            }
        }
    }
    if ours.is_empty() {
        return;
    }
    let others: Vec<String> = match cluster.nodes(at).await {
        Ok(nodes) => nodes.into_iter().flat_map(|n| n.agents).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the other nodes' agents; a global budget pauses this node's only");
            Vec::new()
        }
    };
    raise(d, ours, at, &others).await;
}

/// Announce each crossing (log, notification sinks) and pause what an exhausted one covers:
/// its agent, or for the global budget every agent with a command here and `others`.
async fn raise(d: &Daemon, crossed: Vec<Crossing>, at: i64, others: &[String]) {
    let cfg = d.config();
    let p = cfg.timezone.periods(at);
    for c in crossed {
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
            None => {
                let mut all: Vec<String> =
                    cfg.agents_with_command().chain(others).cloned().collect();
                all.sort();
                all.dedup();
                all
            }
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
