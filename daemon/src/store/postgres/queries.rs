//! Read queries, each on a pooled connection.

use super::rows::{event_from_row, task_from_row, tasks, EVENT_COLUMNS, TASK_COLUMNS};
use super::{parse_kind_state, pg_error};
use crate::clock::rfc3339;
use crate::store::{
    Counts, Cursor, Leftover, PendingTask, Retired, RetiredCursor, ShadowRow, ShadowTally,
    StoreError, StoredMode, TallyBuckets, TaskFilter,
};
use deadpool_postgres::Client;
use orchestrator_proto::message::{GateRunSummary, OverrideRecord};
use orchestrator_proto::task::{Mode, Task, TaskKind, TaskState, TrajectoryEvent};
use orchestrator_proto::ErrorCode;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

pub(super) const META_MODE: &str = "mode";
pub(super) const META_MODE_SINCE: &str = "mode_since";

pub(super) async fn query(
    c: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(pg_error)?;
    c.query(&stmt, params).await.map_err(pg_error)
}

fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Fold the count deltas into `task_counts` (rows another daemon folds at the same moment are
/// taken by one of the two only), then read the totals.
pub(super) async fn fold_and_load_counts(c: &Client) -> Result<Counts, StoreError> {
    query(
        c,
        "WITH moved AS (DELETE FROM task_count_deltas RETURNING kind, state, n) \
         INSERT INTO task_counts (kind, state, n) \
         SELECT kind, state, sum(n)::bigint FROM moved GROUP BY kind, state \
         ON CONFLICT (kind, state) DO UPDATE SET n = task_counts.n + EXCLUDED.n",
        &[],
    )
    .await?;
    let rows = query(
        c,
        "SELECT kind, state, sum(n)::bigint FROM \
         (SELECT kind, state, n FROM task_counts UNION ALL SELECT kind, state, n FROM task_count_deltas) t \
         GROUP BY kind, state",
        &[],
    )
    .await?;
    let mut counts = Counts::default();
    for row in &rows {
        let (kind, state, n): (&str, &str, i64) = (row.get(0), row.get(1), row.get(2));
        if let Some((k, s)) = parse_kind_state(kind, state) {
            counts.set(k, s, n.max(0) as u64);
        }
    }
    Ok(counts)
}

pub(super) async fn get_task(c: &Client, id: &str) -> Result<Option<Task>, StoreError> {
    let rows = query(
        c,
        &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"),
        &[&id],
    )
    .await?;
    rows.first().map(task_from_row).transpose()
}

pub(super) async fn events_of(c: &Client, id: &str) -> Result<Vec<TrajectoryEvent>, StoreError> {
    let rows = query(
        c,
        &format!("SELECT {EVENT_COLUMNS} FROM events WHERE task_id = $1 ORDER BY seq"),
        &[&id],
    )
    .await?;
    rows.iter().map(event_from_row).collect()
}

pub(super) async fn list_tasks(c: &Client, f: &TaskFilter) -> Result<Vec<Task>, StoreError> {
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut arg = |v: Box<dyn ToSql + Sync + Send>| {
        args.push(v);
        format!("${}", args.len())
    };
    let mut conds = Vec::new();
    if let Some(kind) = f.kind {
        conds.push(format!("kind = {}", arg(Box::new(kind.as_str()))));
    }
    if let Some(state) = f.state {
        conds.push(format!("state = {}", arg(Box::new(state.as_str()))));
    }
    if let Some(agent) = &f.agent {
        conds.push(format!("agent = {}", arg(Box::new(agent.clone()))));
    }
    if let Some(text) = f.goal_contains.as_deref().filter(|t| !t.is_empty()) {
        // LIKE so that the trigram index on lower(goal) serves it; the operator's text is escaped,
        // so it is matched as it is, `%` and `_` included.
        let escaped = text
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        conds.push(format!(
            "lower(goal) LIKE lower({}) ESCAPE '\\'",
            arg(Box::new(format!("%{escaped}%")))
        ));
    }
    if !f.include_harness {
        conds.push("NOT harness".to_string());
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
        let rows = query(c, "SELECT created_at FROM tasks WHERE id = $1", &[id]).await?;
        let Some(at) = rows.first().map(|r| r.get::<_, i64>(0)) else {
            return Err(StoreError::Rejected(
                ErrorCode::NotFound,
                format!("no task with id {id} to page from (it may have been deleted by retention); list again without the cursor"),
            ));
        };
        let (a, i) = (arg(Box::new(at)), arg(Box::new(id.clone())));
        conds.push(format!("(created_at, id) {op} ({a}, {i})"));
    }
    let dir = if ascending { "ASC" } else { "DESC" };
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks {filter} ORDER BY created_at {dir}, id {dir} LIMIT {}",
        f.limit.max(1)
    );
    let params: Vec<&(dyn ToSql + Sync)> =
        args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
    let rows = query(c, &sql, &params).await?;
    let mut out = tasks(&rows)?;
    if ascending {
        out.reverse();
    }
    Ok(out)
}

pub(super) async fn pending_dispatch(c: &Client) -> Result<Vec<PendingTask>, StoreError> {
    let rows = query(
        c,
        &format!(
            "SELECT {TASK_COLUMNS}, not_before FROM tasks WHERE state IN ('queued', 'assigned') \
             ORDER BY created_at, id"
        ),
        &[],
    )
    .await?;
    let not_before = TASK_COLUMNS.split(',').count();
    let mut tasks = Vec::with_capacity(rows.len());
    for row in &rows {
        match task_from_row(row) {
            Ok(task) => tasks.push(PendingTask {
                task,
                not_before: row.try_get(not_before).ok().flatten(),
            }),
            Err(e) => {
                let id: Option<String> = row.try_get(0).ok();
                crate::store::pending_unreadable(id.as_deref().unwrap_or("?"), &e);
            }
        }
    }
    Ok(tasks)
}

async fn get_meta(c: &Client, key: &str) -> Result<Option<String>, StoreError> {
    let rows = query(c, "SELECT value FROM meta WHERE key = $1", &[&key]).await?;
    Ok(rows.first().map(|r| r.get(0)))
}

pub(super) async fn load_mode(c: &Client) -> Result<Option<StoredMode>, StoreError> {
    let mode = get_meta(c, META_MODE)
        .await?
        .and_then(|m| m.parse::<Mode>().ok());
    let since_ms = get_meta(c, META_MODE_SINCE)
        .await?
        .and_then(|s| s.parse::<i64>().ok());
    Ok(mode.map(|mode| StoredMode { mode, since_ms }))
}

pub(super) async fn undelivered_since(
    c: &Client,
    since_ms: i64,
    action: &str,
) -> Result<Vec<Task>, StoreError> {
    let rows = query(
        c,
        &format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE kind = 'live' AND state = 'done' \
             AND completed_at >= $1 \
             AND NOT EXISTS (SELECT 1 FROM events e WHERE e.task_id = tasks.id AND e.action = $2) \
             ORDER BY completed_at, id"
        ),
        &[&since_ms, &action],
    )
    .await?;
    tasks(&rows)
}

pub(super) async fn retired(
    c: &Client,
    kind: TaskKind,
    before: i64,
    after: Option<RetiredCursor>,
    limit: usize,
) -> Result<Vec<Retired>, StoreError> {
    let (after_completed, after_pos) = after.unwrap_or((i64::MIN, i64::MIN));
    let rows = query(
        c,
        "SELECT id, completed_at, pos FROM tasks \
         WHERE kind = $1 AND completed_at IS NOT NULL AND completed_at < $2 \
         AND (completed_at, pos) > ($3, $4) ORDER BY completed_at, pos LIMIT $5",
        &[
            &kind.as_str(),
            &before,
            &after_completed,
            &after_pos,
            &limit_sql(limit),
        ],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Retired {
            id: r.get(0),
            cursor: (r.get(1), r.get(2)),
        })
        .collect())
}

/// This node's `in_progress` tasks (and those no node holds, from before nodes existed).
pub(super) async fn orphan_leftovers(c: &Client, node: &str) -> Result<Vec<Leftover>, StoreError> {
    let rows = query(
        c,
        "SELECT id, specialist_pid, agent FROM tasks WHERE state = 'in_progress' \
         AND (node = $1 OR node IS NULL) ORDER BY id",
        &[&node],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Leftover {
            id: r.get(0),
            pgid: r
                .get::<_, Option<i64>>(1)
                .and_then(|p| i32::try_from(p).ok()),
            agent: r.get(2),
        })
        .collect())
}

pub(super) async fn latest_gate_run(c: &Client) -> Result<Option<GateRunSummary>, StoreError> {
    let rows = query(
        c,
        "SELECT at, label, passed, total, fingerprint FROM gate_runs ORDER BY id DESC LIMIT 1",
        &[],
    )
    .await?;
    Ok(rows.first().map(|r| GateRunSummary {
        at: rfc3339(r.get(0)),
        label: r.get(1),
        passed: r.get::<_, i64>(2).clamp(0, i64::from(u32::MAX)) as u32,
        total: r.get::<_, i64>(3).clamp(0, i64::from(u32::MAX)) as u32,
        fingerprint: r.get(4),
        matches_current: false,
    }))
}

pub(super) async fn gate_runs(c: &Client, limit: usize) -> Result<Vec<GateRunSummary>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = query(
        c,
        "SELECT at, label, passed, total, fingerprint FROM gate_runs ORDER BY id DESC LIMIT $1",
        &[&limit],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| GateRunSummary {
            at: rfc3339(r.get(0)),
            label: r.get(1),
            passed: r.get::<_, i64>(2).clamp(0, i64::from(u32::MAX)) as u32,
            total: r.get::<_, i64>(3).clamp(0, i64::from(u32::MAX)) as u32,
            fingerprint: r.get(4),
            matches_current: false,
        })
        .collect())
}

pub(super) async fn gate_passed_for(c: &Client, fingerprint: &str) -> Result<bool, StoreError> {
    let rows = query(
        c,
        "SELECT passed, total FROM gate_runs WHERE fingerprint = $1 AND label IS NULL \
         ORDER BY id DESC LIMIT 1",
        &[&fingerprint],
    )
    .await?;
    Ok(rows
        .first()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
        .is_some_and(|(p, t)| p == t && t > 0))
}

pub(super) async fn pending_override(
    c: &Client,
    mode: Mode,
) -> Result<Option<(i64, OverrideRecord)>, StoreError> {
    let rows = query(
        c,
        "SELECT id, reason, by_user, uid, at FROM overrides \
         WHERE mode = $1 AND consumed_at IS NULL ORDER BY id LIMIT 1",
        &[&mode.as_str()],
    )
    .await?;
    Ok(rows.first().map(|r| {
        (
            r.get::<_, i64>(0),
            OverrideRecord {
                mode,
                reason: r.get(1),
                by: r.get(2),
                uid: r.get::<_, i64>(3).clamp(0, i64::from(u32::MAX)) as u32,
                at: rfc3339(r.get(4)),
                consumed_at: None,
            },
        )
    }))
}

pub(super) async fn pending_overrides(c: &Client) -> Result<Vec<OverrideRecord>, StoreError> {
    let mut out = Vec::new();
    for m in Mode::ALL {
        if let Some((_, rec)) = pending_override(c, m).await? {
            out.push(rec);
        }
    }
    Ok(out)
}

/// The shadow tasks created in `from_ms..until_ms`, folded per bucket of `bucket_ms` for the
/// shadow summary.
pub(super) async fn shadow_tallies(
    c: &Client,
    from_ms: i64,
    until_ms: i64,
    bucket_ms: i64,
) -> Result<Vec<(i64, ShadowTally)>, StoreError> {
    let rows = query(
        c,
        "SELECT state, error_code, agent, created_at, completed_at, would_require_approval \
         FROM tasks WHERE kind = 'shadow' AND created_at >= $1 AND created_at < $2",
        &[&from_ms, &until_ms],
    )
    .await?;
    let mut buckets = TallyBuckets::new(bucket_ms);
    for r in &rows {
        buckets.add(&ShadowRow {
            state: r
                .get::<_, &str>(0)
                .parse::<TaskState>()
                .unwrap_or(TaskState::Failed),
            error_code: r.get(1),
            agent: r.get(2),
            created_ms: r.get(3),
            completed_ms: r.get(4),
            would_require_approval: r.get(5),
        });
    }
    Ok(buckets.finish())
}
