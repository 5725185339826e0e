//! The sweeper (SPEC §8): expires stale tasks, reclaims lapsed leases, and deletes terminal tasks
//! past their kind's retention, in bounded batches so the control socket stays responsive.

use crate::clock::{duration_ms, now_ms, rfc3339};
use crate::daemon::Daemon;
use crate::machine::Action;
use crate::store::{Batch, Patch, StoreError, TransitionOp};
use orchestrator_proto::message::SweepReport;
use orchestrator_proto::task::{task_error, TaskError, TaskKind, TaskState};
use orchestrator_proto::WireError;
use rusqlite::params;
use std::sync::Arc;
use std::time::Instant;

pub const ACTOR: &str = "sweeper";
/// Rows handled per store job; between jobs other writers get their turn.
pub const BATCH: usize = 500;

/// Expire up to `limit` stale-eligible tasks whose `expiresAt` has passed. Returns their ids.
pub fn expire_due(b: &mut Batch<'_>, now: i64, limit: usize) -> Result<Vec<String>, StoreError> {
    let ids: Vec<String> = {
        let mut stmt = b.conn().prepare_cached(
            "SELECT id FROM tasks WHERE state IN ('queued', 'assigned', 'awaiting_approval') AND expires_at <= ?1 \
             LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now, limit as i64], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        let op = TransitionOp::new(&id, Action::Expire, ACTOR, now);
        match b.nested(|b| b.transition(op)) {
            Ok(_) => done.push(id),
            Err(StoreError::Refused { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reclaim up to `limit` `in_progress` tasks whose lease lapsed: re-queue while attempts remain,
/// else fail with `specialist_aborted`. Returns (failed ids, re-queued tasks).
pub fn reclaim_lapsed(
    b: &mut Batch<'_>,
    now: i64,
    limit: usize,
    why: &str,
    max_attempts: &dyn Fn(&str) -> u32,
) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let rows: Vec<(String, Option<String>, i64)> = {
        let mut stmt = b.conn().prepare_cached(
            "SELECT id, agent, attempts FROM tasks WHERE state = 'in_progress' \
             AND (lease_until IS NULL OR lease_until < ?1) LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now, limit as i64], |r| {
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

/// Delete up to `limit` terminal tasks of `kind` completed before `before`, with their events.
pub fn delete_retired(
    b: &mut Batch<'_>,
    kind: TaskKind,
    before: i64,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let rows: Vec<(String, String)> = {
        let mut stmt = b.conn().prepare_cached(
            "SELECT id, state FROM tasks WHERE kind = ?1 AND completed_at IS NOT NULL AND completed_at < ?2 \
             AND state IN ('done', 'failed', 'cancelled', 'expired') LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![kind.as_str(), before, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut ids = Vec::with_capacity(rows.len());
    for (id, state) in rows {
        b.conn()
            .prepare_cached("DELETE FROM events WHERE task_id = ?1")?
            .execute([&id])?;
        b.conn()
            .prepare_cached("DELETE FROM tasks WHERE id = ?1")?
            .execute([&id])?;
        if let Ok(state) = state.parse::<TaskState>() {
            b.note_deleted(kind, state);
        }
        ids.push(id);
    }
    Ok(ids)
}

/// One full sweep.
pub async fn sweep(d: &Arc<Daemon>) -> SweepReport {
    let started = Instant::now();
    let now = now_ms();
    let mut report = SweepReport {
        started_at: rfc3339(now),
        duration_ms: 0,
        expired: 0,
        reclaimed: 0,
        requeued: 0,
        deleted: 0,
        deleted_files: 0,
        errors: Vec::new(),
    };
    loop {
        match d.store.write(move |b| expire_due(b, now, BATCH)).await {
            Ok(ids) => {
                report.expired += ids.len() as u64;
                tracing::debug!(?ids, "expired");
                if ids.len() < BATCH {
                    break;
                }
            }
            Err(e) => {
                report.errors.push(format!("expire: {e}"));
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    let cfg = d.config();
    loop {
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
                report.reclaimed += (failed.len() + requeued.len()) as u64;
                report.requeued += requeued.len() as u64;
                let n = failed.len() + requeued.len();
                d.redispatch(&requeued).await;
                if n < BATCH {
                    break;
                }
            }
            Err(e) => {
                report.errors.push(format!("reclaim: {e}"));
                break;
            }
        }
    }
    for kind in TaskKind::ALL {
        let Some(keep) = cfg.sweeper.retention.for_kind(kind) else {
            continue;
        };
        let before = now - duration_ms(keep);
        loop {
            match d
                .store
                .write(move |b| delete_retired(b, kind, before, BATCH))
                .await
            {
                Ok(ids) => {
                    report.deleted += ids.len() as u64;
                    for id in &ids {
                        let dir = d.paths.task_dir(id);
                        match std::fs::remove_dir_all(&dir) {
                            Ok(()) => report.deleted_files += 1,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => report.errors.push(format!("remove {}: {e}", dir.display())),
                        }
                    }
                    if ids.len() < BATCH {
                        break;
                    }
                }
                Err(e) => {
                    report.errors.push(format!("retention ({kind}): {e}"));
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    crate::metrics::Metrics::add(&d.metrics.expiries, report.expired);
    crate::metrics::Metrics::add(&d.metrics.reclaims, report.reclaimed);
    tracing::info!(
        expired = report.expired,
        reclaimed = report.reclaimed,
        requeued = report.requeued,
        deleted = report.deleted,
        errors = report.errors.len(),
        duration_ms = report.duration_ms,
        "sweep finished"
    );
    for e in &report.errors {
        tracing::error!(error = %e, "sweep error");
    }
    let r = report.clone();
    d.with_notes(|n| n.last_sweep = Some(r));
    report
}

pub async fn run_now(d: &Arc<Daemon>) -> Result<SweepReport, WireError> {
    let _one_at_a_time = d.sweep_lock.lock().await;
    Ok(sweep(d).await)
}

/// The timer: one sweep at start, then every `sweeper.interval` (re-read after each run, so a
/// reload that changes it takes effect at the next tick).
pub async fn run(d: Arc<Daemon>) {
    loop {
        {
            let _one_at_a_time = d.sweep_lock.lock().await;
            sweep(&d).await;
        }
        let interval = d.config().sweeper.interval;
        d.with_notes(|n| n.next_sweep_ms = Some(now_ms() + duration_ms(interval)));
        tokio::select! {
            _ = d.shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
