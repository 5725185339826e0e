//! The outbox in SQLite: rows written by the writer inside the transaction of the event that causes
//! them, and the delivery worker's reads and marks. See [`crate::store::outbox`].

use super::batch::{sized_sql, Batch};
use crate::store::outbox::{Cause, EventRows, Notice, OutboxEntry, OutboxStats};
use crate::store::{Awaiting, StoreError};
use orchestrator_proto::task::{Task, TaskKind, TrajectoryEvent};
use rusqlite::{params, Connection};
use std::sync::LazyLock;

/// Most sinks' rows in one `INSERT` (each sink is one parameter besides the event's five).
const SINKS_PER_INSERT: usize = 64;

/// `INSERT` of one event's rows for `n` sinks: ?1 event id, ?2 type, ?3 task, ?4 payload, ?5 time,
/// then one sink name each.
fn outbox_insert(n: usize) -> std::borrow::Cow<'static, str> {
    static USUAL: LazyLock<Vec<String>> =
        LazyLock::new(|| (0..=4).map(outbox_insert_sql).collect());
    sized_sql(&USUAL, n, outbox_insert_sql)
}

fn outbox_insert_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO outbox (sink, event_id, type, task_id, payload, created_at, pending_since) VALUES ",
    );
    for i in 0..n {
        let sep = if i == 0 { "" } else { ", " };
        sql.push_str(&format!("{sep}(?{}, ?1, ?2, ?3, ?4, ?5, ?5)", 6 + i));
    }
    sql
}

const ENTRY_COLUMNS: &str = "seq, sink, event_id, type, task_id, payload, pending_since, attempts";

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    Ok(OutboxEntry {
        seq: r.get(0)?,
        sink: r.get(1)?,
        event_id: r.get(2)?,
        event_type: r.get(3)?,
        task_id: r.get(4)?,
        body: r.get(5)?,
        pending_since_ms: r.get(6)?,
        attempts: u32::try_from(r.get::<_, i64>(7)?).unwrap_or(u32::MAX),
    })
}

impl Batch<'_> {
    fn insert_outbox(
        &mut self,
        sinks: &[String],
        event_id: &str,
        event_type: &str,
        task_id: Option<&str>,
        body: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        // One statement for the event's rows, however many sinks want it.
        for chunk in sinks.chunks(SINKS_PER_INSERT) {
            let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(5 + chunk.len());
            args.extend([
                &event_id as &dyn rusqlite::ToSql,
                &event_type,
                &task_id,
                &body,
                &at_ms,
            ]);
            args.extend(chunk.iter().map(|s| s as &dyn rusqlite::ToSql));
            self.tx()
                .prepare_cached(&outbox_insert(chunk.len()))?
                .execute(&*args)?;
        }
        self.note_outbox(sinks.len());
        Ok(())
    }

    /// The outbox rows a just-written trajectory event `ev` (which happened at `at_ms`) causes, if
    /// a sink wants them. Costs one string match when no sink wants this event's type. `known` is
    /// the task as the row holds it after the event, when the caller has it (a submit); otherwise
    /// the row is read.
    pub(super) fn outbox_for_event(
        &mut self,
        ev: &TrajectoryEvent,
        at_ms: i64,
        known: Option<&Task>,
    ) -> Result<(), StoreError> {
        let Some(rules) = self.outbox_rules() else {
            return Ok(());
        };
        let Some(kind) = Cause::event_type(ev) else {
            return Ok(());
        };
        if !rules.any_wants(kind) {
            return Ok(());
        }
        let read;
        let task = match known {
            Some(t) => t,
            None => {
                read = self.get_task(&ev.task_id)?;
                match &read {
                    Some(t) => t,
                    None => return Ok(()),
                }
            }
        };
        let Some(rows) = EventRows::of(&rules, kind, ev, at_ms, task)? else {
            return Ok(());
        };
        let task_id = Some(ev.task_id.as_str());
        self.insert_outbox(
            &rows.sinks,
            &rows.event_id,
            kind,
            task_id,
            &rows.body,
            at_ms,
        )
    }

    /// Write a notice to the outbox rows of the sinks that want it; answers how many.
    pub fn enqueue_notice(&mut self, n: &Notice) -> Result<usize, StoreError> {
        let Some(rules) = self.outbox_rules() else {
            return Ok(0);
        };
        let sinks = n.sinks(&rules);
        if sinks.is_empty() {
            return Ok(0);
        }
        let task_id = n.task.as_ref().map(|(id, _, _)| id.as_str());
        self.insert_outbox(&sinks, &n.id, &n.event_type, task_id, &n.body(), n.at_ms)?;
        Ok(sinks.len())
    }

    pub fn outbox_delivered(&mut self, seqs: &[i64]) -> Result<(), StoreError> {
        let mut stmt = self
            .tx()
            .prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
        for seq in seqs {
            stmt.execute([seq])?;
        }
        Ok(())
    }

    pub fn outbox_attempt_failed(&mut self, seq: i64, error: &str) -> Result<(), StoreError> {
        self.tx()
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
            )?
            .execute(params![seq, error])?;
        self.tx()
            .prepare_cached(
                "INSERT INTO outbox_sinks (sink, last_error) SELECT sink, ?2 FROM outbox WHERE seq = ?1 \
                 ON CONFLICT (sink) DO UPDATE SET last_error = excluded.last_error",
            )?
            .execute(params![seq, error])?;
        Ok(())
    }

    /// Mark events dead and, in the same write, raise the alarm that says so (if given).
    pub fn outbox_dead(
        &mut self,
        seqs: &[i64],
        at_ms: i64,
        alarm: Option<&Notice>,
    ) -> Result<(), StoreError> {
        {
            let mut stmt = self.tx().prepare_cached(
                "UPDATE outbox SET state = 'dead', dead_at = ?2 WHERE seq = ?1 AND state = 'pending'",
            )?;
            for seq in seqs {
                stmt.execute(params![seq, at_ms])?;
            }
        }
        if let Some(alarm) = alarm {
            self.enqueue_notice(alarm)?;
        }
        Ok(())
    }

    pub fn outbox_retry_dead(&mut self, sink: &str, now_ms: i64) -> Result<u64, StoreError> {
        let n = self
            .tx()
            .prepare_cached(
                "UPDATE outbox SET state = 'pending', pending_since = ?2, attempts = 0, dead_at = NULL \
                 WHERE sink = ?1 AND state = 'dead'",
            )?
            .execute(params![sink, now_ms])?;
        self.note_outbox(n);
        Ok(n as u64)
    }
}

/// A sink's pending events in outbox order: outbox_sink(sink, state, seq).
pub fn outbox_pending(
    conn: &Connection,
    sink: &str,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM outbox WHERE sink = ?1 AND state = 'pending' ORDER BY seq LIMIT ?2"
    ))?;
    let rows = stmt.query_map(
        params![sink, super::writes::limit_sql(limit)],
        entry_from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn outbox_stats(conn: &Connection) -> Result<Vec<OutboxStats>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.sink, \
           coalesce(sum(o.state = 'pending'), 0), coalesce(sum(o.state = 'dead'), 0), \
           min(CASE WHEN o.state = 'pending' THEN o.pending_since END), \
           (SELECT last_error FROM outbox_sinks e WHERE e.sink = s.sink) \
         FROM (SELECT DISTINCT sink FROM outbox UNION SELECT sink FROM outbox_sinks) s \
         LEFT JOIN outbox o ON o.sink = s.sink GROUP BY s.sink ORDER BY s.sink",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(OutboxStats {
            sink: r.get(0)?,
            pending: r.get::<_, i64>(1)?.max(0) as u64,
            dead: r.get::<_, i64>(2)?.max(0) as u64,
            oldest_pending_ms: r.get(3)?,
            last_error: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Tasks waiting for approval, with since when and whether they were warned: the state index by
/// its prefix, then each task's trajectory through events_task.
pub fn awaiting_approval(conn: &Connection) -> Result<Vec<Awaiting>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT t.id, t.kind, t.agent, t.expires_at, \
           (SELECT max(e.at) FROM events e WHERE e.task_id = t.id AND e.to_state = 'awaiting_approval' \
              AND e.from_state != 'awaiting_approval'), \
           EXISTS (SELECT 1 FROM events e WHERE e.task_id = t.id AND e.action = 'approval_warning') \
         FROM tasks t WHERE t.state = 'awaiting_approval'",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, bool>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, kind, agent, expires_ms, since, warned) = row?;
        let kind: TaskKind = kind.parse().map_err(StoreError::Sql)?;
        out.push(Awaiting {
            id,
            kind,
            agent,
            since_ms: since.unwrap_or(expires_ms),
            expires_ms,
            warned,
        });
    }
    Ok(out)
}
