//! The writer's operations beyond single transitions: the sweeper's batches, leases, gate records,
//! overrides and the mode. Each runs inside a job of the group commit.

use super::batch::Batch;
use super::queries::{META_MODE, META_MODE_SINCE};
use crate::machine::Action;
use crate::store::{
    GateRunRecord, ModeChange, NewOverride, Reclaim, Reclaimed, StoreError, TransitionOp,
};
use orchestrator_proto::task::{TaskKind, TaskState};
use rusqlite::params;

// The sweeper's statements. Each is served by an index (tests check the query plans), so a batch
// costs the same whatever the size of the archive.

/// Stale-eligible tasks past `expiresAt`: tasks_state_expires(state, expires_at), one range per state.
pub(super) const EXPIRE_DUE: &str = "SELECT id FROM tasks \
     WHERE state IN ('queued', 'assigned', 'awaiting_approval') AND expires_at <= ?1 LIMIT ?2";
/// `in_progress` tasks whose lease lapsed: tasks_state_expires by its state prefix.
pub(super) const LAPSED: &str = "SELECT id, agent, attempts FROM tasks \
     WHERE state = 'in_progress' AND (lease_until IS NULL OR lease_until < ?1) LIMIT ?2";
/// Terminal tasks of a kind completed before a time, walked in the order of
/// tasks_terminal_completed(kind, completed_at) and its rowid, after a cursor.
pub(super) const RETIRED: &str = "SELECT id, completed_at, rowid FROM tasks \
     WHERE kind = ?1 AND completed_at IS NOT NULL AND completed_at < ?2 \
     AND (completed_at, rowid) > (?3, ?4) ORDER BY completed_at, rowid LIMIT ?5";
/// A batch of tasks by id (a JSON array), terminal ones only. `+state` keeps the planner on the
/// primary key: the state index would walk every task in those states.
pub(super) const DELETE_TASKS: &str =
    "DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?1)) \
     AND +state IN ('done', 'failed', 'cancelled', 'expired') RETURNING id, kind, state";
/// The trajectory of a batch of tasks: events_task(task_id, seq).
pub(super) const DELETE_EVENTS: &str =
    "DELETE FROM events WHERE task_id IN (SELECT value FROM json_each(?1))";

pub(super) fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Sql(format!("encode: {e}")))
}

impl Batch<'_> {
    pub fn expire_due(
        &mut self,
        now: i64,
        limit: usize,
        actor: &str,
    ) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = {
            let mut stmt = self.tx().prepare_cached(EXPIRE_DUE)?;
            let rows = stmt.query_map(params![now, limit_sql(limit)], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut done = Vec::with_capacity(ids.len());
        for id in ids {
            let op = TransitionOp::new(&id, Action::Expire, actor, now);
            match self.nested(|b| b.apply(&op)) {
                Ok(_) => done.push(id),
                // Moved on between the query and the transition: no longer ours to expire.
                Err(e) if e.is_refusal() => {}
                Err(e) => return Err(e),
            }
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
        let deleted: Vec<(String, String, String)> = {
            let mut stmt = self.tx().prepare_cached(DELETE_TASKS)?;
            let rows = stmt.query_map([&wanted], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let gone: Vec<&str> = deleted.iter().map(|(id, _, _)| id.as_str()).collect();
        let gone = encode(&gone)?;
        self.tx().prepare_cached(DELETE_EVENTS)?.execute([&gone])?;
        let mut ids = Vec::with_capacity(deleted.len());
        for (id, kind, state) in deleted {
            if let (Ok(kind), Ok(state)) = (kind.parse::<TaskKind>(), state.parse::<TaskState>()) {
                self.note_deleted(kind, state);
            }
            ids.push(id);
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
            self.tx().execute(
                "UPDATE overrides SET consumed_at = ?2 WHERE id = ?1",
                params![id, c.since_ms],
            )?;
        }
        self.set_meta(META_MODE, c.mode.as_str())?;
        self.set_meta(META_MODE_SINCE, &c.since_ms.to_string())
    }
}
