//! The task state machine as a pure function: which action may move a task from which state, and
//! to where (the table is in docs/ARCHITECTURE.md). The store applies the result as a compare-and-set on the current state.

use orchestrator_proto::task::{TaskState, MAX_REASON_CHARS};
use std::fmt;

/// Every action a task can be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Route,
    Start,
    /// `approval_required` decides between `awaiting_approval` and `done`.
    Complete {
        approval_required: bool,
    },
    Approve,
    Reject,
    Fail,
    Cancel,
    Expire,
    /// A lapsed lease with attempts left puts the task back in the queue: no task can be stuck.
    Requeue,
    /// The specialist said "not now" (exit 75): back to the queue, and the run does not count as
    /// an attempt.
    Defer,
    /// The specialist failed with an error its agent retries on, attempts left: back to the queue.
    Retry,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Route => "route",
            Action::Start => "start",
            Action::Complete { .. } => "complete",
            Action::Approve => "approve",
            Action::Reject => "reject",
            Action::Fail => "fail",
            Action::Cancel => "cancel",
            Action::Expire => "expire",
            Action::Requeue => "requeue",
            Action::Defer => "defer",
            Action::Retry => "retry",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The refusal: `{from, action}`, so the caller can say what was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub from: TaskState,
    pub action: Action,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {} a task that is {}", self.action, self.from)
    }
}

/// Where `action` takes a task in state `from`, or why it cannot.
/// Expiry's time condition (`expiresAt` passed) is checked by the caller, which knows the clock.
pub fn next_state(from: TaskState, action: Action) -> Result<TaskState, Refused> {
    use TaskState::*;
    let to = match (from, action) {
        (_, _) if from.is_terminal() => None,
        (Queued, Action::Route) => Some(Assigned),
        (Assigned, Action::Start) => Some(InProgress),
        (
            InProgress,
            Action::Complete {
                approval_required: true,
            },
        ) => Some(AwaitingApproval),
        (
            InProgress,
            Action::Complete {
                approval_required: false,
            },
        ) => Some(Done),
        (AwaitingApproval, Action::Approve) => Some(Done),
        (AwaitingApproval, Action::Reject) => Some(Failed),
        (_, Action::Fail) => Some(Failed),
        (_, Action::Cancel) => Some(Cancelled),
        (Queued | Assigned | AwaitingApproval, Action::Expire) => Some(Expired),
        (InProgress | Assigned, Action::Requeue) => Some(Queued),
        (InProgress, Action::Defer | Action::Retry) => Some(Queued),
        _ => None,
    };
    to.ok_or(Refused { from, action })
}

/// Whether `s` holds control characters other than line breaks and tabs: refused in goals,
/// reasons and filters (a terminal would act on them; PostgreSQL refuses NUL in text).
pub fn has_control_chars(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
}

/// A reason must be non-empty after trimming, at most 1024 characters, and free of control
/// characters other than line breaks and tabs.
pub fn validate_reason(reason: &str) -> Result<&str, String> {
    let trimmed = reason.trim();
    if trimmed.is_empty() {
        return Err("a reason is required (it must not be empty or whitespace)".into());
    }
    let chars = reason.chars().count();
    if chars > MAX_REASON_CHARS {
        return Err(format!(
            "the reason is {chars} characters; the limit is {MAX_REASON_CHARS}"
        ));
    }
    if has_control_chars(reason) {
        return Err("the reason contains control characters (line breaks and tabs aside)".into());
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    const NON_TERMINAL: [TaskState; 4] = [Queued, Assigned, InProgress, AwaitingApproval];
    const TERMINAL: [TaskState; 4] = [Done, Failed, Cancelled, Expired];

    fn allowed_from(action: Action) -> Vec<TaskState> {
        TaskState::ALL
            .into_iter()
            .filter(|s| next_state(*s, action).is_ok())
            .collect()
    }

    #[test]
    fn route_queued_to_assigned_only() {
        assert_eq!(next_state(Queued, Action::Route), Ok(Assigned));
        assert_eq!(allowed_from(Action::Route), vec![Queued]);
    }

    #[test]
    fn start_assigned_to_in_progress_only() {
        assert_eq!(next_state(Assigned, Action::Start), Ok(InProgress));
        assert_eq!(allowed_from(Action::Start), vec![Assigned]);
    }

    #[test]
    fn complete_with_approval_goes_to_awaiting_approval() {
        let a = Action::Complete {
            approval_required: true,
        };
        assert_eq!(next_state(InProgress, a), Ok(AwaitingApproval));
        assert_eq!(allowed_from(a), vec![InProgress]);
    }

    #[test]
    fn complete_without_approval_goes_to_done() {
        let a = Action::Complete {
            approval_required: false,
        };
        assert_eq!(next_state(InProgress, a), Ok(Done));
        assert_eq!(allowed_from(a), vec![InProgress]);
    }

    #[test]
    fn approve_awaiting_approval_to_done_only() {
        assert_eq!(next_state(AwaitingApproval, Action::Approve), Ok(Done));
        assert_eq!(allowed_from(Action::Approve), vec![AwaitingApproval]);
    }

    #[test]
    fn reject_awaiting_approval_to_failed_only() {
        assert_eq!(next_state(AwaitingApproval, Action::Reject), Ok(Failed));
        assert_eq!(allowed_from(Action::Reject), vec![AwaitingApproval]);
    }

    #[test]
    fn fail_from_any_non_terminal() {
        for s in NON_TERMINAL {
            assert_eq!(next_state(s, Action::Fail), Ok(Failed), "{s}");
        }
        assert_eq!(allowed_from(Action::Fail), NON_TERMINAL.to_vec());
    }

    #[test]
    fn cancel_from_any_non_terminal() {
        for s in NON_TERMINAL {
            assert_eq!(next_state(s, Action::Cancel), Ok(Cancelled), "{s}");
        }
        assert_eq!(allowed_from(Action::Cancel), NON_TERMINAL.to_vec());
    }

    #[test]
    fn expire_from_stale_eligible_states_only() {
        for s in [Queued, Assigned, AwaitingApproval] {
            assert_eq!(next_state(s, Action::Expire), Ok(Expired), "{s}");
        }
        assert_eq!(
            allowed_from(Action::Expire),
            vec![Queued, Assigned, AwaitingApproval]
        );
        assert!(next_state(InProgress, Action::Expire).is_err());
    }

    #[test]
    fn requeue_from_in_progress_or_assigned() {
        assert_eq!(next_state(InProgress, Action::Requeue), Ok(Queued));
        assert_eq!(allowed_from(Action::Requeue), vec![Assigned, InProgress]);
    }

    #[test]
    fn defer_from_in_progress_only() {
        assert_eq!(next_state(InProgress, Action::Defer), Ok(Queued));
        assert_eq!(allowed_from(Action::Defer), vec![InProgress]);
    }

    #[test]
    fn retry_from_in_progress_only() {
        assert_eq!(next_state(InProgress, Action::Retry), Ok(Queued));
        assert_eq!(allowed_from(Action::Retry), vec![InProgress]);
    }

    #[test]
    fn terminal_states_absorb_every_action() {
        let actions = [
            Action::Route,
            Action::Start,
            Action::Complete {
                approval_required: true,
            },
            Action::Complete {
                approval_required: false,
            },
            Action::Approve,
            Action::Reject,
            Action::Fail,
            Action::Cancel,
            Action::Expire,
            Action::Requeue,
            Action::Defer,
            Action::Retry,
        ];
        for s in TERMINAL {
            for a in actions {
                assert_eq!(
                    next_state(s, a),
                    Err(Refused { from: s, action: a }),
                    "{s} {a}"
                );
            }
        }
    }

    #[test]
    fn refusal_names_state_and_action() {
        let e = next_state(Done, Action::Approve).unwrap_err();
        assert_eq!(e.to_string(), "cannot approve a task that is done");
    }

    #[test]
    fn reason_rules() {
        assert!(validate_reason("").is_err());
        assert!(validate_reason("   \t\n").is_err());
        assert_eq!(validate_reason("  not safe  "), Ok("not safe"));
        assert!(validate_reason(&"x".repeat(1024)).is_ok());
        assert!(validate_reason(&"x".repeat(1025)).is_err());
        // Characters, not bytes.
        assert!(validate_reason(&"é".repeat(1024)).is_ok());
        // Line breaks and tabs are text; other control characters are not.
        assert_eq!(
            validate_reason("line one\n\tline two"),
            Ok("line one\n\tline two")
        );
        for bad in ["nul\0byte", "bell\u{7}", "escape \u{1b}[31mred"] {
            let e = validate_reason(bad).unwrap_err();
            assert!(e.contains("control characters"), "{bad:?}: {e}");
        }
    }
}
