//! One sink's delivery worker: sends the sink's pending events in outbox order, one at a time,
//! and marks them delivered (a page's worth in one write), failed or dead. A failure holds the sink back (exponential backoff
//! with jitter) so that a later event never overtakes an earlier one; other sinks have workers of
//! their own and never wait for this one.

use super::sink::{backoff, Outgoing, Sender};
use crate::clock::Moves;
use crate::daemon::Daemon;
use crate::store::{Notice, OutboxEntry, OutboxKey, StoreError, WriteLoad};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Events read per outbox query.
const PAGE: usize = 64;

/// The store is busy when its writer's commits have held this many writes each on average (the
/// writer groups the writes that wait for it: one client at a time makes groups of one, a crowd
/// makes large ones), over a window of at least [`LOAD_WINDOW`].
const BUSY_WRITES_PER_COMMIT: u64 = 4;
const LOAD_WINDOW: Duration = Duration::from_millis(200);
/// While the store is busy, a worker sends at most one page in this time: it rests after a page
/// until this long has passed since the page began. Delivery then takes a few milliseconds of its
/// thread's time a second, leaving the cores to the requests, and an event waits at most about this
/// long plus its place in the backlog; the sinks catch up when the requests ease. The delivery
/// threads' low priority does the same for the CPU alone; this also keeps their reads, allocations
/// and sockets from crowding the requests' (`docs/BENCHMARKS.md`, "Notifications").
pub(super) const BUSY_PAGE_EVERY: Duration = Duration::from_secs(1);

/// Whether the store has been busy, judged over windows of at least [`LOAD_WINDOW`].
pub(super) struct Load {
    since: std::time::Instant,
    at: WriteLoad,
    busy: bool,
}

impl Load {
    pub(super) fn new(now: WriteLoad) -> Load {
        Load {
            since: std::time::Instant::now(),
            at: now,
            busy: false,
        }
    }

    /// Look at the store's writes once a window has passed; answers whether it is busy.
    pub(super) fn busy(&mut self, now: WriteLoad) -> bool {
        if self.since.elapsed() >= LOAD_WINDOW {
            let writes = now.writes.saturating_sub(self.at.writes);
            let commits = now.commits.saturating_sub(self.at.commits);
            self.busy = writes >= BUSY_WRITES_PER_COMMIT.saturating_mul(commits.max(1));
            *self = Load {
                since: std::time::Instant::now(),
                at: now,
                busy: self.busy,
            };
        }
        self.busy
    }
}

/// Why a worker paused, if it did: to return on shutdown or reload.
enum Wait {
    Go,
    Stop,
}

/// Wait out a backoff. A moved test clock ends it early, so that a test reaches `give_up_after`
/// by moving the clock instead of waiting.
async fn pause(stop: &CancellationToken, delay: Duration, moves: &mut Moves) -> Wait {
    tokio::select! {
        _ = stop.cancelled() => Wait::Stop,
        _ = tokio::time::sleep(delay) => Wait::Go,
        _ = moves.moved() => Wait::Go,
    }
}

/// One sink's worker. `reads` is the daemon's runtime: the worker's outbox reads run there, on
/// its blocking threads at the normal priority, not on the delivery runtime's, which inherit its
/// low one. A read holds a snapshot of the store, and while a snapshot older than the last commit
/// is held SQLite cannot start its write-ahead log over; a low-priority reader would hold one for
/// as long as the scheduler makes it wait (`docs/BENCHMARKS.md`, "Notifications").
pub async fn run(
    d: Arc<Daemon>,
    sender: Sender,
    stop: CancellationToken,
    reads: tokio::runtime::Handle,
) {
    let sink = sender.sink().clone();
    let name = sink.name.clone();
    let give_up_ms = i64::try_from(sink.give_up_after.as_millis()).unwrap_or(i64::MAX);
    let mut signal = d.store.outbox_signal();
    let mut moves = d.clock.moves();
    let mut failures: u32 = 0;
    // One alarm per run of give-ups: raised with the first dead event, re-armed by a delivery.
    let mut alarmed = false;
    let mut load = Load::new(d.store.writes());
    'outer: while !stop.is_cancelled() {
        // Marked seen before reading, so a commit after the read wakes the next wait.
        signal.borrow_and_update();
        let page_started = std::time::Instant::now();
        let read = {
            let (d, name) = (Arc::clone(&d), name.clone());
            reads.spawn(async move { d.store.outbox_pending(&name, PAGE).await })
        };
        let page = match read
            .await
            .unwrap_or_else(|e| Err(StoreError::Sql(format!("outbox read task failed: {e}"))))
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "notify: cannot read the outbox");
                match pause(&stop, sink.retry_initial, &mut moves).await {
                    Wait::Go => continue,
                    Wait::Stop => break,
                }
            }
        };
        if page.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = signal.changed() => if changed.is_err() { break },
            }
            continue;
        }
        // The events of this page the sink accepted, marked delivered together in one write
        // before the outbox is read again (or the worker stops, or waits out a failure).
        let mut delivered = Vec::with_capacity(page.len());
        for entry in page {
            let outgoing = Outgoing {
                event_id: &entry.event_id,
                event_type: &entry.event_type,
                body: &entry.body,
            };
            let sent = tokio::select! {
                _ = stop.cancelled() => {
                    mark_delivered(&d, &name, delivered).await;
                    break 'outer;
                }
                sent = sender.send(&outgoing) => sent,
            };
            match sent {
                Ok(()) => {
                    failures = 0;
                    alarmed = false;
                    d.metrics.notify_delivered.inc(&[&name]);
                    delivered.push(entry.key);
                }
                Err(error) => {
                    mark_delivered(&d, &name, std::mem::take(&mut delivered)).await;
                    failures = failures.saturating_add(1);
                    d.metrics.notify_failed_attempts.inc(&[&name]);
                    tracing::debug!(sink = %name, event = %entry.event_id, %error, "notify: attempt failed");
                    // Give-up counts on the daemon's clock, as the event's own time does.
                    let now = d.clock.now_ms();
                    let waited = now.saturating_sub(entry.pending_since_ms);
                    if waited >= give_up_ms {
                        give_up(&d, &name, &entry, &error, now, &mut alarmed).await;
                        continue;
                    }
                    let _ = d.store.mark_attempt_failed(entry.key.clone(), error).await;
                    let delay = backoff(
                        sink.retry_initial,
                        sink.retry_max,
                        failures,
                        rand::random::<f64>(),
                    )
                    // Retry in time to give up on schedule rather than an hour late. (An event
                    // stamped after now, by a clock that stepped back or another node's, has
                    // waited nothing yet.)
                    .min(Duration::from_millis(
                        u64::try_from(give_up_ms.saturating_sub(waited.max(0))).unwrap_or(0),
                    ));
                    match pause(&stop, delay, &mut moves).await {
                        Wait::Go => continue 'outer,
                        Wait::Stop => break 'outer,
                    }
                }
            }
        }
        mark_delivered(&d, &name, delivered).await;
        if load.busy(d.store.writes()) {
            let rest = BUSY_PAGE_EVERY.saturating_sub(page_started.elapsed());
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(rest) => {}
            }
        }
    }
}

/// Mark the events a sink accepted delivered, in one write. A failure leaves them pending: they
/// are sent again later, with the same ids (at least once).
async fn mark_delivered(d: &Daemon, name: &str, keys: Vec<OutboxKey>) {
    if keys.is_empty() {
        return;
    }
    if let Err(e) = d.store.mark_delivered(keys).await {
        tracing::warn!(sink = %name, error = %e, "notify: cannot mark events delivered");
    }
}

/// Mark an event dead; the first of a run also raises `daemon.alarm` for the other sinks, in the
/// same write.
async fn give_up(
    d: &Daemon,
    name: &str,
    entry: &OutboxEntry,
    error: &str,
    now: i64,
    alarmed: &mut bool,
) {
    let alarm = (!*alarmed).then(|| {
        let n = Notice::new("daemon.alarm", now)
            .field("alarm", "notify_giving_up")
            .field("sink", name)
            .field("lastError", error)
            .field(
                "message",
                format!("events for sink {name} are being given up on; `orchctl notify retry {name}` sends them again"),
            );
        Notice {
            except_sink: Some(name.to_string()),
            ..n
        }
    });
    tracing::error!(sink = %name, event = %entry.event_id, %error, "notify: giving up on an event");
    // The last error stays with the event, for `orchctl notify list`.
    let _ = d
        .store
        .mark_attempt_failed(entry.key.clone(), error.to_string())
        .await;
    match d.store.mark_dead(vec![entry.clone()], now, alarm).await {
        Ok(()) => *alarmed = true,
        Err(e) => tracing::warn!(sink = %name, error = %e, "notify: cannot mark an event dead"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(writes: u64, commits: u64) -> WriteLoad {
        WriteLoad { writes, commits }
    }

    #[test]
    fn the_store_is_busy_when_its_commits_hold_many_writes() {
        let mut l = Load::new(load(0, 0));
        // Within the first window nothing is judged.
        assert!(!l.busy(load(1_000, 10)));
        l.since -= LOAD_WINDOW;
        // 1,000 writes in 10 commits: groups of 100, a crowd.
        assert!(l.busy(load(1_000, 10)));
        // The verdict holds until the next window has passed.
        assert!(l.busy(load(1_001, 1_001)));
        l.since -= LOAD_WINDOW;
        // One write per commit since: one client at a time.
        assert!(!l.busy(load(1_500, 510)));
        l.since -= LOAD_WINDOW;
        // Nothing written: quiet.
        assert!(!l.busy(load(1_500, 510)));
    }
}
