//! The outbox in PostgreSQL: rows written inside the transaction of the event that causes them,
//! and the delivery worker's reads and marks. The same rules as the SQLite backend's
//! (`store/sqlite/outbox.rs`); see [`crate::store::outbox`].

use super::pg_error;
use super::tx::Tx;
use crate::store::outbox::{Cause, EventRows, Notice, OutboxEntry, OutboxKey, OutboxStats};
use crate::store::{Awaiting, AwaitingCut, StoreError};
use deadpool_postgres::Client;
use orchestrator_proto::task::{TaskKind, TrajectoryEvent};
use tokio_postgres::Row;

const ENTRY_COLUMNS: &str = "seq, sink, event_id, type, task_id, payload, pending_since, attempts";

fn entry_from_row(r: &Row) -> OutboxEntry {
    OutboxEntry {
        key: OutboxKey::Row(r.get(0)),
        sink: r.get(1),
        event_id: r.get(2),
        event_type: r.get(3),
        task_id: r.get(4),
        body: r.get(5),
        pending_since_ms: r.get(6),
        attempts: u32::try_from(r.get::<_, i64>(7)).unwrap_or(u32::MAX),
    }
}

fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl Tx<'_> {
    async fn insert_outbox(
        &mut self,
        sinks: &[String],
        event_id: &str,
        event_type: &str,
        task_id: Option<&str>,
        body: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        // One statement for every sink: the rows get consecutive positions in the sinks' order.
        self.exec(
            "INSERT INTO outbox (sink, event_id, type, task_id, payload, created_at, pending_since) \
             SELECT s, $2, $3, $4, $5, $6, $6 FROM unnest($1::text[]) WITH ORDINALITY AS u(s, i) \
             ORDER BY i",
            &[&sinks, &event_id, &event_type, &task_id, &body, &at_ms],
        )
        .await?;
        self.note_outbox(sinks.len());
        Ok(())
    }

    /// The outbox rows a just-written trajectory event `ev` (which happened at `at_ms`) causes, if
    /// a sink wants them. Costs one string match when no sink wants this event's type.
    pub(super) async fn outbox_for_event(
        &mut self,
        ev: &TrajectoryEvent,
        at_ms: i64,
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
        let Some(task) = self.get_task(&ev.task_id).await? else {
            return Ok(());
        };
        let Some(rows) = EventRows::of(&rules, kind, ev, at_ms, &task)? else {
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
        .await
    }

    /// Write a notice to the outbox rows of the sinks that want it; answers how many.
    pub(super) async fn enqueue_notice(&mut self, n: &Notice) -> Result<usize, StoreError> {
        let Some(rules) = self.outbox_rules() else {
            return Ok(0);
        };
        let sinks = n.sinks(&rules);
        if sinks.is_empty() {
            return Ok(0);
        }
        let task_id = n.task.as_ref().map(|(id, _, _)| id.as_str());
        self.insert_outbox(&sinks, &n.id, &n.event_type, task_id, &n.body(), n.at_ms)
            .await?;
        Ok(sinks.len())
    }

    pub(super) async fn outbox_delivered(&mut self, seqs: &[i64]) -> Result<(), StoreError> {
        self.exec("DELETE FROM outbox WHERE seq = ANY($1)", &[&seqs])
            .await?;
        Ok(())
    }

    pub(super) async fn outbox_attempt_failed(
        &mut self,
        seqs: &[i64],
        error: &str,
    ) -> Result<(), StoreError> {
        for seq in seqs {
            self.exec(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = $1",
                &[seq, &error],
            )
            .await?;
            self.exec(
                "INSERT INTO outbox_sinks (sink, last_error) SELECT sink, $2 FROM outbox WHERE seq = $1 \
                 ON CONFLICT (sink) DO UPDATE SET last_error = EXCLUDED.last_error",
                &[seq, &error],
            )
            .await?;
        }
        Ok(())
    }

    /// Mark events dead and, in the same transaction, raise the alarm that says so (if given).
    pub(super) async fn outbox_dead(
        &mut self,
        seqs: &[i64],
        at_ms: i64,
        alarm: Option<&Notice>,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE outbox SET state = 'dead', dead_at = $2 WHERE seq = ANY($1) AND state = 'pending'",
            &[&seqs, &at_ms],
        )
        .await?;
        if let Some(alarm) = alarm {
            self.enqueue_notice(alarm).await?;
        }
        Ok(())
    }

    pub(super) async fn outbox_retry_dead(
        &mut self,
        sink: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let n = self
            .exec(
                "UPDATE outbox SET state = 'pending', pending_since = $2, attempts = 0, dead_at = NULL \
                 WHERE sink = $1 AND state = 'dead'",
                &[&sink, &now_ms],
            )
            .await?;
        self.note_outbox(usize::try_from(n).unwrap_or(usize::MAX));
        Ok(n)
    }
}

async fn query(
    c: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(pg_error)?;
    c.query(&stmt, params).await.map_err(pg_error)
}

/// A sink's pending events in outbox order: outbox_sink (sink, state, seq).
pub(super) async fn outbox_pending(
    c: &Client,
    sink: &str,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let rows = query(
        c,
        &format!(
            "SELECT {ENTRY_COLUMNS} FROM outbox WHERE sink = $1 AND state = 'pending' \
             ORDER BY seq LIMIT $2"
        ),
        &[&sink, &limit_sql(limit)],
    )
    .await?;
    Ok(rows.iter().map(entry_from_row).collect())
}

pub(super) async fn outbox_stats(c: &Client) -> Result<Vec<OutboxStats>, StoreError> {
    let rows = query(
        c,
        "SELECT s.sink, \
           count(*) FILTER (WHERE o.state = 'pending'), count(*) FILTER (WHERE o.state = 'dead'), \
           min(o.pending_since) FILTER (WHERE o.state = 'pending'), \
           (SELECT last_error FROM outbox_sinks e WHERE e.sink = s.sink) \
         FROM (SELECT DISTINCT sink FROM outbox UNION SELECT sink FROM outbox_sinks) s \
         LEFT JOIN outbox o ON o.sink = s.sink GROUP BY s.sink ORDER BY s.sink",
        &[],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| OutboxStats {
            sink: r.get(0),
            pending: r.get::<_, i64>(1).max(0) as u64,
            dead: r.get::<_, i64>(2).max(0) as u64,
            oldest_pending_ms: r.get(3),
            last_error: r.get(4),
        })
        .collect())
}

/// See [`crate::store::Backend::awaiting_since`].
pub(super) async fn awaiting_since(
    c: &Client,
    limit: u32,
) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = query(
        c,
        "WITH newest AS MATERIALIZED ( \
           SELECT id, created_at FROM tasks WHERE state = 'awaiting_approval' AND NOT harness \
           ORDER BY created_at DESC, id DESC LIMIT $1) \
         SELECT n.id, \
           (SELECT max(e.at) FROM events e WHERE e.task_id = n.id \
              AND e.to_state = 'awaiting_approval' AND e.from_state <> 'awaiting_approval') \
         FROM newest n ORDER BY n.created_at DESC, n.id DESC",
        &[&i64::from(limit)],
    )
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let since: Option<i64> = r.get(1);
            since.map(|s| (r.get(0), s))
        })
        .collect())
}

/// Tasks waiting for approval that `cut` admits, with since when and whether they were warned:
/// the state index, then the trajectory of each task admitted through events_task.
pub(super) async fn awaiting_approval(
    c: &Client,
    cut: AwaitingCut,
) -> Result<Vec<Awaiting>, StoreError> {
    let created_by = cut.created_by_ms.unwrap_or(i64::MIN);
    let rows = query(
        c,
        "SELECT t.id, t.kind, t.agent, t.expires_at, \
           (SELECT max(e.at) FROM events e WHERE e.task_id = t.id \
              AND e.to_state = 'awaiting_approval' AND e.from_state <> 'awaiting_approval'), \
           EXISTS (SELECT 1 FROM events e WHERE e.task_id = t.id AND e.action = 'approval_warning') \
         FROM tasks t WHERE t.state = 'awaiting_approval' \
           AND (t.expires_at <= $1 OR t.created_at <= $2)",
        &[&cut.expires_by_ms, &created_by],
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let kind: TaskKind = super::rows::parsed(r, 1)?;
        let expires_ms: i64 = r.get(3);
        let since: Option<i64> = r.get(4);
        out.push(Awaiting {
            id: r.get(0),
            kind,
            agent: r.get(2),
            since_ms: since.unwrap_or(expires_ms),
            expires_ms,
            warned: r.get(5),
        });
    }
    Ok(out)
}
