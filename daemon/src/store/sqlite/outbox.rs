//! The outbox in SQLite. The event log is the outbox: a transition stores its trajectory event and
//! nothing more, and each sink keeps its place in the log (`outbox_sinks.cursor`) with the filter it
//! was installed with. The delivery worker reads the events past that place that the sink wants and
//! builds their bodies then ([`crate::store::outbox::log_entry`]). Rows of the `outbox` table hold
//! what the log cannot: notices, and events given up on (dead) or sent again (`notify retry`); a
//! sink's rows are sent before its events in the log. See [`crate::store::outbox`].

use super::batch::{sized_sql, Batch};
use super::rows::{event_from_row, EVENT_COLUMNS};
use super::schema::listed_events;
use crate::store::outbox::{
    log_entry, Cause, Notice, OutboxEntry, OutboxKey, OutboxRules, OutboxStats,
};
use crate::store::{Awaiting, AwaitingCut, StoreError};
use orchestrator_core::config::SinkFilter;
use orchestrator_proto::task::{TaskKind, TrajectoryEvent};
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::LazyLock;

/// Most sinks' rows in one `INSERT` (each sink is one parameter besides the event's five).
const SINKS_PER_INSERT: usize = 64;

/// Events read from the log per statement while looking for a sink's next events.
const LOG_CHUNK: usize = 512;

/// The events that can cause a notification ([`crate::store::outbox::event_type`] answers `None`
/// for every other; the test below holds the two together): a
/// cheap first cut in SQL, so that the steps of a task's way (submit, route, start) are not read.
const MAY_NOTIFY: &str =
    "(to_state IN ('awaiting_approval', 'done', 'failed', 'cancelled', 'expired') \
     OR action = 'approval_warning')";

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
        key: OutboxKey::Row(r.get(0)?),
        sink: r.get(1)?,
        event_id: r.get(2)?,
        event_type: r.get(3)?,
        task_id: r.get(4)?,
        body: r.get(5)?,
        pending_since_ms: r.get(6)?,
        attempts: u32::try_from(r.get::<_, i64>(7)?).unwrap_or(u32::MAX),
    })
}

/// The filter a sink's place in the log was installed with, as stored.
fn filter_json(f: &SinkFilter) -> Result<String, StoreError> {
    serde_json::to_string(f).map_err(|e| StoreError::Sql(format!("encode a sink's filter: {e}")))
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
        self.note_table_rows(sinks.len());
        Ok(())
    }

    /// A just-stored trajectory event: if some sink may want its type, delivery is woken after
    /// the commit. Nothing is written; the event itself is what the sink is sent.
    pub(super) fn outbox_for_event(&mut self, ev: &TrajectoryEvent) {
        let wanted = match (self.outbox_rules_ref(), Cause::event_type(ev)) {
            (Some(rules), Some(kind)) => rules.any_wants(kind),
            _ => false,
        };
        if wanted {
            self.note_outbox(1);
        }
    }

    /// Give each sink of `rules` its place in the log and its filter. A sink new to the store
    /// starts at the newest event; one that has a place keeps it. Sinks no longer configured lose
    /// theirs (their rows and last error stay), so that one added again starts anew.
    pub fn outbox_install(&mut self, rules: &OutboxRules) -> Result<(), StoreError> {
        let mut names = Vec::with_capacity(rules.sinks.len());
        for s in &rules.sinks {
            self.tx()
                .prepare_cached(
                    "INSERT INTO outbox_sinks (sink, cursor, filter) \
                     VALUES (?1, (SELECT ifnull(max(seq), 0) FROM events), ?2) \
                     ON CONFLICT (sink) DO UPDATE SET filter = excluded.filter, \
                       cursor = coalesce(outbox_sinks.cursor, excluded.cursor)",
                )?
                .execute(params![s.name, filter_json(&s.filter)?])?;
            names.push(s.name.as_str());
        }
        let names = serde_json::to_string(&names)
            .map_err(|e| StoreError::Sql(format!("encode sink names: {e}")))?;
        self.tx()
            .prepare_cached(
                "UPDATE outbox_sinks SET cursor = NULL, filter = NULL \
                 WHERE cursor IS NOT NULL AND sink NOT IN (SELECT value FROM json_each(?1))",
            )?
            .execute([names])?;
        Ok(())
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

    /// Move a sink's place in the log past `seq` (never back).
    fn outbox_pass(&mut self, sink: &str, seq: i64) -> Result<(), StoreError> {
        self.tx()
            .prepare_cached("UPDATE outbox_sinks SET cursor = ?2 WHERE sink = ?1 AND cursor < ?2")?
            .execute(params![sink, seq])?;
        Ok(())
    }

    pub fn outbox_delivered(&mut self, keys: &[OutboxKey]) -> Result<(), StoreError> {
        // A sink's place moves once, past the furthest of its events delivered.
        let mut furthest: Vec<(&str, i64)> = Vec::new();
        for key in keys {
            match key {
                OutboxKey::Row(seq) => {
                    self.tx()
                        .prepare_cached("DELETE FROM outbox WHERE seq = ?1")?
                        .execute([seq])?;
                }
                OutboxKey::Log { sink, seq } => {
                    match furthest.iter_mut().find(|(s, _)| s == sink) {
                        Some((_, at)) => *at = (*at).max(*seq),
                        None => furthest.push((sink, *seq)),
                    }
                }
            }
        }
        for (sink, seq) in furthest {
            self.outbox_pass(sink, seq)?;
        }
        Ok(())
    }

    pub fn outbox_attempt_failed(
        &mut self,
        key: &OutboxKey,
        error: &str,
    ) -> Result<(), StoreError> {
        match key {
            OutboxKey::Row(seq) => {
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
            }
            // The failed attempts on the sink's next event in the log are counted beside its place.
            OutboxKey::Log { sink, seq } => {
                self.tx()
                    .prepare_cached(
                        "UPDATE outbox_sinks SET last_error = ?3, \
                           head_attempts = CASE WHEN head_seq = ?2 THEN head_attempts + 1 ELSE 1 END, \
                           head_seq = ?2 \
                         WHERE sink = ?1",
                    )?
                    .execute(params![sink, seq, error])?;
            }
        }
        Ok(())
    }

    /// Mark events dead and, in the same write, raise the alarm that says so (if given). An event
    /// from the log becomes a dead row, with the body it was sent with, and the sink moves past it.
    pub fn outbox_dead(
        &mut self,
        entries: &[OutboxEntry],
        at_ms: i64,
        alarm: Option<&Notice>,
    ) -> Result<(), StoreError> {
        for e in entries {
            match &e.key {
                OutboxKey::Row(seq) => {
                    self.tx()
                        .prepare_cached(
                            "UPDATE outbox SET state = 'dead', dead_at = ?2 WHERE seq = ?1 AND state = 'pending'",
                        )?
                        .execute(params![seq, at_ms])?;
                }
                OutboxKey::Log { sink, seq } => {
                    self.tx()
                        .prepare_cached(
                            "INSERT INTO outbox (sink, event_id, type, task_id, payload, created_at, \
                               pending_since, attempts, last_error, state, dead_at) \
                             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, \
                               (SELECT last_error FROM outbox_sinks WHERE sink = ?1), 'dead', ?8",
                        )?
                        .execute(params![
                            sink,
                            e.event_id,
                            e.event_type,
                            e.task_id,
                            e.body,
                            e.pending_since_ms,
                            e.attempts,
                            at_ms
                        ])?;
                    self.outbox_pass(sink, *seq)?;
                }
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
        self.note_table_rows(n);
        Ok(n as u64)
    }
}

/// A sink's place in the log, as stored: where it is, what it wants, and the failed attempts on
/// its next event. `None` for a sink without one (not configured, or no SQLite log).
struct Place {
    cursor: i64,
    filter: SinkFilter,
    head_seq: Option<i64>,
    head_attempts: u32,
}

fn place(conn: &Connection, sink: &str) -> Result<Option<Place>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT cursor, filter, head_seq, head_attempts FROM outbox_sinks \
             WHERE sink = ?1 AND cursor IS NOT NULL AND filter IS NOT NULL",
        )?
        .query_row([sink], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .optional()?;
    let Some((cursor, filter, head_seq, head_attempts)) = row else {
        return Ok(None);
    };
    let filter = serde_json::from_str(&filter)
        .map_err(|e| StoreError::Sql(format!("sink {sink}: unreadable filter: {e}")))?;
    Ok(Some(Place {
        cursor,
        filter,
        head_seq,
        head_attempts: u32::try_from(head_attempts).unwrap_or(u32::MAX),
    }))
}

/// Step through the events of the log past `after` and up to `upto` that may notify
/// ([`MAY_NOTIFY`]: SQLite steps over the others without reading them) and whose type `filter`
/// wants, [`LOG_CHUNK`] per statement, handing each to `f` with when it happened and its
/// notification type until `f` answers `false`. Answers the position reached: every such event up
/// to there was handed over.
fn scan_log(
    conn: &Connection,
    after: i64,
    upto: i64,
    filter: &SinkFilter,
    mut f: impl FnMut(TrajectoryEvent, i64, &'static str) -> Result<bool, StoreError>,
) -> Result<i64, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS}, at FROM events WHERE seq > ?1 AND seq <= ?3 AND {MAY_NOTIFY} \
         ORDER BY seq LIMIT ?2"
    ))?;
    let mut reached = after;
    loop {
        let mut read = 0;
        let mut rows = stmt.query(params![reached, super::writes::limit_sql(LOG_CHUNK), upto])?;
        while let Some(row) = rows.next()? {
            read += 1;
            let ev = event_from_row(row)?;
            let at_ms: i64 = row.get(8)?;
            reached = i64::try_from(ev.seq).unwrap_or(i64::MAX);
            let Some(t) = Cause::event_type(&ev).filter(|t| filter.wants_type(t)) else {
                continue;
            };
            if !f(ev, at_ms, t)? {
                return Ok(reached);
            }
        }
        if read < LOG_CHUNK {
            // The last event that may notify, as this statement saw the log: a later statement
            // may see more, so the position is not taken from one.
            return Ok(reached);
        }
    }
}

/// Up to `limit` events from the log for `sink`, after `place` or `after` (whichever is further)
/// and up to `upto`, with the position the read reached: every event the sink wants up to there is
/// in the answer.
fn log_pending(
    conn: &Connection,
    rules: &OutboxRules,
    sink: &str,
    place: &Place,
    after: i64,
    upto: i64,
    limit: usize,
) -> Result<(Vec<OutboxEntry>, i64), StoreError> {
    let mut out = Vec::new();
    let reached = scan_log(
        conn,
        place.cursor.max(after),
        upto,
        &place.filter,
        |ev, at_ms, t| {
            // A task removed by retention takes its events with it: nothing is left to send.
            let Some(task) = super::queries::get_task(conn, &ev.task_id)? else {
                return Ok(true);
            };
            let seq = i64::try_from(ev.seq).unwrap_or(i64::MAX);
            if let Some(mut entry) = log_entry(rules, sink, &place.filter, t, &ev, at_ms, task)? {
                if place.head_seq == Some(seq) {
                    entry.attempts = place.head_attempts;
                }
                out.push(entry);
            }
            Ok(out.len() < limit)
        },
    )?;
    Ok((out, reached))
}

/// What a read of a sink's pending events found: the events, and how far into the log it looked
/// without finding one the sink wants (a hint for the next read), if it found none there.
pub struct PendingRead {
    pub entries: Vec<OutboxEntry>,
    pub nothing_until: Option<i64>,
}

/// A sink's pending events in order: its rows (outbox_sink(sink, state, seq)), then the events
/// past its place in the log (and past `hint`, a position up to which an earlier read found
/// nothing for it) up to `flushed`, the last event whose commit is flushed. Rows are held back,
/// and with them the events after them, unless `rows_flushed` says, once they are read, that every
/// commit that wrote rows has been flushed (see `flush::Marks`); the read is then empty.
pub fn outbox_pending(
    conn: &Connection,
    rules: Option<&OutboxRules>,
    hint: Option<i64>,
    flushed: i64,
    rows_flushed: impl FnOnce() -> bool,
    sink: &str,
    limit: usize,
) -> Result<PendingRead, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM outbox WHERE sink = ?1 AND state = 'pending' ORDER BY seq LIMIT ?2"
    ))?;
    let rows = stmt.query_map(
        params![sink, super::writes::limit_sql(limit)],
        entry_from_row,
    )?;
    let mut entries: Vec<OutboxEntry> = rows.collect::<Result<_, _>>()?;
    if !entries.is_empty() && !rows_flushed() {
        return Ok(PendingRead {
            entries: Vec::new(),
            nothing_until: None,
        });
    }
    let mut nothing_until = None;
    if let (Some(rules), Some(place)) = (rules, place(conn, sink)?) {
        if entries.len() < limit {
            let after = hint.unwrap_or(0);
            let (log, reached) = log_pending(
                conn,
                rules,
                sink,
                &place,
                after,
                flushed,
                limit - entries.len(),
            )?;
            if log.is_empty() {
                nothing_until = Some(reached);
            }
            entries.extend(log);
        }
    }
    Ok(PendingRead {
        entries,
        nothing_until,
    })
}

/// Every event still to be sent from the log, for each sink that has a place in it: what moving
/// the store elsewhere must carry over as rows. Bodies are built with `rules`' links and policy.
pub fn log_backlog(conn: &Connection, rules: &OutboxRules) -> Result<Vec<OutboxEntry>, StoreError> {
    let sinks: Vec<String> = conn
        .prepare("SELECT sink FROM outbox_sinks WHERE cursor IS NOT NULL ORDER BY sink")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for sink in sinks {
        if let Some(place) = place(conn, &sink)? {
            let (log, _) = log_pending(
                conn,
                rules,
                &sink,
                &place,
                place.cursor,
                i64::MAX,
                usize::MAX,
            )?;
            out.extend(log);
        }
    }
    Ok(out)
}

/// How many events past its place in the log a sink wants, and the oldest one's time. Reads the
/// events, and their tasks' kind and agent only when the sink's filter asks about them; no body.
fn log_stats(conn: &Connection, place: &Place) -> Result<(u64, Option<i64>), StoreError> {
    let mut task = conn.prepare_cached("SELECT kind, agent FROM tasks WHERE id = ?1")?;
    let any_task = place.filter.agents.is_empty()
        && TaskKind::ALL.iter().all(|k| place.filter.kinds.contains(k));
    let (mut n, mut oldest) = (0u64, None::<i64>);
    scan_log(
        conn,
        place.cursor,
        i64::MAX,
        &place.filter,
        |ev, at_ms, t| {
            let wanted = any_task || {
                let of = task
                    .query_row([&ev.task_id], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                    })
                    .optional()?;
                of.is_some_and(|(kind, agent)| {
                    kind.parse::<TaskKind>()
                        .is_ok_and(|k| place.filter.wants(t, Some((k, agent.as_deref()))))
                })
            };
            if wanted {
                n += 1;
                oldest = Some(oldest.map_or(at_ms, |o| o.min(at_ms)));
            }
            Ok(true)
        },
    )?;
    Ok((n, oldest))
}

/// Pending and dead events per sink (rows and the log), for the sinks with any or with a last
/// error.
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
    let mut out = Vec::new();
    for row in rows {
        let mut st = row?;
        if let Some(place) = place(conn, &st.sink)? {
            let (n, oldest) = log_stats(conn, &place)?;
            st.pending += n;
            st.oldest_pending_ms = match (st.oldest_pending_ms, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if st.pending > 0 || st.dead > 0 || st.last_error.is_some() {
            out.push(st);
        }
    }
    Ok(out)
}

/// The waiting tasks as the approval policy reads them, with since when they wait and whether
/// they were warned; the two cuts of [`awaiting_approval`] follow.
macro_rules! awaiting_sql {
    () => {
        concat!(
            "SELECT t.id, t.kind, t.agent, t.expires_at, (SELECT max(e.at) FROM ",
            listed_events!("t"),
            " WHERE e.to_state = 'awaiting_approval' AND e.from_state != 'awaiting_approval'), \
             EXISTS (SELECT 1 FROM ",
            listed_events!("t"),
            " WHERE e.action = 'approval_warning') \
             FROM tasks t WHERE t.state = 'awaiting_approval'"
        )
    };
}
/// Those expiring by `?1`: a range of the state index.
pub(super) const AWAITING_EXPIRING: &str = concat!(awaiting_sql!(), " AND t.expires_at <= ?1");
/// Those expiring by `?1` or created by `?2`: the state index's part for `awaiting_approval`.
pub(super) const AWAITING_EXPIRING_OR_CREATED: &str = concat!(
    awaiting_sql!(),
    " AND (t.expires_at <= ?1 OR t.created_at <= ?2)"
);

/// Tasks waiting for approval that `cut` admits, with since when and whether they were warned:
/// the state index (a range of it when only the expiry bounds the cut), then the trajectory of
/// each task admitted, through the event numbers its row lists.
pub fn awaiting_approval(conn: &Connection, cut: AwaitingCut) -> Result<Vec<Awaiting>, StoreError> {
    let (mut stmt, bounds) = match cut.created_by_ms {
        None => (
            conn.prepare_cached(AWAITING_EXPIRING)?,
            vec![cut.expires_by_ms],
        ),
        Some(created_by) => (
            conn.prepare_cached(AWAITING_EXPIRING_OR_CREATED)?,
            vec![cut.expires_by_ms, created_by],
        ),
    };
    let rows = stmt.query_map(rusqlite::params_from_iter(bounds), |r| {
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

/// See [`crate::store::Backend::awaiting_since`]: the newest `limit` of the state index's part for
/// `awaiting_approval` (a bounded sort, materialised so that the lookups below are made for those
/// only), then the last entry of each through the event numbers its row lists. A task that never
/// entered the state through an event has no answer.
pub fn awaiting_since(conn: &Connection, limit: u32) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(concat!(
        "WITH newest AS MATERIALIZED ( \
           SELECT id, created_at, event_seqs FROM tasks INDEXED BY tasks_waiting_expires \
           WHERE state = 'awaiting_approval' AND harness = 0 \
           ORDER BY created_at DESC, id DESC LIMIT ?1) \
         SELECT n.id, (SELECT max(e.at) FROM ",
        listed_events!("n"),
        " WHERE e.to_state = 'awaiting_approval' AND e.from_state != 'awaiting_approval') \
         FROM newest n ORDER BY n.created_at DESC, n.id DESC"
    ))?;
    let rows = stmt.query_map([limit], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        if let (id, Some(since)) = row? {
            out.push((id, since));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::MAY_NOTIFY;
    use crate::store::outbox::{event_type, APPROVAL_TIMEOUT_ACTOR, APPROVAL_WARNING_ACTION};
    use orchestrator_proto::task::TaskState;

    /// Every event that causes a notification passes the SQL cut, or the log would skip it.
    #[test]
    fn every_notifying_event_passes_the_sql_cut() {
        use TaskState::*;
        let states = [
            Queued,
            Assigned,
            InProgress,
            AwaitingApproval,
            Done,
            Failed,
            Cancelled,
            Expired,
        ];
        let actions = [
            "submit",
            "route",
            "start",
            "complete",
            "approve",
            "reject",
            "fail",
            "cancel",
            "expire",
            "requeue",
            "defer",
            "retry",
            APPROVAL_WARNING_ACTION,
        ];
        let mut notifying = 0;
        for action in actions {
            for actor in ["alice", "sweeper", APPROVAL_TIMEOUT_ACTOR] {
                for from in std::iter::once(None).chain(states.iter().copied().map(Some)) {
                    for to in states {
                        if event_type(action, actor, from, to).is_none() {
                            continue;
                        }
                        notifying += 1;
                        let passes = MAY_NOTIFY.contains(&format!("'{}'", to.as_str()))
                            || (action == APPROVAL_WARNING_ACTION
                                && MAY_NOTIFY.contains(&format!("action = '{action}'")));
                        assert!(passes, "{action} by {actor}: {from:?} -> {to:?}");
                    }
                }
            }
        }
        assert!(notifying > 0);
    }
}
