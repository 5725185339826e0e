//! What unit tests of the daemon's parts share.

use crate::machine::Action;
use crate::store::{NewTask, Patch, SubmitPlan, TransitionOp};
use orchestrator_proto::task::TaskKind;

/// A synthetic task routed to `coder` and started at `started_ms`, completed at `completed_ms`
/// (to wait for approval when `approval_required`), created at `created_ms`, expiring at
/// `expires_ms`.
pub fn completed(
    id: &str,
    started_ms: i64,
    completed_ms: i64,
    approval_required: bool,
    created_ms: i64,
    expires_ms: i64,
) -> SubmitPlan {
    let step = |action, at| {
        TransitionOp::new(id, action, "test", at).patch(Patch {
            agent: Some("coder".into()),
            ..Patch::default()
        })
    };
    SubmitPlan {
        task: NewTask {
            id: id.to_string(),
            kind: TaskKind::Synthetic,
            goal: "fix the bug".into(),
            workspace_dir: None,
            required_capabilities: Vec::new(),
            submitted_by: "alice".into(),
            harness: false,
            created_ms,
            expires_ms,
        },
        actor: "alice".into(),
        steps: vec![
            step(Action::Route, started_ms),
            step(Action::Start, started_ms),
            step(Action::Complete { approval_required }, completed_ms),
        ],
    }
}
