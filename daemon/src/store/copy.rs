//! Moving over: copy a stopped SQLite store into an empty PostgreSQL database, tasks, trajectories,
//! gate runs, overrides, the mode and the notification outbox (pending and dead events keep their
//! ids), in one transaction, and check that every table holds as many
//! rows on both sides (and the task counts by kind and state agree) before committing. The events
//! SQLite's sinks have still to be sent from its event log become outbox rows in PostgreSQL, which
//! keeps every pending event as a row (see `store/outbox.rs`).

use super::outbox::{OutboxEntry, OutboxRules};
use super::postgres::{self, pg_error, Settings};
use super::StoreError;
use deadpool_postgres::Transaction;
use futures_util::future::try_join_all;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::collections::BTreeMap;
use std::path::Path;
use tokio_postgres::types::ToSql;

/// Rows sent before waiting for their answers: one round trip for many rows.
const PIPELINE: usize = 512;

/// How many rows of each table were copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub tables: BTreeMap<&'static str, u64>,
}

impl std::fmt::Display for CopyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .tables
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Sql(e.to_string())
}

/// Copy the SQLite store at `from` into the (empty) database `to`. Blocking: runs a runtime of its
/// own.
/// `rules` give the links and approval policy of the bodies of events still to be sent from the
/// log (the sinks and their filters are the store's own).
pub fn sqlite_to_postgres(
    from: &Path,
    to: &Settings,
    rules: &OutboxRules,
) -> Result<CopyReport, StoreError> {
    let src = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql)?;
    let version: i64 = src
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if version != super::sqlite::SCHEMA_VERSION {
        return Err(StoreError::Sql(format!(
            "{} has schema version {version}, this release writes {}: start and stop this \
             release's daemon on it once first",
            from.display(),
            super::sqlite::SCHEMA_VERSION
        )));
    }
    let closed: Option<String> = src
        .query_row(
            "SELECT value FROM meta WHERE key = 'store_closed_cleanly'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql)?;
    if closed.as_deref() != Some("1") {
        return Err(StoreError::Sql(format!(
            "{} is open in a running daemon or was not closed cleanly: stop the daemon (start and \
             stop it once after a crash) first",
            from.display()
        )));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Sql(format!("cannot start a runtime: {e}")))?;
    rt.block_on(copy(&src, to, rules))
}

async fn copy(
    src: &Connection,
    to: &Settings,
    rules: &OutboxRules,
) -> Result<CopyReport, StoreError> {
    let pool = postgres::single_pool(to)?;
    let mut client = pool.get().await.map_err(postgres::pool_error)?;
    postgres::schema::migrate(&mut client).await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    let present: i64 = tx
        .query_one(
            "SELECT (SELECT count(*) FROM tasks) + (SELECT count(*) FROM events) \
             + (SELECT count(*) FROM gate_runs) + (SELECT count(*) FROM overrides) \
             + (SELECT count(*) FROM outbox) + (SELECT count(*) FROM outbox_sinks)",
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    if present != 0 {
        return Err(StoreError::Sql(
            "the PostgreSQL database already holds tasks or gate records; copy into an empty one"
                .into(),
        ));
    }
    let mut report = CopyReport::default();
    report.tables.insert("tasks", copy_tasks(src, &tx).await?);
    report.tables.insert("events", copy_events(src, &tx).await?);
    report
        .tables
        .insert("gate_runs", copy_gate_runs(src, &tx).await?);
    report
        .tables
        .insert("overrides", copy_overrides(src, &tx).await?);
    report.tables.insert("meta", copy_meta(src, &tx).await?);
    let rows = copy_outbox(src, &tx).await?;
    let backlog = super::sqlite::outbox::log_backlog(src, rules)?;
    let carried = copy_backlog(&tx, backlog).await?;
    report.tables.insert("outbox", rows + carried);
    report
        .tables
        .insert("outbox_sinks", copy_outbox_sinks(src, &tx).await?);
    tx.batch_execute(
        "DELETE FROM task_count_deltas; DELETE FROM task_counts; \
         INSERT INTO task_counts (kind, state, n) SELECT kind, state, count(*) FROM tasks GROUP BY kind, state; \
         SELECT setval(pg_get_serial_sequence('tasks', 'pos'), COALESCE((SELECT max(pos) FROM tasks), 0) + 1, false); \
         SELECT setval(pg_get_serial_sequence('events', 'seq'), COALESCE((SELECT max(seq) FROM events), 0) + 1, false); \
         SELECT setval(pg_get_serial_sequence('gate_runs', 'id'), COALESCE((SELECT max(id) FROM gate_runs), 0) + 1, false); \
         SELECT setval(pg_get_serial_sequence('overrides', 'id'), COALESCE((SELECT max(id) FROM overrides), 0) + 1, false); \
         SELECT setval(pg_get_serial_sequence('outbox', 'seq'), COALESCE((SELECT max(seq) FROM outbox), 0) + 1, false);",
    )
    .await
    .map_err(pg_error)?;
    verify(src, &tx, &report, carried).await?;
    tx.commit().await.map_err(pg_error)?;
    pool.close();
    Ok(report)
}

/// Every table holds as many rows on both sides (the outbox also the `carried` events from the
/// log), and the counts by kind and state agree.
async fn verify(
    src: &Connection,
    tx: &Transaction<'_>,
    report: &CopyReport,
    carried: u64,
) -> Result<(), StoreError> {
    for (table, copied) in &report.tables {
        let filter = if *table == "meta" {
            " WHERE key <> 'store_closed_cleanly'"
        } else {
            ""
        };
        let q = format!("SELECT count(*) FROM {table}{filter}");
        let mut in_sqlite: i64 = src.query_row(&q, [], |r| r.get(0)).map_err(sql)?;
        if *table == "outbox" {
            in_sqlite += i64::try_from(carried).unwrap_or(i64::MAX);
        }
        let in_pg: i64 = tx
            .query_one(q.as_str(), &[])
            .await
            .map_err(pg_error)?
            .get(0);
        if in_sqlite != in_pg || in_pg != *copied as i64 {
            return Err(StoreError::Sql(format!(
                "{table}: {in_sqlite} rows in SQLite but {in_pg} in PostgreSQL; nothing was copied"
            )));
        }
    }
    let q = "SELECT kind, state, count(*) FROM tasks GROUP BY kind, state ORDER BY kind, state";
    let mut stmt = src.prepare(q).map_err(sql)?;
    let sqlite_counts: Vec<(String, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)?;
    let pg_counts: Vec<(String, String, i64)> = tx
        .query(
            "SELECT kind, state, n FROM task_counts WHERE n > 0 ORDER BY kind COLLATE \"C\", state COLLATE \"C\"",
            &[],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    if sqlite_counts != pg_counts {
        return Err(StoreError::Sql(format!(
            "task counts differ: {sqlite_counts:?} in SQLite, {pg_counts:?} in PostgreSQL; nothing was copied"
        )));
    }
    Ok(())
}

/// Send `rows` through `stmt`, [`PIPELINE`] at a time.
async fn insert_all(
    tx: &Transaction<'_>,
    insert: &str,
    rows: Vec<Vec<Box<dyn ToSql + Sync + Send>>>,
) -> Result<u64, StoreError> {
    let stmt = tx.prepare(insert).await.map_err(pg_error)?;
    let mut n = 0;
    for chunk in rows.chunks(PIPELINE) {
        let sends = chunk.iter().map(|row| {
            let params: Vec<&(dyn ToSql + Sync)> =
                row.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
            let stmt = &stmt;
            async move { tx.execute(stmt, &params).await }
        });
        n += try_join_all(sends).await.map_err(pg_error)?.len() as u64;
    }
    Ok(n)
}

type Row = Vec<Box<dyn ToSql + Sync + Send>>;

fn read_rows(
    src: &Connection,
    query: &str,
    convert: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<Row>,
) -> Result<Vec<Row>, StoreError> {
    let mut stmt = src.prepare(query).map_err(sql)?;
    let rows = stmt
        .query_map([], |r| convert(r))
        .map_err(sql)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql)?;
    Ok(rows)
}

macro_rules! row {
    ($r:ident; $($ty:ty),* $(,)?) => {{
        let mut i = 0usize;
        let mut v: Row = Vec::new();
        $(
            v.push(Box::new($r.get::<_, $ty>(i)?));
            #[allow(unused_assignments)]
            { i += 1; }
        )*
        v
    }};
}

/// Copy a table whose first column is an increasing integer key, in slices of `slice` rows, so
/// that a large store is never held in memory whole.
async fn copy_keyed(
    src: &Connection,
    tx: &Transaction<'_>,
    select: &str,
    key: &str,
    insert: &str,
    slice: usize,
    convert: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<Row>,
) -> Result<u64, StoreError> {
    let mut total = 0;
    let mut after = i64::MIN;
    loop {
        let query = format!("{select} WHERE {key} > ?1 ORDER BY {key} LIMIT {slice}");
        let mut stmt = src.prepare(&query).map_err(sql)?;
        let rows: Vec<(i64, Row)> = stmt
            .query_map([after], |r| Ok((r.get::<_, i64>(0)?, convert(r)?)))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        let Some((last, _)) = rows.last() else {
            return Ok(total);
        };
        after = *last;
        total += insert_all(tx, insert, rows.into_iter().map(|(_, r)| r).collect()).await?;
    }
}

async fn copy_tasks(src: &Connection, tx: &Transaction<'_>) -> Result<u64, StoreError> {
    copy_keyed(
        src,
        tx,
        "SELECT rowid, id, kind, state, goal, workspace_dir, required_caps, routing, agent, result, \
         rejection, error, error_code, submitted_by, harness != 0, would_require_approval != 0, \
         created_at, assigned_at, started_at, completed_at, expires_at, lease_until, attempts, \
         specialist_pid, usage FROM tasks",
        "rowid",
        "INSERT INTO tasks (pos, id, kind, state, goal, workspace_dir, required_caps, routing, \
         agent, result, rejection, error, error_code, submitted_by, harness, \
         would_require_approval, created_at, assigned_at, started_at, completed_at, expires_at, \
         lease_until, attempts, specialist_pid, usage) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
         $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)",
        10_000,
        |r| {
            Ok(row!(r; i64, String, String, String, String, Option<String>, String, Option<String>,
                Option<String>, Option<String>, Option<String>, Option<String>, Option<String>,
                String, bool, bool, i64, Option<i64>, Option<i64>, Option<i64>, i64, Option<i64>,
                i64, Option<i64>, Option<String>))
        },
    )
    .await
}

async fn copy_events(src: &Connection, tx: &Transaction<'_>) -> Result<u64, StoreError> {
    copy_keyed(
        src,
        tx,
        "SELECT seq, task_id, at, actor, action, from_state, to_state, details FROM events",
        "seq",
        "INSERT INTO events (seq, task_id, at, actor, action, from_state, to_state, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        20_000,
        |r| Ok(row!(r; i64, String, i64, String, String, Option<String>, String, Option<String>)),
    )
    .await
}

async fn copy_gate_runs(src: &Connection, tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let rows = read_rows(
        src,
        "SELECT id, at, label, fingerprint, passed, total, report FROM gate_runs ORDER BY id",
        |r| Ok(row!(r; i64, i64, Option<String>, String, i64, i64, String)),
    )?;
    insert_all(
        tx,
        "INSERT INTO gate_runs (id, at, label, fingerprint, passed, total, report) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        rows,
    )
    .await
}

async fn copy_overrides(src: &Connection, tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let rows = read_rows(
        src,
        "SELECT id, mode, reason, by_user, uid, at, consumed_at FROM overrides ORDER BY id",
        |r| Ok(row!(r; i64, String, String, String, i64, i64, Option<i64>)),
    )?;
    insert_all(
        tx,
        "INSERT INTO overrides (id, mode, reason, by_user, uid, at, consumed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        rows,
    )
    .await
}

async fn copy_outbox(src: &Connection, tx: &Transaction<'_>) -> Result<u64, StoreError> {
    copy_keyed(
        src,
        tx,
        "SELECT seq, sink, event_id, type, task_id, payload, created_at, pending_since, attempts, \
         last_error, state, dead_at FROM outbox",
        "seq",
        "INSERT INTO outbox (seq, sink, event_id, type, task_id, payload, created_at, \
         pending_since, attempts, last_error, state, dead_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        10_000,
        |r| {
            Ok(
                row!(r; i64, String, String, String, Option<String>, String, i64, i64, i64,
                Option<String>, String, Option<i64>),
            )
        },
    )
    .await
}

/// The events still to be sent from SQLite's log, as pending rows after the rows copied, each
/// with its event id and the failed attempts counted for it.
async fn copy_backlog(tx: &Transaction<'_>, backlog: Vec<OutboxEntry>) -> Result<u64, StoreError> {
    let first: i64 = tx
        .query_one("SELECT COALESCE(max(seq), 0) + 1 FROM outbox", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    let rows: Vec<Row> = backlog
        .into_iter()
        .zip(first..)
        .map(|(e, seq)| -> Row {
            vec![
                Box::new(seq),
                Box::new(e.sink),
                Box::new(e.event_id),
                Box::new(e.event_type),
                Box::new(e.task_id),
                Box::new(e.body),
                Box::new(e.pending_since_ms),
                Box::new(i64::from(e.attempts)),
            ]
        })
        .collect();
    insert_all(
        tx,
        "INSERT INTO outbox (seq, sink, event_id, type, task_id, payload, created_at, \
         pending_since, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
        rows,
    )
    .await
}

async fn copy_outbox_sinks(src: &Connection, tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let rows = read_rows(
        src,
        "SELECT sink, last_error FROM outbox_sinks ORDER BY sink",
        |r| Ok(row!(r; String, Option<String>)),
    )?;
    insert_all(
        tx,
        "INSERT INTO outbox_sinks (sink, last_error) VALUES ($1, $2)",
        rows,
    )
    .await
}

async fn copy_meta(src: &Connection, tx: &Transaction<'_>) -> Result<u64, StoreError> {
    // The clean-close marker belongs to SQLite's own start-up check.
    let rows = read_rows(
        src,
        "SELECT key, value FROM meta WHERE key <> 'store_closed_cleanly' ORDER BY key",
        |r| Ok(row!(r; String, String)),
    )?;
    insert_all(
        tx,
        "INSERT INTO meta (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        rows,
    )
    .await
}
