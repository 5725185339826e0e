//! Route preview: the routing decision for a goal, without writing anything.

use super::submit::validate_capabilities;
use crate::daemon::Daemon;
use orchestrator_proto::message::RouteDecision;
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
