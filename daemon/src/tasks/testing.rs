//! What unit tests of the daemon's parts share.

use crate::clock::Clock;
use crate::config::Config;
use crate::daemon::{Daemon, ModeState, Paths};
use crate::machine::Action;
use crate::store::{NewTask, Patch, Store, SubmitPlan, TransitionOp};
use orchestrator_proto::task::TaskKind;
use std::path::Path;

/// A daemon around `store` whose state directory is `dir` (the socket in it), on the built-in
/// config, in effective mode `effective` since 0, with time from `clock`. Nothing is dispatched:
/// the dispatcher's end of the channel is dropped.
pub fn daemon(store: Store, dir: &Path, effective: TaskKind, clock: Clock) -> Daemon {
    let paths = Paths {
        config: None,
        socket: dir.join("sock"),
        state_dir: dir.to_path_buf(),
        socket_from_flag: false,
        state_dir_from_flag: false,
    };
    let (dispatch, _) = crate::dispatch::DispatchHandle::channel();
    let mode = ModeState {
        effective,
        since_ms: 0,
        note: None,
    };
    Daemon::new(store, paths, Config::builtin(), mode, dispatch, clock)
}

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
