//! The synthetic harness: each fixture runs through the daemon's real routing, store, dispatch and
//! trajectory as a `synthetic` task submitted by `synthetic-harness`; the outcome is compared with
//! what the fixture expects, and the run is recorded with the routing fingerprint it ran against.

use crate::clock::rfc3339;
use crate::daemon::Daemon;
use crate::fixtures::Fixture;
use crate::store::GateRunRecord;
use crate::tasks::submit::{new_task, submit};
use crate::tasks::Actor;
use orchestrator_proto::message::{FixtureOutcome, GateRunReport, GateRunSummary, SubmitRequest};
use orchestrator_proto::task::{Task, TaskKind};
use orchestrator_proto::{ErrorCode, WireError};

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

/// Run one fixture (`label`) or all of them, and record the run.
pub async fn run(d: &Daemon, label: Option<&str>) -> Result<GateRunReport, WireError> {
    let cfg = d.config();
    let fixtures: Vec<Fixture> = match label {
        None => cfg.gate.fixtures.fixtures.clone(),
        Some(l) => match cfg.gate.fixtures.get(l) {
            Some(f) => vec![f.clone()],
            None => {
                let labels = cfg.gate.fixtures.labels().join(", ");
                return Err(WireError::new(
                    ErrorCode::UnknownFixture,
                    format!("no fixture labelled {l:?}; available: {labels}"),
                )
                .with("available", labels));
            }
        },
    };
    let fingerprint = cfg.routing_fingerprint();
    let at = d.clock.now_ms();
    let mut outcomes = Vec::with_capacity(fixtures.len());
    let harness = Actor::named(HARNESS);
    for f in &fixtures {
        let req = SubmitRequest {
            goal: f.goal.clone(),
            required_capabilities: f.required_capabilities.clone(),
            workspace_dir: None,
            ttl_secs: None,
            wait: true,
        };
        let mut task = new_task(d, &req, &harness, true)?;
        task.kind = TaskKind::Synthetic;
        let task = submit(d, task, &harness, true).await?;
        outcomes.push(judge(f, &task));
    }
    let passed = outcomes.iter().filter(|o| o.ok).count() as u32;
    let report = GateRunReport {
        at: rfc3339(at),
        fingerprint: fingerprint.clone(),
        label: label.map(str::to_string),
        passed,
        total: outcomes.len() as u32,
        fixtures: outcomes,
    };
    let json = serde_json::to_string(&report)
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
    d.store
        .record_gate_run(GateRunRecord {
            at_ms: at,
            label: report.label.clone(),
            fingerprint: fingerprint.clone(),
            passed,
            total: report.total,
            report: json,
        })
        .await?;
    let summary = summary_of(&report, &fingerprint);
    d.with_notes(|n| n.latest_gate = Some(summary));
    tracing::info!(passed, total = report.total, fingerprint = %fingerprint, "synthetic gate run recorded");
    Ok(report)
}

fn summary_of(r: &GateRunReport, current: &str) -> GateRunSummary {
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
    use orchestrator_proto::task::{Routing, TaskState};

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
