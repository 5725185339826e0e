//! The writer's operations beyond single transitions: the sweeper's batches, leases, gate records,
//! overrides and the mode. Each runs inside a job of the group commit.

use super::batch::Batch;
use super::queries::{META_MODE, META_MODE_SINCE};
use super::schema::waiting_states;
use crate::machine::next_state;
use crate::machine::Action;
use crate::store::{
    EventDraft, GateRunRecord, ModeChange, NewOverride, Reclaim, Reclaimed, StoreError,
};
use orchestrator_proto::task::{TaskKind, TaskState};
use rusqlite::params;
use std::collections::HashSet;

// The sweeper's statements. Each is served by an index (tests check the query plans), so a batch
// costs the same whatever the size of the archive.

/// Stale-eligible tasks past `expiresAt`: tasks_waiting_expires(state, expires_at), one range per
/// state (the last term names the index's own condition, so that the planner may use it).
pub(super) const EXPIRE_DUE: &str = concat!(
    "SELECT rowid, id, kind, state FROM tasks \
     WHERE state IN ('queued', 'assigned', 'awaiting_approval') AND expires_at <= ?1 AND (",
    waiting_states!(),
    ") LIMIT ?2"
);
/// The compare-and-set of a batch of expiries that were all read in one state (`?3`), by rowid
/// (a JSON array): each row changes only if it is still in that state and due. What it writes is
/// what [`RowChange`](crate::store::RowChange) gives for `expire`: the state, `completed_at`, and
/// no lease or specialist pid. `+` keeps the planner on the rowids: the state index would walk
/// every task in that state. `OR FAIL`: a statement of many rows that may abort on a constraint
/// makes SQLite copy every page it touches into a statement journal first, to undo the statement
/// alone; none of these columns can fail one, and the job runs bare, so any failure takes its
/// whole transaction back anyway (docs/BENCHMARKS.md, "Jobs without a savepoint").
/// Each row lists the number its `expire` event will have: `?4` plus the row's place in `?2`.
pub(super) const EXPIRE_ROWS: &str =
    "UPDATE OR FAIL tasks SET state = 'expired', completed_at = ?1, \
     lease_until = NULL, specialist_pid = NULL, \
     event_seqs = json_insert(event_seqs, '$[#]', ?4 + due.key) \
     FROM json_each(?2) AS due \
     WHERE tasks.rowid = due.value AND +state = ?3 AND +expires_at <= ?1 \
     RETURNING id";
/// The trajectory events of a batch of expiries from one state: one per `[seq, task id]` pair of
/// the JSON array `?1`, numbered as the rows list them.
pub(super) const EXPIRE_EVENTS: &str =
    "INSERT INTO events (seq, task_id, at, actor, action, from_state, to_state, details) \
     SELECT value ->> 0, value ->> 1, ?2, ?3, 'expire', ?4, 'expired', NULL FROM json_each(?1)";
/// `in_progress` tasks whose lease lapsed: tasks_waiting_expires by its state prefix.
pub(super) const LAPSED: &str = "SELECT id, agent, attempts FROM tasks \
     WHERE state = 'in_progress' AND (lease_until IS NULL OR lease_until < ?1) LIMIT ?2";
/// Terminal tasks of a kind completed before a time, walked in the order of
/// tasks_terminal_completed(kind, completed_at) and its rowid, after a cursor.
pub(super) const RETIRED: &str = "SELECT id, completed_at, rowid FROM tasks \
     WHERE kind = ?1 AND completed_at IS NOT NULL AND completed_at < ?2 \
     AND (completed_at, rowid) > (?3, ?4) ORDER BY completed_at, rowid LIMIT ?5";
/// A batch of tasks by id (a JSON array), terminal ones only. `+state` keeps the planner on the
/// primary key whatever indexes hold the state.
pub(super) const DELETE_TASKS: &str =
    "DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?1)) \
     AND +state IN ('done', 'failed', 'cancelled', 'expired') RETURNING id, kind, state, event_seqs";
/// The trajectories of a batch of deleted tasks: their events by number, `?1` a JSON array of the
/// rows' `event_seqs` lists, each as its text.
pub(super) const DELETE_EVENTS: &str = "DELETE FROM events WHERE seq IN \
     (SELECT seqs.value FROM json_each(?1) AS lists, json_each(lists.value) AS seqs)";

/// A due task as read: rowid, id, kind.
type DueRow = (i64, String, TaskKind);

/// A text column read in place.
fn column_text<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r str, StoreError> {
    r.get_ref(i)?
        .as_str()
        .map_err(|e| StoreError::Sql(format!("column {i}: {e}")))
}

pub(super) fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Sql(format!("encode: {e}")))
}

impl Batch<'_> {
    /// Expire up to `limit` due tasks in a few set-based statements: for each state the due tasks
    /// were read in, one compare-and-set `UPDATE` of all of them and one insert of all their
    /// events (see docs/BENCHMARKS.md, "The sweep at 1,000,000 tasks"). Each task still moves only
    /// from the state it was read in, gets exactly one `expire` event, and its outbox rows when a
    /// sink wants them, as a single [`Batch::apply`] would write them.
    pub fn expire_due(
        &mut self,
        now: i64,
        limit: usize,
        actor: &str,
    ) -> Result<Vec<String>, StoreError> {
        // (rowid, id, kind) by the state they were read in.
        let mut by_state: Vec<(TaskState, Vec<DueRow>)> = Vec::new();
        {
            let mut stmt = self.tx().prepare_cached(EXPIRE_DUE)?;
            let mut rows = stmt.query(params![now, limit_sql(limit)])?;
            while let Some(r) = rows.next()? {
                let kind: TaskKind = column_text(r, 2)?.parse().map_err(StoreError::Sql)?;
                let state: TaskState = column_text(r, 3)?.parse().map_err(StoreError::Sql)?;
                let row = (r.get(0)?, r.get(1)?, kind);
                match by_state.iter_mut().find(|(s, _)| *s == state) {
                    Some((_, v)) => v.push(row),
                    None => by_state.push((state, vec![row])),
                }
            }
        }
        let mut done = Vec::with_capacity(limit.min(4096));
        for (from, rows) in by_state {
            // The state machine decides, as for a single transition.
            if next_state(from, Action::Expire).ok() != Some(TaskState::Expired) {
                continue;
            }
            let rowids: Vec<i64> = rows.iter().map(|(rowid, _, _)| *rowid).collect();
            // The n-th row read gets event number `first + n`; one that moved on meanwhile leaves
            // its number unused.
            let first = self.take_seqs(rowids.len())?;
            let changed: HashSet<String> = {
                let mut stmt = self.tx().prepare_cached(EXPIRE_ROWS)?;
                let ids = stmt
                    .query_map(params![now, encode(&rowids)?, from.as_str(), first], |r| {
                        r.get::<_, String>(0)
                    })?;
                ids.collect::<Result<_, _>>()?
            };
            // In the order they were read; a task that moved on meanwhile is no longer ours.
            let moved: Vec<(i64, String, TaskKind)> = (first..)
                .zip(rows)
                .filter(|(_, (_, id, _))| changed.contains(id))
                .map(|(seq, (_, id, kind))| (seq, id, kind))
                .collect();
            if moved.is_empty() {
                continue;
            }
            let pairs: Vec<(i64, &str)> = moved
                .iter()
                .map(|(seq, id, _)| (*seq, id.as_str()))
                .collect();
            let written = self.tx().prepare_cached(EXPIRE_EVENTS)?.execute(params![
                encode(&pairs)?,
                now,
                actor,
                from.as_str()
            ])?;
            if written != moved.len() {
                return Err(StoreError::Sql(format!(
                    "expiry wrote {written} events for {} tasks",
                    moved.len()
                )));
            }
            for (seq, id, kind) in moved {
                let ev = EventDraft {
                    task_id: &id,
                    kind,
                    at_ms: now,
                    actor,
                    action: Action::Expire.name(),
                    from: Some(from),
                    to: TaskState::Expired,
                    details: None,
                };
                self.record_event(ev.published(seq.max(0) as u64), kind)?;
                done.push(id);
            }
        }
        // Bulk work only when it wrote something: an empty sweep is no reason for the check to
        // give way.
        if !done.is_empty() {
            self.note_bulk();
        }
        Ok(done)
    }

    pub fn reclaim_lapsed(&mut self, r: &Reclaim) -> Result<Reclaimed, StoreError> {
        let rows: Vec<(String, Option<String>, i64)> = {
            let mut stmt = self.tx().prepare_cached(LAPSED)?;
            let rows = stmt.query_map(params![r.now, limit_sql(r.limit)], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Reclaimed::default();
        for (id, agent, attempts) in rows {
            let op = r.op_for(&id, agent.as_deref(), attempts);
            let requeue = op.action == Action::Requeue;
            match self.nested(|b| b.apply(&op)) {
                Ok(_) if requeue => out.requeued.push(id),
                Ok(_) => out.failed.push(id),
                Err(StoreError::Refused { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub fn delete_tasks(&mut self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let wanted = encode(&ids)?;
        let mut lists = Vec::new();
        let deleted: Vec<(String, String, String)> = {
            let mut stmt = self.tx().prepare_cached(DELETE_TASKS)?;
            let mut rows = stmt.query([&wanted])?;
            let mut deleted = Vec::new();
            while let Some(r) = rows.next()? {
                deleted.push((r.get(0)?, r.get(1)?, r.get(2)?));
                lists.push(r.get::<_, String>(3)?);
            }
            deleted
        };
        self.tx()
            .prepare_cached(DELETE_EVENTS)?
            .execute([&encode(&lists)?])?;
        let mut ids = Vec::with_capacity(deleted.len());
        for (id, kind, state) in deleted {
            if let (Ok(kind), Ok(state)) = (kind.parse::<TaskKind>(), state.parse::<TaskState>()) {
                self.note_deleted(kind, state);
            }
            ids.push(id);
        }
        if !ids.is_empty() {
            self.note_bulk();
        }
        Ok(ids)
    }

    pub fn renew_leases(&mut self, ids: &[String], until: i64) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.tx().prepare_cached(
            "UPDATE tasks SET lease_until = ?2 WHERE id = ?1 AND state = 'in_progress'",
        )?;
        let mut lost = Vec::new();
        for id in ids {
            if stmt.execute(params![id, until])? == 0 {
                lost.push(id.clone());
            }
        }
        Ok(lost)
    }

    pub fn void_leases(&mut self) -> Result<usize, StoreError> {
        Ok(self.tx().execute(
            "UPDATE tasks SET lease_until = NULL WHERE state = 'in_progress'",
            [],
        )?)
    }

    pub fn set_specialist_pid(&mut self, id: &str, pgid: i32) -> Result<bool, StoreError> {
        let changed = self
            .tx()
            .prepare_cached(
                "UPDATE tasks SET specialist_pid = ?2 WHERE id = ?1 AND state = 'in_progress'",
            )?
            .execute(params![id, pgid])?;
        Ok(changed == 1)
    }

    pub fn record_gate_run(&mut self, g: &GateRunRecord) -> Result<(), StoreError> {
        self.tx()
            .prepare_cached(
                "INSERT INTO gate_runs (at, label, fingerprint, passed, total, report) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                g.at_ms,
                g.label,
                g.fingerprint,
                g.passed,
                g.total,
                g.report
            ])?;
        Ok(())
    }

    pub fn insert_override(&mut self, o: &NewOverride) -> Result<(), StoreError> {
        self.tx()
            .prepare_cached(
                "INSERT INTO overrides (mode, reason, by_user, uid, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![o.mode.as_str(), o.reason, o.by, o.uid, o.at_ms])?;
        Ok(())
    }

    pub fn save_mode(&mut self, c: &ModeChange) -> Result<(), StoreError> {
        if let Some(id) = c.consume_override {
            let consumed = self.tx().execute(
                "UPDATE overrides SET consumed_at = ?2 WHERE id = ?1 AND consumed_at IS NULL",
                params![id, c.since_ms],
            )?;
            if consumed == 0 {
                return Err(crate::store::override_used());
            }
        }
        self.set_meta(META_MODE, c.mode.as_str())?;
        self.set_meta(META_MODE_SINCE, &c.since_ms.to_string())
    }
}
