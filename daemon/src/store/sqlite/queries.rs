//! Read queries, run on pooled read connections.

use super::goal_index;
use super::rows::{event_from_row, task_from_row, EVENT_COLUMNS, TASK_COLUMNS};
use super::schema::{listed_events, waiting_states};
use super::writes::{limit_sql, RETIRED};
use crate::clock::rfc3339;
use crate::store::{
    Leftover, PendingTask, Retired, RetiredCursor, ShadowRow, ShadowTally, StoreError, StoredMode,
    TallyBuckets, TaskFilter,
};
use orchestrator_proto::message::{GateRunSummary, OverrideRecord};
use orchestrator_proto::task::{Mode, Task, TaskKind, TaskState, TrajectoryEvent};
use orchestrator_proto::ErrorCode;
use rusqlite::types::ValueRef;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

pub(super) const META_MODE: &str = "mode";
pub(super) const META_MODE_SINCE: &str = "mode_since";

pub fn get_task(conn: &Connection, id: &str) -> Result<Option<Task>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?;
    Ok(stmt.query_row([id], task_from_row).optional()?)
}

/// The statement of [`events_of`], one per connection in its statement cache: the events the
/// task's row lists (migration 11 in `schema.rs`), each by its number.
pub(super) fn events_of_sql() -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq IN \
         (SELECT value FROM json_each((SELECT event_seqs FROM tasks WHERE id = ?1))) ORDER BY seq"
    )
}

pub fn events_of(conn: &Connection, id: &str) -> Result<Vec<TrajectoryEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(&events_of_sql())?;
    let rows = stmt.query_map([id], event_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn list_tasks(conn: &Connection, f: &TaskFilter) -> Result<Vec<Task>, StoreError> {
    use crate::store::Cursor;
    let mut args: Vec<String> = Vec::new();
    let mut arg = |v: String| {
        args.push(v);
        format!("?{}", args.len())
    };
    let mut conds = Vec::new();
    if let Some(kind) = f.kind {
        conds.push(format!("kind = {}", arg(kind.as_str().to_string())));
    }
    if let Some(state) = f.state {
        // Written out, not bound (one of the fixed names of `TaskState`): only a literal shows the
        // planner that the partial index tasks_waiting_expires holds a waiting state's rows (see
        // schema.rs, migration 9).
        conds.push(format!("state = '{}'", state.as_str()));
    }
    if let Some(agent) = &f.agent {
        conds.push(format!("agent = {}", arg(agent.clone())));
    }
    if !f.include_harness {
        conds.push("harness = 0".to_string());
    }
    let mut ascending = false;
    if let Some(cursor) = &f.cursor {
        let (id, op) = match cursor {
            Cursor::Before(id) => (id, "<"),
            Cursor::After(id) => {
                ascending = true;
                (id, ">")
            }
        };
        let at: Option<i64> = conn
            .prepare_cached("SELECT created_at FROM tasks WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        let Some(at) = at else {
            return Err(StoreError::Rejected(
                ErrorCode::NotFound,
                format!("no task with id {id} to page from (it may have been deleted by retention); list again without the cursor"),
            ));
        };
        let (a, i) = (arg(at.to_string()), arg(id.clone()));
        conds.push(format!("(created_at, id) {op} (CAST({a} AS INTEGER), {i})"));
    }
    let text = f.goal_contains.as_deref().filter(|t| !t.is_empty());
    // instr() rather than LIKE: the operator's text is matched as it is, `%` and `_` included.
    let text_cond = text.map(|t| format!("instr(lower(goal), lower({})) > 0", arg(t.to_string())));
    let plan = match text {
        Some(t) => Some(goal_index::plan(conn, t)?),
        None => None,
    };
    // Waiting states are few, so their own index and a sort beat walking the whole archive in time
    // order; everything else walks (kind, created_at, id) and stops at the limit.
    let index = match f.state {
        Some(s) if !s.is_terminal() => "INDEXED BY tasks_waiting_expires",
        _ => "",
    };
    let dir = if ascending { "ASC" } else { "DESC" };
    let limit = f.limit.max(1);
    let where_of = |conds: &[String]| {
        if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        }
    };
    let order = format!("ORDER BY created_at {dir}, id {dir} LIMIT {limit}");
    let run = |sql: &str, args: &[String]| -> Result<Vec<Task>, StoreError> {
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params_from_iter(args.iter()), task_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    let mut tasks = match (plan, text_cond) {
        // The index named the few rows that may match: fetch those and the unindexed tail.
        (Some(goal_index::Plan::Hits { rowids, upto }), Some(text_cond)) => {
            let hits = serde_json::to_string(&rowids)
                .map_err(|e| StoreError::Sql(format!("encode: {e}")))?;
            args.push(hits);
            let hits = format!("?{}", args.len());
            args.push(upto.to_string());
            let upto = format!("?{}", args.len());
            let mut all = conds.clone();
            all.push(text_cond);
            let sql = format!(
                "SELECT {TASK_COLUMNS} FROM {} {} {order}",
                goal_index::hits_from(&hits, &upto),
                where_of(&all)
            );
            run(&sql, &args)?
        }
        // A common text: the newest listed tasks hold a page of it, or a full walk finds it.
        (Some(goal_index::Plan::Common), Some(text_cond)) => {
            let sql = goal_index::first_look(index, &where_of(&conds), &text_cond, dir, limit);
            let found = run(&sql, &args)?;
            if found.len() as u32 >= limit {
                found
            } else {
                let mut all = conds.clone();
                all.push(text_cond);
                run(
                    &format!(
                        "SELECT {TASK_COLUMNS} FROM tasks {index} {} {order}",
                        where_of(&all)
                    ),
                    &args,
                )?
            }
        }
        (_, text_cond) => {
            let mut all = conds.clone();
            all.extend(text_cond);
            run(
                &format!(
                    "SELECT {TASK_COLUMNS} FROM tasks {index} {} {order}",
                    where_of(&all)
                ),
                &args,
            )?
        }
    };
    if ascending {
        tasks.reverse();
    }
    Ok(tasks)
}

/// The condition of [`pending_dispatch`]: tasks_waiting_expires's part for the two states (the
/// last term names the index's own condition, so that the planner may use it).
pub(super) const PENDING_DISPATCH: &str = concat!(
    "state IN ('queued', 'assigned') AND (",
    waiting_states!(),
    ")"
);

/// Tasks the dispatcher must pick up after a start: `queued` and `assigned`, oldest first, each
/// with the time before which it must not run.
pub fn pending_dispatch(conn: &Connection) -> Result<Vec<PendingTask>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {TASK_COLUMNS}, not_before FROM tasks WHERE {PENDING_DISPATCH} \
         ORDER BY created_at, id"
    ))?;
    let not_before = TASK_COLUMNS.split(',').count();
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            task_from_row(row),
            row.get::<_, Option<i64>>(not_before)?,
        ))
    })?;
    let mut tasks = Vec::new();
    for row in rows {
        match row? {
            (_, Ok(task), not_before) => tasks.push(PendingTask { task, not_before }),
            (id, Err(e), _) => crate::store::pending_unreadable(&id, &e),
        }
    }
    Ok(tasks)
}

pub fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
    Ok(stmt.query_row([key], |r| r.get(0)).optional()?)
}

pub fn load_mode(conn: &Connection) -> Result<Option<StoredMode>, StoreError> {
    let mode = get_meta(conn, META_MODE)?.and_then(|m| m.parse::<Mode>().ok());
    let since_ms = get_meta(conn, META_MODE_SINCE)?.and_then(|s| s.parse::<i64>().ok());
    Ok(mode.map(|mode| StoredMode { mode, since_ms }))
}

pub fn undelivered_since(
    conn: &Connection,
    since_ms: i64,
    action: &str,
) -> Result<Vec<Task>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE kind = 'live' AND state = 'done' AND completed_at >= ?1 \
         AND NOT EXISTS (SELECT 1 FROM {listed} WHERE e.action = ?2) \
         ORDER BY completed_at, id",
        listed = listed_events!("tasks")
    ))?;
    let rows = stmt.query_map(params![since_ms, action], task_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every terminal transition sets `completed_at` (and terminal states are absorbing), so this is
/// every terminal task of that age. The walk is ordered by the index
/// tasks_terminal_completed(kind, completed_at) and its rowid; the cursor lets a sweep step past
/// tasks it had to keep (their files could not be removed) instead of meeting them again.
pub fn retired(
    conn: &Connection,
    kind: TaskKind,
    before: i64,
    after: Option<RetiredCursor>,
    limit: usize,
) -> Result<Vec<Retired>, StoreError> {
    let (after_completed, after_rowid) = after.unwrap_or((i64::MIN, i64::MIN));
    let mut stmt = conn.prepare_cached(RETIRED)?;
    let rows = stmt.query_map(
        params![
            kind.as_str(),
            before,
            after_completed,
            after_rowid,
            limit_sql(limit)
        ],
        |r| {
            Ok(Retired {
                id: r.get(0)?,
                cursor: (r.get(1)?, r.get(2)?),
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn orphan_leftovers(conn: &Connection) -> Result<Vec<Leftover>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, specialist_pid, agent FROM tasks WHERE state = 'in_progress' ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Leftover {
            id: r.get(0)?,
            pgid: r
                .get::<_, Option<i64>>(1)?
                .and_then(|p| i32::try_from(p).ok()),
            agent: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn latest_gate_run(conn: &Connection) -> Result<Option<GateRunSummary>, StoreError> {
    Ok(gate_runs(conn, 1)?.pop())
}

pub fn gate_runs(conn: &Connection, limit: usize) -> Result<Vec<GateRunSummary>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, label, passed, total, fingerprint FROM gate_runs ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit_sql(limit)], |r| {
        Ok(GateRunSummary {
            at: rfc3339(r.get(0)?),
            label: r.get(1)?,
            passed: r.get::<_, i64>(2)?.max(0) as u32,
            total: r.get::<_, i64>(3)?.max(0) as u32,
            fingerprint: r.get(4)?,
            matches_current: false,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn gate_passed_for(conn: &Connection, fingerprint: &str) -> Result<bool, StoreError> {
    let row: Option<(i64, i64)> = conn
        .query_row(
            "SELECT passed, total FROM gate_runs WHERE fingerprint = ?1 AND label IS NULL \
             ORDER BY id DESC LIMIT 1",
            [fingerprint],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(matches!(row, Some((p, t)) if p == t && t > 0))
}

pub fn pending_override(
    conn: &Connection,
    mode: Mode,
) -> Result<Option<(i64, OverrideRecord)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, mode, reason, by_user, uid, at FROM overrides \
             WHERE mode = ?1 AND consumed_at IS NULL ORDER BY id LIMIT 1",
            [mode.as_str()],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    OverrideRecord {
                        mode,
                        reason: r.get(2)?,
                        by: r.get(3)?,
                        uid: r.get::<_, i64>(4)?.max(0) as u32,
                        at: rfc3339(r.get(5)?),
                        consumed_at: None,
                    },
                ))
            },
        )
        .optional()?)
}

pub fn pending_overrides(conn: &Connection) -> Result<Vec<OverrideRecord>, StoreError> {
    let mut out = Vec::new();
    for m in Mode::ALL {
        if let Some((_, rec)) = pending_override(conn, m)? {
            out.push(rec);
        }
    }
    Ok(out)
}

/// The shadow tasks of a range of creation times, from the covering partial index
/// tasks_shadow_created. The index is named: the listing index (kind, created_at, id) looks as
/// selective to the planner, and would read every row from the table.
pub(super) const SHADOW_ROWS: &str = "SELECT state, error_code, agent, created_at, completed_at, \
     would_require_approval FROM tasks INDEXED BY tasks_shadow_created WHERE kind = 'shadow' \
     AND created_at >= ?1 AND created_at < ?2";

/// The shadow tasks created in `from_ms..until_ms`, folded per bucket of `bucket_ms` as they are
/// read: a 24 h window can hold hundreds of thousands of rows, so no row is kept and nothing is
/// allocated per row but the duration of a finished task. The covering index tasks_shadow_created
/// serves it.
pub fn shadow_tallies(
    conn: &Connection,
    from_ms: i64,
    until_ms: i64,
    bucket_ms: i64,
) -> Result<Vec<(i64, ShadowTally)>, StoreError> {
    let mut stmt = conn.prepare_cached(SHADOW_ROWS)?;
    let mut rows = stmt.query([from_ms, until_ms])?;
    let mut buckets = TallyBuckets::new(bucket_ms);
    while let Some(r) = rows.next()? {
        buckets.add(&ShadowRow {
            state: text(r.get_ref(0)?)?
                .and_then(|s| s.parse().ok())
                .unwrap_or(TaskState::Failed),
            error_code: text(r.get_ref(1)?)?,
            agent: text(r.get_ref(2)?)?,
            created_ms: r.get(3)?,
            completed_ms: r.get(4)?,
            would_require_approval: r.get::<_, i64>(5)? != 0,
        });
    }
    Ok(buckets.finish())
}

fn text(v: ValueRef<'_>) -> Result<Option<&str>, StoreError> {
    match v {
        ValueRef::Null => Ok(None),
        v => v
            .as_str()
            .map(Some)
            .map_err(|e| StoreError::Sql(e.to_string())),
    }
}
