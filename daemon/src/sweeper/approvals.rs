//! The approval policy, applied by the sweeper: a task that waited `approval_timeout` for a
//! decision is rejected (`error.code = "approval_timeout"`) or expired, as the actor
//! `approval-timeout`; and `approval_warning` before that deadline, or before its TTL, the
//! trajectory records a warning that becomes the `approval.expiring` notification.

use crate::clock::{duration_ms, rfc3339};
use crate::config::{ApprovalPolicy, OnApprovalTimeout};
use crate::machine::Action;
use crate::store::outbox::{approval_deadline, APPROVAL_TIMEOUT_ACTOR, APPROVAL_WARNING_ACTION};
use crate::store::{Awaiting, AwaitingCut, NewEvent, Patch, TransitionOp};
use orchestrator_proto::task::{task_error, Rejection, TaskError, TaskState};

/// What the policy does with one waiting task now.
#[derive(Debug, Clone)]
pub enum Step {
    /// Nothing yet.
    Wait,
    /// Record the warning that its deadline is near.
    Warn(NewEvent),
    /// The approval timeout passed.
    TimeOut(Box<TransitionOp>),
}

/// The waiting tasks [`step`] may act on at `now`: those within `warning` of their TTL, and, when a
/// timeout is set, those within `warning` of the shortest one. A task enters `awaiting_approval`
/// after it is created, so its creation bounds its wait from below; a task outside the cut is
/// one that `step` leaves to wait (a test holds this).
pub fn cut(policy: &ApprovalPolicy, now: i64) -> AwaitingCut {
    let warned_from = now.saturating_add(duration_ms(policy.warning));
    AwaitingCut {
        expires_by_ms: warned_from,
        created_by_ms: policy
            .shortest_timeout()
            .map(|t| warned_from.saturating_sub(duration_ms(t))),
    }
}

/// The decision for `w` at `now`, as a pure function of the policy.
pub fn step(policy: &ApprovalPolicy, w: &Awaiting, now: i64) -> Step {
    let timeout = policy.for_agent(w.agent.as_deref());
    let (deadline, then) = approval_deadline(policy, w.agent.as_deref(), w.since_ms, w.expires_ms);
    if let Some(t) = timeout {
        // The TTL may come first; then the ordinary expiry handles the task.
        if deadline < w.expires_ms && now >= deadline {
            let waited = humantime::format_duration(t.after).to_string();
            let op = match t.then {
                OnApprovalTimeout::Reject => {
                    let reason = format!("no decision within {waited}");
                    TransitionOp::new(&w.id, Action::Reject, APPROVAL_TIMEOUT_ACTOR, now)
                        .patch(Patch {
                            rejection: Some(Rejection {
                                by: APPROVAL_TIMEOUT_ACTOR.to_string(),
                                reason: reason.clone(),
                                at: rfc3339(now),
                            }),
                            error: Some(TaskError {
                                code: task_error::APPROVAL_TIMEOUT.to_string(),
                                message: format!("rejected: {reason}"),
                                details: None,
                            }),
                            ..Patch::default()
                        })
                        .detail("reason", reason)
                }
                OnApprovalTimeout::Expire => {
                    TransitionOp::new(&w.id, Action::Expire, APPROVAL_TIMEOUT_ACTOR, now)
                        .detail("reason", format!("no decision within {waited}"))
                }
            };
            return Step::TimeOut(Box::new(op));
        }
    }
    let warn_at = deadline.saturating_sub(i64::try_from(policy.warning.as_millis()).unwrap_or(0));
    if !w.warned && now >= warn_at && now < deadline {
        return Step::Warn(NewEvent {
            task_id: w.id.clone(),
            kind: w.kind,
            state: TaskState::AwaitingApproval,
            at_ms: now,
            actor: crate::sweeper::ACTOR.to_string(),
            action: APPROVAL_WARNING_ACTION.to_string(),
            details: Some(
                [
                    ("deadline".to_string(), rfc3339(deadline)),
                    ("then".to_string(), then.to_string()),
                ]
                .into(),
            ),
        });
    }
    Step::Wait
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApprovalTimeout;
    use orchestrator_proto::task::TaskKind;
    use std::time::Duration;

    const H: i64 = 3_600_000;

    fn waiting(agent: &str, since: i64, expires: i64, warned: bool) -> Awaiting {
        Awaiting {
            id: "T".into(),
            kind: TaskKind::Live,
            agent: Some(agent.into()),
            since_ms: since,
            expires_ms: expires,
            warned,
        }
    }

    fn policy(then: OnApprovalTimeout) -> ApprovalPolicy {
        ApprovalPolicy {
            default: Some(ApprovalTimeout {
                after: Duration::from_secs(4 * 3600),
                then,
            }),
            ..ApprovalPolicy::default()
        }
    }

    #[test]
    fn reject_after_the_timeout_as_approval_timeout() {
        let p = policy(OnApprovalTimeout::Reject);
        let w = waiting("coder", 0, 100 * H, true);
        assert!(matches!(step(&p, &w, 4 * H - 1), Step::Wait));
        let Step::TimeOut(op) = step(&p, &w, 4 * H) else {
            panic!("times out at the deadline")
        };
        assert_eq!(op.action, Action::Reject);
        assert_eq!(op.actor, APPROVAL_TIMEOUT_ACTOR);
        assert_eq!(op.patch.error.unwrap().code, "approval_timeout");
    }

    #[test]
    fn expire_policy_expires_as_approval_timeout() {
        let p = policy(OnApprovalTimeout::Expire);
        let Step::TimeOut(op) = step(&p, &waiting("coder", 0, 100 * H, true), 5 * H) else {
            panic!("times out")
        };
        assert_eq!(
            (op.action, op.actor.as_str()),
            (Action::Expire, APPROVAL_TIMEOUT_ACTOR)
        );
    }

    #[test]
    fn warns_once_within_the_warning_before_either_deadline() {
        let p = policy(OnApprovalTimeout::Reject);
        // The approval timeout (4 h) comes first.
        assert!(matches!(
            step(&p, &waiting("c", 0, 100 * H, false), 3 * H - 1),
            Step::Wait
        ));
        let Step::Warn(ev) = step(&p, &waiting("c", 0, 100 * H, false), 3 * H) else {
            panic!("warns an hour before")
        };
        assert_eq!(ev.action, APPROVAL_WARNING_ACTION);
        assert_eq!(ev.details.unwrap()["then"], "reject");
        assert!(matches!(
            step(&p, &waiting("c", 0, 100 * H, true), 3 * H),
            Step::Wait
        ));
        // No policy: the TTL is the deadline.
        let none = ApprovalPolicy::default();
        let Step::Warn(ev) = step(&none, &waiting("c", 0, 10 * H, false), 9 * H) else {
            panic!("warns before the TTL")
        };
        assert_eq!(ev.details.unwrap()["then"], "expire");
        assert!(matches!(
            step(&none, &waiting("c", 0, 10 * H, false), 20 * H),
            Step::Wait
        ));
    }

    /// Every task that `step` does not leave to wait is in the cut, for policies without a
    /// timeout, with a default, and with a shorter one for one agent, over a grid of waits, TTLs
    /// and times (a task's creation taken as late as it can be: when it began to wait).
    #[test]
    fn the_cut_admits_every_task_the_policy_acts_on() {
        let mut agent_only = policy(OnApprovalTimeout::Reject);
        agent_only.by_agent.insert(
            "quick".into(),
            ApprovalTimeout {
                after: Duration::from_secs(1800),
                then: OnApprovalTimeout::Expire,
            },
        );
        let policies = [
            ApprovalPolicy::default(),
            policy(OnApprovalTimeout::Reject),
            agent_only,
        ];
        let (mut acted, mut left_out) = (0, 0);
        for p in &policies {
            for agent in ["quick", "coder"] {
                for since in (0..12).map(|q| q * H / 4) {
                    for ttl in [H / 2, 2 * H, 5 * H, 30 * H] {
                        for now in (0..60).map(|q| q * H / 4) {
                            for warned in [false, true] {
                                let w = waiting(agent, since, since + ttl, warned);
                                let admitted = cut(p, now).admits(since, since + ttl);
                                if !matches!(step(p, &w, now), Step::Wait) {
                                    acted += 1;
                                    assert!(admitted, "{agent} since {since} ttl {ttl} at {now}");
                                } else if !admitted {
                                    left_out += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        // The grid holds both kinds of task, so the cut did leave some out.
        assert!(
            acted > 0 && left_out > 0,
            "{acted} acted on, {left_out} left out"
        );
    }
}
