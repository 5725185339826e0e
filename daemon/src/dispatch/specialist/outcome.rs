//! Turning an ended specialist into a transition: complete with its result and artefacts, or fail
//! with a stable code and the details an operator needs. Pure, so every ending is unit-testable.

use super::meta::Meta;
use crate::config::{AgentConfig, Config};
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

/// The exit status with which a specialist says "not now" (`EX_TEMPFAIL`).
pub const EXIT_TEMPFAIL: i32 = 75;

/// The transition that records how a specialist ended; `None` when it was stopped from outside.
/// What its meta file reported goes with it: the usage (added to what earlier runs used) and,
/// when the file could not be used, a `metaWarning`.
pub fn outcome(
    task: &Task,
    cfg: &Config,
    limits: &Limits,
    ended: Ended,
    artefacts: Vec<Artefact>,
    meta: &Meta,
    at: i64,
) -> Option<TransitionOp> {
    let mut op = ending(task, cfg, limits, ended, artefacts, meta, at)?;
    if let Some(used) = &meta.usage {
        op.patch.usage = Some(task.usage.clone().unwrap_or_default().add(used));
    }
    if let Some(w) = &meta.warning {
        op = op.detail("metaWarning", w.clone());
    }
    Some(op)
}

/// The retry a failure turns into when the agent retries on its error code and attempts are left
/// (`task.attempts` counts the run that failed), with the attempt number and the error.
pub fn retry(op: TransitionOp, task: &Task, agent: &AgentConfig) -> TransitionOp {
    let Some(error) = op
        .patch
        .error
        .as_ref()
        .filter(|_| op.action == Action::Fail)
    else {
        return op;
    };
    if !agent.retry_on.contains(&error.code) || task.attempts >= agent.max_attempts {
        return op;
    }
    let mut retry = TransitionOp::new(&op.id, Action::Retry, &op.actor, op.at_ms)
        .detail("attempt", task.attempts.to_string())
        .detail("maxAttempts", agent.max_attempts.to_string())
        .detail("error", error.code.clone())
        .detail("message", error.message.clone());
    retry.patch.usage = op.patch.usage.clone();
    for (k, v) in op.details.into_iter().flatten() {
        retry
            .details
            .get_or_insert_with(BTreeMap::new)
            .entry(k)
            .or_insert(v);
    }
    retry
}

/// The wait before retry number `attempt` (1 for the first): `base` doubled per earlier retry,
/// capped at an hour, then jittered by ±20 % (`jitter` in [0, 1)) so that many retries spread out.
pub fn retry_delay(base: std::time::Duration, attempt: u32, jitter: f64) -> std::time::Duration {
    let cap = std::time::Duration::from_secs(3600);
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let d = base.saturating_mul(factor).min(cap);
    d.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)).min(cap)
}

fn ending(
    task: &Task,
    cfg: &Config,
    limits: &Limits,
    ended: Ended,
    artefacts: Vec<Artefact>,
    meta: &Meta,
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
        Ending::Exited(status) if status.code() == Some(EXIT_TEMPFAIL) => {
            let reason = meta.reason.clone().unwrap_or_else(|| {
                format!("the specialist exited {EXIT_TEMPFAIL} (EX_TEMPFAIL): not now")
            });
            let mut op = TransitionOp::new(&task.id, Action::Defer, ACTOR, at)
                .detail("reason", reason)
                .detail("exitStatus", EXIT_TEMPFAIL.to_string())
                .detail("elapsedMs", elapsed);
            if let Some(until) = meta.retry_after_ms {
                op = op.detail("retryAfter", crate::clock::rfc3339(until));
            }
            if !ended.stderr_tail.is_empty() {
                op = op.detail("stderrTail", ended.stderr_tail);
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
