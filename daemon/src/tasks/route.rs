//! Route preview: the routing decision for a goal, without writing anything.

use super::submit::validate_capabilities;
use crate::daemon::Daemon;
use crate::routing::Decision;
use orchestrator_proto::message::RouteDecision;
use orchestrator_proto::task::Task;
use orchestrator_proto::WireError;

/// The decision `submit` would take for this goal now, with the approval it would need.
pub fn preview(
    d: &Daemon,
    goal: &str,
    capabilities: &[String],
) -> Result<RouteDecision, WireError> {
    let goal = super::submit::validate_goal(goal)?;
    validate_capabilities(capabilities)?;
    let cfg = d.config();
    let decision = cfg.routing.decide(goal, capabilities);
    let approval = cfg.routing.approval(&decision, &cfg.agents);
    Ok(RouteDecision {
        agent_configured: cfg.configured_agents.contains(&decision.agent),
        matched_rule_id: decision.matched_rule_id,
        assigned_agent_id: decision.agent,
        capability_matches: decision.capability_matches,
        fallback_used: decision.fallback_used,
        requires_approval: approval.required,
        approval_reasons: approval.reasons,
        shadowed_rule_ids: decision.shadowed_rule_ids,
    })
}

/// Why a routed task needs approval under the config in force: the reasons `orchctl route` prints
/// for the agent it was routed to.
pub fn approval_reasons(d: &Daemon, task: &Task) -> Vec<String> {
    let Some(routing) = &task.routing else {
        return Vec::new();
    };
    let cfg = d.config();
    let decision = Decision {
        matched_rule_id: routing.matched_rule_id.clone(),
        agent: routing.assigned_agent_id.clone(),
        capability_matches: routing.capability_matches.clone(),
        fallback_used: routing.fallback_used,
        shadowed_rule_ids: Vec::new(),
    };
    cfg.routing.approval(&decision, &cfg.agents).reasons
}

/// Why tasks routed to `agent` by a rule need approval (empty: they do not).
pub fn agent_approval_reasons(d: &Daemon, agent: &str) -> Vec<String> {
    let cfg = d.config();
    let decision = Decision {
        matched_rule_id: None,
        agent: agent.to_string(),
        capability_matches: Vec::new(),
        fallback_used: false,
        shadowed_rule_ids: Vec::new(),
    };
    cfg.routing.approval(&decision, &cfg.agents).reasons
}
