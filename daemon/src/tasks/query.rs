//! Listing tasks and showing one with its trajectory.

use super::check_id;
use crate::daemon::Daemon;
use crate::store::TaskFilter;
use orchestrator_proto::message::ListQuery;
use orchestrator_proto::task::{Task, TrajectoryEvent};
use orchestrator_proto::{ErrorCode, WireError};

pub const MAX_LIST: u32 = 10_000;
/// How many tasks a listing shows when the client does not say.
pub const DEFAULT_LIST: u32 = 50;

/// The tasks a query selects, newest first.
pub async fn list(d: &Daemon, q: ListQuery) -> Result<Vec<Task>, WireError> {
    if q.limit == 0 || q.limit > MAX_LIST {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!("limit must be between 1 and {MAX_LIST}"),
        ));
    }
    // Without --kind the current mode's tasks are shown; harness tasks stay hidden unless asked for.
    let filter = TaskFilter {
        state: q.state,
        kind: Some(q.kind.unwrap_or(d.mode().effective)),
        include_harness: q.include_harness,
        limit: q.limit,
        ..TaskFilter::default()
    };
    Ok(d.store.list_tasks(filter).await?)
}

/// One task with its trajectory, or `not_found`.
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
    Ok(d.store.list_tasks(filter).await?)
}
