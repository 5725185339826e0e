//! [`Backend`] for [`SqliteBackend`]: every write is one job of the group commit, every read one
//! call on a pooled read connection.

use super::batch::Isolation;
use super::{outbox, queries, SqliteBackend};
use crate::store::{
    Awaiting, AwaitingCut, EventDraft, Notice, OutboxEntry, OutboxKey, OutboxRules, OutboxStats,
};
use crate::store::{
    Backend, BudgetLift, Counts, GateRunRecord, Health, Leftover, ModeChange, NewEvent,
    NewOverride, Outcomes, PendingTask, Plan, Reclaim, Reclaimed, Retired, RetiredCursor,
    ShadowTally, StoreFuture, StoredMode, StoredPause, SubmitPlan, TaskFilter, TransitionOp,
    UsageRow,
};
use orchestrator_proto::message::{GateRunSummary, OverrideRecord};
use orchestrator_proto::task::{Mode, Task, TaskKind, TaskState, TrajectoryEvent};
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

impl Backend for SqliteBackend {
    fn submit(&self, plan: SubmitPlan) -> StoreFuture<'_, Task> {
        // Worked out on the caller's thread: the writer only binds and runs the statements.
        Box::pin(async move {
            let prepared = super::batch::PreparedSubmit::new(plan)?;
            match prepared {
                // Two inserts of a task no one else can see yet: nothing to refuse after writing.
                folded @ super::batch::PreparedSubmit::Folded(_) => {
                    self.write_kept(Isolation::Bare, move |b| b.submit_prepared(folded))
                        .await
                }
                // Steps may name another task, whose compare-and-set can refuse after the insert.
                stepwise => self.write(move |b| b.submit_prepared(stepwise)).await,
            }
        })
    }

    fn advance(&self, plans: Vec<Plan>) -> StoreFuture<'_, Outcomes<TaskState>> {
        Box::pin(self.write(move |b| {
            let mut out = Vec::with_capacity(plans.len());
            for plan in &plans {
                // One plan's refusal (its task moved on meanwhile) must not undo the others.
                match b.nested(|b| b.advance(plan)) {
                    Err(e) if !e.is_refusal() => return Err(e),
                    r => out.push(r),
                }
            }
            Ok(out)
        }))
    }

    // A transition refuses before it writes (its compare-and-set changes no row), so it runs bare;
    // a batch of them gives each its own bare step.
    fn transition(&self, op: TransitionOp) -> StoreFuture<'_, Task> {
        Box::pin(self.write_kept(Isolation::Bare, move |b| b.transition(op)))
    }

    fn transitions(&self, ops: Vec<TransitionOp>) -> StoreFuture<'_, Outcomes<Task>> {
        Box::pin(self.write_kept(Isolation::Bare, move |b| {
            let mut out = Vec::with_capacity(ops.len());
            for op in ops {
                match b.nested(|b| b.transition(op)) {
                    Err(e) if !e.is_refusal() => return Err(e),
                    r => out.push(r),
                }
            }
            Ok(out)
        }))
    }

    fn append_event(&self, e: NewEvent) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |b| b.append_event_in_state(EventDraft::of_new(&e))))
    }

    fn probe(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.write(|_| Ok(())))
    }

    fn writer_ended(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + '_>> {
        Box::pin(SqliteBackend::writer_ended(self))
    }

    fn get_task<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Task>> {
        let id = id.to_string();
        Box::pin(self.read(move |c| queries::get_task(c, &id)))
    }

    fn task_detail<'a>(
        &'a self,
        id: &'a str,
    ) -> StoreFuture<'a, Option<(Task, Vec<TrajectoryEvent>)>> {
        let id = id.to_string();
        // One read transaction: the row and its trajectory as of the same commit.
        Box::pin(self.read(move |c| {
            let snapshot = c.unchecked_transaction()?;
            match queries::get_task(&snapshot, &id)? {
                Some(task) => Ok(Some((task, queries::events_of(&snapshot, &id)?))),
                None => Ok(None),
            }
        }))
    }

    fn transitions_of<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Vec<TrajectoryEvent>> {
        let id = id.to_string();
        Box::pin(self.read(move |c| queries::events_of(c, &id)))
    }

    fn list_tasks(&self, filter: TaskFilter) -> StoreFuture<'_, Vec<Task>> {
        Box::pin(self.read(move |c| queries::list_tasks(c, &filter)))
    }

    fn pending_dispatch(&self) -> StoreFuture<'_, Vec<PendingTask>> {
        Box::pin(self.read(queries::pending_dispatch))
    }

    fn undelivered_since<'a>(
        &'a self,
        since_ms: i64,
        action: &'a str,
    ) -> StoreFuture<'a, Vec<Task>> {
        let action = action.to_string();
        Box::pin(self.read(move |c| queries::undelivered_since(c, since_ms, &action)))
    }

    fn expire_due<'a>(
        &'a self,
        now: i64,
        limit: usize,
        actor: &'a str,
    ) -> StoreFuture<'a, Vec<String>> {
        let actor = actor.to_string();
        // Its checks come before its writes; after them only the store itself can fail.
        Box::pin(self.write_kept(Isolation::Bare, move |b| b.expire_due(now, limit, &actor)))
    }

    fn reclaim_lapsed(&self, reclaim: Reclaim) -> StoreFuture<'_, Reclaimed> {
        Box::pin(self.write(move |b| b.reclaim_lapsed(&reclaim)))
    }

    fn retired(
        &self,
        kind: TaskKind,
        before: i64,
        after: Option<RetiredCursor>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Retired>> {
        Box::pin(self.read(move |c| queries::retired(c, kind, before, after, limit)))
    }

    fn delete_tasks(&self, ids: Vec<String>) -> StoreFuture<'_, Vec<String>> {
        Box::pin(self.write(move |b| b.delete_tasks(&ids)))
    }

    fn renew_leases(&self, ids: Vec<String>, until: i64) -> StoreFuture<'_, Vec<String>> {
        Box::pin(self.write(move |b| b.renew_leases(&ids, until)))
    }

    fn void_leases(&self) -> StoreFuture<'_, usize> {
        Box::pin(self.write(|b| b.void_leases()))
    }

    fn set_specialist_pid<'a>(&'a self, id: &'a str, pgid: i32) -> StoreFuture<'a, bool> {
        let id = id.to_string();
        Box::pin(self.write(move |b| b.set_specialist_pid(&id, pgid)))
    }

    fn orphan_leftovers(&self) -> StoreFuture<'_, Vec<Leftover>> {
        Box::pin(self.read(queries::orphan_leftovers))
    }

    fn record_gate_run(&self, run: GateRunRecord) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |b| b.record_gate_run(&run)))
    }

    fn latest_gate_run(&self) -> StoreFuture<'_, Option<GateRunSummary>> {
        Box::pin(self.read(queries::latest_gate_run))
    }

    fn gate_runs(&self, limit: usize) -> StoreFuture<'_, Vec<GateRunSummary>> {
        Box::pin(self.read(move |c| queries::gate_runs(c, limit)))
    }

    fn gate_passed_for<'a>(&'a self, fingerprint: &'a str) -> StoreFuture<'a, bool> {
        let fingerprint = fingerprint.to_string();
        Box::pin(self.read(move |c| queries::gate_passed_for(c, &fingerprint)))
    }

    fn insert_override(&self, o: NewOverride) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |b| b.insert_override(&o)))
    }

    fn pending_override(&self, mode: Mode) -> StoreFuture<'_, Option<(i64, OverrideRecord)>> {
        Box::pin(self.read(move |c| queries::pending_override(c, mode)))
    }

    fn pending_overrides(&self) -> StoreFuture<'_, Vec<OverrideRecord>> {
        Box::pin(self.read(queries::pending_overrides))
    }

    fn load_mode(&self) -> StoreFuture<'_, Option<StoredMode>> {
        Box::pin(self.read(queries::load_mode))
    }

    fn save_mode(&self, change: ModeChange) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |b| b.save_mode(&change)))
    }

    fn shadow_tallies(
        &self,
        from_ms: i64,
        until_ms: i64,
        bucket_ms: i64,
    ) -> StoreFuture<'_, Vec<(i64, ShadowTally)>> {
        Box::pin(self.read(move |c| queries::shadow_tallies(c, from_ms, until_ms, bucket_ms)))
    }

    fn set_outbox_rules(&self, rules: OutboxRules) {
        let rules = Arc::new(rules);
        let installed = Arc::clone(&rules);
        // Queued before the rules take effect, so each sink's place is set before any event the
        // new rules wake delivery for.
        self.write_later("the sinks' places in the event log", move |b| {
            b.outbox_install(&installed)
        });
        let writer = self.outbox_writer();
        if let Ok(mut r) = writer.rules.write() {
            *r = Some(rules);
        }
        // After the swap: a read that sees this count also sees these rules.
        if let Ok(mut hints) = writer.nothing_until.lock() {
            writer
                .rules_installed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            hints.clear();
        }
    }

    fn outbox_signal(&self) -> watch::Receiver<u64> {
        self.outbox_writer().written.subscribe()
    }

    fn enqueue_notice(&self, notice: Notice) -> StoreFuture<'_, usize> {
        let rules = self
            .outbox_writer()
            .rules
            .read()
            .ok()
            .and_then(|r| r.clone());
        if !notice.wanted(rules.as_deref()) {
            return Box::pin(async { Ok(0) });
        }
        Box::pin(self.write(move |b| b.enqueue_notice(&notice)))
    }

    fn outbox_pending<'a>(
        &'a self,
        sink: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<OutboxEntry>> {
        let sink = sink.to_string();
        let writer = self.outbox_writer();
        let installed = writer
            .rules_installed
            .load(std::sync::atomic::Ordering::SeqCst);
        let rules = writer.rules.read().ok().and_then(|r| r.clone());
        let hint = writer
            .nothing_until
            .lock()
            .ok()
            .and_then(|h| h.get(&sink).copied());
        let flushed = writer.marks.events();
        let shared = Arc::clone(&self.inner.outbox);
        Box::pin(async move {
            let (name, read) = self
                .read(move |c| {
                    let rules = rules.as_deref();
                    let rows_flushed = || shared.marks.rows_flushed();
                    let read = outbox::outbox_pending(
                        c,
                        rules,
                        hint,
                        flushed,
                        rows_flushed,
                        &sink,
                        limit,
                    )?;
                    Ok((sink, read))
                })
                .await?;
            if let Some(until) = read.nothing_until {
                let writer = self.outbox_writer();
                if let Ok(mut hints) = writer.nothing_until.lock() {
                    // Rules installed since the read began may want what it passed over.
                    let now = writer
                        .rules_installed
                        .load(std::sync::atomic::Ordering::SeqCst);
                    if now == installed {
                        hints.insert(name, until);
                    }
                }
            }
            Ok(read.entries)
        })
    }

    fn mark_delivered(&self, keys: Vec<OutboxKey>) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |b| b.outbox_delivered(&keys)))
    }

    fn mark_attempt_failed(&self, key: OutboxKey, error: String) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |b| b.outbox_attempt_failed(&key, &error)))
    }

    fn mark_dead(
        &self,
        entries: Vec<OutboxEntry>,
        at_ms: i64,
        alarm: Option<Notice>,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |b| b.outbox_dead(&entries, at_ms, alarm.as_ref())))
    }

    fn retry_dead<'a>(&'a self, sink: &'a str, now_ms: i64) -> StoreFuture<'a, u64> {
        let sink = sink.to_string();
        Box::pin(self.write(move |b| b.outbox_retry_dead(&sink, now_ms)))
    }

    fn outbox_stats(&self) -> StoreFuture<'_, Vec<OutboxStats>> {
        Box::pin(self.read(outbox::outbox_stats))
    }

    fn awaiting_approval(&self, cut: AwaitingCut) -> StoreFuture<'_, Vec<Awaiting>> {
        Box::pin(self.read(move |c| outbox::awaiting_approval(c, cut)))
    }

    fn awaiting_since(&self, limit: u32) -> StoreFuture<'_, Vec<(String, i64)>> {
        Box::pin(self.read(move |c| outbox::awaiting_since(c, limit)))
    }

    fn agent_pauses(&self) -> StoreFuture<'_, Vec<StoredPause>> {
        Box::pin(self.read(super::agents::agent_pauses))
    }

    fn set_agent_pause(&self, agent: String, pause: Option<StoredPause>) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |b| b.set_agent_pause(&agent, pause.as_ref())))
    }

    fn budget_lifts(&self) -> StoreFuture<'_, Vec<BudgetLift>> {
        Box::pin(self.read(super::agents::budget_lifts))
    }

    fn set_budget_lift(&self, lift: BudgetLift) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |b| b.set_budget_lift(&lift)))
    }

    fn usage_since(&self, since_ms: i64) -> StoreFuture<'_, Vec<UsageRow>> {
        Box::pin(self.read(move |c| super::agents::usage_since(c, since_ms)))
    }

    fn counts(&self) -> Counts {
        self.inner
            .counts
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    fn errors(&self) -> u64 {
        self.inner.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn writes(&self) -> crate::store::WriteLoad {
        self.write_load()
    }

    fn subscribe(&self) -> broadcast::Receiver<TrajectoryEvent> {
        self.inner.events.subscribe()
    }

    fn health(&self) -> Health {
        self.health_now()
    }

    fn check_integrity(&self) -> StoreFuture<'_, String> {
        Box::pin(self.run_integrity_check())
    }

    fn close(&self) {
        self.shut();
    }
}
