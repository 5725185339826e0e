//! Conversions between table rows and the wire types.

use crate::clock::rfc3339;
use orchestrator_proto::task::{Task, TaskKind, TaskState, TrajectoryEvent, SCHEMA_VERSION};
use rusqlite::types::Type;
use rusqlite::Row;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// The columns [`task_from_row`] expects, in order.
pub const TASK_COLUMNS: &str =
    "id, kind, state, goal, workspace_dir, required_caps, routing, agent, result, \
     rejection, error, submitted_by, would_require_approval, created_at, assigned_at, started_at, \
     completed_at, expires_at, attempts, usage";

fn conversion<E: std::error::Error + Send + Sync + 'static>(idx: usize, e: E) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e))
}

fn json<T: DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(idx)?;
    match text {
        None => Ok(None),
        Some(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| conversion(idx, e)),
    }
}

fn parsed<T: std::str::FromStr<Err = String>>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    text.parse::<T>()
        .map_err(|e| conversion(idx, std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

fn time(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<String>> {
    Ok(row.get::<_, Option<i64>>(idx)?.map(rfc3339))
}

pub fn task_from_row(row: &Row<'_>) -> rusqlite::Result<Task> {
    Ok(Task {
        schema_version: SCHEMA_VERSION,
        id: row.get(0)?,
        kind: parsed::<TaskKind>(row, 1)?,
        state: parsed::<TaskState>(row, 2)?,
        goal: row.get(3)?,
        workspace_dir: row.get(4)?,
        required_capabilities: json(row, 5)?.unwrap_or_default(),
        routing: json(row, 6)?,
        assigned_agent_id: row.get(7)?,
        result: json(row, 8)?,
        rejection: json(row, 9)?,
        error: json(row, 10)?,
        submitted_by: row.get(11)?,
        would_require_approval: row.get::<_, i64>(12)? != 0,
        created_at: rfc3339(row.get(13)?),
        assigned_at: time(row, 14)?,
        started_at: time(row, 15)?,
        completed_at: time(row, 16)?,
        expires_at: rfc3339(row.get(17)?),
        attempts: row.get::<_, i64>(18)?.clamp(0, i64::from(u32::MAX)) as u32,
        usage: json(row, 19)?,
    })
}

pub const EVENT_COLUMNS: &str = "seq, task_id, at, actor, action, from_state, to_state, details";

pub fn event_from_row(row: &Row<'_>) -> rusqlite::Result<TrajectoryEvent> {
    let from: Option<String> = row.get(5)?;
    let from = match from {
        None => None,
        Some(f) => Some(
            f.parse::<TaskState>()
                .map_err(|e| conversion(5, std::io::Error::other(e)))?,
        ),
    };
    Ok(TrajectoryEvent {
        seq: row.get::<_, i64>(0)?.max(0) as u64,
        task_id: row.get(1)?,
        at: rfc3339(row.get(2)?),
        actor: row.get(3)?,
        action: row.get(4)?,
        from,
        to: parsed::<TaskState>(row, 6)?,
        details: json::<BTreeMap<String, String>>(row, 7)?,
    })
}
