//! The sweeper (SPEC §8): expires stale tasks, reclaims lapsed leases, and deletes terminal tasks
//! past their kind's retention together with their trajectory and files.
//!
//! A sweep is a series of small store jobs of at most [`BATCH`] tasks each, so that other writers
//! (submits, approvals, the dispatcher) get their turn between batches and the control socket stays
//! responsive however much there is to do. A failing step is recorded in the [`SweepReport`] and the
//! log; the rest of the sweep and every later one still run. One sweep runs at a time: the timer and
//! `orchctl sweep` take turns on [`Daemon::sweep_lock`].

use crate::clock::{duration_ms, now_ms, rfc3339};
use crate::daemon::{Daemon, Paths};
use crate::machine::Action;
use crate::store::{Batch, Patch, StoreError, TransitionOp};
use orchestrator_proto::message::SweepReport;
use orchestrator_proto::task::{task_error, TaskError, TaskKind, TaskState};
use orchestrator_proto::WireError;
use rusqlite::{params, Connection};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ACTOR: &str = "sweeper";
/// Tasks handled per store job; between jobs other writers get their turn. At 200 a job holds the
/// writer for about 10 ms (an expiry is ~50 µs); 500 doubled the latency of submits during a sweep
/// without making the sweep faster (daemon/examples/sweep_bench.rs).
pub const BATCH: usize = 200;
/// Errors kept in a report (and logged at error level); a failure that repeats for every task of a
/// large archive must not flood the reply or the journal.
const MAX_REPORTED_ERRORS: usize = 20;
/// How often the timer looks at the configured interval while it waits, so that a reload that
/// shortens it takes effect within this long.
const INTERVAL_RECHECK: Duration = Duration::from_secs(1);

// The sweeper's statements. Each is served by an index (tests check the query plans), so a batch
// costs the same whatever the size of the archive.

/// Stale-eligible tasks past `expiresAt`: tasks_state_expires(state, expires_at), one range per state.
const EXPIRE_DUE: &str = "SELECT id FROM tasks \
     WHERE state IN ('queued', 'assigned', 'awaiting_approval') AND expires_at <= ?1 LIMIT ?2";
/// `in_progress` tasks whose lease lapsed: tasks_state_expires by its state prefix.
const LAPSED: &str = "SELECT id, agent, attempts FROM tasks \
     WHERE state = 'in_progress' AND (lease_until IS NULL OR lease_until < ?1) LIMIT ?2";
/// Terminal tasks of a kind completed before a time, walked in the order of
/// tasks_terminal_completed(kind, completed_at) and its rowid, after a cursor.
const RETIRED: &str = "SELECT id, completed_at, rowid FROM tasks \
     WHERE kind = ?1 AND completed_at IS NOT NULL AND completed_at < ?2 \
     AND (completed_at, rowid) > (?3, ?4) ORDER BY completed_at, rowid LIMIT ?5";
/// A batch of tasks by id (a JSON array), terminal ones only. `+state` keeps the planner on the
/// primary key: the state index would walk every task in those states.
const DELETE_TASKS: &str = "DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?1)) \
     AND +state IN ('done', 'failed', 'cancelled', 'expired') RETURNING id, kind, state";
/// The trajectory of a batch of tasks: events_task(task_id, seq).
const DELETE_EVENTS: &str = "DELETE FROM events WHERE task_id IN (SELECT value FROM json_each(?1))";

/// Expire up to `limit` stale-eligible tasks whose `expiresAt` has passed. Returns their ids; fewer
/// than `limit` means none are left.
pub fn expire_due(b: &mut Batch<'_>, now: i64, limit: usize) -> Result<Vec<String>, StoreError> {
    let ids: Vec<String> = {
        let mut stmt = b.conn().prepare_cached(EXPIRE_DUE)?;
        let rows = stmt.query_map(params![now, limit_sql(limit)], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        let op = TransitionOp::new(&id, Action::Expire, ACTOR, now);
        match b.nested(|b| b.transition(op)) {
            Ok(_) => done.push(id),
            // Moved on between the query and the transition: no longer ours to expire.
            Err(StoreError::Refused { .. } | StoreError::Rejected(..)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reclaim up to `limit` `in_progress` tasks whose lease lapsed: re-queue while attempts remain,
/// else fail with `specialist_aborted`. Returns (failed ids, re-queued ids).
pub fn reclaim_lapsed(
    b: &mut Batch<'_>,
    now: i64,
    limit: usize,
    why: &str,
    max_attempts: &dyn Fn(&str) -> u32,
) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let rows: Vec<(String, Option<String>, i64)> = {
        let mut stmt = b.conn().prepare_cached(LAPSED)?;
        let rows = stmt.query_map(params![now, limit_sql(limit)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let (mut failed, mut requeued) = (Vec::new(), Vec::new());
    for (id, agent, attempts) in rows {
        let allowed = i64::from(max_attempts(agent.as_deref().unwrap_or("")));
        let op = if attempts < allowed {
            TransitionOp::new(&id, Action::Requeue, ACTOR, now)
                .detail("reason", why)
                .detail("attempts", attempts.to_string())
        } else {
            let error = TaskError {
                code: task_error::SPECIALIST_ABORTED.into(),
                message: format!("the specialist's lease lapsed: {why}"),
                details: Some(
                    [
                        ("reason".to_string(), why.to_string()),
                        ("attempts".to_string(), attempts.to_string()),
                    ]
                    .into(),
                ),
            };
            TransitionOp::new(&id, Action::Fail, ACTOR, now)
                .patch(Patch {
                    error: Some(error),
                    ..Patch::default()
                })
                .detail("reason", why)
        };
        let requeue = op.action == Action::Requeue;
        match b.nested(|b| b.transition(op)) {
            Ok(_) if requeue => requeued.push(id),
            Ok(_) => failed.push(id),
            Err(StoreError::Refused { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((failed, requeued))
}

/// Where a walk over retired tasks stands: the last `(completed_at, rowid)` seen.
pub type RetiredCursor = (i64, i64);

/// A terminal task past its retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    pub id: String,
    pub cursor: RetiredCursor,
}

/// Up to `limit` terminal tasks of `kind` completed before `before`, oldest first, after `after`.
///
/// Every terminal transition sets `completed_at` (and terminal states are absorbing), so this is
/// every terminal task of that age. The walk is ordered by the index
/// tasks_terminal_completed(kind, completed_at) and its rowid; the cursor lets a sweep step past
/// tasks it had to keep (their files could not be removed) instead of meeting them again.
pub fn retired(
    conn: &Connection,
    kind: TaskKind,
    before: i64,
    after: Option<RetiredCursor>,
    limit: usize,
) -> Result<Vec<Retired>, StoreError> {
    let (after_completed, after_rowid) = after.unwrap_or((i64::MIN, i64::MIN));
    let mut stmt = conn.prepare_cached(RETIRED)?;
    let rows = stmt.query_map(
        params![
            kind.as_str(),
            before,
            after_completed,
            after_rowid,
            limit_sql(limit)
        ],
        |r| {
            Ok(Retired {
                id: r.get(0)?,
                cursor: (r.get(1)?, r.get(2)?),
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Delete the given tasks, if terminal, with their trajectory events. Returns the ids deleted.
pub fn delete_tasks(b: &mut Batch<'_>, ids: &[String]) -> Result<Vec<String>, StoreError> {
    let wanted = serde_json::to_string(ids).map_err(|e| StoreError::Sql(format!("encode: {e}")))?;
    let deleted: Vec<(String, String, String)> = {
        let mut stmt = b.conn().prepare_cached(DELETE_TASKS)?;
        let rows = stmt.query_map([&wanted], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let gone: Vec<&str> = deleted.iter().map(|(id, _, _)| id.as_str()).collect();
    let gone = serde_json::to_string(&gone).map_err(|e| StoreError::Sql(format!("encode: {e}")))?;
    b.conn().prepare_cached(DELETE_EVENTS)?.execute([&gone])?;
    let mut ids = Vec::with_capacity(deleted.len());
    for (id, kind, state) in deleted {
        if let (Ok(kind), Ok(state)) = (kind.parse::<TaskKind>(), state.parse::<TaskState>()) {
            b.note_deleted(kind, state);
        }
        ids.push(id);
    }
    Ok(ids)
}

fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Remove the task directories of `ids`. Returns the ids whose files are gone (removed now or
/// never there), how many directories were removed, and the failures.
fn remove_task_dirs(paths: &Paths, ids: Vec<String>) -> (Vec<String>, u64, Vec<String>) {
    let (mut gone, mut removed, mut errors) = (Vec::with_capacity(ids.len()), 0, Vec::new());
    for id in ids {
        let dir = paths.task_dir(&id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                removed += 1;
                gone.push(id);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone.push(id),
            Err(e) => errors.push(format!(
                "retention: cannot remove {} ({e}); task {id} is kept until a later sweep can",
                dir.display()
            )),
        }
    }
    (gone, removed, errors)
}

/// A sweep in the making: the report plus the bookkeeping behind its capped error list.
struct Run {
    report: SweepReport,
    errors: usize,
}

impl Run {
    fn new(now: i64) -> Run {
        Run {
            report: SweepReport {
                started_at: rfc3339(now),
                duration_ms: 0,
                expired: 0,
                reclaimed: 0,
                requeued: 0,
                deleted: 0,
                deleted_files: 0,
                errors: Vec::new(),
            },
            errors: 0,
        }
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.errors <= MAX_REPORTED_ERRORS {
            tracing::error!(error = %message, "sweep error");
            self.report.errors.push(message);
        } else {
            tracing::debug!(error = %message, "sweep error");
        }
    }

    fn finish(mut self, started: Instant) -> SweepReport {
        if self.errors > MAX_REPORTED_ERRORS {
            self.report.errors.push(format!(
                "... and {} more errors",
                self.errors - MAX_REPORTED_ERRORS
            ));
        }
        self.report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.report
    }
}

/// One full sweep: expiry, lease reclaim, retention.
pub async fn sweep(d: &Arc<Daemon>) -> SweepReport {
    let started = Instant::now();
    let now = now_ms();
    let cfg = d.config();
    let mut run = Run::new(now);

    while !d.shutdown.is_cancelled() {
        match d.store.write(move |b| expire_due(b, now, BATCH)).await {
            Ok(ids) => {
                run.report.expired += ids.len() as u64;
                if !ids.is_empty() {
                    tracing::debug!(?ids, "expired");
                }
                if ids.len() < BATCH {
                    break;
                }
            }
            Err(e) => {
                run.error(format!("expire: {e}"));
                break;
            }
        }
        tokio::task::yield_now().await;
    }

    while !d.shutdown.is_cancelled() {
        let c = Arc::clone(&cfg);
        let res = d
            .store
            .write(move |b| {
                let attempts = |agent: &str| c.agent(agent).map(|a| a.max_attempts).unwrap_or(1);
                reclaim_lapsed(
                    b,
                    now,
                    BATCH,
                    "lease lapsed (specialist watcher gone)",
                    &attempts,
                )
            })
            .await;
        match res {
            Ok((failed, requeued)) => {
                let n = failed.len() + requeued.len();
                run.report.reclaimed += n as u64;
                run.report.requeued += requeued.len() as u64;
                if n > 0 {
                    tracing::debug!(?failed, ?requeued, "reclaimed lapsed leases");
                }
                d.redispatch(&requeued).await;
                if n < BATCH {
                    break;
                }
            }
            Err(e) => {
                run.error(format!("reclaim: {e}"));
                break;
            }
        }
        tokio::task::yield_now().await;
    }

    for kind in TaskKind::ALL {
        // `None` is a retention of 0: keep forever.
        let Some(keep) = cfg.sweeper.retention.for_kind(kind) else {
            continue;
        };
        retire(d, &mut run, kind, now.saturating_sub(duration_ms(keep))).await;
    }

    if d.shutdown.is_cancelled() {
        tracing::info!("sweep cut short by shutdown; the next start sweeps again");
    }
    let errors = run.errors;
    let report = run.finish(started);
    crate::metrics::Metrics::add(&d.metrics.expiries, report.expired);
    crate::metrics::Metrics::add(&d.metrics.reclaims, report.reclaimed);
    tracing::info!(
        expired = report.expired,
        reclaimed = report.reclaimed,
        requeued = report.requeued,
        deleted = report.deleted,
        deleted_files = report.deleted_files,
        errors,
        duration_ms = report.duration_ms,
        "sweep finished"
    );
    let kept = report.clone();
    d.with_notes(|n| n.last_sweep = Some(kept));
    report
}

/// Delete the terminal tasks of `kind` completed before `before`: files first, then the rows, so
/// that a task whose files cannot be removed keeps its row and is retried by a later sweep.
async fn retire(d: &Arc<Daemon>, run: &mut Run, kind: TaskKind, before: i64) {
    let mut after = None;
    while !d.shutdown.is_cancelled() {
        let batch = d
            .store
            .read(move |c| retired(c, kind, before, after, BATCH))
            .await;
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                run.error(format!("retention ({kind}): {e}"));
                return;
            }
        };
        let Some(last) = batch.last() else {
            return;
        };
        after = Some(last.cursor);
        let full = batch.len() == BATCH;
        let ids: Vec<String> = batch.into_iter().map(|r| r.id).collect();
        let paths = d.paths.clone();
        let removed = tokio::task::spawn_blocking(move || remove_task_dirs(&paths, ids)).await;
        let (gone, dirs, errors) = match removed {
            Ok(r) => r,
            Err(e) => {
                run.error(format!("retention ({kind}): removing files failed: {e}"));
                return;
            }
        };
        run.report.deleted_files += dirs;
        for e in errors {
            run.error(e);
        }
        if !gone.is_empty() {
            match d.store.write(move |b| delete_tasks(b, &gone)).await {
                Ok(ids) => {
                    run.report.deleted += ids.len() as u64;
                    tracing::debug!(%kind, ?ids, "deleted past retention");
                }
                Err(e) => {
                    run.error(format!("retention ({kind}): {e}"));
                    return;
                }
            }
        }
        if !full {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// `orchctl sweep`: run a sweep now. If one is under way (the timer's), wait for it to end and then
/// run a fresh one, so the reply covers everything due at the moment of the request.
pub async fn run_now(d: &Arc<Daemon>) -> Result<SweepReport, WireError> {
    let _one_at_a_time = d.sweep_lock.lock().await;
    Ok(sweep(d).await)
}

/// The timer: one sweep at start, then one every `sweeper.interval` after the previous one ended.
/// The interval is re-read while waiting, so a reload that changes it takes effect within
/// [`INTERVAL_RECHECK`]; a sweep that is due by the new interval runs at once.
pub async fn run(d: Arc<Daemon>) {
    loop {
        d.with_notes(|n| n.next_sweep_ms = Some(now_ms()));
        {
            let _one_at_a_time = d.sweep_lock.lock().await;
            if d.shutdown.is_cancelled() {
                return;
            }
            sweep(&d).await;
        }
        let (ended, ended_ms) = (Instant::now(), now_ms());
        let mut shown = None;
        loop {
            let interval = d.config().sweeper.interval;
            if shown != Some(interval) {
                shown = Some(interval);
                let next = ended_ms.saturating_add(duration_ms(interval));
                d.with_notes(|n| n.next_sweep_ms = Some(next));
            }
            let left = interval.saturating_sub(ended.elapsed());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = d.shutdown.cancelled() => return,
                _ = tokio::time::sleep(left.min(INTERVAL_RECHECK)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
