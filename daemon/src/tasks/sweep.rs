//! Sweeping (the timer and `orchctl sweep`): expires stale tasks, applies the approval policy, reclaims lapsed leases, and deletes terminal tasks
//! past their kind's retention together with their trajectory and files.
//!
//! A sweep is a series of small store jobs of at most [`BATCH`] tasks each, so that other writers
//! (submits, approvals, the dispatcher) get their turn between batches and the control socket stays
//! responsive however much there is to do. A failing step is recorded in the [`SweepReport`] and the
//! log; the rest of the sweep and every later one still run. One sweep runs at a time: the timer and
//! `orchctl sweep` take turns on [`SweeperState::lock`](crate::sweeper::SweeperState::lock).

use crate::clock::{duration_ms, rfc3339};
use crate::config::Config;
use crate::daemon::{Daemon, Paths};
use crate::store::Reclaimed;
use crate::sweeper::{self, approvals, BATCH, EXPIRE_BATCH};
use futures_util::stream::{FuturesOrdered, StreamExt};
use orchestrator_proto::message::SweepReport;
use orchestrator_proto::task::TaskKind;
use orchestrator_proto::WireError;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors kept in a report (and logged at error level); a failure that repeats for every task of a
/// large archive must not flood the reply or the journal.
const MAX_REPORTED_ERRORS: usize = 20;
/// How often the timer looks at the configured interval while it waits, so that a reload that
/// shortens it takes effect within this long.
const INTERVAL_RECHECK: Duration = Duration::from_secs(1);

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

/// Expiry batches kept in the store's queue at once: the next is queued behind the one under way,
/// so that the writer runs it while the last one's commit is flushed (docs/BENCHMARKS.md, "The
/// sweep's batches flushed one by one"). Each still commits on its own; a submit or an approval
/// queued meanwhile waits for at most the two batches ahead of it.
const EXPIRE_AHEAD: usize = 2;

/// Expire every task due at `now`, [`EXPIRE_BATCH`] at a time. A short batch means none was left
/// when it ran; the batch queued behind it finds none either (or, on a store whose batches run side
/// by side, those the short one skipped), and a full one sends the sweep on.
async fn expire(d: &Arc<Daemon>, now: i64, run: &mut Run) {
    let batch = || d.store.expire_due(now, EXPIRE_BATCH, sweeper::ACTOR);
    let mut queued = FuturesOrdered::new();
    queued.push_back(batch());
    // After a failed batch none is queued; those already are awaited, for their expiries count.
    let mut failed = false;
    while let Some(done) = queued.next().await {
        match done {
            Ok(ids) => {
                run.report.expired += ids.len() as u64;
                if !ids.is_empty() {
                    tracing::debug!(?ids, "expired");
                }
                if ids.len() == EXPIRE_BATCH && !failed && !d.shutdown.is_cancelled() {
                    while queued.len() < EXPIRE_AHEAD {
                        queued.push_back(batch());
                    }
                }
            }
            Err(e) => {
                run.error(format!("expire: {e}"));
                failed = true;
            }
        }
    }
}

/// One full sweep: expiry, lease reclaim, retention.
pub async fn sweep(d: &Arc<Daemon>) -> SweepReport {
    // How long the sweep took is real time; what is due is by the daemon's clock.
    let started = Instant::now();
    let now = d.clock.now_ms();
    let cfg = d.config();
    let mut run = Run::new(now);

    expire(d, now, &mut run).await;

    apply_approval_policy(d, &cfg, now, &mut run).await;

    while !d.shutdown.is_cancelled() {
        let res = d
            .store
            .reclaim_lapsed(sweeper::reclaim(
                &cfg,
                now,
                BATCH,
                "lease lapsed (specialist watcher gone)",
            ))
            .await;
        match res {
            Ok(Reclaimed { failed, requeued }) => {
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

    crate::dispatch::rescan(d).await;

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
    if report.expired + report.reclaimed + report.deleted > 0 {
        // Its batches leave their tasks, events and log lines freed in the heap: after 100,000
        // expiries, about 9 MiB that glibc would otherwise keep (see `crate::heap`).
        crate::heap::release_free();
    }
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
    d.sweeper.set_last_sweep(kept);
    report
}

/// Warn about, and time out, tasks waiting for approval (see [`approvals`]).
///
/// [`BATCH`] tasks at a time, all of them written at once so that the writer commits them
/// together (one flush for the batch rather than one per task: 100,000 warnings took 50 s one by
/// one); between batches other writers get their turn, and a shutdown stops the step (the next
/// sweep takes up what is left, as a task that was warned is not warned again).
async fn apply_approval_policy(d: &Arc<Daemon>, cfg: &Config, now: i64, run: &mut Run) {
    let cut = crate::sweeper::approvals::cut(&cfg.approval, now);
    let waiting = match d.store.awaiting_approval(cut).await {
        Ok(w) => w,
        Err(e) => return run.error(format!("approval policy: {e}")),
    };
    for batch in waiting.chunks(BATCH) {
        if d.shutdown.is_cancelled() {
            return;
        }
        let steps = batch.iter().map(|w| async move {
            // `Ok(true)`: the task expired.
            let outcome = match approvals::step(&cfg.approval, w, now) {
                approvals::Step::Wait => Ok(false),
                approvals::Step::Warn(ev) => d.store.append_event(ev).await.map(|()| false),
                approvals::Step::TimeOut(op) => {
                    let expire = op.action == crate::machine::Action::Expire;
                    let r = d.store.transition(*op).await.map(|_| expire);
                    tracing::info!(task = %w.id, "approval timeout");
                    r
                }
            };
            (w, outcome)
        });
        for (w, outcome) in futures_util::future::join_all(steps).await {
            match outcome {
                Ok(true) => run.report.expired += 1,
                Ok(false) => {}
                // Decided meanwhile: nothing left to do.
                Err(e) if e.is_refusal() => {}
                Err(e) => run.error(format!("approval policy ({}): {e}", w.id)),
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Delete the terminal tasks of `kind` completed before `before`: files first, then the rows, so
/// that a task whose files cannot be removed keeps its row and is retried by a later sweep.
async fn retire(d: &Arc<Daemon>, run: &mut Run, kind: TaskKind, before: i64) {
    let mut after = None;
    while !d.shutdown.is_cancelled() {
        let batch = d.store.retired(kind, before, after, BATCH).await;
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
            let deleted = d.store.delete_tasks(gone).await;
            if kind == TaskKind::Shadow {
                // Whatever the answer, the summaries' kept tallies may now count deleted tasks:
                // those of the buckets before `before`, since each completed before it.
                d.shadow_tallies.forget_before(before);
            }
            match deleted {
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
pub async fn sweep_now(d: &Arc<Daemon>) -> Result<SweepReport, WireError> {
    let _one_at_a_time = d.sweeper.lock.lock().await;
    Ok(sweep(d).await)
}

/// The timer: one sweep at start, then one every `sweeper.interval` after the previous one ended.
/// The interval is re-read while waiting, so a reload that changes it takes effect within
/// [`INTERVAL_RECHECK`]; a sweep that is due by the new interval runs at once. The wait is measured
/// on the daemon's clock, and re-checked as soon as a test clock moves.
pub async fn run(d: Arc<Daemon>) {
    let mut moves = d.clock.moves();
    loop {
        d.sweeper.set_next_sweep_ms(d.clock.now_ms());
        {
            let _one_at_a_time = d.sweeper.lock.lock().await;
            if d.shutdown.is_cancelled() {
                return;
            }
            // On a shared store the timer's sweep is the leader's (see the `cluster` module).
            if d.node.is_leader() {
                sweep(&d).await;
            }
        }
        let (ended, ended_ms) = (d.clock.mark(), d.clock.now_ms());
        let mut shown = None;
        loop {
            let interval = d.config().sweeper.interval;
            if shown != Some(interval) {
                shown = Some(interval);
                let next = ended_ms.saturating_add(duration_ms(interval));
                d.sweeper.set_next_sweep_ms(next);
            }
            let left = interval.saturating_sub(d.clock.since(&ended));
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = d.shutdown.cancelled() => return,
                _ = tokio::time::sleep(left.min(INTERVAL_RECHECK)) => {}
                _ = moves.moved() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
