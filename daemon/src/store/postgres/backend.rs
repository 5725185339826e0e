//! [`Backend`] for [`PostgresBackend`]: every write one transaction, every read one pooled
//! connection.

use super::tx::Tx;
use super::{outbox, pg_error, queries, PostgresBackend, SCHEMA_VERSION};
use crate::clock::now_ms;
use crate::store::{
    Awaiting, AwaitingCut, EventDraft, Notice, OutboxEntry, OutboxKey, OutboxRules, OutboxStats,
};
use crate::store::{
    Backend, BudgetLift, Counts, GateRunRecord, Health, Leftover, ModeChange, NewEvent,
    NewOverride, Outcomes, PendingTask, Plan, Reclaim, Reclaimed, Retired, RetiredCursor,
    ShadowTally, StoreError, StoreFuture, StoredMode, StoredPause, SubmitPlan, TaskFilter,
    TransitionOp, UsageRow,
};
use orchestrator_proto::message::{GateRunSummary, OverrideRecord};
use orchestrator_proto::task::{Mode, Task, TaskKind, TaskState, TrajectoryEvent};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// Run `$body` (an async block's worth of statements on `$tx`) in one transaction: committed and
/// its effects published if it answers `Ok`, rolled back otherwise.
macro_rules! write {
    ($self:ident, |$tx:ident| $body:expr) => {{
        // The write runs as a task of its own, not in the caller's future: a caller that goes
        // away (a client hanging up) cannot stop it between the COMMIT and the publishing of what
        // it committed (the log line, the watchers, delivery). The caller awaits its answer.
        let store = $self.clone();
        Box::pin(async move {
            let write = tokio::spawn(async move {
                let outcome = async {
                    let mut client = store.client().await?;
                    #[allow(unused_mut)]
                    let mut $tx =
                        super::tx::Tx::begin(&mut client, store.outbox_rules(), &store.inner.node)
                            .await?;
                    let result = $body;
                    match result {
                        Ok(v) => {
                            store.commit($tx).await?;
                            Ok(v)
                        }
                        // Dropping the transaction rolls it back.
                        Err(e) => Err(e),
                    }
                }
                .await;
                store.counted(outcome)
            });
            match write.await {
                Ok(answer) => answer,
                Err(e) => Err(crate::store::StoreError::Sql(format!(
                    "the store write did not finish: {e}"
                ))),
            }
        })
    }};
}

/// Run `$body` with a pooled connection `$c`.
macro_rules! read {
    ($self:ident, |$c:ident| $body:expr) => {
        Box::pin(async move {
            let outcome = async {
                let $c = $self.client().await?;
                $body
            }
            .await;
            $self.counted(outcome)
        })
    };
}

impl PostgresBackend {
    pub(super) async fn commit(&self, tx: Tx<'_>) -> Result<(), StoreError> {
        let _gate = self.inner.commit_gate.read().await;
        let effects = tx.commit().await?;
        self.publish(effects);
        self.with_health(|h| h.full_since_ms = None);
        Ok(())
    }

    fn with_health(&self, f: impl FnOnce(&mut Health)) {
        if let Ok(mut h) = self.inner.health.lock() {
            f(&mut h);
        }
    }

    /// The server keeps its own integrity (WAL, and page checksums where the cluster has them);
    /// this check confirms that the database still holds this release's schema.
    async fn integrity_check(&self) -> Result<String, StoreError> {
        self.with_health(|h| h.checking = true);
        let found = async {
            let c = self.client().await?;
            let row = c
                .query_one("SELECT max(version) FROM schema_version", &[])
                .await
                .map_err(pg_error)?;
            let version: Option<i64> = row.get(0);
            Ok::<_, StoreError>(match version {
                Some(v) if v == SCHEMA_VERSION => "ok".to_string(),
                other => format!("schema version {other:?}, this release expects {SCHEMA_VERSION}"),
            })
        }
        .await;
        let at = now_ms();
        self.with_health(|h| {
            h.checking = false;
            if let Ok(found) = &found {
                h.last_check = Some((at, found.clone()));
            }
        });
        found
    }

    /// Count a failure of the store itself; refusals are answers, and a closed store is a shutdown.
    pub(super) fn counted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Full(_)) = &result {
            let at = now_ms();
            self.with_health(|h| {
                h.full_since_ms.get_or_insert(at);
            });
        }
        if let Err(e) = &result {
            if !e.is_refusal() && *e != StoreError::Closed {
                self.inner.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }
}

impl Backend for PostgresBackend {
    fn submit(&self, plan: SubmitPlan) -> StoreFuture<'_, Task> {
        write!(self, |tx| tx.submit(plan).await)
    }

    fn advance(&self, plans: Vec<Plan>) -> StoreFuture<'_, Outcomes<TaskState>> {
        write!(self, |tx| {
            let mut out = Vec::with_capacity(plans.len());
            for plan in &plans {
                // One plan's refusal (its task moved on meanwhile) must not undo the others.
                let mark = tx.savepoint().await?;
                let r = tx.advance(plan).await;
                tx.settle(mark, r.is_ok()).await?;
                match r {
                    Err(e) if !e.is_refusal() => return Err(e),
                    r => out.push(r),
                }
            }
            Ok(out)
        })
    }

    fn transition(&self, op: TransitionOp) -> StoreFuture<'_, Task> {
        write!(self, |tx| tx.transition(&op).await)
    }

    fn transitions(&self, ops: Vec<TransitionOp>) -> StoreFuture<'_, Outcomes<Task>> {
        write!(self, |tx| {
            let mut out = Vec::with_capacity(ops.len());
            for op in &ops {
                let mark = tx.savepoint().await?;
                let r = tx.transition(op).await;
                tx.settle(mark, r.is_ok()).await?;
                match r {
                    Err(e) if !e.is_refusal() => return Err(e),
                    r => out.push(r),
                }
            }
            Ok(out)
        })
    }

    fn append_event(&self, e: NewEvent) -> StoreFuture<'_, ()> {
        write!(self, |tx| {
            tx.append_event_in_state(EventDraft::of_new(&e)).await
        })
    }

    /// An empty transaction, committed. An unreachable database counts as alive here: the probe
    /// feeds systemd's watchdog, and restarting the daemon cannot bring the database back, while
    /// requests are answered `store_unavailable` meanwhile.
    fn probe(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let committed: Result<(), StoreError> = write!(self, |tx| Ok(())).await;
            match committed {
                Err(StoreError::Unavailable(why)) => {
                    tracing::debug!(%why, "liveness probe: the database is unreachable");
                    Ok(())
                }
                other => other,
            }
        })
    }

    /// There is no writer thread: this resolves once the store is closed.
    fn writer_ended(&self) -> Pin<Box<dyn Future<Output = String> + Send + '_>> {
        Box::pin(async move {
            let mut closed = self.inner.closed_tx.subscribe();
            let _ = closed.wait_for(|c| *c).await;
            "the store was closed".to_string()
        })
    }

    fn get_task<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Task>> {
        read!(self, |c| queries::get_task(&c, id).await)
    }

    fn task_detail<'a>(
        &'a self,
        id: &'a str,
    ) -> StoreFuture<'a, Option<(Task, Vec<TrajectoryEvent>)>> {
        // One snapshot: the row and its trajectory as of the same commit.
        read!(self, |c| {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(pg_error)?;
            let read = async {
                match queries::get_task(&c, id).await? {
                    Some(task) => Ok(Some((task, queries::events_of(&c, id).await?))),
                    None => Ok(None),
                }
            }
            .await;
            // Read only: ending it either way changes nothing, and the connection goes back to
            // the pool outside a transaction.
            c.batch_execute("ROLLBACK").await.map_err(pg_error)?;
            read
        })
    }

    fn transitions_of<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Vec<TrajectoryEvent>> {
        read!(self, |c| queries::events_of(&c, id).await)
    }

    fn list_tasks(&self, filter: TaskFilter) -> StoreFuture<'_, Vec<Task>> {
        read!(self, |c| queries::list_tasks(&c, &filter).await)
    }

    fn pending_dispatch(&self) -> StoreFuture<'_, Vec<PendingTask>> {
        read!(self, |c| queries::pending_dispatch(&c).await)
    }

    fn undelivered_since<'a>(
        &'a self,
        since_ms: i64,
        action: &'a str,
    ) -> StoreFuture<'a, Vec<Task>> {
        read!(self, |c| queries::undelivered_since(&c, since_ms, action)
            .await)
    }

    fn expire_due<'a>(
        &'a self,
        now: i64,
        limit: usize,
        actor: &'a str,
    ) -> StoreFuture<'a, Vec<String>> {
        let actor = actor.to_string();
        write!(self, |tx| tx.expire_due(now, limit, &actor).await)
    }

    fn reclaim_lapsed(&self, reclaim: Reclaim) -> StoreFuture<'_, Reclaimed> {
        write!(self, |tx| tx.reclaim_lapsed(&reclaim).await)
    }

    fn retired(
        &self,
        kind: TaskKind,
        before: i64,
        after: Option<RetiredCursor>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Retired>> {
        read!(self, |c| queries::retired(&c, kind, before, after, limit)
            .await)
    }

    fn delete_tasks(&self, ids: Vec<String>) -> StoreFuture<'_, Vec<String>> {
        write!(self, |tx| tx.delete_tasks(&ids).await)
    }

    fn renew_leases(&self, ids: Vec<String>, until: i64) -> StoreFuture<'_, Vec<String>> {
        write!(self, |tx| tx.renew_leases(&ids, until).await)
    }

    fn void_leases(&self) -> StoreFuture<'_, usize> {
        write!(self, |tx| tx.void_leases().await)
    }

    fn set_specialist_pid<'a>(&'a self, id: &'a str, pgid: i32) -> StoreFuture<'a, bool> {
        let id = id.to_string();
        write!(self, |tx| tx.set_specialist_pid(&id, pgid).await)
    }

    fn orphan_leftovers(&self) -> StoreFuture<'_, Vec<Leftover>> {
        read!(self, |c| queries::orphan_leftovers(&c, &self.inner.node)
            .await)
    }

    fn record_gate_run(&self, run: GateRunRecord) -> StoreFuture<'_, ()> {
        write!(self, |tx| tx.record_gate_run(&run).await)
    }

    fn latest_gate_run(&self) -> StoreFuture<'_, Option<GateRunSummary>> {
        read!(self, |c| queries::latest_gate_run(&c).await)
    }

    fn gate_runs(&self, limit: usize) -> StoreFuture<'_, Vec<GateRunSummary>> {
        read!(self, |c| queries::gate_runs(&c, limit).await)
    }

    fn gate_passed_for<'a>(&'a self, fingerprint: &'a str) -> StoreFuture<'a, bool> {
        read!(self, |c| queries::gate_passed_for(&c, fingerprint).await)
    }

    fn insert_override(&self, o: NewOverride) -> StoreFuture<'_, ()> {
        write!(self, |tx| tx.insert_override(&o).await)
    }

    fn pending_override(&self, mode: Mode) -> StoreFuture<'_, Option<(i64, OverrideRecord)>> {
        read!(self, |c| queries::pending_override(&c, mode).await)
    }

    fn pending_overrides(&self) -> StoreFuture<'_, Vec<OverrideRecord>> {
        read!(self, |c| queries::pending_overrides(&c).await)
    }

    fn load_mode(&self) -> StoreFuture<'_, Option<StoredMode>> {
        read!(self, |c| queries::load_mode(&c).await)
    }

    fn save_mode(&self, change: ModeChange) -> StoreFuture<'_, ()> {
        write!(self, |tx| tx.save_mode(&change).await)
    }

    fn shadow_tallies(
        &self,
        from_ms: i64,
        until_ms: i64,
        bucket_ms: i64,
    ) -> StoreFuture<'_, Vec<(i64, ShadowTally)>> {
        read!(self, |c| queries::shadow_tallies(
            &c, from_ms, until_ms, bucket_ms
        )
        .await)
    }

    fn set_outbox_rules(&self, rules: OutboxRules) {
        if let Ok(mut r) = self.inner.outbox_rules.write() {
            *r = Some(Arc::new(rules));
        }
    }

    fn outbox_signal(&self) -> watch::Receiver<u64> {
        self.inner.outbox_written.subscribe()
    }

    fn enqueue_notice(&self, notice: Notice) -> StoreFuture<'_, usize> {
        if !notice.wanted(self.outbox_rules().as_deref()) {
            return Box::pin(async { Ok(0) });
        }
        write!(self, |tx| tx.enqueue_notice(&notice).await)
    }

    fn outbox_pending<'a>(
        &'a self,
        sink: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<OutboxEntry>> {
        read!(self, |c| outbox::outbox_pending(&c, sink, limit).await)
    }

    // This backend writes every event as rows: its keys are all `OutboxKey::Row`.
    fn mark_delivered(&self, keys: Vec<OutboxKey>) -> StoreFuture<'_, ()> {
        let seqs = OutboxKey::rows(&keys);
        write!(self, |tx| tx.outbox_delivered(&seqs).await)
    }

    fn mark_attempt_failed(&self, key: OutboxKey, error: String) -> StoreFuture<'_, ()> {
        let seqs = OutboxKey::rows([&key]);
        write!(self, |tx| tx.outbox_attempt_failed(&seqs, &error).await)
    }

    fn mark_dead(
        &self,
        entries: Vec<OutboxEntry>,
        at_ms: i64,
        alarm: Option<Notice>,
    ) -> StoreFuture<'_, ()> {
        let seqs = OutboxKey::rows(entries.iter().map(|e| &e.key));
        write!(self, |tx| tx
            .outbox_dead(&seqs, at_ms, alarm.as_ref())
            .await)
    }

    fn retry_dead<'a>(&'a self, sink: &'a str, now_ms: i64) -> StoreFuture<'a, u64> {
        let sink = sink.to_string();
        write!(self, |tx| tx.outbox_retry_dead(&sink, now_ms).await)
    }

    fn outbox_stats(&self) -> StoreFuture<'_, Vec<OutboxStats>> {
        read!(self, |c| outbox::outbox_stats(&c).await)
    }

    fn awaiting_approval(&self, cut: AwaitingCut) -> StoreFuture<'_, Vec<Awaiting>> {
        read!(self, |c| outbox::awaiting_approval(&c, cut).await)
    }

    fn awaiting_since(&self, limit: u32) -> StoreFuture<'_, Vec<(String, i64)>> {
        read!(self, |c| outbox::awaiting_since(&c, limit).await)
    }

    fn agent_pauses(&self) -> StoreFuture<'_, Vec<StoredPause>> {
        read!(self, |c| super::agents::agent_pauses(&c).await)
    }

    fn set_agent_pause(&self, agent: String, pause: Option<StoredPause>) -> StoreFuture<'_, ()> {
        write!(self, |tx| tx.set_agent_pause(&agent, pause.as_ref()).await)
    }

    fn budget_lifts(&self) -> StoreFuture<'_, Vec<BudgetLift>> {
        read!(self, |c| super::agents::budget_lifts(&c).await)
    }

    fn set_budget_lift(&self, lift: BudgetLift) -> StoreFuture<'_, ()> {
        write!(self, |tx| tx.set_budget_lift(&lift).await)
    }

    fn usage_since(&self, since_ms: i64) -> StoreFuture<'_, Vec<UsageRow>> {
        read!(self, |c| super::agents::usage_since(&c, since_ms).await)
    }

    fn counts(&self) -> Counts {
        self.inner
            .counts
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    fn subscribe(&self) -> broadcast::Receiver<TrajectoryEvent> {
        self.inner.events.subscribe()
    }

    fn health(&self) -> Health {
        self.inner
            .health
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    fn check_integrity(&self) -> StoreFuture<'_, String> {
        Box::pin(self.integrity_check())
    }

    fn close(&self) {
        self.shut();
    }
}
