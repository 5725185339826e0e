//! `tasks list` and `tasks show`.

use super::check_id;
use crate::daemon::Daemon;
use crate::store::queries::{self, TaskFilter};
use orchestrator_proto::message::ListQuery;
use orchestrator_proto::task::{Task, TrajectoryEvent};
use orchestrator_proto::{ErrorCode, Response, WireError};

pub const MAX_LIST: u32 = 10_000;
/// How many tasks a listing shows when the client does not say.
pub const DEFAULT_LIST: u32 = 50;

/// The tasks a query selects, newest first. Shared by the socket verb and the HTTP route.
pub async fn select(d: &Daemon, q: ListQuery) -> Result<Vec<Task>, WireError> {
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
    };
    Ok(d.store
        .read(move |c| queries::list_tasks(c, &filter))
        .await?)
}

/// One task with its trajectory, or `not_found`.
pub async fn detail(d: &Daemon, id: &str) -> Result<(Task, Vec<TrajectoryEvent>), WireError> {
    check_id(id)?;
    let key = id.to_string();
    let (task, events) = d
        .store
        .read(move |c| Ok((queries::get_task(c, &key)?, queries::events_of(c, &key)?)))
        .await?;
    match task {
        Some(task) => Ok((task, events)),
        None => {
            Err(WireError::new(ErrorCode::NotFound, format!("no task with id {id}")).with("id", id))
        }
    }
}

pub async fn list(d: &Daemon, q: ListQuery) -> Result<Response, WireError> {
    select(d, q).await.map(Response::Tasks)
}

pub async fn show(d: &Daemon, id: &str) -> Result<Response, WireError> {
    let (task, events) = detail(d, id).await?;
    Ok(Response::TaskDetail {
        task: Box::new(task),
        events,
    })
}
