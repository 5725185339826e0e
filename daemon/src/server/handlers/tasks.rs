//! `tasks list` and `tasks show`.

use crate::daemon::Daemon;
use crate::tasks::query;
use orchestrator_proto::message::{ListQuery, PageQuery};
use orchestrator_proto::{Response, WireError};

pub async fn list(d: &Daemon, q: ListQuery) -> Result<Response, WireError> {
    query::list(d, q).await.map(Response::Tasks)
}

pub async fn page(d: &Daemon, q: PageQuery) -> Result<Response, WireError> {
    query::page(d, q).await.map(Response::Page)
}

pub async fn show(d: &Daemon, id: &str) -> Result<Response, WireError> {
    let (task, events) = query::show(d, id).await?;
    Ok(Response::TaskDetail {
        task: Box::new(task),
        events,
    })
}
