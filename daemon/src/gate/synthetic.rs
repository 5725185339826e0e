//! The synthetic gate's verdicts: each fixture runs through the daemon's real routing, store,
//! dispatch and trajectory as a `synthetic` task submitted by [`HARNESS`] (the harness that submits
//! them is `tasks::gate::run_synthetic`); here the outcome is compared with what the fixture
//! expects.

use crate::fixtures::Fixture;
use orchestrator_proto::message::{FixtureOutcome, GateRunReport, GateRunSummary};
use orchestrator_proto::task::Task;

pub const HARNESS: &str = "synthetic-harness";

/// Compare a finished task with its fixture. Pure, so each fixture's verdict is unit-testable.
pub fn judge(f: &Fixture, task: &Task) -> FixtureOutcome {
    let agent = task.assigned_agent_id.clone();
    let rule = task
        .routing
        .as_ref()
        .and_then(|r| r.matched_rule_id.clone());
    let mut reasons = Vec::new();
    if agent.as_deref() != Some(f.expected_agent_id.as_str()) {
        reasons.push(format!(
            "expected agent={}, got {}",
            f.expected_agent_id,
            agent.as_deref().unwrap_or("none")
        ));
    }
    if rule != f.expected_rule_id {
        reasons.push(format!(
            "expected rule={}, got {}",
            f.expected_rule_id.as_deref().unwrap_or("null"),
            rule.as_deref().unwrap_or("null")
        ));
    }
    if task.state != f.expected_terminal_state {
        reasons.push(format!(
            "expected state={}, got {}",
            f.expected_terminal_state, task.state
        ));
    }
    FixtureOutcome {
        label: f.label.clone(),
        goal: f.goal.clone(),
        expected_agent_id: f.expected_agent_id.clone(),
        expected_rule_id: f.expected_rule_id.clone(),
        expected_terminal_state: f.expected_terminal_state,
        task_id: Some(task.id.clone()),
        actual_agent_id: agent,
        actual_rule_id: rule,
        actual_state: Some(task.state),
        ok: reasons.is_empty(),
        reasons,
    }
}

/// What `status` shows of a run: its figures and whether it ran against the routing in force.
pub fn summary_of(r: &GateRunReport, current: &str) -> GateRunSummary {
    GateRunSummary {
        at: r.at.clone(),
        label: r.label.clone(),
        passed: r.passed,
        total: r.total,
        fingerprint: r.fingerprint.clone(),
        matches_current: r.fingerprint == current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::fixtures::BUILTIN_FIXTURES;
    use orchestrator_proto::task::{Routing, TaskKind, TaskState};

    /// What the synthetic dispatcher would produce for a fixture under the built-in config.
    fn simulate(f: &Fixture) -> Task {
        let cfg = Config::builtin();
        let d = cfg.routing.decide(&f.goal, &f.required_capabilities);
        let approval = cfg.routing.approval(&d, &cfg.agents);
        Task {
            schema_version: 1,
            id: "01J00000000000000000000000".into(),
            kind: TaskKind::Synthetic,
            state: if approval.required {
                TaskState::AwaitingApproval
            } else {
                TaskState::Done
            },
            goal: f.goal.clone(),
            workspace_dir: None,
            required_capabilities: vec![],
            routing: Some(Routing {
                matched_rule_id: d.matched_rule_id.clone(),
                assigned_agent_id: d.agent.clone(),
                capability_matches: vec![],
                fallback_used: d.fallback_used,
                decided_at: String::new(),
            }),
            assigned_agent_id: Some(d.agent),
            result: None,
            rejection: None,
            error: None,
            submitted_by: HARNESS.into(),
            would_require_approval: false,
            created_at: String::new(),
            assigned_at: None,
            started_at: None,
            completed_at: None,
            expires_at: String::new(),
            attempts: 1,
            usage: None,
        }
    }

    fn check(label: &str) {
        let f = BUILTIN_FIXTURES.get(label).unwrap();
        let outcome = judge(f, &simulate(f));
        assert!(outcome.ok, "{label}: {:?}", outcome.reasons);
    }

    #[test]
    fn fixture_code_1() {
        check("code-1");
    }

    #[test]
    fn fixture_ops_1() {
        check("ops-1");
    }

    #[test]
    fn fixture_research_1() {
        check("research-1");
    }

    #[test]
    fn fixture_writing_1() {
        check("writing-1");
    }

    #[test]
    fn fixture_fallback_1() {
        check("fallback-1");
    }

    #[test]
    fn divergence_names_expected_and_actual() {
        let f = BUILTIN_FIXTURES.get("code-1").unwrap();
        let mut t = simulate(f);
        t.assigned_agent_id = Some("main".into());
        t.state = TaskState::Done;
        let o = judge(f, &t);
        assert!(!o.ok);
        assert_eq!(o.reasons[0], "expected agent=coder, got main");
        assert!(o
            .reasons
            .iter()
            .any(|r| r == "expected state=awaiting_approval, got done"));
    }
}
