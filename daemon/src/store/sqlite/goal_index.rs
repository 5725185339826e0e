//! The goal-text index behind the text filter of task listings (the console's Pipeline `q=`).
//!
//! Matching text inside goals is a scan of the archive: seconds at 1,000,000 tasks. `tasks_goal` is
//! an FTS5 trigram index of each task's goal, keyed by the task's rowid (migration 4 in
//! `schema.rs`). Tokenising a goal costs about as much as the rest of a submit, so inserting a task
//! does not do it: the writer indexes the rows above `goal_index.upto` in small steps once it has
//! been idle for [`IDLE`], and a search reads the index for rows up to `upto` plus the unindexed
//! tail above it. Under sustained load the tail grows and the filter slows toward a scan until the
//! writer next idles; it never misses a task. Deletes forget their entries at once (a trigger).
//!
//! The index only proposes rows: every hit is checked again against the goal itself with the
//! filter's own rule (ASCII case folded), so the result is exactly that of the scan it replaces.

use super::rows::TASK_COLUMNS;
use crate::store::StoreError;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::time::Duration;

/// How long the writer waits for work before it indexes goals.
pub(super) const IDLE: Duration = Duration::from_millis(50);
/// Goals indexed per transaction while idle: a few milliseconds, the most a job arriving meanwhile waits.
const STEP: i64 = 64;
/// Goals indexed per transaction by [`catch_up`], which has the store to itself.
const BULK_STEP: i64 = 20_000;
/// A text with more index hits than this is common: the listing is walked newest first instead,
/// which finds a page of a common text quickly.
const MOST_HITS: usize = 2_000;
/// How many of the newest listed tasks that walk looks at before it falls back to a full scan.
const FIRST_LOOK: usize = 4_000;

/// The highest rowid whose goal is in the index; every row at or below it is indexed.
pub(super) fn upto(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT upto FROM goal_index WHERE id = 1")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Whether rows wait to be indexed.
pub(super) fn behind(conn: &Connection) -> Result<bool, StoreError> {
    let newest: i64 = conn
        .prepare_cached("SELECT ifnull(max(rowid), 0) FROM tasks")?
        .query_row([], |r| r.get(0))?;
    Ok(newest > upto(conn)?)
}

/// Index the next `limit` unindexed goals in one transaction; answers whether more are left.
fn index_next(conn: &mut Connection, limit: i64) -> Result<bool, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let from = upto(&tx)?;
    let mut last = from;
    let mut n = 0;
    {
        let mut rows = tx.prepare_cached(
            "SELECT rowid, goal FROM tasks WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        )?;
        let mut insert =
            tx.prepare_cached("INSERT INTO tasks_goal (rowid, goal) VALUES (?1, ?2)")?;
        let mut found = rows.query(params![from, limit])?;
        while let Some(r) = found.next()? {
            let (rowid, goal): (i64, String) = (r.get(0)?, r.get(1)?);
            insert.execute(params![rowid, goal])?;
            last = rowid;
            n += 1;
        }
    }
    tx.prepare_cached("UPDATE goal_index SET upto = ?1 WHERE id = 1")?
        .execute([last])?;
    tx.commit()?;
    Ok(n == limit)
}

/// One idle step of the writer; answers whether more are left.
pub(super) fn step(conn: &mut Connection) -> Result<bool, StoreError> {
    index_next(conn, STEP)
}

/// Index every goal not yet indexed, in large transactions; answers how many rows that took. For
/// offline tools that write an archive straight into a stopped daemon's store (e.g. `orchbench`).
pub fn catch_up(conn: &mut Connection) -> Result<u64, StoreError> {
    let before = upto(conn)?;
    while index_next(conn, BULK_STEP)? {}
    let after = upto(conn)?;
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM tasks WHERE rowid > ?1 AND rowid <= ?2",
        params![before, after],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

/// How the text filter of a listing is answered.
pub(super) enum Plan {
    /// The indexed rows that may contain the text (a superset), plus the unindexed tail above `upto`.
    Hits { rowids: Vec<i64>, upto: i64 },
    /// Too many hits to fetch one by one: walk the listing newest first.
    Common,
    /// Trigrams need three characters: a shorter text is matched by a scan.
    Short,
}

pub(super) fn plan(conn: &Connection, text: &str) -> Result<Plan, StoreError> {
    if text.chars().count() < 3 {
        return Ok(Plan::Short);
    }
    // One FTS5 string: the text as it is, quotes doubled.
    let phrase = format!("\"{}\"", text.replace('"', "\"\""));
    let mut stmt =
        conn.prepare_cached("SELECT rowid FROM tasks_goal WHERE tasks_goal MATCH ?1 LIMIT ?2")?;
    let rowids = stmt
        .query_map(params![phrase, (MOST_HITS + 1) as i64], |r| r.get(0))?
        .collect::<Result<Vec<i64>, _>>()?;
    if rowids.len() > MOST_HITS {
        return Ok(Plan::Common);
    }
    Ok(Plan::Hits {
        rowids,
        upto: upto(conn)?,
    })
}

/// The candidate rows of a [`Plan::Hits`] as a FROM clause joined to `tasks`: `?hits` is a JSON
/// array of rowids, `?upto` the index's high mark.
pub(super) fn hits_from(hits: &str, upto: &str) -> String {
    format!(
        "(SELECT value AS hit FROM json_each({hits}) UNION ALL SELECT rowid FROM tasks WHERE rowid > CAST({upto} AS INTEGER)) \
         CROSS JOIN tasks ON tasks.rowid = hit"
    )
}

/// The newest-first walk of a [`Plan::Common`] text, bounded to [`FIRST_LOOK`] listed tasks.
pub(super) fn first_look(
    index: &str,
    filter: &str,
    text_cond: &str,
    dir: &str,
    limit: u32,
) -> String {
    format!(
        "SELECT {TASK_COLUMNS} FROM (SELECT {TASK_COLUMNS} FROM tasks {index} {filter} \
         ORDER BY created_at {dir}, id {dir} LIMIT {FIRST_LOOK}) WHERE {text_cond} \
         ORDER BY created_at {dir}, id {dir} LIMIT {limit}"
    )
}

#[cfg(test)]
mod tests;
