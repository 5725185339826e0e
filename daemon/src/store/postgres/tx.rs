//! One write transaction and the effects it produced (trajectory events to publish, count changes).
//! Effects are published only if the transaction commits; a step rolled back to its savepoint
//! drops its effects too.

use super::pg_error;
use super::queries::{META_MODE, META_MODE_SINCE};
use super::rows::{task_from_row, TASK_COLUMNS};
use crate::clock::rfc3339;
use crate::machine::{next_state, Action};
use crate::store::OutboxRules;
use crate::store::{
    absorb, EventDraft, GateRunRecord, ModeChange, NewOverride, NewTask, Plan, Reclaim, Reclaimed,
    RowChange, StoreError, SubmitPlan, TransitionOp,
};
use orchestrator_proto::task::{Task, TaskKind, TaskState, TrajectoryEvent};
use orchestrator_proto::ErrorCode;
use std::collections::HashMap;
use std::sync::Arc;

pub(super) type Delta = (TaskKind, Option<TaskState>, Option<TaskState>);

pub(super) struct Tx<'c> {
    tx: deadpool_postgres::Transaction<'c>,
    /// The node this daemon is: the holder the leases it takes name.
    node: &'c str,
    events: Vec<TrajectoryEvent>,
    deltas: Vec<Delta>,
    /// The sinks' filters, when any sink is configured: outbox rows are written only then.
    outbox: Option<Arc<OutboxRules>>,
    /// Outbox rows written (or made pending again), to wake the delivery workers after the commit.
    outbox_rows: usize,
}

/// What a committed transaction did besides its statements, to publish.
pub(super) struct Effects {
    pub events: Vec<TrajectoryEvent>,
    pub deltas: Vec<Delta>,
    pub outbox_rows: usize,
}

/// Where a savepoint was taken: the effects recorded before it.
pub(super) struct Mark(usize, usize, usize);

fn sql_json<T: serde::Serialize>(v: &Option<T>) -> Result<Option<String>, StoreError> {
    match v {
        None => Ok(None),
        Some(v) => serde_json::to_string(v)
            .map(Some)
            .map_err(|e| StoreError::Sql(format!("encode: {e}"))),
    }
}

fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl<'c> Tx<'c> {
    pub(super) async fn begin(
        client: &'c mut deadpool_postgres::Object,
        outbox: Option<Arc<OutboxRules>>,
        node: &'c str,
    ) -> Result<Self, StoreError> {
        let tx = client.transaction().await.map_err(pg_error)?;
        Ok(Tx {
            tx,
            node,
            events: Vec::new(),
            deltas: Vec::new(),
            outbox: outbox.filter(|r| !r.sinks.is_empty()),
            outbox_rows: 0,
        })
    }

    pub(super) fn outbox_rules(&self) -> Option<Arc<OutboxRules>> {
        self.outbox.clone()
    }

    pub(super) fn note_outbox(&mut self, rows: usize) {
        self.outbox_rows += rows;
    }

    /// Write the count changes and commit; answers the effects to publish.
    pub(super) async fn commit(self) -> Result<Effects, StoreError> {
        let mut net: HashMap<(TaskKind, TaskState), i64> = HashMap::new();
        for (kind, from, to) in &self.deltas {
            if let Some(from) = from {
                *net.entry((*kind, *from)).or_default() -= 1;
            }
            if let Some(to) = to {
                *net.entry((*kind, *to)).or_default() += 1;
            }
        }
        net.retain(|_, n| *n != 0);
        if !net.is_empty() {
            let (mut kinds, mut states, mut ns) = (Vec::new(), Vec::new(), Vec::new());
            for ((k, s), n) in net {
                kinds.push(k.as_str());
                states.push(s.as_str());
                ns.push(n);
            }
            let stmt = self
                .tx
                .prepare_cached(
                    "INSERT INTO task_count_deltas (kind, state, n) \
                     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])",
                )
                .await
                .map_err(pg_error)?;
            self.tx
                .execute(&stmt, &[&kinds, &states, &ns])
                .await
                .map_err(pg_error)?;
        }
        // The other nodes learn of these events, and of outbox rows for the sinks (which the
        // leader's delivery sends, on whichever node it runs), when this commits (see `listen`).
        let outbox = (self.outbox_rows > 0).then(|| super::listen::outbox_payload(self.node));
        for payload in super::listen::payloads(self.node, &self.events)
            .into_iter()
            .chain(outbox)
        {
            let stmt = self
                .tx
                .prepare_cached("SELECT pg_notify($1, $2)")
                .await
                .map_err(pg_error)?;
            self.tx
                .execute(&stmt, &[&super::listen::CHANNEL, &payload])
                .await
                .map_err(pg_error)?;
        }
        self.tx.commit().await.map_err(pg_error)?;
        Ok(Effects {
            events: self.events,
            deltas: self.deltas,
            outbox_rows: self.outbox_rows,
        })
    }

    pub(super) async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let stmt = self.tx.prepare_cached(sql).await.map_err(pg_error)?;
        self.tx.execute(&stmt, params).await.map_err(pg_error)
    }

    pub(super) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let stmt = self.tx.prepare_cached(sql).await.map_err(pg_error)?;
        self.tx.query(&stmt, params).await.map_err(pg_error)
    }

    pub(super) async fn savepoint(&mut self) -> Result<Mark, StoreError> {
        self.tx
            .batch_execute("SAVEPOINT step")
            .await
            .map_err(pg_error)?;
        Ok(Mark(self.events.len(), self.deltas.len(), self.outbox_rows))
    }

    /// End the step begun at `mark`: kept if `ok`, else undone with its effects.
    pub(super) async fn settle(&mut self, mark: Mark, ok: bool) -> Result<(), StoreError> {
        if ok {
            self.tx
                .batch_execute("RELEASE SAVEPOINT step")
                .await
                .map_err(pg_error)
        } else {
            self.events.truncate(mark.0);
            self.deltas.truncate(mark.1);
            self.outbox_rows = mark.2;
            self.tx
                .batch_execute("ROLLBACK TO SAVEPOINT step; RELEASE SAVEPOINT step")
                .await
                .map_err(pg_error)
        }
    }

    pub(super) async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"),
                &[&id],
            )
            .await?;
        rows.first().map(task_from_row).transpose()
    }

    async fn insert_task(&mut self, t: NewTask, actor: &str) -> Result<Task, StoreError> {
        let caps = serde_json::to_string(&t.required_capabilities)
            .map_err(|e| StoreError::Sql(e.to_string()))?;
        self.exec(
            "INSERT INTO tasks (id, kind, state, goal, workspace_dir, required_caps, submitted_by, \
             harness, created_at, expires_at) VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9)",
            &[
                &t.id,
                &t.kind.as_str(),
                &t.goal,
                &t.workspace_dir,
                &caps,
                &t.submitted_by,
                &t.harness,
                &t.created_ms,
                &t.expires_ms,
            ],
        )
        .await?;
        self.append_event(EventDraft::submitted(&t, actor)).await?;
        // The row holds exactly what was just inserted: answer from memory rather than read it back.
        Ok(t.into_queued())
    }

    /// The event of a transition (or of an insert) whose row this write has just changed.
    pub(super) async fn append_event(&mut self, e: EventDraft<'_>) -> Result<(), StoreError> {
        self.insert_event(
            e,
            "INSERT INTO events (task_id, at, actor, action, from_state, to_state, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
        )
        .await
    }

    /// An event about a task that changes nothing, written only while the task is in the state
    /// it names (see `Backend::append_event`).
    pub(super) async fn append_event_in_state(
        &mut self,
        e: EventDraft<'_>,
    ) -> Result<(), StoreError> {
        self.insert_event(
            e,
            "INSERT INTO events (task_id, at, actor, action, from_state, to_state, details) \
             SELECT $1, $2, $3, $4, $5, $6, $7 \
             WHERE EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND state = $6) RETURNING seq",
        )
        .await
    }

    async fn insert_event(&mut self, e: EventDraft<'_>, sql: &str) -> Result<(), StoreError> {
        let details_json = sql_json(&e.details)?;
        let rows = self
            .query(
                sql,
                &[
                    &e.task_id,
                    &e.at_ms,
                    &e.actor,
                    &e.action,
                    &e.from.map(|s| s.as_str()),
                    &e.to.as_str(),
                    &details_json,
                ],
            )
            .await?;
        // No row: only the guarded insert writes none, for a task no longer in the state the event
        // names (see `Backend::append_event`).
        let Some(seq) = rows.first().map(|r| r.get::<_, i64>(0)) else {
            return Ok(());
        };
        let (at_ms, kind, from, to) = (e.at_ms, e.kind, e.from, e.to);
        let ev = e.published(seq.max(0) as u64);
        if self.outbox.is_some() {
            self.outbox_for_event(&ev, at_ms).await?;
        }
        self.events.push(ev);
        self.deltas.push((kind, from, Some(to)));
        Ok(())
    }

    pub(super) async fn transition(&mut self, op: &TransitionOp) -> Result<Task, StoreError> {
        self.apply(op).await?;
        self.get_task(&op.id)
            .await?
            .ok_or_else(|| StoreError::NotFound(op.id.clone()))
    }

    /// A transition read from the task's current state; answers the new state.
    pub(super) async fn apply(&mut self, op: &TransitionOp) -> Result<TaskState, StoreError> {
        let rows = self
            .query(
                "SELECT kind, state, expires_at FROM tasks WHERE id = $1",
                &[&op.id],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::NotFound(op.id.clone()))?;
        let kind: TaskKind = super::rows::parsed(row, 0)?;
        let from: TaskState = super::rows::parsed(row, 1)?;
        let expires_at: i64 = row.get(2);
        // The approval policy expires a waiting task at its own deadline, before the TTL.
        if op.action == Action::Expire
            && op.actor != crate::store::outbox::APPROVAL_TIMEOUT_ACTOR
            && expires_at > op.at_ms
            && next_state(from, op.action).is_ok()
        {
            return Err(StoreError::Rejected(
                ErrorCode::InvalidTransition,
                format!(
                    "task {} does not expire until {}",
                    op.id,
                    rfc3339(expires_at)
                ),
            ));
        }
        self.compare_and_set(op, kind, from).await
    }

    /// A transition from a state the caller already knows (a task this transaction inserted or
    /// moved); still a compare-and-set.
    pub(super) async fn apply_from(
        &mut self,
        op: &TransitionOp,
        kind: TaskKind,
        from: TaskState,
    ) -> Result<TaskState, StoreError> {
        if op.action == Action::Expire {
            // Expiry also depends on `expiresAt`, which only the full path reads.
            return self.apply(op).await;
        }
        self.compare_and_set(op, kind, from).await
    }

    pub(super) async fn submit(&mut self, plan: SubmitPlan) -> Result<Task, StoreError> {
        let SubmitPlan { task, actor, steps } = plan;
        let mut task = self.insert_task(task, &actor).await?;
        for op in &steps {
            let to = self.apply_from(op, task.kind, task.state).await?;
            absorb(&mut task, op, to);
        }
        Ok(task)
    }

    pub(super) async fn advance(&mut self, plan: &Plan) -> Result<TaskState, StoreError> {
        let mut state = plan.from;
        for op in &plan.steps {
            state = self.apply_from(op, plan.kind, state).await?;
        }
        Ok(state)
    }

    async fn compare_and_set(
        &mut self,
        op: &TransitionOp,
        kind: TaskKind,
        from: TaskState,
    ) -> Result<TaskState, StoreError> {
        let RowChange {
            to,
            assigned_at,
            started_at,
            completed_at,
            attempts_inc,
            lease: (lease_set, lease_val),
            pid: (pid_set, pid_val),
            not_before: (not_before_set, not_before_val),
            error_code,
        } = RowChange::of(op, from)?;
        let p = &op.patch;
        let changed = self
            .exec(
                "UPDATE tasks SET state = $2, \
                 routing = COALESCE($3, routing), agent = COALESCE($4, agent), \
                 result = COALESCE($5, result), rejection = COALESCE($6, rejection), \
                 error = COALESCE($7, error), error_code = COALESCE($8, error_code), \
                 would_require_approval = COALESCE($9, would_require_approval), \
                 assigned_at = COALESCE($10, assigned_at), started_at = COALESCE($11, started_at), \
                 completed_at = COALESCE($12, completed_at), \
                 lease_until = CASE WHEN $13 THEN $14 ELSE lease_until END, \
                 specialist_pid = CASE WHEN $15 THEN $16 ELSE specialist_pid END, \
                 attempts = attempts + $17, usage = COALESCE($19, usage), \
                 node = CASE WHEN $13 AND $14::BIGINT IS NOT NULL THEN $20 ELSE node END, \
                 not_before = CASE WHEN $22 THEN $23::BIGINT ELSE not_before END \
                 WHERE id = $1 AND state = $18 AND ($21::BIGINT IS NULL OR attempts = $21)",
                &[
                    &op.id,
                    &to.as_str(),
                    &sql_json(&p.routing)?,
                    &p.agent,
                    &sql_json(&p.result)?,
                    &sql_json(&p.rejection)?,
                    &sql_json(&p.error)?,
                    &error_code,
                    &p.would_require_approval,
                    &assigned_at,
                    &started_at,
                    &completed_at,
                    &lease_set,
                    &lease_val,
                    &pid_set,
                    &pid_val,
                    &attempts_inc,
                    &from.as_str(),
                    &sql_json(&p.usage)?,
                    &self.node,
                    &op.attempt.map(i64::from),
                    &not_before_set,
                    &not_before_val,
                ],
            )
            .await?;
        if changed != 1 {
            let rows = self
                .query("SELECT state FROM tasks WHERE id = $1", &[&op.id])
                .await?;
            let row = rows
                .first()
                .ok_or_else(|| StoreError::NotFound(op.id.clone()))?;
            return Err(StoreError::Refused {
                from: super::rows::parsed(row, 0)?,
                action: op.action.name(),
            });
        }
        self.append_event(EventDraft::of_op(op, kind, from, to))
            .await?;
        Ok(to)
    }

    // The sweeper. The candidate rows are locked as they are read and rows another daemon holds
    // are skipped, so two sweeps on one database never fight over a task.

    pub(super) async fn expire_due(
        &mut self,
        now: i64,
        limit: usize,
        actor: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self
            .query(
                "SELECT id FROM tasks WHERE state IN ('queued', 'assigned', 'awaiting_approval') \
                 AND expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&now, &limit_sql(limit)],
            )
            .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let mut done = Vec::with_capacity(ids.len());
        for id in ids {
            let op = TransitionOp::new(&id, Action::Expire, actor, now);
            let mark = self.savepoint().await?;
            let r = self.apply(&op).await;
            self.settle(mark, r.is_ok()).await?;
            match r {
                Ok(_) => done.push(id),
                // Moved on between the query and the transition: no longer ours to expire.
                Err(e) if e.is_refusal() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    pub(super) async fn reclaim_lapsed(&mut self, r: &Reclaim) -> Result<Reclaimed, StoreError> {
        let rows = self
            .query(
                "SELECT id, agent, attempts FROM tasks WHERE state = 'in_progress' \
                 AND (lease_until IS NULL OR lease_until < $1) LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&r.now, &limit_sql(r.limit)],
            )
            .await?;
        let rows: Vec<(String, Option<String>, i64)> = rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        let mut out = Reclaimed::default();
        for (id, agent, attempts) in rows {
            let op = r.op_for(&id, agent.as_deref(), attempts);
            let requeue = op.action == Action::Requeue;
            let mark = self.savepoint().await?;
            let res = self.apply(&op).await;
            self.settle(mark, res.is_ok()).await?;
            match res {
                Ok(_) if requeue => out.requeued.push(id),
                Ok(_) => out.failed.push(id),
                Err(StoreError::Refused { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub(super) async fn delete_tasks(&mut self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let rows = self
            .query(
                "DELETE FROM tasks WHERE id = ANY($1) \
                 AND state IN ('done', 'failed', 'cancelled', 'expired') RETURNING id, kind, state",
                &[&ids],
            )
            .await?;
        let gone: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        self.exec("DELETE FROM events WHERE task_id = ANY($1)", &[&gone])
            .await?;
        for row in &rows {
            let (kind, state): (&str, &str) = (row.get(1), row.get(2));
            if let Some((kind, state)) = super::parse_kind_state(kind, state) {
                self.deltas.push((kind, Some(state), None));
            }
        }
        // In the order asked for, as the SQLite backend answers.
        Ok(ids.iter().filter(|id| gone.contains(id)).cloned().collect())
    }

    pub(super) async fn renew_leases(
        &mut self,
        ids: &[String],
        until: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self
            .query(
                "UPDATE tasks SET lease_until = $2 WHERE id = ANY($1) AND state = 'in_progress' \
                 AND node = $3 RETURNING id",
                &[&ids, &until, &self.node],
            )
            .await?;
        let kept: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(ids
            .iter()
            .filter(|id| !kept.contains(id))
            .cloned()
            .collect())
    }

    pub(super) async fn void_leases(&mut self) -> Result<usize, StoreError> {
        let n = self
            .exec(
                "UPDATE tasks SET lease_until = NULL WHERE state = 'in_progress' \
                 AND (node = $1 OR node IS NULL)",
                &[&self.node],
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub(super) async fn set_specialist_pid(
        &mut self,
        id: &str,
        pgid: i32,
    ) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE tasks SET specialist_pid = $2 WHERE id = $1 AND state = 'in_progress' \
                 AND node = $3",
                &[&id, &i64::from(pgid), &self.node],
            )
            .await?;
        Ok(changed == 1)
    }

    pub(super) async fn record_gate_run(&mut self, g: &GateRunRecord) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO gate_runs (at, label, fingerprint, passed, total, report) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &g.at_ms,
                &g.label,
                &g.fingerprint,
                &i64::from(g.passed),
                &i64::from(g.total),
                &g.report,
            ],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn insert_override(&mut self, o: &NewOverride) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO overrides (mode, reason, by_user, uid, at) VALUES ($1, $2, $3, $4, $5)",
            &[
                &o.mode.as_str(),
                &o.reason,
                &o.by,
                &i64::from(o.uid),
                &o.at_ms,
            ],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn save_mode(&mut self, c: &ModeChange) -> Result<(), StoreError> {
        if let Some(id) = c.consume_override {
            let consumed = self
                .exec(
                    "UPDATE overrides SET consumed_at = $2 WHERE id = $1 AND consumed_at IS NULL",
                    &[&id, &c.since_ms],
                )
                .await?;
            if consumed == 0 {
                return Err(crate::store::override_used());
            }
        }
        self.set_meta(META_MODE, c.mode.as_str()).await?;
        self.set_meta(META_MODE_SINCE, &c.since_ms.to_string())
            .await
    }

    pub(super) async fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&key, &value],
        )
        .await?;
        Ok(())
    }
}
