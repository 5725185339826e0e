//! Write operations, run by the writer thread inside a group transaction.
//!
//! A [`Batch`] is the group's transaction plus the effects its jobs produced (trajectory events to
//! publish, count changes). Effects are published only if the group commits. A job runs either in
//! a savepoint of its own ([`Batch::savepoint`]: one that fails is rolled back to it together with
//! its effects) or bare ([`Batch::bare`]: for jobs that can only fail before their first write, or
//! because the store itself failed; one that fails after writing breaks the batch, and the writer
//! rolls back the whole transaction and answers every job that ran in it with the failure).

use super::rows::{task_from_row, TASK_COLUMNS};
use crate::clock::rfc3339;
use crate::machine::{next_state, Action};
use crate::store::outbox::OutboxRules;
use crate::store::{
    absorb, EventDraft, NewTask, Plan, RowChange, StoreError, SubmitPlan, TransitionOp,
};
use orchestrator_proto::task::{Rejection, Routing, TaskError, TaskResult};
use orchestrator_proto::task::{Task, TaskKind, TaskState, TrajectoryEvent};
use orchestrator_proto::ErrorCode;
use rusqlite::{params, OptionalExtension, Transaction};
use std::sync::{Arc, LazyLock};

pub(super) type Delta = (TaskKind, Option<TaskState>, Option<TaskState>);

pub struct Batch<'a> {
    tx: &'a Transaction<'a>,
    events: Vec<TrajectoryEvent>,
    deltas: Vec<Delta>,
    /// A job of this group failed because the disk is full.
    pub(super) saw_full: bool,
    /// The sinks' filters, when any sink is configured: delivery is woken only then.
    outbox: Option<Arc<OutboxRules>>,
    /// Events some sink wants, and outbox rows written (or made pending again), to wake the
    /// delivery workers after the commit.
    outbox_rows: usize,
    /// A job wrote rows of the `outbox` table or made rows pending again: delivery holds them
    /// back until the commit is flushed (`flush::Marks`). Not undone with a job that fails: the
    /// commit then only holds them back until its flush, for nothing.
    table_rows: bool,
    /// A job of this group is bulk work (the sweep's expiries and deletions): the integrity check
    /// gives way to it (see `integrity`).
    bulk: bool,
    /// How the running job is kept apart from the rest of the group; [`Batch::nested`] follows it.
    isolation: Isolation,
    /// Why the transaction cannot be committed: a bare job failed after it had changed rows, or the
    /// transaction itself is gone (SQLite rolls back a whole transaction on some I/O errors).
    pub(super) broken: Option<StoreError>,
    /// The sequence number the next event of this transaction gets (see [`Batch::take_seqs`]);
    /// read from the store when the first is taken.
    next_seq: Option<i64>,
}

/// How a job is kept apart from the rest of its group: see [`Batch::savepoint`] and
/// [`Batch::bare`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Isolation {
    Savepoint,
    Bare,
}

/// What a group's jobs did besides their statements, published once it commits.
pub(super) struct Effects {
    pub events: Vec<TrajectoryEvent>,
    pub deltas: Vec<Delta>,
    pub saw_full: bool,
    pub outbox_rows: usize,
    pub table_rows: bool,
    pub bulk: bool,
}

fn sql_json<T: serde::Serialize>(v: &Option<T>) -> Result<Option<String>, StoreError> {
    match v {
        None => Ok(None),
        Some(v) => serde_json::to_string(v)
            .map(Some)
            .map_err(|e| StoreError::Sql(format!("encode: {e}"))),
    }
}

impl<'a> Batch<'a> {
    pub(super) fn new(tx: &'a Transaction<'a>, outbox: Option<Arc<OutboxRules>>) -> Self {
        Batch {
            tx,
            events: Vec::new(),
            next_seq: None,
            deltas: Vec::new(),
            saw_full: false,
            outbox: outbox.filter(|r| !r.sinks.is_empty()),
            outbox_rows: 0,
            table_rows: false,
            bulk: false,
            isolation: Isolation::Savepoint,
            broken: None,
        }
    }

    pub(super) fn into_effects(self) -> Effects {
        Effects {
            events: self.events,
            deltas: self.deltas,
            saw_full: self.saw_full,
            outbox_rows: self.outbox_rows,
            table_rows: self.table_rows,
            bulk: self.bulk,
        }
    }

    /// This group does bulk work: see [`Batch::bulk`].
    pub(super) fn note_bulk(&mut self) {
        self.bulk = true;
    }

    /// Whether a job of this transaction did bulk work (which ends the transaction: see
    /// `run_transaction`).
    pub(super) fn is_bulk(&self) -> bool {
        self.bulk
    }

    pub(super) fn outbox_rules(&self) -> Option<Arc<OutboxRules>> {
        self.outbox.clone()
    }

    pub(super) fn outbox_rules_ref(&self) -> Option<&OutboxRules> {
        self.outbox.as_deref()
    }

    pub(super) fn note_outbox(&mut self, rows: usize) {
        self.outbox_rows += rows;
    }

    /// `rows` rows of the `outbox` table written or made pending again (see [`Batch::table_rows`]).
    pub(super) fn note_table_rows(&mut self, rows: usize) {
        self.note_outbox(rows);
        self.table_rows |= rows > 0;
    }

    /// The transaction, for the statements of this backend's other modules.
    pub(super) fn tx(&self) -> &Transaction<'a> {
        self.tx
    }

    /// Run a step of a job so that its failure leaves the rest of the job going on: in a nested
    /// savepoint inside a savepointed job, bare (with the same rule as the job) inside a bare one.
    pub fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Batch<'a>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.kept(self.isolation, f)
    }

    /// Run `f` kept apart from the rest of the group as `isolation` says.
    pub(super) fn kept<T>(
        &mut self,
        isolation: Isolation,
        f: impl FnOnce(&mut Batch<'a>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match isolation {
            Isolation::Savepoint => self.savepoint(f),
            Isolation::Bare => self.bare(f),
        }
    }

    /// Run `f` without a savepoint. A savepoint makes SQLite copy every page a job touches into its
    /// statement journal before changing it; for a group of small jobs that share the last pages of
    /// each table, that copying (and the journal's allocations) was an eighth of the daemon's CPU
    /// per submit (docs/BENCHMARKS.md, "Jobs without a savepoint").
    ///
    /// Only for jobs whose failures come before their first write (a compare-and-set that changes
    /// no row, a check) or from the store itself (a full disk, an I/O error). A failure that left
    /// nothing written is undone here with its effects, like a savepoint's; one that came after a
    /// change cannot be taken back alone and breaks the batch ([`Batch::broken`]). A job that
    /// panics fails in the same way.
    pub(super) fn bare<T>(
        &mut self,
        f: impl FnOnce(&mut Batch<'a>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mark = self.mark();
        let before = self.tx.total_changes();
        let ran = self.guarded(Isolation::Bare, f);
        if let Err(e) = &ran {
            self.saw_full |= matches!(e, StoreError::Full(_));
            if self.tx.total_changes() != before || self.tx.is_autocommit() {
                self.broken.get_or_insert_with(|| e.clone());
            } else {
                self.undo_effects(mark);
            }
        }
        ran
    }

    /// How many effects the batch holds now, for [`Batch::undo_effects`].
    fn mark(&self) -> (usize, usize, usize) {
        (self.events.len(), self.deltas.len(), self.outbox_rows)
    }

    /// Drop the effects recorded since `mark`: their statements were undone or never ran.
    fn undo_effects(&mut self, (events, deltas, outbox_rows): (usize, usize, usize)) {
        self.events.truncate(events);
        self.deltas.truncate(deltas);
        self.outbox_rows = outbox_rows;
    }

    /// Run `f` under `isolation` (which its nested steps follow), turning a panic into the job's
    /// error: the writer thread, and the rest of the group, go on.
    fn guarded<T>(
        &mut self,
        isolation: Isolation,
        f: impl FnOnce(&mut Batch<'a>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let outer = std::mem::replace(&mut self.isolation, isolation);
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        self.isolation = outer;
        ran.unwrap_or_else(|payload| {
            let why = crate::supervisor::panic_message(payload);
            tracing::error!(panic = %why, "a store job panicked; it fails and the writer goes on");
            Err(StoreError::Sql(format!("the store job panicked: {why}")))
        })
    }

    /// Run `f` in a savepoint: on error, its statements and effects are undone. A job that panics
    /// fails like one that returned an error: the writer thread, and the rest of the group, go on.
    pub(super) fn savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut Batch<'a>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mark = self.mark();
        // Prepared once per connection: every savepointed job of every group runs these.
        self.tx.prepare_cached("SAVEPOINT job")?.execute([])?;
        let ran = self.guarded(Isolation::Savepoint, f);
        let result = ran.and_then(|v| {
            self.tx.prepare_cached("RELEASE job")?.execute([])?;
            Ok(v)
        });
        if let Err(e) = &result {
            self.saw_full |= matches!(e, StoreError::Full(_));
            let _ = self.tx.execute_batch("ROLLBACK TO job; RELEASE job");
            self.undo_effects(mark);
            // SQLite ends the whole transaction on some I/O errors; the jobs before this one went
            // with it, and a statement run now would start a transaction of its own.
            if self.tx.is_autocommit() {
                self.broken.get_or_insert_with(|| e.clone());
            }
        }
        result
    }

    pub fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        static BY_ID: LazyLock<String> =
            LazyLock::new(|| format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"));
        let mut stmt = self.tx.prepare_cached(&BY_ID)?;
        Ok(stmt.query_row([id], task_from_row).optional()?)
    }

    pub fn insert_task(&mut self, t: NewTask, actor: &str) -> Result<Task, StoreError> {
        let caps = serde_json::to_string(&t.required_capabilities)
            .map_err(|e| StoreError::Sql(e.to_string()))?;
        let seq = self.take_seqs(1)?;
        self.tx
            .prepare_cached(
                "INSERT INTO tasks (id, kind, state, goal, workspace_dir, required_caps, submitted_by, harness, \
                 created_at, expires_at, event_seqs) \
                 VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, json_array(?10))",
            )?
            .execute(params![
                t.id,
                t.kind.as_str(),
                t.goal,
                t.workspace_dir,
                caps,
                t.submitted_by,
                t.harness as i64,
                t.created_ms,
                t.expires_ms,
                seq
            ])?;
        self.write_event(EventDraft::submitted(&t, actor), seq)?;
        // The row holds exactly what was just inserted: answer from memory rather than read it back.
        Ok(t.into_queued())
    }

    /// Take `n` sequence numbers for events about to be written; answers the first. The writer is
    /// the store's only writer, so it numbers the events itself: a task's row lists its events'
    /// numbers (`event_seqs`, migration 11 in `schema.rs`), and the change an event records writes
    /// that list in the same statement. Numbers are taken before that statement: one that then
    /// changes nothing (a refused compare-and-set) or a job rolled back leaves them unused, a gap,
    /// never a repeat (readers only ever order by them).
    pub(super) fn take_seqs(&mut self, n: usize) -> Result<i64, StoreError> {
        let first = match self.next_seq {
            Some(next) => next,
            // AUTOINCREMENT keeps the highest number the store ever gave in `sqlite_sequence`, so
            // a number is never given twice, even after the newest events were deleted.
            None => {
                let last: Option<i64> = self
                    .tx
                    .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'events'")?
                    .query_row([], |r| r.get(0))
                    .optional()?;
                last.unwrap_or(0) + 1
            }
        };
        self.next_seq = Some(first + n as i64);
        Ok(first)
    }

    /// Insert the event `e` as number `seq`, which the caller took and listed in the task's row,
    /// and record it.
    fn write_event(&mut self, e: EventDraft, seq: i64) -> Result<(), StoreError> {
        let details_json = sql_json(&e.details)?;
        self.tx.prepare_cached(EVENT_INSERT)?.execute(params![
            seq,
            e.task_id,
            e.at_ms,
            e.actor,
            e.action,
            e.from.map(|s| s.as_str()),
            e.to.as_str(),
            details_json
        ])?;
        let kind = e.kind;
        self.record_event(e.published(seq.max(0) as u64), kind)
    }

    /// An event about a task that changes nothing, written only while the task is in the state
    /// it names (see `Backend::append_event`).
    pub fn append_event_in_state(&mut self, e: EventDraft) -> Result<(), StoreError> {
        let seq = self.take_seqs(1)?;
        let listed = self
            .tx
            .prepare_cached(
                "UPDATE tasks SET event_seqs = json_insert(event_seqs, '$[#]', ?3) \
                 WHERE id = ?1 AND state = ?2",
            )?
            .execute(params![e.task_id, e.to.as_str(), seq])?;
        // None listed: the task is no longer in the state the event names (or is gone).
        if listed == 0 {
            return Ok(());
        }
        self.write_event(e, seq)
    }

    /// What a stored event of a task of `kind` leaves besides its row: its count change, the
    /// wake-up of delivery when a sink wants it, and the event to publish after the commit. A
    /// set-based statement that wrote several events records each with it (the sweep's expiries).
    pub(super) fn record_event(
        &mut self,
        ev: TrajectoryEvent,
        kind: TaskKind,
    ) -> Result<(), StoreError> {
        self.deltas.push((kind, ev.from, Some(ev.to)));
        self.publish(ev)
    }

    /// The stored event, published after the commit. The event log is this backend's outbox
    /// (`store/outbox.rs`): an event a sink may want costs only the note that wakes delivery.
    fn publish(&mut self, ev: TrajectoryEvent) -> Result<(), StoreError> {
        if self.outbox.is_some() {
            self.outbox_for_event(&ev);
        }
        self.events.push(ev);
        Ok(())
    }

    /// Apply one transition as a compare-and-set on the task's current state, with its trajectory
    /// event; answers the task after it.
    ///
    /// The compare-and-set moves the task from the one state the action can leave (approve and
    /// reject leave only `awaiting_approval`) or, for actions several states allow, from the state
    /// read just before; zero rows means the task is elsewhere (or missing), and the refusal names
    /// where. The row is then read back by its key. (An `UPDATE … RETURNING` would answer it in the
    /// same statement, but SQLite runs `RETURNING` as a trigger, and a statement with a trigger
    /// copies every page it touches into a statement journal first: docs/BENCHMARKS.md, "Jobs
    /// without a savepoint".)
    pub fn transition(&mut self, mut op: TransitionOp) -> Result<Task, StoreError> {
        if op.action == Action::Expire {
            // Expiry also checks `expiresAt`, which the full path reads as stored.
            self.apply(&op)?;
            return self
                .get_task(&op.id)?
                .ok_or_else(|| StoreError::NotFound(op.id.clone()));
        }
        let from = match sole_from(op.action) {
            Some(from) => from,
            None => self.current(&op.id)?.1,
        };
        let change = RowChange::of(&op, from)?;
        let to = change.to;
        let seq = self.take_seqs(1)?;
        let changed = self
            .tx
            .prepare_cached(CAS_UPDATE)?
            .execute(cas_params!(&op, change, from, seq))?;
        if changed != 1 {
            return Err(self.refusal(&op));
        }
        let task = self
            .get_task(&op.id)?
            .ok_or_else(|| StoreError::NotFound(op.id.clone()))?;
        // The op is spent here: its details move into the event rather than being copied.
        let details = op.details.take();
        self.write_event(
            EventDraft {
                details,
                ..EventDraft::of_op(&op, task.kind, from, to)
            },
            seq,
        )?;
        Ok(task)
    }

    /// A task's kind and state, or `NotFound`.
    fn current(&self, id: &str) -> Result<(TaskKind, TaskState), StoreError> {
        let row: Option<(String, String)> = self
            .tx
            .prepare_cached("SELECT kind, state FROM tasks WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (kind, state) = row.ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        Ok((
            kind.parse().map_err(StoreError::Sql)?,
            state.parse().map_err(StoreError::Sql)?,
        ))
    }

    /// Why a compare-and-set changed nothing: the task is in another state, or gone.
    fn refusal(&self, op: &TransitionOp) -> StoreError {
        match self.current(&op.id) {
            Ok((_, from)) => StoreError::Refused {
                from,
                action: op.action.name(),
            },
            Err(e) => e,
        }
    }

    /// [`Batch::transition`] without reading the task back; returns the new state.
    pub fn apply(&mut self, op: &TransitionOp) -> Result<TaskState, StoreError> {
        let current: Option<(String, String, i64)> = self
            .tx
            .prepare_cached("SELECT kind, state, expires_at FROM tasks WHERE id = ?1")?
            .query_row([&op.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let (kind, from, expires_at) =
            current.ok_or_else(|| StoreError::NotFound(op.id.clone()))?;
        let kind: TaskKind = kind.parse().map_err(StoreError::Sql)?;
        let from: TaskState = from.parse().map_err(StoreError::Sql)?;
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
        self.compare_and_set(op, kind, from)
    }

    /// A transition from a state the caller already knows — a task it inserted or moved earlier in
    /// this same job — saving the read of the current state. It is still a compare-and-set: if the
    /// task is not in `from`, nothing changes and the refusal names the state it is really in.
    pub fn apply_from(
        &mut self,
        op: &TransitionOp,
        kind: TaskKind,
        from: TaskState,
    ) -> Result<TaskState, StoreError> {
        if op.action == Action::Expire {
            // Expiry also depends on `expiresAt`, which only the full path reads.
            return self.apply(op);
        }
        self.compare_and_set(op, kind, from)
    }

    /// Insert the task and run the plan's steps; the answer is built from what was written.
    pub fn submit(&mut self, plan: SubmitPlan) -> Result<Task, StoreError> {
        self.submit_prepared(PreparedSubmit::new(plan)?)
    }

    /// A submit worked out by [`PreparedSubmit::new`]: the folded path only binds and runs its
    /// inserts here, numbering its events as the row lists them.
    pub fn submit_prepared(&mut self, prepared: PreparedSubmit) -> Result<Task, StoreError> {
        let f = match prepared {
            PreparedSubmit::Stepwise(plan) => return self.submit_stepwise(plan),
            PreparedSubmit::Folded(f) => f,
        };
        let Folded {
            task: t,
            state,
            caps,
            end,
            events,
            answer,
        } = *f;
        let first = self.take_seqs(events.len())?;
        let seqs = seq_list(first, events.len());
        self.tx
            .prepare_cached(
                "INSERT INTO tasks (id, kind, state, goal, workspace_dir, required_caps, submitted_by, \
                 harness, created_at, expires_at, routing, agent, result, rejection, error, error_code, \
                 would_require_approval, assigned_at, started_at, completed_at, lease_until, \
                 specialist_pid, attempts, event_seqs) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
                 ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
            )?
            .execute(params![
                t.id,
                t.kind.as_str(),
                state.as_str(),
                t.goal,
                t.workspace_dir,
                caps,
                t.submitted_by,
                t.harness as i64,
                t.created_ms,
                t.expires_ms,
                end.routing,
                end.agent,
                end.result,
                end.rejection,
                end.error,
                end.error_code,
                i64::from(end.would_require_approval),
                end.assigned_at,
                end.started_at,
                end.completed_at,
                end.lease_until,
                end.specialist_pid,
                end.attempts,
                seqs
            ])?;
        self.insert_events(&t.id, first, events)?;
        // One count change for the whole path: the counts only ever see where the task rests.
        self.deltas.push((t.kind, None, Some(state)));
        Ok(answer)
    }

    /// The general path: insert, then each step as a compare-and-set from the state the job knows.
    fn submit_stepwise(&mut self, plan: SubmitPlan) -> Result<Task, StoreError> {
        let SubmitPlan { task, actor, steps } = plan;
        let mut task = self.insert_task(task, &actor)?;
        for op in &steps {
            let to = self.apply_from(op, task.kind, task.state)?;
            absorb(&mut task, op, to);
        }
        Ok(task)
    }

    /// A task's events, in order, a statement each, numbered from `first` (taken by the caller) as
    /// its row lists them, and published with that number. One statement of several rows would be
    /// a multi-row write, for which SQLite copies every page it touches into a statement journal
    /// first (docs/BENCHMARKS.md, "Jobs without a savepoint"); a single-row insert needs none.
    fn insert_events(
        &mut self,
        task_id: &str,
        first: i64,
        rows: Vec<EventRow>,
    ) -> Result<(), StoreError> {
        let tx = self.tx;
        let mut stmt = tx.prepare_cached(EVENT_INSERT)?;
        for (seq, mut r) in (first..).zip(rows) {
            stmt.execute(params![
                seq,
                task_id,
                r.at_ms,
                r.event.actor,
                r.event.action,
                r.from,
                r.to,
                r.details
            ])?;
            r.event.seq = seq.max(0) as u64;
            self.publish(r.event)?;
        }
        Ok(())
    }

    /// Run a plan's steps on a stored task from the state the plan expects; answers the final state.
    pub fn advance(&mut self, plan: &Plan) -> Result<TaskState, StoreError> {
        let mut state = plan.from;
        for op in &plan.steps {
            state = self.apply_from(op, plan.kind, state)?;
        }
        Ok(state)
    }

    fn compare_and_set(
        &mut self,
        op: &TransitionOp,
        kind: TaskKind,
        from: TaskState,
    ) -> Result<TaskState, StoreError> {
        let change = RowChange::of(op, from)?;
        let to = change.to;
        let seq = self.take_seqs(1)?;
        let changed = self
            .tx
            .prepare_cached(CAS_UPDATE)?
            .execute(cas_params!(op, change, from, seq))?;
        if changed != 1 {
            return Err(self.refusal(op));
        }
        self.write_event(EventDraft::of_op(op, kind, from, to), seq)?;
        Ok(to)
    }

    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2")?
            .execute(params![key, value])?;
        Ok(())
    }

    /// Record a deletion of a task's rows in the counts (the caller deletes the rows).
    pub fn note_deleted(&mut self, kind: TaskKind, state: TaskState) {
        self.deltas.push((kind, Some(state), None));
    }
}

/// The compare-and-set of one transition: `?1` the task, `?18` the state it must be in, `?20` the
/// run it must still be in (or NULL, see [`TransitionOp::attempt`]), `?23` the number of the event
/// it writes, listed in the row; the parameters are [`cas_params`]'s.
const CAS_UPDATE: &str = "UPDATE tasks SET state = ?2, \
     routing = COALESCE(?3, routing), agent = COALESCE(?4, agent), result = COALESCE(?5, result), \
     rejection = COALESCE(?6, rejection), error = COALESCE(?7, error), \
     error_code = COALESCE(?8, error_code), \
     would_require_approval = COALESCE(?9, would_require_approval), \
     assigned_at = COALESCE(?10, assigned_at), started_at = COALESCE(?11, started_at), \
     completed_at = COALESCE(?12, completed_at), \
     lease_until = CASE WHEN ?13 THEN ?14 ELSE lease_until END, \
     specialist_pid = CASE WHEN ?15 THEN ?16 ELSE specialist_pid END, \
     attempts = attempts + ?17, usage = COALESCE(?19, usage), \
     not_before = CASE WHEN ?21 THEN ?22 ELSE not_before END, \
     event_seqs = json_insert(event_seqs, '$[#]', ?23) \
     WHERE id = ?1 AND state = ?18 AND (?20 IS NULL OR attempts = ?20)";

/// The parameters of [`CAS_UPDATE`] for `op` moving a task from `from` by `change`.
macro_rules! cas_params {
    ($op:expr, $change:expr, $from:expr, $seq:expr) => {{
        let (op, c): (&TransitionOp, &RowChange) = ($op, &$change);
        let p = &op.patch;
        params![
            op.id,
            c.to.as_str(),
            sql_json(&p.routing)?,
            p.agent,
            sql_json(&p.result)?,
            sql_json(&p.rejection)?,
            sql_json(&p.error)?,
            c.error_code,
            p.would_require_approval.map(i64::from),
            c.assigned_at,
            c.started_at,
            c.completed_at,
            c.lease.0,
            c.lease.1,
            c.pid.0,
            c.pid.1,
            c.attempts_inc,
            $from.as_str(),
            sql_json(&p.usage)?,
            op.attempt.map(i64::from),
            c.not_before.0,
            c.not_before.1,
            $seq
        ]
    }};
}
use cas_params;

/// The one state from which `action` moves a task, when there is only one (route, start,
/// complete, approve, reject): its compare-and-set needs no read of the state first.
fn sole_from(action: Action) -> Option<TaskState> {
    let mut from = TaskState::ALL
        .into_iter()
        .filter(|s| next_state(*s, action).is_ok());
    match (from.next(), from.next()) {
        (Some(s), None) => Some(s),
        _ => None,
    }
}

/// The statement `build` makes for `n` rows: from `usual` (the sizes built once, by index) when it
/// holds that size, else built now. A multi-row statement is otherwise formatted for every job.
pub(super) fn sized_sql(
    usual: &'static [String],
    n: usize,
    build: fn(usize) -> String,
) -> std::borrow::Cow<'static, str> {
    match usual.get(n) {
        Some(sql) => std::borrow::Cow::Borrowed(sql.as_str()),
        None => std::borrow::Cow::Owned(build(n)),
    }
}

/// The `INSERT` of one event, numbered by the writer (`?1`, see [`Batch::take_seqs`]).
const EVENT_INSERT: &str = "INSERT INTO events (seq, task_id, at, actor, action, from_state, \
                            to_state, details) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// The JSON array of `n` sequence numbers from `first` on, as a task's row lists them.
pub(super) fn seq_list(first: i64, n: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(2 + n * 12);
    out.push('[');
    for i in 0..n as i64 {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}", first + i);
    }
    out.push(']');
    out
}

/// A submit made ready for the writer by the caller's thread (see [`PreparedSubmit::new`]).
pub enum PreparedSubmit {
    /// Steps the folded path cannot take (an expiry, a step for another task, or none): inserted,
    /// then moved step by step on the writer.
    Stepwise(SubmitPlan),
    Folded(Box<Folded>),
}

/// A new task and its steps, folded into the row they leave and the events they write.
pub struct Folded {
    task: NewTask,
    state: TaskState,
    caps: String,
    end: EndCols,
    events: Vec<EventRow>,
    answer: Task,
}

impl PreparedSubmit {
    /// Work out what a submit writes before it reaches the writer thread: the state machine's
    /// checks of every step, the row they leave (its JSON columns encoded), the events as they
    /// will be published (times formatted, strings copied) and the answer. The writer then only
    /// binds and runs its inserts ([`Batch::submit_prepared`]).
    ///
    /// A task inserted by a job is seen by no other job until the group commits, so its steps
    /// cannot race: each is still checked by the state machine, but the row they lead to is
    /// inserted as it ends (one statement instead of an insert and a compare-and-set per step),
    /// then its events, a single-row insert each.
    pub fn new(plan: SubmitPlan) -> Result<PreparedSubmit, StoreError> {
        // Expiry reads `expiresAt` from the row; a step for another task is not this task's; the
        // folded row has no column for a run's usage or a retry's wait (no submit's steps set
        // them today), so a plan that sets one goes step by step rather than lose it.
        if plan.steps.is_empty()
            || plan.steps.iter().any(|op| {
                op.action == Action::Expire
                    || op.id != plan.task.id
                    || op.patch.usage.is_some()
                    || op.patch.not_before.is_some()
            })
        {
            return Ok(PreparedSubmit::Stepwise(plan));
        }
        let SubmitPlan { task, actor, steps } = plan;
        let mut end = EndRow::default();
        let mut path = Vec::with_capacity(steps.len());
        let mut state = TaskState::Queued;
        for op in &steps {
            let change = RowChange::of(op, state)?;
            let to = change.to;
            end.take(op, change);
            path.push((state, to));
            state = to;
        }
        let end = EndCols {
            routing: sql_json(&end.routing)?,
            agent: end.agent.map(str::to_string),
            result: sql_json(&end.result)?,
            rejection: sql_json(&end.rejection)?,
            error: sql_json(&end.error)?,
            error_code: end.error_code,
            would_require_approval: end.would_require_approval.unwrap_or(false),
            assigned_at: end.assigned_at,
            started_at: end.started_at,
            completed_at: end.completed_at,
            lease_until: end.lease_until,
            specialist_pid: end.specialist_pid,
            attempts: end.attempts,
        };
        let caps = serde_json::to_string(&task.required_capabilities)
            .map_err(|e| StoreError::Sql(e.to_string()))?;
        let mut events = Vec::with_capacity(steps.len() + 1);
        events.push(EventRow::new(EventDraft::submitted(&task, &actor))?);
        for (op, (from, to)) in steps.iter().zip(&path) {
            events.push(EventRow::new(EventDraft::of_op(op, task.kind, *from, *to))?);
        }
        let mut answer = task.clone().into_queued();
        for (op, (_, to)) in steps.iter().zip(path) {
            absorb(&mut answer, op, to);
        }
        Ok(PreparedSubmit::Folded(Box::new(Folded {
            task,
            state,
            caps,
            end,
            events,
            answer,
        })))
    }
}

/// The columns of [`EndRow`], encoded for the insert.
struct EndCols {
    routing: Option<String>,
    agent: Option<String>,
    result: Option<String>,
    rejection: Option<String>,
    error: Option<String>,
    error_code: Option<String>,
    would_require_approval: bool,
    assigned_at: Option<i64>,
    started_at: Option<i64>,
    completed_at: Option<i64>,
    lease_until: Option<i64>,
    specialist_pid: Option<i64>,
    attempts: i64,
}

/// One trajectory event of a submit, before it is stored: the event as it will be published
/// (its `seq` still 0) and what the insert binds besides.
struct EventRow {
    at_ms: i64,
    from: Option<&'static str>,
    to: &'static str,
    details: Option<String>,
    event: TrajectoryEvent,
}

impl EventRow {
    fn new(e: EventDraft) -> Result<EventRow, StoreError> {
        Ok(EventRow {
            at_ms: e.at_ms,
            from: e.from.map(|s| s.as_str()),
            to: e.to.as_str(),
            details: sql_json(&e.details)?,
            event: e.published(0),
        })
    }
}

/// The columns a plan's steps leave on a new task, folded as their compare-and-sets would write
/// them one after another: a field a step gives replaces the one before, the others stay.
#[derive(Default)]
struct EndRow<'p> {
    routing: Option<&'p Routing>,
    agent: Option<&'p str>,
    result: Option<&'p TaskResult>,
    rejection: Option<&'p Rejection>,
    error: Option<&'p TaskError>,
    error_code: Option<String>,
    would_require_approval: Option<bool>,
    assigned_at: Option<i64>,
    started_at: Option<i64>,
    completed_at: Option<i64>,
    lease_until: Option<i64>,
    specialist_pid: Option<i64>,
    attempts: i64,
}

impl<'p> EndRow<'p> {
    fn take(&mut self, op: &'p TransitionOp, c: RowChange) {
        let p = &op.patch;
        self.routing = p.routing.as_ref().or(self.routing);
        self.agent = p.agent.as_deref().or(self.agent);
        self.result = p.result.as_ref().or(self.result);
        self.rejection = p.rejection.as_ref().or(self.rejection);
        self.error = p.error.as_ref().or(self.error);
        self.error_code = c.error_code.or(self.error_code.take());
        self.would_require_approval = p.would_require_approval.or(self.would_require_approval);
        self.assigned_at = c.assigned_at.or(self.assigned_at);
        self.started_at = c.started_at.or(self.started_at);
        self.completed_at = c.completed_at.or(self.completed_at);
        if c.lease.0 {
            self.lease_until = c.lease.1;
        }
        if c.pid.0 {
            self.specialist_pid = c.pid.1;
        }
        self.attempts += c.attempts_inc;
    }
}
