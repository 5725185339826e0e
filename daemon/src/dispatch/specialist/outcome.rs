//! Turning an ended specialist into a transition: complete with its result and artefacts, or fail
//! with a stable code and the details an operator needs. Pure, so every ending is unit-testable.

use crate::config::Config;
use crate::dispatch::process::{self, Ended, Ending, Limits};
use crate::dispatch::ACTOR;
use crate::machine::Action;
use crate::routing::{Approval, Decision};
use crate::store::{Patch, TransitionOp};
use orchestrator_proto::task::{task_error, Artefact, Task, TaskError, TaskKind, TaskResult};
use std::collections::BTreeMap;

/// Approval for a live task, from the routing it recorded and the rules in force now.
pub fn approval_of(task: &Task, cfg: &Config) -> Approval {
    let decision = match &task.routing {
        Some(r) => Decision {
            matched_rule_id: r.matched_rule_id.clone(),
            agent: r.assigned_agent_id.clone(),
            capability_matches: r.capability_matches.clone(),
            fallback_used: r.fallback_used,
            shadowed_rule_ids: Vec::new(),
        },
        None => cfg.routing.decide(&task.goal, &task.required_capabilities),
    };
    cfg.routing.approval(&decision, &cfg.agents)
}

pub(super) fn details(pairs: Vec<(&str, String)>) -> Option<BTreeMap<String, String>> {
    let map: BTreeMap<String, String> = pairs
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    (!map.is_empty()).then_some(map)
}

pub(super) fn spawn_failed(message: String, pairs: Vec<(&str, String)>) -> TaskError {
    TaskError {
        code: task_error::SPAWN_FAILED.into(),
        message,
        details: details(pairs),
    }
}

/// The transition that records how a specialist ended; `None` when it was stopped from outside.
pub fn outcome(
    task: &Task,
    cfg: &Config,
    limits: &Limits,
    ended: Ended,
    artefacts: Vec<Artefact>,
    at: i64,
) -> Option<TransitionOp> {
    let session = task
        .result
        .as_ref()
        .and_then(|r| r.specialist_session_id.clone());
    let elapsed = ended.elapsed.as_millis().to_string();
    let result = TaskResult {
        text: Some(ended.stdout.text),
        text_path: ended
            .stdout
            .spilled
            .map(|p| p.to_string_lossy().into_owned()),
        artefacts,
        specialist_session_id: session,
    };
    let stdout_error = ended.stdout.error.unwrap_or_default();
    let fail = |error: TaskError| {
        TransitionOp::new(&task.id, Action::Fail, ACTOR, at)
            .patch(Patch {
                result: Some(result.clone()),
                error: Some(error),
                ..Patch::default()
            })
            .detail("elapsedMs", elapsed.clone())
    };
    match ended.how {
        Ending::Stopped => None,
        Ending::Exited(status) if status.success() => {
            let approval = if task.kind == TaskKind::Live {
                approval_of(task, cfg)
            } else {
                // Shadow never asks; what live would have done was recorded at routing.
                Approval {
                    required: false,
                    reasons: Vec::new(),
                }
            };
            let mut op = TransitionOp::new(
                &task.id,
                Action::Complete {
                    approval_required: approval.required,
                },
                ACTOR,
                at,
            )
            .patch(Patch {
                result: Some(result),
                ..Patch::default()
            })
            .detail("exitStatus", "0")
            .detail("elapsedMs", elapsed);
            if approval.required {
                op = op.detail("approval", approval.reasons.join("; "));
            }
            if !stdout_error.is_empty() {
                op = op.detail("stdoutError", stdout_error);
            }
            Some(op)
        }
        Ending::Exited(status) => {
            let (mut pairs, message) = process::describe_exit(status);
            pairs.push(("stderrTail", ended.stderr_tail));
            pairs.push(("stdoutError", stdout_error));
            Some(fail(TaskError {
                code: task_error::SPECIALIST_ABORTED.into(),
                message,
                details: details(pairs),
            }))
        }
        Ending::TimedOut => {
            let timeout = humantime::format_duration(limits.timeout).to_string();
            let grace = humantime::format_duration(limits.kill_grace).to_string();
            Some(fail(TaskError {
                code: task_error::SPECIALIST_TIMEOUT.into(),
                message: format!(
                    "the specialist ran past its timeout of {timeout} and was stopped (SIGTERM, SIGKILL after {grace})"
                ),
                details: details(vec![
                    ("timeout", timeout),
                    ("killGrace", grace),
                    ("stderrTail", ended.stderr_tail),
                    ("stdoutError", stdout_error),
                ]),
            }))
        }
    }
}
