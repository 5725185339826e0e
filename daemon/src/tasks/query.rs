//! Listing tasks, a page at a time, and showing one with its trajectory.
//!
//! A page never needs more than one frame of the control socket: it stops adding tasks when the next
//! one would not fit (see [`fit`]) and says where the following page starts (`next`), so a client
//! asking for thousands of tasks pages instead of meeting `reply_too_large`.

use super::check_id;
use crate::daemon::Daemon;
use crate::machine::has_control_chars;
use crate::store::{Cursor, TaskFilter};
use orchestrator_proto::message::{ListQuery, PageQuery, TaskPage};
use orchestrator_proto::task::{Task, TrajectoryEvent};
use orchestrator_proto::{ErrorCode, WireError};

pub const MAX_LIST: u32 = 10_000;
/// How many tasks a listing shows when the client does not say.
pub const DEFAULT_LIST: u32 = 50;
/// Room left in a frame for what surrounds the tasks of a page (message tags, `next`).
const ENVELOPE: usize = 256;

/// The tasks a query selects, newest first, in one reply (clients of protocol 1.0, which cannot
/// page): a listing that does not fit is refused rather than cut short without a word.
pub async fn list(d: &Daemon, q: ListQuery) -> Result<Vec<Task>, WireError> {
    let limit = q.limit;
    let page = page(
        d,
        PageQuery {
            state: q.state,
            kind: q.kind,
            limit: q.limit,
            include_harness: q.include_harness,
            agent: None,
            goal: None,
            before: None,
            after: None,
        },
    )
    .await?;
    if page.next.is_some() && page.tasks.len() < limit as usize {
        return Err(WireError::new(
            ErrorCode::ReplyTooLarge,
            format!(
                "only {} of these tasks fit in one reply: use --limit {} or less, or an orchctl \
                 that pages (protocol 1.1)",
                page.tasks.len(),
                page.tasks.len()
            ),
        ));
    }
    Ok(page.tasks)
}

/// One page of the tasks a query selects, newest first, no larger than a frame of the control
/// socket; `next` names where the following page starts when there is one.
pub async fn page(d: &Daemon, q: PageQuery) -> Result<TaskPage, WireError> {
    if q.limit == 0 || q.limit > MAX_LIST {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!("limit must be between 1 and {MAX_LIST}"),
        ));
    }
    let cursor = match (q.before, q.after) {
        (Some(_), Some(_)) => {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                "give either before or after, not both",
            ))
        }
        (Some(id), None) => Some(Cursor::Before(id)),
        (None, Some(id)) => Some(Cursor::After(id)),
        (None, None) => None,
    };
    if let Some(Cursor::Before(id) | Cursor::After(id)) = &cursor {
        check_id(id)?;
    }
    check_filters(q.agent.as_deref(), q.goal.as_deref())?;
    let newer = matches!(cursor, Some(Cursor::After(_)));
    // Without a kind the current mode's tasks are shown; harness tasks stay hidden unless asked for.
    // One task more than asked for tells whether another page follows.
    let filter = TaskFilter {
        state: q.state,
        kind: Some(q.kind.unwrap_or(d.mode().effective)),
        agent: q.agent.filter(|a| !a.is_empty()),
        goal_contains: q.goal.filter(|g| !g.is_empty()),
        include_harness: q.include_harness,
        cursor,
        limit: q.limit + 1,
    };
    let tasks = d.store.list_tasks(filter).await?;
    let budget = d.config().socket.max_frame.saturating_sub(ENVELOPE);
    fit(tasks, q.limit as usize, budget, newer)
}

/// Cut a listing (newest first, possibly one task longer than `limit`) to at most `limit` tasks
/// whose encoding fits in `budget` bytes. The tasks kept are those next to where the page starts:
/// the newest for a page of older tasks, the oldest for a page of `newer` ones. `next` is the id to
/// continue from in the same direction (`before` it, or `after` it for `newer`).
pub fn fit(
    mut tasks: Vec<Task>,
    limit: usize,
    budget: usize,
    newer: bool,
) -> Result<TaskPage, WireError> {
    if newer {
        // Walk from the cursor outwards: oldest first.
        tasks.reverse();
    }
    let mut used = 0usize;
    let mut kept = 0usize;
    for t in tasks.iter().take(limit) {
        let size = postcard::experimental::serialized_size(t).map_err(|e| {
            WireError::new(ErrorCode::Internal, format!("cannot encode a task: {e}"))
        })?;
        if used + size > budget {
            break;
        }
        used += size;
        kept += 1;
    }
    if kept == 0 && !tasks.is_empty() {
        let id = &tasks[0].id;
        return Err(WireError::new(
            ErrorCode::ReplyTooLarge,
            format!(
                "task {id} alone is larger than a reply may be ({budget} bytes); \
                 raise [socket] max_frame to list it"
            ),
        )
        .with("id", id.as_str()));
    }
    let more = tasks.len() > kept;
    tasks.truncate(kept);
    let next = if more {
        tasks.last().map(|t| t.id.clone())
    } else {
        None
    };
    if newer {
        tasks.reverse();
    }
    Ok(TaskPage { tasks, next })
}

/// One task with its trajectory (read as of one commit by the store), or `not_found`.
pub async fn show(d: &Daemon, id: &str) -> Result<(Task, Vec<TrajectoryEvent>), WireError> {
    check_id(id)?;
    match d.store.task_detail(id).await? {
        Some(found) => Ok(found),
        None => {
            Err(WireError::new(ErrorCode::NotFound, format!("no task with id {id}")).with("id", id))
        }
    }
}

/// A page of tasks for the console: any filter the store supports, paged by cursor, newest
/// first. The store pages on (created, id), so a page costs the same at the millionth task.
pub async fn browse(d: &Daemon, filter: TaskFilter) -> Result<Vec<Task>, WireError> {
    if filter.limit == 0 || filter.limit > MAX_LIST {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!("limit must be between 1 and {MAX_LIST}"),
        ));
    }
    if let Some(Cursor::Before(id) | Cursor::After(id)) = &filter.cursor {
        check_id(id)?;
    }
    check_filters(filter.agent.as_deref(), filter.goal_contains.as_deref())?;
    Ok(d.store.list_tasks(filter).await?)
}

/// The text filters hold text: control characters (line breaks and tabs aside) are refused, as in
/// goals, so that every backend answers the same (PostgreSQL refuses NUL in text).
fn check_filters(agent: Option<&str>, goal: Option<&str>) -> Result<(), WireError> {
    for (name, value) in [("agent", agent), ("goal", goal)] {
        if value.is_some_and(has_control_chars) {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!("the {name} filter contains control characters"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_proto::task::{TaskKind, TaskResult, TaskState};

    fn task(n: usize, result_bytes: usize) -> Task {
        Task {
            schema_version: 1,
            id: format!("01J{n:023}"),
            kind: TaskKind::Live,
            state: TaskState::Done,
            goal: "g".into(),
            workspace_dir: None,
            required_capabilities: Vec::new(),
            routing: None,
            assigned_agent_id: None,
            result: Some(TaskResult {
                text: Some("x".repeat(result_bytes)),
                text_path: None,
                artefacts: Vec::new(),
                specialist_session_id: None,
            }),
            rejection: None,
            error: None,
            submitted_by: "alice".into(),
            would_require_approval: false,
            created_at: "2025-01-01T00:00:00.000Z".into(),
            assigned_at: None,
            started_at: None,
            completed_at: None,
            expires_at: "2025-01-08T00:00:00.000Z".into(),
            attempts: 1,
            usage: None,
        }
    }

    fn encoded(tasks: &[Task], next: Option<String>) -> usize {
        let page = orchestrator_proto::ServerMessage::Ok(Box::new(
            orchestrator_proto::Response::Page(TaskPage {
                tasks: tasks.to_vec(),
                next,
            }),
        ));
        orchestrator_proto::frame::encode(&page).unwrap().len()
    }

    #[test]
    fn a_page_stops_where_the_next_task_would_overflow_the_frame() {
        let frame = 64 * 1024;
        let tasks: Vec<Task> = (0..100).map(|n| task(n, 2_000)).collect();
        let page = fit(tasks.clone(), 100, frame - ENVELOPE, false).unwrap();
        assert!(page.tasks.len() > 10 && page.tasks.len() < 100);
        // What was kept is the newest end, and `next` continues right after it.
        assert_eq!(page.tasks[..], tasks[..page.tasks.len()]);
        assert_eq!(
            page.next.as_deref(),
            Some(page.tasks.last().unwrap().id.as_str())
        );
        // The whole reply fits in the frame; one task more would not have.
        assert!(encoded(&page.tasks, page.next.clone()) <= frame);
        let one_more = &tasks[..page.tasks.len() + 1];
        assert!(encoded(one_more, page.next.clone()) > frame - ENVELOPE);
    }

    #[test]
    fn a_page_within_the_limit_and_the_frame_has_no_next() {
        let tasks: Vec<Task> = (0..5).map(|n| task(n, 10)).collect();
        let page = fit(tasks.clone(), 5, 1 << 20, false).unwrap();
        assert_eq!((page.tasks.len(), page.next), (5, None));
        // One task past the limit means another page.
        let page = fit(tasks, 4, 1 << 20, false).unwrap();
        assert_eq!(page.tasks.len(), 4);
        assert_eq!(page.next.as_deref(), Some(page.tasks[3].id.as_str()));
    }

    #[test]
    fn a_page_of_newer_tasks_keeps_those_next_to_the_cursor() {
        // Newest first, as the store answers; the cursor sits below the oldest.
        let tasks: Vec<Task> = (0..6).rev().map(|n| task(n, 10)).collect();
        let page = fit(tasks.clone(), 3, 1 << 20, true).unwrap();
        let ids: Vec<&str> = page.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, [&tasks[3].id, &tasks[4].id, &tasks[5].id]);
        assert_eq!(page.next.as_deref(), Some(tasks[3].id.as_str()));
    }

    #[test]
    fn a_task_larger_than_a_frame_is_reply_too_large() {
        let err = fit(vec![task(1, 5_000)], 10, 1_000, false).unwrap_err();
        assert_eq!(err.code, ErrorCode::ReplyTooLarge);
    }
}
