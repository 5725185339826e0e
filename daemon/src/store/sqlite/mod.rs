//! The SQLite backend: WAL mode, the log flushed before any reply.
//!
//! One writer thread owns the only writing connection. Callers hand it jobs; it takes every job
//! waiting at that moment, runs them in one transaction, and commits them together — one flush for
//! many requests (group commit). The commit itself does not flush (`synchronous = NORMAL`): a
//! thread of its own flushes the log (`fdatasync`) while the writer runs the next group, and a
//! job's reply is released only after that flush returned, so an acknowledged write is on disk
//! ([`flush`]). A job that fails leaves the rest of the group untouched: most
//! jobs run in a savepoint of their own and roll back to it; the hot ones (a submit worked out
//! beforehand, a transition, the sweep's expiries) run bare, because they can only fail before
//! their first write or when the store itself fails ([`Batch::bare`]). Should a bare job fail after
//! writing anyway, the transaction is rolled back, every job that ran in it is answered with that
//! failure, and the rest of the group goes on in a new transaction.
//!
//! A job that panics fails like one that returned an error (see [`Batch`]); should the writer
//! thread itself end while the store is open, [`SqliteBackend::writer_ended`] says why, and the
//! daemon's supervisor stops the daemon (see [`crate::supervisor`]).
//!
//! Reads go to a small pool of read connections on blocking threads; WAL lets them run while the
//! writer commits.
//!
//! Health ([`Health`]): the writer notes when commits start failing for a full disk and when one
//! succeeds again (one log line each way, however many requests fail in between). The integrity
//! check runs on a read connection, never before the daemon is ready; a store it finds damaged
//! refuses every write from then on.

pub(crate) mod agents;
mod backend;
mod batch;
mod checkpoint;
mod flush;
pub mod goal_index;
mod integrity;
pub mod outbox;
pub mod queries;
mod rows;
mod schema;
mod writes;

pub use batch::Batch;
use batch::Isolation;
pub use schema::SCHEMA_VERSION;

use crate::clock::now_ms;
use crate::fault::{How, When};
use crate::store::outbox::OutboxRules;
use crate::store::{Counts, Health, StoreError};
use orchestrator_proto::task::{TaskKind, TaskState, TrajectoryEvent};
use orchestrator_proto::ErrorCode;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot, watch};

/// Most jobs committed in one transaction; bounds the latency of the first job in a burst.
const MAX_GROUP: usize = 2048;
/// Meta key: "1" while the store is closed after an orderly shutdown, "0" while a daemon has it open.
const CLOSED_CLEANLY: &str = "store_closed_cleanly";

/// Set the [`CLOSED_CLEANLY`] marker: closed in order, or open in a daemon.
fn mark_closed_cleanly(conn: &Connection, closed: bool) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
        [CLOSED_CLEANLY, if closed { "1" } else { "0" }],
    )
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if is_disk_full(&e) {
            StoreError::Full(e.to_string())
        } else {
            StoreError::Sql(e.to_string())
        }
    }
}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A job runs against the group's batch, or against `None` when the group could not start; either
/// way it returns the completion that answers its caller once the outcome of the commit is known.
type Job = Box<dyn FnOnce(Option<&mut Batch<'_>>) -> Completion + Send>;

/// The SQLite store; see the module documentation.
#[derive(Clone)]
pub struct SqliteBackend {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    readers: Mutex<Vec<Connection>>,
    counts: Arc<Mutex<Counts>>,
    events: broadcast::Sender<TrajectoryEvent>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    health: Arc<Mutex<Health>>,
    /// Set once, by the writer thread as it ends: why it ended.
    writer_end: watch::Receiver<Option<String>>,
    /// Failed operations, for `orchestrator_store_errors_total`.
    errors: std::sync::atomic::AtomicU64,
    /// Write jobs queued since the store opened.
    writes: std::sync::atomic::AtomicU64,
    outbox: Arc<Writer>,
    /// Set when the store closes: an integrity check stops at its next progress callback (its
    /// snapshot would hold the writer's last checkpoint back for up to the busy timeout), and none
    /// starts after it.
    closing: std::sync::atomic::AtomicBool,
}

/// What the writer shares with the handles besides its job queue: the outbox rules it writes rows
/// by, the signal it raises after a commit that wrote some, and the count of its groups.
pub(super) struct Writer {
    pub rules: RwLock<Option<Arc<OutboxRules>>>,
    pub written: watch::Sender<u64>,
    /// Per sink, a position in the event log up to which a read found nothing the sink wants past
    /// its place: the next read starts there (forgotten when new rules are installed).
    pub nothing_until: Mutex<std::collections::HashMap<String, i64>>,
    /// Bumped by every installation of rules: a read started under older rules leaves no hint.
    pub rules_installed: std::sync::atomic::AtomicU64,
    /// Group commits run since the store opened.
    pub groups: std::sync::atomic::AtomicU64,
    /// Of those, the committed groups with bulk work: the integrity check gives way while they
    /// come (see `integrity`).
    pub bulk_groups: std::sync::atomic::AtomicU64,
    /// How far flushed commits reach into the event log and the `outbox` table: delivery reads no
    /// further, so that a sink is never sent what a machine crash could still take back (readers
    /// see a commit before its flush returns; see `flush`).
    marks: flush::Marks,
}

impl Writer {
    /// Wake the delivery workers: there may be something new for them to read.
    fn wake_delivery(&self) {
        self.written.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Bytes of log file the writer leaves alone when idle (see [`trim_log_while_idle`]): four times
/// what the log holds before the writer checkpoints ([`checkpoint::WRITER_FRAMES`]).
const LOG_SIZE_LIMIT: u64 = 64 << 20;

/// How long a connection waits for a lock another holds before it answers busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Page cache of each pooled read connection, in KiB as `PRAGMA cache_size` takes it (negative).
/// A read either touches a few pages or scans more than any cache would keep (the shadow summary
/// reads 5 MiB of index at 1,000,000 tasks), so a pooled connection keeps a quarter of SQLite's
/// default 2 MiB (see docs/BENCHMARKS.md, "Memory at 1,000,000 tasks"). The writer keeps the default.
const READER_CACHE_KIB: i64 = -512;

/// Virtual-machine steps between two looks of the integrity check at [`Inner::closing`]: well
/// under a millisecond of its work.
const CHECK_PROGRESS_STEPS: std::ffi::c_int = 10_000;

/// The supervisor's name for the writer thread, and the fault hook's.
pub const WRITER_TASK: &str = "store-writer";

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    // A connection is only ever used by one thread at a time (the writer, or a reader taken from the
    // pool), so SQLite's per-call locking is not needed.
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Room for every statement the writer and the readers prepare, so none is parsed twice.
    conn.set_prepared_statement_cache_capacity(64);
    // Plans that never depend on the values bound to them. Without this, SQLite marks a statement
    // that compares a column with a parameter and is ordered by another column (a task's events,
    // a listing, a sink's outbox) to be compiled again whenever the parameter changes, and every
    // statement taken back from the cache has its bindings cleared: each use parsed and planned it
    // anew, half of SQLite's time in a `show` (docs/BENCHMARKS.md, "Side by side on 4 December,
    // night").
    // The store keeps no statistics (no ANALYZE) for bound values to inform, so no plan changes.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl SqliteBackend {
    /// Open (creating and migrating if needed) the database at `path` and start the writer.
    pub fn open(path: &Path) -> Result<SqliteBackend, StoreError> {
        SqliteBackend::open_with(path, None)
    }

    /// [`SqliteBackend::open`], with the log flushed by `flush_log` instead of `fdatasync` of the
    /// log file (tests hold or fail the flush with it).
    fn open_with(
        path: &Path,
        flush_log: Option<flush::FlushLog>,
    ) -> Result<SqliteBackend, StoreError> {
        let mut conn = open_connection(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        // Every job runs in a savepoint, and SQLite keeps the pages a savepoint may have to undo in
        // a statement journal. As a temporary file that costs a write(2) per page per job (a fifth
        // of the writer's time under load); in memory it costs a copy. Durability is untouched:
        // the statement journal only ever serves a rollback inside a transaction.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        schema::migrate(&mut conn).map_err(StoreError::Sql)?;
        let checkpointer = checkpoint::Checkpointer::start(path)?;
        checkpointer.install(&mut conn)?;
        // Nothing here reads the whole file: the integrity check reads every page (seconds on a
        // large archive) and runs after the daemon is ready ([`Backend::check_integrity`]). The
        // marker says whether the previous daemon closed the store in order.
        //
        // It is committed without a flush of its own (`synchronous = NORMAL`, as every commit after
        // it, unless the log cannot be flushed beside the writer: below). The log is appended in
        // order, and each later flush covers it with the frames after it, so a machine crash can
        // lose the marker only if it loses every write after it, and then the file is what the
        // previous daemon closed in order. A checkpoint at NORMAL still flushes
        // the log before and the file after, so the previous run's committed frames are as safe
        // as at FULL (docs/BENCHMARKS.md, "Ready on 1,000,000 tasks, a fifth look").
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        mark_closed_cleanly(&conn, false)?;
        // From here on the writer's commits stay at NORMAL and a thread of their own flushes the
        // log before anyone hears of them (see `flush`); the marker's commit created that log.
        let flusher = match flush_log {
            Some(sync) => flush::Flusher::start(sync),
            None => flush::Flusher::for_log_of(&conn),
        }
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "store: cannot flush the log beside the writer; every commit flushes itself");
            flush::Flusher::inline()
        });
        if flusher.is_inline() {
            conn.pragma_update(None, "synchronous", "FULL")?;
        }
        let counts = Arc::new(Mutex::new(load_counts(&conn)?));
        let last_event: i64 =
            conn.query_row("SELECT ifnull(max(seq), 0) FROM events", [], |r| r.get(0))?;
        let (events, _) = broadcast::channel(4096);
        let (tx, rx) = mpsc::channel::<Job>();
        let health = Arc::new(Mutex::new(Health::default()));
        let writer_health = Arc::clone(&health);
        let (end_tx, end_rx) = watch::channel(None);
        let outbox = Arc::new(Writer {
            rules: RwLock::new(None),
            written: watch::channel(0).0,
            nothing_until: Mutex::new(std::collections::HashMap::new()),
            groups: std::sync::atomic::AtomicU64::new(0),
            bulk_groups: std::sync::atomic::AtomicU64::new(0),
            rules_installed: std::sync::atomic::AtomicU64::new(0),
            marks: flush::Marks::new(last_event),
        });
        let published = Published {
            counts: Arc::clone(&counts),
            events: events.clone(),
            outbox: Arc::clone(&outbox),
        };
        let handle = std::thread::Builder::new()
            .name(WRITER_TASK.into())
            .spawn(move || {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    writer_loop(conn, checkpointer, flusher, rx, published, writer_health)
                }));
                let why = match ran {
                    Ok(()) => "the writer thread ended".to_string(),
                    Err(p) => format!("panicked: {}", crate::supervisor::panic_message(p)),
                };
                let _ = end_tx.send(Some(why));
            })
            .map_err(|e| StoreError::Sql(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteBackend {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                jobs: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                counts,
                events,
                writer: Mutex::new(Some(handle)),
                health,
                writer_end: end_rx,
                errors: std::sync::atomic::AtomicU64::new(0),
                writes: std::sync::atomic::AtomicU64::new(0),
                outbox,
                closing: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Run `f` inside the writer's next group commit, in a savepoint of its own; resolves once the
    /// commit is durable.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_kept(Isolation::Savepoint, f).await
    }

    /// [`SqliteBackend::write`], with the job kept apart from the rest of its group as
    /// `isolation` says: [`Isolation::Bare`] only for jobs that fail before their first write or
    /// because the store failed ([`Batch::bare`]).
    async fn write_kept<T, F>(&self, isolation: Isolation, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit_job(f, tx, isolation)?;
        self.counted(rx.await.unwrap_or(Err(StoreError::Closed)))
    }

    /// Count a failure of the store itself; refusals are answers, and a closed store is a shutdown.
    fn counted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            if !e.is_refusal() && *e != StoreError::Closed {
                self.inner
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        result
    }

    /// Raw access for offline tools and tests that seed or inspect the file of a stopped daemon:
    /// run `f` in the writer's next group commit, from outside the async runtime. The daemon itself
    /// only uses the typed operations of [`crate::store::Backend`].
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit_job(f, tx, Isolation::Savepoint)?;
        rx.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Queue `f` for the writer's next group commit without waiting for it: jobs run in the order
    /// they are queued, so every write queued later sees what it wrote. A failure is logged.
    pub(super) fn write_later<F>(&self, what: &'static str, f: F)
    where
        F: FnOnce(&mut Batch<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.submit_job(f, tx, Isolation::Savepoint) {
            tracing::warn!(error = %e, "store: cannot queue {what}");
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Ok(Err(e)) = rx.await {
                    tracing::warn!(error = %e, "store: {what} failed");
                }
            });
        }
    }

    fn submit_job<T, F>(
        &self,
        f: F,
        reply: oneshot::Sender<Result<T, StoreError>>,
        isolation: Isolation,
    ) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        // Every write asks; only a damaged store's reason is copied.
        let damaged = self
            .inner
            .health
            .lock()
            .ok()
            .and_then(|h| h.damaged.clone());
        if let Some(why) = damaged {
            return Err(StoreError::Rejected(
                ErrorCode::StoreDamaged,
                format!(
                    "the store is damaged and refuses writes: {why}. Stop the daemon, keep a copy \
                     of the state directory, and restore the store from a backup"
                ),
            ));
        }
        let job: Job = Box::new(move |batch: Option<&mut Batch<'_>>| {
            let result = match batch {
                Some(batch) => batch.kept(isolation, f),
                None => Err(StoreError::Closed),
            };
            Box::new(move |commit: Result<(), StoreError>| {
                let _ = reply.send(commit.and(result));
            })
        });
        self.inner
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let guard = self.inner.jobs.lock().map_err(|_| StoreError::Closed)?;
        match guard.as_ref() {
            Some(sender) => sender.send(job).map_err(|_| StoreError::Closed),
            None => Err(StoreError::Closed),
        }
    }

    /// Resolves when the writer thread has ended (after [`SqliteBackend::shut`], or because it
    /// died), with why.
    pub async fn writer_ended(&self) -> String {
        let mut end = self.inner.writer_end.clone();
        let why = match end.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the writer thread ended".to_string(),
        };
        why
    }

    /// Run a read on a pooled read connection, on a blocking thread.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        let result = tokio::task::spawn_blocking(move || store.read_blocking(f))
            .await
            .map_err(|e| StoreError::Sql(format!("read task failed: {e}")))
            .and_then(|r| r);
        self.counted(result)
    }

    /// Raw read access, for the same offline tools and tests as [`SqliteBackend::write_blocking`].
    pub fn read_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError>,
    {
        let pooled = self.inner.readers.lock().ok().and_then(|mut p| p.pop());
        let conn = match pooled {
            Some(c) => c,
            None => {
                let conn = open_connection(&self.inner.path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                conn.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
                conn
            }
        };
        let result = f(&conn);
        if let Ok(mut pool) = self.inner.readers.lock() {
            if pool.len() < 8 {
                pool.push(conn);
            }
        }
        result
    }

    pub(super) fn health_now(&self) -> Health {
        self.inner
            .health
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    fn with_health(&self, f: impl FnOnce(&mut Health)) {
        if let Ok(mut h) = self.inner.health.lock() {
            f(&mut h);
        }
    }

    /// `PRAGMA quick_check` on a read connection (a snapshot, so writes go on meanwhile); see
    /// [`crate::store::Backend::check_integrity`].
    pub(super) async fn run_integrity_check(&self) -> Result<String, StoreError> {
        let store = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A thread of its own at the lowest priority: the check reads the whole file (seconds on
        // a large archive) and starts as the daemon becomes ready, when the first requests come;
        // under SCHED_IDLE it gets a core only while requests leave one free (docs/BENCHMARKS.md,
        // "Start-up on 1,000,000 tasks" and "The sweep and the integrity check").
        let spawned = std::thread::Builder::new()
            .name("integrity-check".into())
            .spawn(move || {
                crate::priority::idle_this_thread("the integrity check");
                let _ = tx.send(store.integrity_check_blocking());
            });
        let outcome = match spawned {
            Ok(_) => rx
                .await
                .map_err(|_| {
                    StoreError::Sql("the integrity check thread ended without an answer".into())
                })
                .and_then(|r| r),
            Err(e) => Err(StoreError::Sql(format!(
                "cannot start the integrity check: {e}"
            ))),
        };
        let outcome = self.counted(outcome);
        let at = now_ms();
        self.with_health(|h| {
            h.checking = false;
            if let Ok(found) = &outcome {
                h.last_check = Some((at, found.clone()));
                if found != "ok" {
                    h.damaged = Some(format!("integrity check failed: {found}"));
                }
            }
        });
        outcome
    }

    /// The check on a connection of its own, closed after it, so that the pages it read leave
    /// no pooled connection's cache full; it gives way to bulk work (see `integrity`). Answers
    /// [`StoreError::Closed`] when the store closed before or while it ran; [`Health::checking`]
    /// is set from the moment it can be stopped.
    fn integrity_check_blocking(&self) -> Result<String, StoreError> {
        use std::sync::atomic::Ordering::{Relaxed, SeqCst};
        if self.inner.closing.load(SeqCst) {
            return Err(StoreError::Closed);
        }
        let mut conn = open_connection(&self.inner.path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
        let (closing, bulk) = (Arc::clone(&self.inner), Arc::clone(&self.inner.outbox));
        let watch = integrity::Watch {
            stop: move || closing.closing.load(SeqCst),
            bulk: move || bulk.bulk_groups.load(Relaxed),
            quiet: integrity::BULK_QUIET,
            most_wait: integrity::MOST_WAIT,
        };
        self.with_health(|h| h.checking = true);
        match integrity::check(&mut conn, CHECK_PROGRESS_STEPS, watch) {
            Ok(checked) => {
                if checked.starts > 1 {
                    tracing::info!(
                        starts = checked.starts,
                        "store: the integrity check started again after bulk work (a sweep)"
                    );
                }
                Ok(checked.found)
            }
            Err(_) if self.inner.closing.load(SeqCst) => Err(StoreError::Closed),
            // A page too damaged for the check to walk is an answer too, not a failure to check.
            Err(e) => match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                    Ok(e.to_string())
                }
                _ => Err(e.into()),
            },
        }
    }

    pub(super) fn write_load(&self) -> crate::store::WriteLoad {
        use std::sync::atomic::Ordering::Relaxed;
        crate::store::WriteLoad {
            writes: self.inner.writes.load(Relaxed),
            commits: self.inner.outbox.groups.load(Relaxed),
        }
    }

    pub(super) fn outbox_writer(&self) -> &Writer {
        &self.inner.outbox
    }

    /// Stop accepting writes, let the writer finish what it has, and wait for it. A running
    /// integrity check is stopped first: its answer would come too late to matter, and its
    /// snapshot would keep the writer's last checkpoint waiting.
    fn shut(&self) {
        self.inner
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut jobs) = self.inner.jobs.lock() {
            jobs.take();
        }
        let handle = self.inner.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn load_counts(conn: &Connection) -> Result<Counts, StoreError> {
    let mut counts = Counts::default();
    // Kept by the writer with every commit (schema migration 2), so a start does not count a large
    // archive row by row.
    let mut stmt = conn.prepare("SELECT kind, state, n FROM task_counts WHERE n > 0")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let kind: String = row.get(0)?;
        let state: String = row.get(1)?;
        let n: i64 = row.get(2)?;
        if let (Ok(k), Ok(s)) = (kind.parse::<TaskKind>(), state.parse::<TaskState>()) {
            counts.set(k, s, n.max(0) as u64);
        }
    }
    Ok(counts)
}

/// What a commit moves once it is flushed (see `flush`), besides its answers.
#[derive(Clone)]
struct Published {
    counts: Arc<Mutex<Counts>>,
    events: broadcast::Sender<TrajectoryEvent>,
    outbox: Arc<Writer>,
}

fn writer_loop(
    mut conn: Connection,
    checkpointer: checkpoint::Checkpointer,
    mut flusher: flush::Flusher,
    rx: mpsc::Receiver<Job>,
    published: Published,
    health: Arc<Mutex<Health>>,
) {
    // Test hook only (see `crate::fault`): make the writer fail after a while, or once released by
    // SIGUSR2 (the writer is a thread: it looks at the flag between jobs, at least every 20 ms).
    let fault = crate::fault::injected(WRITER_TASK).map(|f| {
        let at = match f.when {
            When::After(after) => Some(Instant::now() + after),
            When::Signal => None,
        };
        (f.how, at)
    });
    // Goals wait for the text index until the writer idles (see `goal_index`).
    let mut goals_behind = true;
    // The log file may have grown past its limit: looked at, and cut back, when the writer idles.
    let mut log_to_trim = true;
    // A job taken while the last group was handed to the flusher: the next group's first.
    let mut carried: Option<Job> = None;
    loop {
        let first = if let Some(job) = carried.take() {
            job
        } else {
            match fault {
                None if goals_behind || log_to_trim => match rx.recv_timeout(goal_index::IDLE) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        match index_goals_while_idle(&mut conn, &rx, &mut goals_behind) {
                            Some(job) => job,
                            None => {
                                log_to_trim = !trim_log_while_idle(&mut conn);
                                continue;
                            }
                        }
                    }
                },
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
                Some((how, at)) => {
                    let received = match at {
                        Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                        None if crate::fault::armed() => Err(mpsc::RecvTimeoutError::Timeout),
                        None => rx.recv_timeout(Duration::from_millis(20)),
                    };
                    match received {
                        Ok(job) => job,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        Err(mpsc::RecvTimeoutError::Timeout)
                            if at.is_none() && !crate::fault::armed() =>
                        {
                            continue
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => match how {
                            How::Panic => panic!("test fault injected into {WRITER_TASK}"),
                            How::Exit => return,
                            How::Hang => {
                                // Wedged: jobs are taken and never answered, until the store closes.
                                let mut held = Vec::new();
                                while let Ok(job) = rx.recv() {
                                    held.push(job);
                                }
                                return;
                            }
                        },
                    }
                }
            }
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        published
            .outbox
            .groups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let single = group.len() == 1;
        let (full, end) = run_group(&mut conn, group, &published, &flusher);
        note_disk(&health, full);
        // A job already waiting makes the next group; the flusher settles this one meanwhile.
        // A single job with none behind it is one caller at a time: the writer flushes and
        // answers it itself, sparing it a hand-off. Under load the flusher does, even when no job
        // is waiting yet: the callers' next requests come while it flushes, and the writer must be
        // free to take them (docs/BENCHMARKS.md, "Flushing beside the writer").
        carried = rx.try_recv().ok();
        flusher.hand(end, single && carried.is_none());
        goals_behind = true;
        log_to_trim = true;
    }
    // Every sender is gone: settle what is left, checkpoint so the next start opens a small WAL,
    // then mark the store as closed in order (`--copy-store-to` copies only a store closed in
    // order), flushed at once.
    flusher.stop();
    let _ = conn.pragma_update(None, "synchronous", "FULL");
    checkpointer.stop(&mut conn);
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
    let marked = mark_closed_cleanly(&conn, true);
    if let Err(e) = marked {
        tracing::warn!(error = %e, "cannot mark the store as closed cleanly; `--copy-store-to` refuses it until a daemon has started and stopped on it again");
    }
}

/// Index goals step by step until a job arrives (answered as the next group's first) or none is
/// left. A failed step is logged and left until the next group.
fn index_goals_while_idle(
    conn: &mut Connection,
    rx: &mpsc::Receiver<Job>,
    behind: &mut bool,
) -> Option<Job> {
    *behind = match goal_index::behind(conn) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "store: cannot read the goal index's progress");
            false
        }
    };
    while *behind {
        match goal_index::step(conn) {
            Ok(more) => *behind = more,
            Err(e) => {
                tracing::warn!(error = %e, "store: cannot index goals for the text filter; retried when the store is next idle");
                *behind = false;
            }
        }
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Empty) => continue,
            // Closing: the rest is indexed after the next start.
            Err(mpsc::TryRecvError::Disconnected) => return None,
        }
    }
    None
}

/// Cut the log file back to nothing if it is larger than [`LOG_SIZE_LIMIT`], while the writer
/// has no work. The file keeps the largest size the log ever reached until an orderly stop
/// truncates it: a migration, or writes while a long read (the integrity check) kept the log from
/// starting over, leave hundreds of MiB behind. SQLite's `journal_size_limit` would cut it when
/// the log next starts over, which is inside a write, often under load: one `ftruncate` of 362 MiB
/// took 75 ms here, and the scattered sweep 0.1–0.3 s longer (docs/BENCHMARKS.md, "The log
/// file cut back when idle"). Here it costs a job only if one arrives meanwhile.
///
/// Only once every frame was copied into the store (by the checkpoint thread, or by this
/// checkpoint when the thread was not woken for the last few), and without waiting for anyone: a
/// reader on an older snapshot or a checkpoint under way makes it try again at the next idle
/// moment. Answers whether nothing is left to do.
fn trim_log_while_idle(conn: &mut Connection) -> bool {
    let Some(log) = flush::log_file(conn) else {
        return true;
    };
    match std::fs::metadata(&log) {
        Ok(meta) if meta.len() > LOG_SIZE_LIMIT => {}
        _ => return true,
    }
    if conn.busy_timeout(Duration::ZERO).is_err() {
        return false;
    }
    let copied = matches!(
        conn.wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::PASSIVE),
        Ok((frames, copied)) if copied >= frames
    );
    let cut = copied
        && conn
            .wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::TRUNCATE)
            .is_ok();
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
    cut
}

/// Move the stored counts by the group's changes, inside the group's transaction: one statement per
/// (kind, state) the group touched, however many jobs it held. The same changes move the in-memory
/// counts once the commit succeeds, so the two never differ.
fn persist_counts(tx: &rusqlite::Transaction<'_>, deltas: &[batch::Delta]) -> rusqlite::Result<()> {
    let mut net: HashMap<(TaskKind, TaskState), i64> = HashMap::new();
    for (kind, from, to) in deltas {
        if let Some(from) = from {
            *net.entry((*kind, *from)).or_default() -= 1;
        }
        if let Some(to) = to {
            *net.entry((*kind, *to)).or_default() += 1;
        }
    }
    let mut stmt = tx.prepare_cached(
        "INSERT INTO task_counts (kind, state, n) VALUES (?1, ?2, ?3) \
         ON CONFLICT (kind, state) DO UPDATE SET n = n + ?3",
    )?;
    for ((kind, state), n) in net {
        if n != 0 {
            stmt.execute(rusqlite::params![kind.as_str(), state.as_str(), n])?;
        }
    }
    Ok(())
}

/// A store error for a failed step of the group, keeping a full disk recognisable.
fn group_error(what: &str, e: rusqlite::Error) -> StoreError {
    if is_disk_full(&e) {
        StoreError::Full(format!("{what}: {e}"))
    } else {
        StoreError::Sql(format!("{what}: {e}"))
    }
}

/// Note whether the last group met a full disk: log the first failure of an episode and the
/// first commit after it, not every request in between. `None`: the group said nothing either way.
fn note_disk(health: &Mutex<Health>, full: Option<bool>) {
    let Ok(mut h) = health.lock() else { return };
    match (full, h.full_since_ms) {
        (Some(true), None) => {
            h.full_since_ms = Some(now_ms());
            tracing::error!(
                "store: the disk is full; writes fail with storage_full until space is freed"
            );
        }
        (Some(false), Some(since)) => {
            h.full_since_ms = None;
            tracing::info!(
                full_for_ms = now_ms().saturating_sub(since),
                "store: storage writable again"
            );
        }
        _ => {}
    }
}

/// Run one group (at least one job); answers whether it met a full disk (`Some(false)`: it
/// committed without), and the end of its last transaction, for the flusher to settle. The ends of
/// the transactions before it are handed to `flusher` as soon as each is over, so that each is
/// flushed while the writer runs the next.
fn run_group(
    conn: &mut Connection,
    group: Vec<Job>,
    published: &Published,
    flusher: &flush::Flusher,
) -> (Option<bool>, flush::Pending) {
    let mut jobs = group.into_iter().peekable();
    let mut full = None;
    // One transaction, unless a job breaks it or does bulk work: then the jobs after it go on in
    // the next.
    loop {
        let (said, end) = run_transaction(conn, &mut jobs, published);
        full = match (full, said) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), _) | (_, Some(false)) => Some(false),
            (None, None) => None,
        };
        if jobs.peek().is_none() {
            return (full, end);
        }
        flusher.hand(end, false);
    }
}

/// Answer every completion with `result`.
fn answer(completions: Vec<Completion>, result: Result<(), StoreError>) -> flush::Pending {
    flush::Pending {
        committed: false,
        settle: Box::new(move |_| {
            for done in completions {
                done(result.clone());
            }
        }),
    }
}

/// Run jobs from `jobs` in one transaction and commit them. Stops early when a job breaks the
/// transaction ([`Batch::broken`]): everything run in it is rolled back and every job that ran is
/// answered with that failure; the rest stay in `jobs`. Stops after a job that did bulk work (a
/// batch of the sweep's): its commit is large enough to flush on its own, and the sweep keeps its
/// next batch queued behind it, which the writer runs meanwhile (docs/BENCHMARKS.md, "The sweep's
/// batches flushed one by one"). Merged, two batches made one commit whose log passed
/// [`checkpoint::WRITER_FRAMES`], and the writer checkpointed. Says whether the disk was full (`None`:
/// nothing to say either way), and returns what the transaction does once flushed (see `flush`):
/// answer each job with the outcome, and after a commit publish its events and move the counts.
fn run_transaction(
    conn: &mut Connection,
    jobs: &mut std::iter::Peekable<std::vec::IntoIter<Job>>,
    published: &Published,
) -> (Option<bool>, flush::Pending) {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            // Nothing can run without a transaction: every job is answered with the error unexecuted.
            let err = group_error("cannot begin a transaction", e);
            let full = matches!(err, StoreError::Full(_));
            let completions = jobs.map(|job| job(None)).collect();
            return (full.then_some(true), answer(completions, Err(err)));
        }
    };
    let rules = published.outbox.rules.read().ok().and_then(|r| r.clone());
    let mut batch = Batch::new(&tx, rules);
    let mut completions: Vec<Completion> = Vec::new();
    for job in jobs.by_ref() {
        completions.push(job(Some(&mut batch)));
        if batch.broken.is_some() || batch.is_bulk() {
            break;
        }
    }
    if let Some(cause) = batch.broken.take() {
        let saw_full = batch.saw_full;
        drop(batch);
        // A transaction SQLite already ended cannot be rolled back again; either way it is gone.
        let _ = tx.rollback();
        let err = match cause {
            StoreError::Full(_) => cause,
            other => StoreError::Sql(format!(
                "a write of the same commit failed part-way and the commit was rolled back: {other}"
            )),
        };
        let full = saw_full || matches!(err, StoreError::Full(_));
        return (full.then_some(true), answer(completions, Err(err)));
    }
    let batch::Effects {
        events: new_events,
        deltas,
        saw_full,
        outbox_rows,
        table_rows,
        bulk,
    } = batch.into_effects();
    // Only a commit that wrote something proves the disk takes writes again.
    let wrote = !new_events.is_empty() || !deltas.is_empty() || outbox_rows > 0;
    // Counted before the commit, so that a read that sees its rows sees the count too.
    let rows_commit = table_rows.then(|| published.outbox.marks.rows_commit());
    let committed = persist_counts(&tx, &deltas)
        .map_err(|e| group_error("cannot update the task counts", e))
        .and_then(|()| tx.commit().map_err(|e| group_error("commit failed", e)));
    let full = match &committed {
        Err(StoreError::Full(_)) => Some(true),
        Err(_) => None,
        Ok(()) if saw_full => Some(true),
        Ok(()) => wrote.then_some(false),
    };
    if let Err(e) = committed {
        if let Some(n) = rows_commit {
            published.outbox.marks.rows_not_committed(n);
            // A read that held its rows back for this count waits for a wake.
            published.outbox.wake_delivery();
        }
        return (full, answer(completions, Err(e)));
    }
    let Published {
        counts,
        events,
        outbox,
    } = published.clone();
    let last_event = new_events
        .iter()
        .filter_map(|e| i64::try_from(e.seq).ok())
        .max();
    let covered = outbox.marks.committed(last_event);
    let settle = move |flushed: Result<(), StoreError>| {
        // The commit is in the store whether or not the flush returned: what others read of it
        // follows it, and its callers hear whether it is on disk. Sinks are sent what it wrote
        // only once a flush covered it (this one, or the next that succeeds), and the marks move
        // before delivery is woken.
        let released = outbox.marks.settled(covered, flushed.is_ok());
        if let Ok(mut c) = counts.lock() {
            for (kind, from, to) in &deltas {
                c.apply(*kind, *from, *to);
            }
        }
        for ev in new_events {
            let _ = events.send(ev);
        }
        if outbox_rows > 0 || released {
            outbox.wake_delivery();
        }
        if bulk {
            outbox
                .bulk_groups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        for done in completions {
            done(flushed.clone());
        }
    };
    (
        full,
        flush::Pending {
            committed: true,
            settle: Box::new(settle),
        },
    )
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod contract_tests;

#[cfg(test)]
mod sweep_tests;
