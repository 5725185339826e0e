//! Read queries, run on pooled read connections (see [`super::Store::read`]).

use super::rows::{event_from_row, task_from_row, EVENT_COLUMNS, TASK_COLUMNS};
use super::StoreError;
use orchestrator_proto::task::{Task, TaskKind, TaskState, TrajectoryEvent};
use rusqlite::{params_from_iter, Connection, OptionalExtension};

pub fn get_task(conn: &Connection, id: &str) -> Result<Option<Task>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?;
    Ok(stmt.query_row([id], task_from_row).optional()?)
}

pub fn events_of(conn: &Connection, id: &str) -> Result<Vec<TrajectoryEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE task_id = ?1 ORDER BY seq"
    ))?;
    let rows = stmt.query_map([id], event_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Filter of `tasks list`; newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub kind: Option<TaskKind>,
    pub include_harness: bool,
    pub limit: u32,
}

pub fn list_tasks(conn: &Connection, f: &TaskFilter) -> Result<Vec<Task>, StoreError> {
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE 1 = 1");
    let mut args: Vec<String> = Vec::new();
    if let Some(kind) = f.kind {
        args.push(kind.as_str().to_string());
        sql.push_str(&format!(" AND kind = ?{}", args.len()));
    }
    if let Some(state) = f.state {
        args.push(state.as_str().to_string());
        sql.push_str(&format!(" AND state = ?{}", args.len()));
    }
    if !f.include_harness {
        sql.push_str(" AND harness = 0");
    }
    sql.push_str(&format!(
        " ORDER BY created_at DESC, id DESC LIMIT {}",
        f.limit.max(1)
    ));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(args.iter()), task_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Tasks the dispatcher must pick up after a start: `queued` and `assigned`, oldest first.
pub fn pending_dispatch(conn: &Connection) -> Result<Vec<Task>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE state IN ('queued', 'assigned') ORDER BY created_at, id"
    ))?;
    let rows = stmt.query_map([], task_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
    Ok(stmt.query_row([key], |r| r.get(0)).optional()?)
}
