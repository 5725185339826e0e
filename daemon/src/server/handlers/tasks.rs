//! `tasks list` and `tasks show`.

use super::check_id;
use crate::daemon::Daemon;
use crate::store::queries::{self, TaskFilter};
use orchestrator_proto::message::ListQuery;
use orchestrator_proto::{ErrorCode, Response, WireError};

pub const MAX_LIST: u32 = 10_000;

pub async fn list(d: &Daemon, q: ListQuery) -> Result<Response, WireError> {
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
    let tasks = d
        .store
        .read(move |c| queries::list_tasks(c, &filter))
        .await?;
    Ok(Response::Tasks(tasks))
}

pub async fn show(d: &Daemon, id: &str) -> Result<Response, WireError> {
    check_id(id)?;
    let key = id.to_string();
    let (task, events) = d
        .store
        .read(move |c| Ok((queries::get_task(c, &key)?, queries::events_of(c, &key)?)))
        .await?;
    match task {
        Some(task) => Ok(Response::TaskDetail {
            task: Box::new(task),
            events,
        }),
        None => {
            Err(WireError::new(ErrorCode::NotFound, format!("no task with id {id}")).with("id", id))
        }
    }
}
