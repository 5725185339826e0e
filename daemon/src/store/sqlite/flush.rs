//! Commits flushed beside the writer.
//!
//! The writer commits with `synchronous = NORMAL`: SQLite writes a commit's frames to the log and
//! returns without flushing them. The flush (`fdatasync` of the log) is done here, and only once it
//! has returned is a commit *settled*: its requests answered, its trajectory events published, its
//! counts moved, the outbox woken. So an acknowledged write is on disk, as at `FULL`, but the
//! writer runs the next group while the disk flushes the last one, instead of waiting for it. One
//! flush covers every commit written before it began, however many queued up meanwhile
//! (docs/ARCHITECTURE.md, "Invariants": reply after durable commit).
//!
//! When the writer's group was a single job, no other is waiting and nothing is being flushed
//! here, the writer flushes and settles the commit itself: one caller at a time would otherwise pay
//! a hand-off between threads for nothing. Under load it never does, even with no job waiting yet:
//! the callers' next requests arrive while the flush runs, and the writer must be free to take them
//! (docs/BENCHMARKS.md, "Flushing beside the writer").
//!
//! Everything a transaction ends with goes through here in commit order, failures included, so
//! that no answer reveals a commit that is not yet flushed, and events are published in order.
//!
//! `NORMAL` keeps the file consistent on its own: SQLite still flushes the log before every
//! checkpoint and the database file after it. A commit written but not yet flushed is what a
//! machine crash can lose, and no one has been told of it. A crash of the daemon alone loses
//! nothing written: the kernel holds it.

use crate::store::StoreError;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// What a transaction does once the flush that covers it has returned; given the flush's outcome.
pub(super) type Settle = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Flushes the log; the log file itself, or a stand-in in tests.
pub(super) type FlushLog = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// A transaction's end, waiting for a flush.
pub(super) struct Pending {
    /// It committed. A transaction rolled back needs no flush, but still waits for the commits
    /// before it.
    pub committed: bool,
    pub settle: Settle,
}

#[derive(Default)]
struct State {
    queue: Vec<Pending>,
    /// The thread is flushing or settling what it took from the queue.
    busy: bool,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// How far flushed commits reach into what delivery reads, so that a sink is sent nothing a
/// machine crash could still take back: readers see a commit as soon as it is written, before its
/// flush returns. Two things are read:
///
/// - the event log, read up to [`Marks::events`]: events carry their own numbers, so a mark of the
///   highest flushed one is enough;
/// - rows of the `outbox` table (notices, events sent again), which a commit may also make pending
///   again: no number orders them by commit, so commits that write them are counted, the count
///   raised *before* the commit, and delivery holds back the rows it read unless every counted
///   commit has been flushed by then ([`Marks::rows_flushed`]).
///
/// Each commit's settle carries what had been written up to it ([`Covered`]), not only its own
/// writes: a flush covers everything written before it, so the first flush that succeeds after a
/// failed one releases what that one held, and wakes delivery for it.
pub(super) struct Marks {
    /// The highest event number committed. Only the writer moves it.
    written_events: AtomicI64,
    /// Commits that wrote `outbox` rows (or made rows pending again), counted before each commit.
    /// Only the writer moves it.
    written_rows: AtomicU64,
    flushed_events: AtomicI64,
    flushed_rows: AtomicU64,
    /// A flush failed and no flush has succeeded since: what it held waits for the next success.
    failed: AtomicBool,
}

/// What a commit's flush covers: everything written up to and including that commit.
#[derive(Clone, Copy)]
pub(super) struct Covered {
    events: i64,
    rows: u64,
}

impl Marks {
    /// At open every event in the store counts as flushed: the last daemon left them to the
    /// kernel, which writes them out.
    pub(super) fn new(last_event: i64) -> Marks {
        Marks {
            written_events: AtomicI64::new(last_event),
            written_rows: AtomicU64::new(0),
            flushed_events: AtomicI64::new(last_event),
            flushed_rows: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }
    }

    /// Before a commit that wrote `outbox` rows: count it. Answers its number, for
    /// [`Marks::rows_not_committed`].
    pub(super) fn rows_commit(&self) -> u64 {
        self.written_rows.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The commit counted as `n` failed: nothing of it can be read, and nothing is left to flush.
    pub(super) fn rows_not_committed(&self, n: u64) {
        let _ = self.written_rows.compare_exchange(
            n,
            n.saturating_sub(1),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// After a commit whose last event is `last_event`: what its flush will cover.
    pub(super) fn committed(&self, last_event: Option<i64>) -> Covered {
        if let Some(seq) = last_event {
            self.written_events.fetch_max(seq, Ordering::SeqCst);
        }
        Covered {
            events: self.written_events.load(Ordering::SeqCst),
            rows: self.written_rows.load(Ordering::SeqCst),
        }
    }

    /// The flush covering `covered` returned, `ok` or not. Answers whether it released what an
    /// earlier failed flush held, so that delivery must be woken for it.
    pub(super) fn settled(&self, covered: Covered, ok: bool) -> bool {
        if !ok {
            self.failed.store(true, Ordering::SeqCst);
            return false;
        }
        self.flushed_events
            .fetch_max(covered.events, Ordering::SeqCst);
        self.flushed_rows.fetch_max(covered.rows, Ordering::SeqCst);
        self.failed.swap(false, Ordering::SeqCst)
    }

    /// The highest event number whose commit has been flushed.
    pub(super) fn events(&self) -> i64 {
        self.flushed_events.load(Ordering::SeqCst)
    }

    /// Whether every commit that wrote `outbox` rows so far has been flushed. Asked after the rows
    /// were read: each commit the read saw was counted before it, so before this call.
    pub(super) fn rows_flushed(&self) -> bool {
        let written = self.written_rows.load(Ordering::SeqCst);
        self.flushed_rows.load(Ordering::SeqCst) >= written
    }
}

/// The write-ahead log file of the store `conn` is open on, named as SQLite names it (links in the
/// path resolved); `None` for a store without a file.
pub(super) fn log_file(conn: &rusqlite::Connection) -> Option<String> {
    conn.path()
        .filter(|p| !p.is_empty())
        .map(|db| format!("{db}-wal"))
}

/// The flush thread, or none: then the writer commits at `FULL` and settles each commit itself.
pub(super) struct Flusher {
    inner: Option<(Arc<Shared>, FlushLog, JoinHandle<()>)>,
}

impl Flusher {
    /// No thread: commits flush themselves (`synchronous = FULL`).
    pub(super) fn inline() -> Flusher {
        Flusher { inner: None }
    }

    /// A thread flushing the log of the store `conn` writes (its `-wal` file, which a commit of
    /// `conn` has created). The file's name comes from SQLite, which resolves links in the path.
    pub(super) fn for_log_of(conn: &rusqlite::Connection) -> std::io::Result<Flusher> {
        let log = log_file(conn).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the store has no file")
        })?;
        let file = File::open(log)?;
        Flusher::start(Arc::new(move || file.sync_data()))
    }

    /// A thread flushing with `sync`.
    pub(super) fn start(sync: FlushLog) -> std::io::Result<Flusher> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let thread = {
            let (shared, sync) = (Arc::clone(&shared), Arc::clone(&sync));
            std::thread::Builder::new()
                .name("store-flush".into())
                .spawn(move || run(&shared, &sync))?
        };
        Ok(Flusher {
            inner: Some((shared, sync, thread)),
        })
    }

    /// Whether commits need the writer connection at `synchronous = FULL` (no thread flushes them).
    pub(super) fn is_inline(&self) -> bool {
        self.inner.is_none()
    }

    /// Hand over the end of a transaction; ends are handed in commit order. `alone`: the writer
    /// has no job waiting, so it may flush and settle it itself if nothing is queued or being
    /// flushed.
    pub(super) fn hand(&self, pending: Pending, alone: bool) {
        let Some((shared, sync, _)) = &self.inner else {
            // Each commit flushed itself.
            settle(vec![pending], Ok(()));
            return;
        };
        {
            let Ok(mut state) = shared.state.lock() else {
                // Poisoned, which nothing here does while holding the lock: settle rather than wait.
                flush_and_settle(vec![pending], sync);
                return;
            };
            if !(alone && state.queue.is_empty() && !state.busy) {
                state.queue.push(pending);
                shared.wake.notify_one();
                return;
            }
        }
        // Only the writer queues, so the thread stays idle while the writer settles this one.
        flush_and_settle(vec![pending], sync);
    }

    /// Settle everything handed over and end the thread.
    pub(super) fn stop(&mut self) {
        let Some((shared, _, thread)) = self.inner.take() else {
            return;
        };
        if let Ok(mut state) = shared.state.lock() {
            state.closed = true;
            shared.wake.notify_one();
        }
        let _ = thread.join();
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Until closed and drained: take everything queued, flush once, settle it in order.
fn run(shared: &Shared, sync: &FlushLog) {
    loop {
        let taken = {
            let Ok(mut state) = shared.state.lock() else {
                return;
            };
            while state.queue.is_empty() && !state.closed {
                state = match shared.wake.wait(state) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            if state.queue.is_empty() {
                return;
            }
            state.busy = true;
            std::mem::take(&mut state.queue)
        };
        flush_and_settle(taken, sync);
        if let Ok(mut state) = shared.state.lock() {
            state.busy = false;
        }
    }
}

/// Flush once if any of `pending` committed, then settle each with the flush's outcome.
fn flush_and_settle(pending: Vec<Pending>, sync: &FlushLog) {
    let flushed = if pending.iter().any(|p| p.committed) {
        sync().map_err(flush_error)
    } else {
        Ok(())
    };
    if let Err(e) = &flushed {
        tracing::error!(error = %e, "store: cannot flush the log; the writes it held are answered with this error");
    }
    settle(pending, flushed);
}

/// Settle each of `pending`, in order, with `flushed`.
fn settle(pending: Vec<Pending>, flushed: Result<(), StoreError>) {
    for p in pending {
        // A settle that panics (none should) loses its own answers, whose callers then hear that
        // the store closed, and not the thread: the commits after it must still be settled.
        let ran =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (p.settle)(flushed.clone())));
        if let Err(panic) = ran {
            tracing::error!(
                panic = %crate::supervisor::panic_message(panic),
                "store: settling a commit panicked; its callers are told the store closed"
            );
        }
    }
}

/// The answer of every write a failed flush held. Not [`StoreError::Full`] even when the disk is
/// full: that one says nothing was written, and these writes are committed.
fn flush_error(e: std::io::Error) -> StoreError {
    StoreError::Sql(format!(
        "the log could not be flushed to disk, so this write is committed but may not survive a machine crash: {e}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::outbox::OutboxEntry;
    use crate::store::sqlite::batch::{Batch, Isolation};
    use crate::store::sqlite::tests::new_task;
    use crate::store::sqlite::{SqliteBackend, WRITER_TASK};
    use crate::store::Backend;
    use orchestrator_proto::task::{TaskKind, TaskState};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    /// Long enough for anything in these tests to happen; only reached when something is broken.
    const BOUND: Duration = Duration::from_secs(30);

    /// A flush that says when it begins, on which thread, and returns what the test sends it, and
    /// counts its calls. A flush begun while another runs returns at once and is counted in
    /// `overlapping`.
    struct Held {
        entered: mpsc::Receiver<String>,
        release: mpsc::Sender<std::io::Result<()>>,
        calls: Arc<AtomicUsize>,
        overlapping: Arc<AtomicUsize>,
    }

    fn held() -> (Held, FlushLog) {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let release_rx = Mutex::new(release_rx);
        let calls = Arc::new(AtomicUsize::new(0));
        let overlapping = Arc::new(AtomicUsize::new(0));
        let (counted, overlaps) = (Arc::clone(&calls), Arc::clone(&overlapping));
        let sync: FlushLog = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let Ok(rx) = release_rx.try_lock() else {
                overlaps.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            };
            let thread = std::thread::current().name().unwrap_or("").to_string();
            let _ = entered_tx.send(thread);
            // Bounded, so that a failing test does not hang in dropping a flusher it holds.
            rx.recv_timeout(BOUND).unwrap_or(Ok(()))
        });
        (
            Held {
                entered,
                release,
                calls,
                overlapping,
            },
            sync,
        )
    }

    /// The commits settled: each one's number and the thread it was settled on.
    type Log = Arc<Mutex<Vec<(u32, String)>>>;

    fn order(log: &Log) -> Vec<u32> {
        log.lock().unwrap().iter().map(|(n, _)| *n).collect()
    }

    /// A commit's end that notes its number and the thread it was settled on in `log`.
    fn noted(n: u32, committed: bool, log: &Log) -> Pending {
        let log = Arc::clone(log);
        Pending {
            committed,
            settle: Box::new(move |_| {
                let thread = std::thread::current().name().unwrap_or("").to_string();
                log.lock().unwrap().push((n, thread));
            }),
        }
    }

    #[test]
    fn one_flush_covers_what_queued_while_the_last_ran_and_order_is_kept() {
        let (held, sync) = held();
        let mut flusher = Flusher::start(sync).unwrap();
        let log = Log::default();
        flusher.hand(noted(1, true, &log), false);
        held.entered.recv_timeout(BOUND).unwrap();
        // While the first flush runs: the writer has nothing waiting, but must not answer ahead
        // of the commit being flushed.
        flusher.hand(noted(2, true, &log), true);
        flusher.hand(noted(3, false, &log), false);
        flusher.hand(noted(4, true, &log), false);
        assert!(log.lock().unwrap().is_empty(), "settled before its flush");
        held.release.send(Ok(())).unwrap();
        held.entered.recv_timeout(BOUND).unwrap();
        held.release.send(Ok(())).unwrap();
        flusher.stop();
        assert_eq!(order(&log), vec![1, 2, 3, 4]);
        let log = log.lock().unwrap().clone();
        assert!(log.iter().all(|(_, t)| t == "store-flush"), "{log:?}");
        assert_eq!(held.overlapping.load(Ordering::SeqCst), 0);
        assert_eq!(held.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_writer_alone_flushes_and_settles_itself_and_nothing_written_needs_no_flush() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let flusher = Flusher::start(Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }))
        .unwrap();
        let log = Log::default();
        flusher.hand(noted(1, false, &log), true);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "a flush for nothing written"
        );
        flusher.hand(noted(2, true, &log), true);
        // Settled before `hand` returned, on this thread, after one flush.
        let log = log.lock().unwrap().clone();
        let here = std::thread::current().name().unwrap_or("").to_string();
        assert_eq!(log, vec![(1, here.clone()), (2, here)]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_settle_that_panics_leaves_the_commits_after_it_settled() {
        let (held, sync) = held();
        let flusher = Flusher::start(sync).unwrap();
        let log = Log::default();
        let (tx, answer) = mpsc::channel::<()>();
        let panics = Pending {
            committed: true,
            settle: Box::new(move |_| {
                let _kept_until_the_panic = tx;
                panic!("a settle that panics");
            }),
        };
        // The three ends queue while a first flush is held, so that one flush settles them all.
        flusher.hand(noted(1, true, &log), false);
        held.entered.recv_timeout(BOUND).unwrap();
        flusher.hand(panics, false);
        flusher.hand(noted(2, true, &log), false);
        flusher.hand(noted(3, true, &log), false);
        held.release.send(Ok(())).unwrap();
        held.entered.recv_timeout(BOUND).unwrap();
        held.release.send(Ok(())).unwrap();
        drop(flusher);
        // The panicking settle's caller hears the end of its channel, the others their answers.
        assert!(answer.recv_timeout(BOUND).is_err());
        assert_eq!(order(&log), vec![1, 2, 3]);
        assert_eq!(held.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn stopping_settles_everything_handed_over() {
        let (held, sync) = held();
        let mut flusher = Flusher::start(sync).unwrap();
        let log = Log::default();
        flusher.hand(noted(1, true, &log), false);
        held.entered.recv_timeout(BOUND).unwrap();
        flusher.hand(noted(2, true, &log), false);
        // Both flushes may go ahead; `stop` returns once the thread has settled both.
        held.release.send(Ok(())).unwrap();
        held.release.send(Ok(())).unwrap();
        flusher.stop();
        assert_eq!(order(&log), vec![1, 2]);
    }

    /// A store in a directory of its own whose log is flushed by a [`held`] flush.
    fn held_store() -> (tempfile::TempDir, Held, SqliteBackend) {
        let dir = tempfile::tempdir().unwrap();
        let (held, sync) = held();
        let store = SqliteBackend::open_with(&dir.path().join("state.db"), Some(sync)).unwrap();
        (dir, held, store)
    }

    /// Queue an insert of `id` and return where its answer arrives.
    fn queue_insert(
        store: &SqliteBackend,
        id: &'static str,
    ) -> tokio::sync::oneshot::Receiver<Result<(), StoreError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        store
            .submit_job(
                move |b| b.insert_task(new_task(id), "alice").map(|_| ()),
                tx,
                Isolation::Savepoint,
            )
            .unwrap();
        rx
    }

    fn stored(store: &SqliteBackend, id: &'static str) -> bool {
        store
            .read_blocking(move |c| crate::store::sqlite::queries::get_task(c, id))
            .unwrap()
            .is_some()
    }

    #[test]
    fn a_write_is_answered_and_published_only_once_the_log_is_flushed() {
        let (_dir, held, store) = held_store();
        let mut events = store.subscribe();
        let mut answer = queue_insert(&store, "T1");
        // One caller at a time: the writer flushes its commit itself.
        assert_eq!(held.entered.recv_timeout(BOUND).unwrap(), WRITER_TASK);
        // Committed, so readers see it; but its caller and the watchers hear nothing yet.
        assert!(stored(&store, "T1"));
        assert_unheard(&store, &mut [&mut answer], &mut events);
        held.release.send(Ok(())).unwrap();
        assert_eq!(answer.blocking_recv().unwrap(), Ok(()));
        assert_eq!(events.try_recv().unwrap().task_id, "T1");
        assert_eq!(
            store.counts().get(TaskKind::Synthetic, TaskState::Queued),
            1
        );
    }

    /// Nothing of a commit has been heard: no answer, no event, the counts as they were (none).
    fn assert_unheard(
        store: &SqliteBackend,
        answers: &mut [&mut tokio::sync::oneshot::Receiver<Result<(), StoreError>>],
        events: &mut tokio::sync::broadcast::Receiver<orchestrator_proto::task::TrajectoryEvent>,
    ) {
        for answer in answers.iter_mut() {
            assert!(matches!(
                answer.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
            ));
        }
        assert!(matches!(
            events.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ));
        assert_eq!(
            store.counts().get(TaskKind::Synthetic, TaskState::Queued),
            0
        );
    }

    /// Hold the writer inside a job of its own (which inserts `H`) until the returned sender
    /// sends, so that the jobs queued meanwhile make its next group. The held job is a group of
    /// its own and fails after writing: its transaction is rolled back and needs no flush. The
    /// receiver hears its failure.
    fn hold_writer(
        store: &SqliteBackend,
    ) -> (
        mpsc::Sender<()>,
        tokio::sync::oneshot::Receiver<Result<(), StoreError>>,
    ) {
        let (inside_tx, inside_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (holder_tx, holder) = tokio::sync::oneshot::channel();
        store
            .submit_job(
                move |b| {
                    let _ = inside_tx.send(());
                    let _ = release_rx.recv_timeout(BOUND);
                    b.insert_task(new_task("H"), "alice")?;
                    Err::<(), _>(StoreError::Sql("the held job fails".into()))
                },
                holder_tx,
                Isolation::Bare,
            )
            .unwrap();
        inside_rx.recv_timeout(BOUND).unwrap();
        (release_tx, holder)
    }

    #[test]
    fn a_group_is_answered_and_published_only_once_the_flush_thread_has_flushed_it() {
        let (_dir, held, store) = held_store();
        let mut events = store.subscribe();
        // Hold the writer while two inserts queue behind it: they make the next group, with
        // nothing behind it.
        let (release_tx, holder) = hold_writer(&store);
        let (mut first, mut second) = (queue_insert(&store, "T1"), queue_insert(&store, "T2"));
        release_tx.send(()).unwrap();
        // A group of two is flushed by the flush thread, and that is the only flush.
        assert_eq!(held.entered.recv_timeout(BOUND).unwrap(), "store-flush");
        assert!(stored(&store, "T1") && stored(&store, "T2") && !stored(&store, "H"));
        assert_unheard(&store, &mut [&mut first, &mut second], &mut events);
        held.release.send(Ok(())).unwrap();
        assert!(matches!(
            holder.blocking_recv().unwrap(),
            Err(StoreError::Sql(_))
        ));
        assert_eq!(first.blocking_recv().unwrap(), Ok(()));
        assert_eq!(second.blocking_recv().unwrap(), Ok(()));
        let published: Vec<String> = (0..2).map(|_| events.try_recv().unwrap().task_id).collect();
        assert_eq!(published, vec!["T1", "T2"]);
        assert_eq!(
            store.counts().get(TaskKind::Synthetic, TaskState::Queued),
            2
        );
        assert_eq!(held.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_log_a_store_flushes_is_the_one_sqlite_writes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::sqlite::open_connection(
            &dir.path().join("state.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_CREATE,
        )
        .unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        assert!(dir.path().join("state.db-wal").exists());
        let mut flusher = Flusher::for_log_of(&conn).unwrap();
        assert!(!flusher.is_inline());
        flusher.stop();
        // A store without a file has no log to flush: its commits flush themselves.
        let memory = rusqlite::Connection::open_in_memory().unwrap();
        assert!(Flusher::for_log_of(&memory).is_err());
    }

    #[test]
    fn a_failed_flush_is_its_writes_answer_and_the_next_flush_answers_again() {
        let (_dir, held, store) = held_store();
        let answer = queue_insert(&store, "T1");
        held.entered.recv_timeout(BOUND).unwrap();
        held.release
            .send(Err(std::io::Error::other("the device went away")))
            .unwrap();
        match answer.blocking_recv().unwrap() {
            Err(StoreError::Sql(why)) => {
                assert!(why.contains("could not be flushed"), "{why}");
                assert!(why.contains("the device went away"), "{why}");
            }
            other => panic!("expected the flush's failure, got {other:?}"),
        }
        // The commit stands: what others read follows it.
        assert!(stored(&store, "T1"));
        let answer = queue_insert(&store, "T2");
        held.entered.recv_timeout(BOUND).unwrap();
        held.release.send(Ok(())).unwrap();
        assert_eq!(answer.blocking_recv().unwrap(), Ok(()));
        assert_eq!(
            store.counts().get(TaskKind::Synthetic, TaskState::Queued),
            2
        );
    }

    /// Queue a batch of the sweep's (one expiry, as the sweeper would: bare) that calls `first`
    /// when the writer starts it; return where its expired ids arrive.
    fn queue_expiry(
        store: &SqliteBackend,
        first: impl FnOnce() + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<Result<Vec<String>, StoreError>> {
        // Ten years on: whatever the task's expiry, it is due.
        let due = crate::clock::now_ms() + 10 * 365 * 86_400_000;
        let (tx, rx) = tokio::sync::oneshot::channel();
        store
            .submit_job(
                move |b| {
                    first();
                    b.expire_due(due, 1, "sweeper")
                },
                tx,
                Isolation::Bare,
            )
            .unwrap();
        rx
    }

    /// Two of the sweep's batches queued together commit one by one: the first is handed to the
    /// flush thread as soon as it commits, and flushed while the writer runs the second; each is
    /// answered after its own flush, in order.
    #[test]
    fn a_sweep_batch_is_flushed_while_the_writer_runs_the_next() {
        let (_dir, held, store) = held_store();
        for id in ["T1", "T2"] {
            let answer = queue_insert(&store, id);
            held.entered.recv_timeout(BOUND).unwrap();
            held.release.send(Ok(())).unwrap();
            assert_eq!(answer.blocking_recv().unwrap(), Ok(()));
        }
        let flushes_before = held.calls.load(Ordering::SeqCst);

        let (release_tx, holder) = hold_writer(&store);
        let (second_started_tx, second_started) = mpsc::channel();
        let (go_on_tx, go_on) = mpsc::channel::<()>();
        let mut first = queue_expiry(&store, || {});
        let mut second = queue_expiry(&store, move || {
            let _ = second_started_tx.send(());
            let _ = go_on.recv_timeout(BOUND);
        });
        release_tx.send(()).unwrap();
        // The second batch has begun and waits, while the first one's commit is being flushed.
        second_started.recv_timeout(BOUND).unwrap();
        assert_eq!(held.entered.recv_timeout(BOUND).unwrap(), "store-flush");
        let expired_first = store
            .read_blocking(|c| {
                crate::store::sqlite::queries::list_tasks(
                    c,
                    &crate::store::TaskFilter {
                        state: Some(TaskState::Expired),
                        limit: 10,
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        assert_eq!(expired_first.len(), 1, "the first batch is committed");
        assert!(matches!(
            first.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ));
        go_on_tx.send(()).unwrap();
        held.release.send(Ok(())).unwrap();
        let first = first.blocking_recv().unwrap().unwrap();
        assert_eq!(first, vec![expired_first[0].id.clone()]);
        // The second batch's commit has a flush of its own.
        assert_eq!(held.entered.recv_timeout(BOUND).unwrap(), "store-flush");
        assert!(matches!(
            second.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ));
        held.release.send(Ok(())).unwrap();
        let second = second.blocking_recv().unwrap().unwrap();
        assert_eq!(second.len(), 1);
        assert_ne!(first, second);
        assert!(matches!(
            holder.blocking_recv().unwrap(),
            Err(StoreError::Sql(_))
        ));
        assert_eq!(held.calls.load(Ordering::SeqCst), flushes_before + 2);
        assert_eq!(held.overlapping.load(Ordering::SeqCst), 0);
    }

    /// One write of a test, run alone in a savepoint.
    type Job = Box<dyn FnOnce(&mut Batch<'_>) -> Result<(), StoreError> + Send>;
    type Answer = tokio::sync::oneshot::Receiver<Result<(), StoreError>>;

    /// A store whose flushes are held, with one sink, `phone`, that wants every event (its place
    /// in the log committed and flushed), and a runtime to read the sink's pending events with.
    fn sink_store() -> (
        tempfile::TempDir,
        Held,
        SqliteBackend,
        tokio::runtime::Runtime,
    ) {
        use crate::store::contract::{rules, sink};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (dir, held, store) = held_store();
        store.set_outbox_rules(rules(vec![sink("phone", &["*"])]));
        held.entered.recv_timeout(BOUND).unwrap();
        held.release.send(Ok(())).unwrap();
        (dir, held, store, rt)
    }

    /// What the sink `phone` would be sent now.
    fn pending(rt: &tokio::runtime::Runtime, store: &SqliteBackend) -> Vec<OutboxEntry> {
        rt.block_on(store.outbox_pending("phone", 10)).unwrap()
    }

    /// Queue `job` and wait until the flush of its commit has begun, and is held.
    fn queue_held(store: &SqliteBackend, held: &Held, job: Job) -> Answer {
        let (tx, answer) = tokio::sync::oneshot::channel();
        store.submit_job(job, tx, Isolation::Savepoint).unwrap();
        held.entered.recv_timeout(BOUND).unwrap();
        answer
    }

    /// Let the held flush return `flushed`; the job's answer.
    fn release(
        held: &Held,
        answer: Answer,
        flushed: std::io::Result<()>,
    ) -> Result<(), StoreError> {
        held.release.send(flushed).unwrap();
        answer.blocking_recv().unwrap()
    }

    /// `job` queued and its flush answered with `flushed`; the job's answer.
    fn run(
        store: &SqliteBackend,
        held: &Held,
        job: Job,
        flushed: std::io::Result<()>,
    ) -> Result<(), StoreError> {
        release(held, queue_held(store, held, job), flushed)
    }

    /// Insert the live task `id`, which sinks hear of once it waits or ends.
    fn insert_live(id: &'static str) -> Job {
        let task = crate::store::NewTask {
            kind: TaskKind::Live,
            ..new_task(id)
        };
        Box::new(move |b| b.insert_task(task, "alice").map(|_| ()))
    }

    /// Cancel the task `id`.
    fn cancel(id: &'static str) -> Job {
        let op = crate::store::TransitionOp::new(
            id,
            crate::machine::Action::Cancel,
            "alice",
            crate::clock::now_ms(),
        );
        Box::new(move |b| b.transition(op).map(|_| ()))
    }

    /// Delivery reads the event log only up to the last flushed commit: a cancel that is
    /// committed, and readable, but not yet flushed is not handed to a sink; once its flush
    /// returns, it is.
    #[test]
    fn a_sink_is_sent_an_event_only_once_its_commit_is_flushed() {
        let (_dir, held, store, rt) = sink_store();
        assert_eq!(run(&store, &held, insert_live("T1"), Ok(())), Ok(()));
        assert!(
            pending(&rt, &store).is_empty(),
            "a queued task notifies no one"
        );

        let cancelled = queue_held(&store, &held, cancel("T1"));
        let read = store
            .read_blocking(|c| crate::store::sqlite::queries::get_task(c, "T1"))
            .unwrap()
            .unwrap();
        assert_eq!(read.state, TaskState::Cancelled, "committed and readable");
        assert!(
            pending(&rt, &store).is_empty(),
            "sent before its commit was flushed"
        );
        assert_eq!(release(&held, cancelled, Ok(())), Ok(()));
        let sent = pending(&rt, &store);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].task_id.as_deref(), Some("T1"));
        assert_eq!(sent[0].event_type, "task.cancelled");
    }

    /// Rows of the `outbox` table are held back like the log's events: a notice committed, and
    /// readable, is not handed to a sink before its flush returns. A dead row made pending again
    /// is held back the same way.
    #[test]
    fn a_sink_is_sent_an_outbox_row_only_once_its_commit_is_flushed() {
        use crate::store::outbox::{Notice, OutboxKey};
        let (_dir, held, store, rt) = sink_store();
        let rows = || {
            store
                .read_blocking(|c| {
                    Ok(c.query_row(
                        "SELECT count(*) FROM outbox WHERE state = 'pending'",
                        [],
                        |r| r.get::<_, i64>(0),
                    )?)
                })
                .unwrap()
        };

        let notice = Notice::new("mode.changed", 1).field("to", "live");
        let queued = queue_held(
            &store,
            &held,
            Box::new(move |b| b.enqueue_notice(&notice).map(|_| ())),
        );
        assert_eq!(rows(), 1, "committed and readable");
        assert!(
            pending(&rt, &store).is_empty(),
            "sent before its commit was flushed"
        );
        assert_eq!(release(&held, queued, Ok(())), Ok(()));
        let sent = pending(&rt, &store);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].event_type, "mode.changed");

        // Given up on, then made pending again while the flush is held.
        let entries = sent.clone();
        let dead = run(
            &store,
            &held,
            Box::new(move |b| b.outbox_dead(&entries, 2, None)),
            Ok(()),
        );
        assert_eq!(dead, Ok(()));
        assert!(pending(&rt, &store).is_empty(), "a dead row is not pending");
        let retried = queue_held(
            &store,
            &held,
            Box::new(|b| b.outbox_retry_dead("phone", 3).map(|_| ())),
        );
        assert_eq!(rows(), 1, "made pending and readable");
        assert!(
            pending(&rt, &store).is_empty(),
            "sent again before its commit was flushed"
        );
        assert_eq!(release(&held, retried, Ok(())), Ok(()));
        let again = pending(&rt, &store);
        assert_eq!(again.len(), 1, "{again:?}");
        assert_eq!(again[0].key, sent[0].key);
        assert!(matches!(again[0].key, OutboxKey::Row(_)));
    }

    /// What a failed flush held is released by the next flush that succeeds, even one of a commit
    /// that wrote no event and no row, and delivery is woken for it.
    #[test]
    fn what_a_failed_flush_held_is_sent_after_the_next_flush_that_succeeds() {
        let (_dir, held, store, rt) = sink_store();
        assert_eq!(run(&store, &held, insert_live("T1"), Ok(())), Ok(()));
        let mut signal = store.outbox_signal();
        signal.borrow_and_update();

        let failed = Err(std::io::Error::other("the disk went away"));
        let cancelled = run(&store, &held, cancel("T1"), failed);
        assert!(
            matches!(cancelled, Err(StoreError::Sql(_))),
            "{cancelled:?}"
        );
        assert!(
            pending(&rt, &store).is_empty(),
            "sent what no flush covered"
        );
        signal.borrow_and_update();

        // A commit with nothing for any sink, flushed.
        assert_eq!(run(&store, &held, Box::new(|_| Ok(())), Ok(())), Ok(()));
        assert!(signal.has_changed().unwrap(), "delivery was not woken");
        let sent = pending(&rt, &store);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].event_type, "task.cancelled");
    }
}
