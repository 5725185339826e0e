//! Conversions between PostgreSQL rows and the wire types.

use crate::clock::rfc3339;
use crate::store::StoreError;
use orchestrator_proto::task::{Task, TaskKind, TaskState, TrajectoryEvent, SCHEMA_VERSION};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use tokio_postgres::Row;

/// The columns [`task_from_row`] expects, in order.
pub const TASK_COLUMNS: &str =
    "id, kind, state, goal, workspace_dir, required_caps, routing, agent, result, \
     rejection, error, submitted_by, would_require_approval, created_at, assigned_at, started_at, \
     completed_at, expires_at, attempts, usage";

pub const EVENT_COLUMNS: &str = "seq, task_id, at, actor, action, from_state, to_state, details";

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
) -> Result<T, StoreError> {
    row.try_get(idx)
        .map_err(|e| StoreError::Sql(format!("column {idx}: {e}")))
}

fn json<T: DeserializeOwned>(row: &Row, idx: usize) -> Result<Option<T>, StoreError> {
    match get::<Option<&str>>(row, idx)? {
        None => Ok(None),
        Some(t) => serde_json::from_str(t)
            .map(Some)
            .map_err(|e| StoreError::Sql(format!("column {idx}: {e}"))),
    }
}

pub(super) fn parsed<T: std::str::FromStr<Err = String>>(
    row: &Row,
    idx: usize,
) -> Result<T, StoreError> {
    get::<&str>(row, idx)?.parse::<T>().map_err(StoreError::Sql)
}

fn time(row: &Row, idx: usize) -> Result<Option<String>, StoreError> {
    Ok(get::<Option<i64>>(row, idx)?.map(rfc3339))
}

pub fn task_from_row(row: &Row) -> Result<Task, StoreError> {
    Ok(Task {
        schema_version: SCHEMA_VERSION,
        id: get(row, 0)?,
        kind: parsed::<TaskKind>(row, 1)?,
        state: parsed::<TaskState>(row, 2)?,
        goal: get(row, 3)?,
        workspace_dir: get(row, 4)?,
        required_capabilities: json(row, 5)?.unwrap_or_default(),
        routing: json(row, 6)?,
        assigned_agent_id: get(row, 7)?,
        result: json(row, 8)?,
        rejection: json(row, 9)?,
        error: json(row, 10)?,
        submitted_by: get(row, 11)?,
        would_require_approval: get(row, 12)?,
        created_at: rfc3339(get(row, 13)?),
        assigned_at: time(row, 14)?,
        started_at: time(row, 15)?,
        completed_at: time(row, 16)?,
        expires_at: rfc3339(get(row, 17)?),
        attempts: get::<i64>(row, 18)?.clamp(0, i64::from(u32::MAX)) as u32,
        usage: json(row, 19)?,
    })
}

pub fn event_from_row(row: &Row) -> Result<TrajectoryEvent, StoreError> {
    let from = match get::<Option<&str>>(row, 5)? {
        None => None,
        Some(f) => Some(f.parse::<TaskState>().map_err(StoreError::Sql)?),
    };
    Ok(TrajectoryEvent {
        seq: get::<i64>(row, 0)?.max(0) as u64,
        task_id: get(row, 1)?,
        at: rfc3339(get(row, 2)?),
        actor: get(row, 3)?,
        action: get(row, 4)?,
        from,
        to: parsed::<TaskState>(row, 6)?,
        details: json::<BTreeMap<String, String>>(row, 7)?,
    })
}

pub fn tasks(rows: &[Row]) -> Result<Vec<Task>, StoreError> {
    rows.iter().map(task_from_row).collect()
}
